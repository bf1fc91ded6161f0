"""The routing decision: `decide(view, request, now, rng)`, a pure function.

Given the same view (the projections folded to one log position), request input, time and random seed it
returns the same decision, which is what makes `switchboard replay` possible.

Score (DESIGN.md section 4, starting from the seed system): theta ~ Beta(s + 2, f + 2) on decayed counts,
plus a speed term, a TTFB term and an intelligence term, minus the 429 penalty. `auto-smart` weights
intelligence. Models with no data get priors (tokens/s from their speed rank, neutral TTFB), so a fresh
install routes in every mode.

Cost: only the best candidate matters per attempt, so models are visited in order of their best possible
score (theta <= 1) and the walk stops once no remaining model could beat the best usable one found; keys
are checked only for a model that would win. Models the walk never reached are counted, not scored.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from events.bound_order import BoundOrder, Key, speed_grid
from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from events.policy import RoutingPolicy
from events.quotas import over_limit
from events.sessions import SessionState
from events.types import Excluded, ExclusionCode, RouteDecided, RouteInput, ScoredCandidate
from events.view import ChainIndex, RoutingView, split_pool

PRIOR_TPS_AT_RANK_1 = 400.0  # a model with no speed data: 400 tok/s at speed rank 1, 200 at 2, ...
RECORDED_CANDIDATES = 8  # a decision event lists this many scored candidates, best first
RECORDED_EXCLUSIONS = 64  # ... and this many exclusions with their reasons (replay --explain recomputes all)


class UnknownModel(LookupError):
    pass


class WrongTask(UnknownModel):
    """A request named a model of another task (a chat request an embedding model, or the reverse): no
    model of that name can take it. `args`: (name, the task the named model has)."""

    @property
    def message(self) -> str:
        name, task = self.args
        if task == "embedding":
            return f"'{name}' is an embedding model; use /v1/embeddings."
        return f"'{name}' is a chat model, not an embedding model."


@dataclass(frozen=True)
class Decision:
    ranked: tuple[_Scored, ...]  # scored, best first (named models first, in request order), as recorded
    excluded: tuple[Excluded, ...]
    chosen: CatalogModel | None
    chosen_key: str | None
    candidates_total: int  # eligible models, including the ones the walk did not need to score
    no_key_models: int  # models left out only because their platform has no key at all
    pin_used: bool = False
    pin_cleared: str | None = None  # why the session's pin could not be used (the caller logs it)
    # The models the request named, and those of them without a key (counted in `no_key_models`): what the
    # request tells its client about named models it passed over. Not part of the choice, so not compared.
    named_refs: tuple[str, ...] = field(default=(), compare=False)
    named_no_key: tuple[str, ...] = field(default=(), compare=False)

    @property
    def chosen_ref(self) -> str | None:
        return self.chosen.ref if self.chosen else None

    @cached_property
    def candidates(self) -> tuple[ScoredCandidate, ...]:
        # Built on demand: a replay compares only the refs, and records cost more than the scoring.
        return tuple(_candidate(c) for c in self.ranked)

    @property
    def candidate_refs(self) -> list[str]:
        return [c[3].ref for c in self.ranked]

    def record(
        self,
        *,
        ts: float,
        request_id: str | None,
        attempt: int,
        seed: int,
        view_seq: int,
        now: float,
        route: RouteInput,
        max_excluded: int = RECORDED_EXCLUSIONS,
        not_admitted: str | None = None,
    ) -> RouteDecided:
        """The decision event. Pool exclusions (a third of the catalog in `auto`, all for the same reason)
        are listed by ref only; the other exclusions keep their reasons, up to `max_excluded`."""
        pool, others = split_pool(self.excluded)
        return RouteDecided(
            ts=ts,
            request_id=request_id,
            attempt=attempt,
            seed=seed,
            view_seq=view_seq,
            now=now,
            input=route,
            candidates=self.candidates,
            excluded=tuple(others[:max_excluded]),
            chosen_ref=self.chosen_ref,
            chosen_key=self.chosen_key,
            candidates_total=self.candidates_total,
            no_key_models=self.no_key_models,
            pin_used=self.pin_used,
            pin_cleared=self.pin_cleared,
            pool_excluded=tuple(pool),
            not_admitted=not_admitted,
        )


def mode_and_models(
    view: RoutingView, requested: tuple[str, ...], task: str = "chat"
) -> tuple[str, list[CatalogModel]]:
    """The virtual mode named (default `auto`) and the concrete models named, in order: only models of
    `task` (a name that resolves only to models of another task raises WrongTask)."""
    mode = "auto"
    named: list[CatalogModel] = []
    for asked in requested:
        name = ALIASES.get(asked, asked)
        if name in VIRTUAL_MODELS:
            mode = name
            continue
        resolved = view.catalog.resolve(name)
        found = [m for m in resolved if m.task == task]
        if resolved and not found:
            raise WrongTask(name, resolved[0].task)
        if not found:
            raise UnknownModel(name)
        named.extend(sorted(found, key=lambda m: m.intelligence_rank))
    return mode, named


# A scored model, before it becomes a ScoredCandidate: (score, theta, parts, model, named).
_Scored = tuple[float, float, "Parts", CatalogModel, bool]


def decide(view: RoutingView, req: RouteInput, now: float, rng: random.Random) -> Decision:
    p = view.policy
    mode, named = mode_and_models(view, req.requested, req.task)
    skip_models = dict(req.skip_models)
    skip_platforms = dict(req.skip_platforms)
    session = view.sessions.get(req.session, now) if req.session else None
    tokens = req.est_tokens + req.reserve_tokens
    pin_cleared: str | None = None
    if req.use_pin and session is not None and session.pin is not None and not named:
        pinned, key, pin_cleared = _use_pin(view, session, req, skip_models, skip_platforms, tokens, now)
        if pinned is not None:
            parts = _Parts(view, p, mode, now)
            ranked = (_score(view, p, pinned, parts.of(pinned), now, rng, named=True),)
            return Decision(ranked, (), pinned, key, 1, 0, pin_used=True)
    excluded: list[Excluded] = []
    # Without a session only single-flight can exclude, and only a platform with an attempt in flight.
    single_flight = view.session_policy.single_flight
    session_rules = req.session is not None or any(map(view.in_flight.busy, single_flight))
    no_key = 0
    named_no_key: list[str] = []
    eligible: list[CatalogModel] = []  # named ones
    seen: set[str] = set()
    has_keys = view.health.has_keys
    for m in named:
        if m.ref in seen:
            continue
        seen.add(m.ref)
        out = _model_exclusion(view, m, req, skip_models, skip_platforms, now)
        if out is None and session_rules:
            out = _session_exclusion(view, m, req.session, session, now)
        if out is None and not has_keys(m.platform):
            no_key += 1
            named_no_key.append(m.ref)
            continue
        if out is not None:
            excluded.append(out)
            continue
        eligible.append(m)
    chain: ChainIndex | None = None
    chain_eligible: set[int] | None = None  # chain positions that may take the request; None: all of them
    if req.use_chain:
        # The chain's static filters (enabled, in the chain, pool for this mode, platform has a key) are
        # cached in the view; only what changes by the request or the moment is checked per model.
        chain = view.chain(mode)
        no_key += chain.no_key
        if seen:
            excluded.extend(e for e in chain.pool_excluded if e.ref not in seen)
        else:
            excluded.extend(chain.pool_excluded)
        per_model = (
            bool(skip_models or skip_platforms)
            or req.min_context is not None
            or req.est_tokens > chain.min_context
            or view.cooldowns.any_cooling(now)
        )
        if per_model or session_rules or seen:
            chain_eligible = set()
            for pos, m in enumerate(chain.models):
                if m.ref in seen:
                    continue
                if per_model:
                    out = _model_exclusion(view, m, req, skip_models, skip_platforms, now)
                    if out is not None:
                        excluded.append(out)
                        continue
                if session_rules:
                    out = _session_exclusion(view, m, req.session, session, now)
                    if out is not None:
                        excluded.append(out)
                        continue
                chain_eligible.add(pos)
    chain_count = 0 if chain is None else len(chain.models if chain_eligible is None else chain_eligible)

    parts = _Parts(view, p, mode, now)
    scored: list[_Scored] = []
    chosen: CatalogModel | None = None
    chosen_key: str | None = None
    # Named models: in the order the request gave, whatever their score.
    for m in eligible:
        scored.append(_score(view, p, m, parts.of(m), now, rng, named=True))
        if chosen is None:
            key, key_exclusions = _pick_key(view, m, req, tokens, now, rng)
            excluded.extend(key_exclusions)
            if key is not None:
                chosen, chosen_key = m, key
    if chosen is None and chain_count:
        assert chain is not None
        chosen, chosen_key = _walk_chain(
            view, p, parts, chain, chain_eligible, mode, req, tokens, now, rng, scored, excluded
        )
    # Named models first, in the request's order (they were scored first); then the chain's, best first.
    named_count = sum(1 for c in scored if c[4])
    if len(scored) - named_count > 1:
        scored[named_count:] = sorted(scored[named_count:], key=lambda c: (_group(c[3].pool, mode), -c[0]))
    return Decision(
        tuple(scored[:RECORDED_CANDIDATES]),
        tuple(excluded),
        chosen,
        chosen_key,
        len(eligible) + chain_count,
        no_key,
        pin_cleared=pin_cleared,
        named_refs=tuple(m.ref for m in named) if named else (),
        named_no_key=tuple(named_no_key),
    )


def _use_pin(
    view: RoutingView,
    session: SessionState,
    req: RouteInput,
    skip_models: dict[str, str],
    skip_platforms: dict[str, str],
    tokens: int,
    now: float,
) -> tuple[CatalogModel | None, str | None, str | None]:
    """(model, key, None) when the session's pin can take this turn, else (None, None, why not)."""
    assert session.pin is not None
    platform, model_id, key_id = session.pin
    ref = f"{platform}/{model_id}"
    m = next((m for m in view.catalog.models() if m.ref == ref), None)
    if m is None or not m.enabled or m.task != req.task:  # (a config may have made it an embedding model)
        return None, None, f"pinned model {ref} is no longer available"
    if platform in session.bans:
        return None, None, f"{platform} is banned for this session ({session.bans[platform]})"
    if ref in skip_models or platform in skip_platforms:
        return None, None, f"{ref} failed earlier in this request"
    cooling = view.cooldowns.cooling(ref, now)
    if cooling is not None:
        return None, None, f"pinned model {ref} is cooling ({cooling[1]})"
    if m.context_window is not None and req.est_tokens > m.context_window:
        return None, None, f"the conversation outgrew {ref}'s context window ({m.context_window})"
    busy = _session_exclusion(view, m, req.session, session, now)
    if busy is not None:
        return None, None, busy.reason
    info = view.health.keys.get(key_id)
    if info is None or info.status != "ok":
        return None, None, f"pinned key {key_id} is {info.status if info else 'gone'}"
    if view.health.cooling_until(key_id, model_id, now) is not None:
        return None, None, f"pinned key {key_id} is rate-limited"
    if (key_id, ref) in req.tried:
        return None, None, f"pinned key {key_id} already failed in this request"
    why = over_limit(m.limits, view.quotas.usage(key_id, ref, now), tokens)
    if why is not None:
        return None, None, f"pinned key {key_id} is over its {why}"
    return m, key_id, None


def _session_exclusion(
    view: RoutingView, m: CatalogModel, session_key: str | None, session: SessionState | None, now: float
) -> Excluded | None:
    sp = view.session_policy
    if session is not None:
        if m.platform in session.bans:
            return Excluded(
                ref=m.ref,
                reason=f"banned for this session: {session.bans[m.platform]}",
                code=ExclusionCode.BANNED,
            )
        if session.pin is not None:
            platform, model_id, _ = session.pin
            if (
                m.platform == platform
                and m.id != model_id
                and sp.level(platform) == "provider-ban"
                and now - session.pin_used_at < sp.provider_ban_window_s
            ):
                return Excluded(
                    ref=m.ref,
                    reason=f"provider-ban: this session used {platform}/{model_id} "
                    f"{now - session.pin_used_at:.0f}s ago; other {platform} models wait "
                    f"{sp.provider_ban_window_s:g}s",
                    code=ExclusionCode.PROVIDER_BAN_WINDOW,
                )
    if (
        m.platform in sp.single_flight
        and sp.level(m.platform) == "provider-ban"
        and view.in_flight.other_sessions(m.platform, session_key)
    ):
        return Excluded(
            ref=m.ref,
            reason=f"single-flight: {m.platform} is in use by another session",
            code=ExclusionCode.SINGLE_FLIGHT,
        )
    return None


def _group(pool: str, mode: str) -> int:
    """Pools that go first in a mode: 0 = first group, 1 = the rest."""
    if mode == "auto-fast":
        return 0 if pool == "fast" else 1
    if mode == "auto-smart":
        return 0 if pool == "smart" else 1
    return 0


def _walk_chain(
    view: RoutingView,
    p: RoutingPolicy,
    parts: _Parts,
    chain: ChainIndex,
    eligible: set[int] | None,
    mode: str,
    req: RouteInput,
    tokens: int,
    now: float,
    rng: random.Random,
    scored: list[_Scored],
    excluded: list[Excluded],
) -> tuple[CatalogModel | None, str | None]:
    """Visit models by best possible score (theta at most 1; then chain position, so replays visit alike);
    sample a model's theta when it comes up, and check a sampled model's keys once no model still unsampled
    could beat it: usually a few samples and one key check per decision."""
    models = chain.models
    order = _bound_order(view, parts, chain, mode)
    loose, n = order.sorted, len(order.sorted)
    # The exact bounds (penalty and the true fastest speed applied) of the models taken off `loose`; since a
    # loose key is never above its exact one, the top of `exact` is the next model in exact order as soon as
    # no key left in `loose` is below it.
    get, fill, which = parts.cache.get, parts.fill, 1 if parts.smart else 0
    weight, inv_max_tps, points, per_point = (
        parts.speed_in_total,
        parts.inv_max_tps,
        parts.points,
        parts.per_point,
    )
    exact: list[tuple[int, float, int]] = []
    ready: list[tuple[int, float, int]] = []  # sampled: (group, -score, position)
    li = 0
    while True:
        while li < n and (not exact or loose[li] < exact[0]):
            group, _, pos = loose[li]
            li += 1
            if eligible is not None and pos not in eligible:
                continue
            ref = models[pos].ref
            base = get(ref) or fill(models[pos])
            fixed = base[which] + weight * min(1.0, base[2] * inv_max_tps)
            if points:
                fixed -= per_point * points.get(ref, 0.0)
            heapq.heappush(exact, (group, -1.0 - fixed, pos))
        if ready and (not exact or ready[0][:2] <= exact[0][:2]):
            _, _, pos = heapq.heappop(ready)
            key, key_exclusions = _pick_key(view, models[pos], req, tokens, now, rng)
            excluded.extend(key_exclusions)
            if key is not None:
                return models[pos], key
            continue
        if not exact:
            return None, None
        group, _, pos = heapq.heappop(exact)
        m = models[pos]
        cand = _score(view, p, m, parts.of(m), now, rng, named=False)
        scored.append(cand)
        heapq.heappush(ready, (group, -cand[0], pos))


def _bound_order(view: RoutingView, parts: _Parts, chain: ChainIndex, mode: str) -> BoundOrder:
    """The mode's loose order (events/bound_order.py), with the models whose stats changed moved."""
    grid = speed_grid(parts.fastest, PRIOR_TPS_AT_RANK_1)
    order = view.bound_order(mode, (view.chains_basis, grid))
    if order is None:
        order = BoundOrder(chain.models, _loose_keys(parts, chain, mode, grid, range(len(chain.models))))
        view.keep_bound_order(mode, order, (view.chains_basis, grid))
    elif order.stale:
        positions = sorted(order.stale)
        order.stale.clear()
        for pos, key in zip(positions, _loose_keys(parts, chain, mode, grid, positions), strict=True):
            order.update(pos, key)
    return order


def _loose_keys(
    parts: _Parts, chain: ChainIndex, mode: str, grid: tuple[float, float], positions: Iterable[int]
) -> list[Key]:
    """Keys never above the exact bound `_walk_chain` computes, whatever the fastest speed within `grid`
    (floor <= fastest < ceiling) and the penalty points (0 to the cap) are when it is read."""
    first_pool = {"auto-fast": "fast", "auto-smart": "smart"}.get(mode)
    which, weight = 1 if parts.smart else 0, parts.speed_in_total
    # The speed term is weight * min(1, tps / fastest): largest at the slowest possible fastest speed for a
    # positive weight, at the fastest possible one for a negative weight.
    inv_fastest = 1.0 / grid[0] if weight >= 0 else 1.0 / grid[1]
    # A penalty only lowers a score, unless its weight is negative: then the most it can add.
    penalty_room = -parts.per_point * parts.p.penalty_cap if parts.per_point < 0 else 0.0
    get, fill = parts.cache.get, parts.fill
    keys = []
    for pos in positions:
        m = chain.models[pos]
        base = get(m.ref) or fill(m)
        group = 0 if first_pool is None or m.pool == first_pool else 1
        upper = base[which] + weight * min(1.0, base[2] * inv_fastest) + penalty_room
        keys.append((group, -1.0 - upper, pos))
    return keys


def _model_exclusion(
    view: RoutingView,
    m: CatalogModel,
    req: RouteInput,
    skip_models: dict[str, str],
    skip_platforms: dict[str, str],
    now: float,
) -> Excluded | None:
    """Why a model (that passed the pool filter, or was named) cannot take this request now."""
    if m.ref in skip_models:
        return Excluded(
            ref=m.ref, reason=f"skipped for this request: {skip_models[m.ref]}", code=ExclusionCode.SKIPPED
        )
    if m.platform in skip_platforms:
        return Excluded(
            ref=m.ref,
            reason=f"platform skipped for this request: {skip_platforms[m.platform]}",
            code=ExclusionCode.PLATFORM_SKIPPED,
        )
    if req.min_context is not None and (m.context_window or 0) <= req.min_context:
        return Excluded(
            ref=m.ref,
            reason=f"context window {m.context_window} not larger than {req.min_context}",
            code=ExclusionCode.CONTEXT,
        )
    if m.context_window is not None and req.est_tokens > m.context_window:
        return Excluded(
            ref=m.ref,
            reason=f"context window {m.context_window} < {req.est_tokens} estimated tokens",
            code=ExclusionCode.CONTEXT,
        )
    cooling = view.cooldowns.cooling(m.ref, now)
    if cooling is not None:
        return Excluded(
            ref=m.ref,
            reason=f"cooling for {cooling[0] - now:.0f}s ({cooling[1]})",
            until=cooling[0],
            code=ExclusionCode.COOLING,
        )
    return None


def _pick_key(
    view: RoutingView, m: CatalogModel, req: RouteInput, tokens: int, now: float, rng: random.Random
) -> tuple[str | None, list[Excluded]]:
    """The least-used usable key of the model (fewest requests this minute; the rng breaks ties)."""
    best: tuple[int, float, str] | None = None
    excluded: list[Excluded] = []
    tried = req.tried
    for info in view.health.keys_of(m.platform):
        key_id = info.key_id
        if info.status != "ok":
            excluded.append(
                Excluded(ref=m.ref, reason=f"key {key_id} {info.status}", code=ExclusionCode.KEY_UNUSABLE)
            )
            continue
        until = view.health.cooling_until(key_id, m.id, now)
        forbidden = view.health.forbidden_until(key_id, m.id, now) if until is not None else None
        if forbidden is not None:
            excluded.append(
                Excluded(
                    ref=m.ref,
                    reason=f"key {key_id} may not use this model (403) for {forbidden - now:.0f}s",
                    until=forbidden,
                    code=ExclusionCode.FORBIDDEN,
                )
            )
            continue
        if until is not None:
            excluded.append(
                Excluded(
                    ref=m.ref,
                    reason=f"key {key_id} rate-limited for {until - now:.0f}s",
                    until=until,
                    code=ExclusionCode.RATE_LIMITED,
                )
            )
            continue
        if (key_id, m.ref) in tried:
            excluded.append(
                Excluded(
                    ref=m.ref, reason=f"key {key_id} already tried for this request", code=ExclusionCode.TRIED
                )
            )
            continue
        usage = view.quotas.usage(key_id, m.ref, now)
        why = over_limit(m.limits, usage, tokens)
        if why is not None:
            excluded.append(
                Excluded(
                    ref=m.ref,
                    reason=f"key {key_id} {why}",
                    until=view.quotas.frees_at(key_id, m.ref, now, m.limits, tokens),
                    code=ExclusionCode.QUOTA,
                )
            )
            continue
        rank = (usage.requests_minute, rng.random(), key_id)
        if best is None or rank < best:
            best = rank
    return (best[2] if best else None), excluded


Parts = tuple[float, float, float, float, float]


class _Parts:
    """Everything of a score but theta: (fixed total, speed, ttfb, intelligence, penalty).

    What depends only on one model's stats and the catalog is cached in the view (and dropped when that
    model's stats change); the speed term's normalisation by the fastest model and the decaying 429 penalty
    are applied per decision, so the cache never depends on other models or on `now`."""

    def __init__(self, view: RoutingView, p: RoutingPolicy, mode: str, now: float) -> None:
        self.view, self.p, self.now = view, p, now
        self.smart = mode == "auto-smart"
        self.cache = view.cached_parts()
        self.points = view.cooldowns.penalties(now)  # 429 penalty points per model, usually none or a few
        self.per_point = p.penalty_weight
        self.fastest = max(PRIOR_TPS_AT_RANK_1, view.stats.max_tps or 0.0)
        self.inv_max_tps = 1.0 / self.fastest
        # Weight of the normalised speed in this mode's total.
        self.speed_in_total = p.speed_weight * (p.smart_speed if self.smart else 1.0)

    def of(self, m: CatalogModel) -> Parts:
        balanced, smart, tps, slow, ttfb, intelligence = self.cache.get(m.ref) or self.fill(m)
        speed = self.p.speed_weight * min(1.0, tps * self.inv_max_tps) - slow
        penalty = self.per_point * self.points.get(m.ref, 0.0)
        total = (smart if self.smart else balanced) + self.speed_in_total * min(1.0, tps * self.inv_max_tps)
        return total - penalty, speed, ttfb, intelligence, penalty

    def fill(self, m: CatalogModel) -> tuple[float, float, float, float, float, float]:
        """(balanced and smart totals without the normalised speed, tps, slow penalty, ttfb, intelligence)."""
        p = self.p
        stats = self.view.stats.models.get(m.ref)
        tps = (
            stats.tps
            if stats is not None and stats.tps is not None
            else PRIOR_TPS_AT_RANK_1 / max(1, m.speed_rank)
        )
        slow = p.slow_penalty * (1 - tps / p.slow_tps) if tps < p.slow_tps else 0.0
        ttfb = _ttfb_term(p, stats.ttfb_ms if stats is not None else None)
        intelligence = self.view.intelligence().get(m.ref, 0.0)
        balanced = ttfb + p.intelligence_weight * intelligence - slow
        smart = p.smart_intelligence * intelligence - p.smart_speed * slow + p.smart_ttfb * ttfb
        base = self.cache[m.ref] = (balanced, smart, tps, slow, ttfb, intelligence)
        return base


@dataclass(frozen=True)
class MeanScore:
    """A model's score parts with the bandit's mean in place of a sample: what a decision would score it on
    average now, in balanced (`auto`) and smart (`auto-smart`) mode."""

    theta_mean: float
    speed: float
    ttfb: float
    intelligence: float
    penalty: float
    balanced: float
    smart: float


def mean_scores(view: RoutingView, models: Iterable[CatalogModel], now: float) -> list[MeanScore]:
    """`MeanScore` of each model, from the same parts a decision scores with (nothing is sampled)."""
    p = view.policy
    balanced_parts, smart_parts = _Parts(view, p, "auto", now), _Parts(view, p, "auto-smart", now)
    out = []
    for m in models:
        successes, failures = view.stats.decayed(m.ref, now)
        prior_s, prior_f = p.prior_successes, p.prior_failures
        theta = (successes + prior_s) / (successes + failures + prior_s + prior_f)
        balanced_total, speed, ttfb, intelligence, penalty = balanced_parts.of(m)
        out.append(
            MeanScore(
                theta,
                speed,
                ttfb,
                intelligence,
                penalty,
                theta + balanced_total,
                theta + smart_parts.of(m)[0],
            )
        )
    return out


def _ttfb_term(p: RoutingPolicy, ttfb_ms: float | None) -> float:
    if ttfb_ms is None:
        return 0.0
    if ttfb_ms <= p.ttfb_good_ms:
        return p.ttfb_bonus
    if ttfb_ms <= p.ttfb_zero_ms:
        return p.ttfb_bonus * (p.ttfb_zero_ms - ttfb_ms) / (p.ttfb_zero_ms - p.ttfb_good_ms)
    if ttfb_ms <= p.ttfb_bad_ms:
        return p.ttfb_worst * (ttfb_ms - p.ttfb_zero_ms) / (p.ttfb_bad_ms - p.ttfb_zero_ms)
    return p.ttfb_worst


def _score(
    view: RoutingView,
    p: RoutingPolicy,
    m: CatalogModel,
    parts: Parts,
    now: float,
    rng: random.Random,
    *,
    named: bool,
) -> _Scored:
    successes, failures = view.stats.decayed(m.ref, now)
    theta = rng.betavariate(successes + p.prior_successes, failures + p.prior_failures)
    return theta + parts[0], theta, parts, m, named


def _candidate(c: _Scored) -> ScoredCandidate:
    score, theta, (_, speed, ttfb, intelligence, penalty), m, named = c
    return ScoredCandidate(
        ref=m.ref,
        score=round(score, 6),
        theta=round(theta, 6),
        speed=round(speed, 6),
        ttfb=round(ttfb, 6),
        intelligence=round(intelligence, 6),
        penalty=round(penalty, 6),
        pool=m.pool,
        named=named,
    )
