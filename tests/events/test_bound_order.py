"""The kept best-bound order (events/bound_order.py) and the walk in `decide` that tightens it.

The promise: keeping a loose order between decisions changes no decision. Every decision is exactly the one
the previous implementation made, which built a heap of the exact bounds of every chain model each time.
That implementation is copied below as the reference, and one view serves a long run of decisions under both,
with successes (moving models and the fastest speed), 429 penalties, catalog and key changes in between.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from builders import NO_LIMITS, model
from hypothesis import given, settings
from hypothesis import strategies as st

import events.bound_order as bound_order_module
from events.bound_order import SPEED_GRID, BoundOrder, Key, speed_grid
from events.catalog import CatalogModel
from events.decide import (
    PRIOR_TPS_AT_RANK_1,
    RECORDED_CANDIDATES,
    Decision,
    UnknownModel,
    _group,
    _model_exclusion,
    _Parts,
    _pick_key,
    _score,
    _Scored,
    _session_exclusion,
    _use_pin,
    decide,
    mode_and_models,
)
from events.policy import RoutingPolicy
from events.quotas import Limits
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    Excluded,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    KeyRemoved,
    ModelUpdated,
    RouteInput,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
)
from events.view import RoutingView, SessionPolicy

# -- speed_grid


@settings(deadline=None)  # no wall-clock limit on a shared CI machine
@given(base=st.floats(1.0, 1000.0), ratio=st.floats(1.0, 1e5))
def test_the_speed_grid_brackets_the_fastest_speed_between_consecutive_grid_points(
    base: float, ratio: float
) -> None:
    fastest = base * ratio
    floor, ceiling = speed_grid(fastest, base)
    assert base <= floor <= fastest < ceiling  # exactly, in floats: the loose keys rely on it
    k = round(math.log(floor / base) / math.log(SPEED_GRID))
    assert floor == base * SPEED_GRID**k  # on the grid: the same float a fresh computation gives
    assert ceiling == base * SPEED_GRID ** (k + 1)


def test_the_grid_floor_just_above_the_base_is_the_base() -> None:
    assert speed_grid(PRIOR_TPS_AT_RANK_1, PRIOR_TPS_AT_RANK_1)[0] == PRIOR_TPS_AT_RANK_1
    assert speed_grid(PRIOR_TPS_AT_RANK_1 * 1.0499, PRIOR_TPS_AT_RANK_1)[0] == PRIOR_TPS_AT_RANK_1


def test_the_grid_floor_steps_up_as_fastest_crosses_a_grid_point() -> None:
    base = PRIOR_TPS_AT_RANK_1
    floors = [speed_grid(base * 1.0001 * SPEED_GRID**k, base)[0] for k in range(60)]
    assert floors == [base * SPEED_GRID**k for k in range(60)]


def test_a_speed_exactly_on_the_grid_is_its_own_floor() -> None:
    base = PRIOR_TPS_AT_RANK_1
    assert [speed_grid(base * SPEED_GRID**k, base)[0] for k in range(400)] == [
        base * SPEED_GRID**k for k in range(400)
    ]


# -- BoundOrder


@dataclass(frozen=True)
class _Ref:
    ref: str


def _key(draw: Any, pos: int) -> Key:
    # Few distinct values, so ties (broken by position) are common.
    return (draw(st.integers(0, 1)), draw(st.sampled_from([-2.0, -1.5, -1.25, -1.0, -0.5])), pos)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 12))
def test_bound_order_update_keeps_sorted_equal_to_sorting_the_keys(data: st.DataObject, n: int) -> None:
    models = [_Ref(f"p/m{i}") for i in range(n)]
    order = BoundOrder(models, [_key(data.draw, i) for i in range(n)])  # type: ignore[arg-type]
    assert order.sorted == sorted(order.keys)
    for _ in range(data.draw(st.integers(0, 30))):
        pos = data.draw(st.integers(0, n - 1))
        key = order.keys[pos] if data.draw(st.booleans()) else _key(data.draw, pos)
        order.update(pos, key)
        assert order.keys[pos] == key
        assert order.sorted == sorted(order.keys)
        assert len(order.sorted) == n


def test_bound_order_touch_marks_positions_of_known_refs_only() -> None:
    models = [model("p", "a"), model("p", "b"), model("q", "a")]
    order = BoundOrder(models, [(0, -1.0, 0), (0, -1.0, 1), (1, -2.0, 2)])
    order.touch("p/b")
    order.touch("q/a")
    order.touch("p/b")
    order.touch("elsewhere/a")
    assert order.stale == {1, 2}


# -- The walk: exactly the decisions of the previous implementation


def reference_decide(view: RoutingView, req: RouteInput, now: float, rng: random.Random) -> Decision:
    """`decide` as it was before the kept order (git 5fb06fe), on today's helpers."""
    p = view.policy
    mode, named = mode_and_models(view, req.requested)
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
    session_rules = req.session is not None or bool(view.session_policy.single_flight)
    no_key = 0
    eligible: list[CatalogModel] = []
    chain_models: list[CatalogModel] = []
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
            continue
        if out is not None:
            excluded.append(out)
            continue
        eligible.append(m)
    if req.use_chain:
        chain = view.chain(mode)
        no_key += chain.no_key
        excluded.extend(e for e in chain.pool_excluded if e.ref not in seen)
        per_model = (
            bool(skip_models or skip_platforms)
            or req.min_context is not None
            or req.est_tokens > chain.min_context
            or view.cooldowns.any_cooling(now)
        )
        if not (per_model or session_rules or seen):
            chain_models = list(chain.models)
        for m in chain.models if not chain_models else ():
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
            chain_models.append(m)

    parts = _Parts(view, p, mode, now)
    scored: list[_Scored] = []
    chosen: CatalogModel | None = None
    chosen_key: str | None = None
    for m in eligible:
        scored.append(_score(view, p, m, parts.of(m), now, rng, named=True))
        if chosen is None:
            key, key_exclusions = _pick_key(view, m, req, tokens, now, rng)
            excluded.extend(key_exclusions)
            if key is not None:
                chosen, chosen_key = m, key
    if chosen is None and chain_models:
        chosen, chosen_key = reference_walk_chain(
            view, p, parts, chain_models, mode, req, tokens, now, rng, scored, excluded
        )
    named_first = [c for c in scored if c[4]]
    chain_sorted = sorted((c for c in scored if not c[4]), key=lambda c: (_group(c[3].pool, mode), -c[0]))
    return Decision(
        tuple([*named_first, *chain_sorted][:RECORDED_CANDIDATES]),
        tuple(excluded),
        chosen,
        chosen_key,
        len(eligible) + len(chain_models),
        no_key,
        pin_cleared=pin_cleared,
    )


def reference_walk_chain(
    view: RoutingView,
    p: RoutingPolicy,
    parts: _Parts,
    models: list[CatalogModel],
    mode: str,
    req: RouteInput,
    tokens: int,
    now: float,
    rng: random.Random,
    scored: list[_Scored],
    excluded: list[Excluded],
) -> tuple[CatalogModel | None, str | None]:
    """The previous walk: a heap of (group, -1 - exact fixed score, position) over every chain model."""
    first_pool = {"auto-fast": "fast", "auto-smart": "smart"}.get(mode)
    get, fill, which = parts.cache.get, parts.fill, 1 if parts.smart else 0
    weight, inv_max_tps = parts.speed_in_total, parts.inv_max_tps
    penalties = {ref: parts.per_point * points for ref, points in parts.points.items()}
    bounds = []
    for i, m in enumerate(models):
        base = get(m.ref) or fill(m)
        fixed = base[which] + weight * min(1.0, base[2] * inv_max_tps)
        if penalties:
            fixed -= penalties.get(m.ref, 0.0)
        bounds.append((0 if first_pool is None or m.pool == first_pool else 1, -1.0 - fixed, i))
    heapq.heapify(bounds)
    ready: list[tuple[int, float, int]] = []
    while bounds or ready:
        if ready and (not bounds or ready[0][:2] <= bounds[0][:2]):
            _, _, i = heapq.heappop(ready)
            key, key_exclusions = _pick_key(view, models[i], req, tokens, now, rng)
            excluded.extend(key_exclusions)
            if key is not None:
                return models[i], key
            continue
        group, _, i = heapq.heappop(bounds)
        m = models[i]
        cand = _score(view, p, m, parts.of(m), now, rng, named=False)
        scored.append(cand)
        heapq.heappush(ready, (group, -cand[0], i))
    return None, None


PLATFORMS = ("p0", "p1", "p2", "p3")
LIMITS = (NO_LIMITS, NO_LIMITS, Limits(rpm=3), Limits(tpm=30_000), Limits(rpd=25))
# Sampled speeds around the grid above the prior (400, 420, 441, 463.05, ...) and well below it.
SPEEDS = (5.0, 60.0, 300.0, 399.0, 405.0, 419.0, 421.0, 440.0, 442.0, 470.0, 600.0, 900.0, 2500.0)


def random_catalog(rng: random.Random) -> list[CatalogModel]:
    return [
        model(
            rng.choice(PLATFORMS),
            f"m{i}",
            pool=rng.choice(["fast", "balanced", "smart"]),
            fallback=rng.random() < 0.9,
            enabled=rng.random() < 0.9,
            context_window=rng.choice([None, 8_000, 32_000, 128_000]),
            intelligence=rng.randint(1, 4),  # few ranks: equal bounds, ordered by position
            speed=rng.randint(1, 4),
            limits=rng.choice(LIMITS),
        )
        for i in range(rng.randint(1, 14))
    ]


@dataclass
class Counts:
    decisions: int = 0
    chosen: int = 0
    unknown: int = 0
    penalised: int = 0  # decisions made while some model had penalty points
    floors: set[float] = field(default_factory=set)  # grid floors of the fastest speed decisions saw


class Driver:
    """A live view: random events folded one at a time, with decisions in between, each made twice (the
    current `decide` and the reference) on the same view at the same time with the same seed."""

    def __init__(self, rng: random.Random, policy: RoutingPolicy) -> None:
        self.rng = rng
        self.catalog = random_catalog(rng)
        protected = rng.choice(PLATFORMS)
        sessions = SessionPolicy(
            protection={protected: "provider-ban"},
            single_flight=frozenset({protected}) if rng.random() < 0.5 else frozenset(),
        )
        self.view = RoutingView(self.catalog, policy, frozenset({"p2"}), sessions)
        self.now = 1_800_000_000.0
        self.keys: dict[str, list[str]] = {p: [] for p in PLATFORMS}
        self.open: list[AttemptStarted] = []
        self.requests = 0
        self.counts = Counts()
        for p in PLATFORMS:
            for j in range(rng.randint(0, 3)):
                self.add_key(p, f"{p}.k{j}")

    def fold(self, event: Event) -> None:
        self.view.apply(self.view.seq + 1, event)

    def add_key(self, platform: str, key_id: str) -> None:
        self.fold(KeyAdded(ts=self.now, key_id=key_id, platform=platform, label=key_id, source="config"))
        if key_id not in self.keys[platform]:
            self.keys[platform].append(key_id)

    def attempt(self, m: CatalogModel, key_id: str) -> dict[str, Any]:
        self.requests += 1
        return {
            "ts": self.now,
            "request_id": f"r{self.requests}",
            "attempt": 1,
            "platform": m.platform,
            "model": m.id,
            "key_id": key_id,
        }

    def success(self, m: CatalogModel, key_id: str, tps: float, base: dict[str, Any] | None = None) -> None:
        rng = self.rng
        ttfb = rng.choice([80.0, 400.0, 1500.0, 4000.0, 12_000.0])
        tokens = rng.randint(50, 800)
        self.fold(
            AttemptSucceeded(
                **(base or self.attempt(m, key_id)),
                latency_ms=ttfb + 1000.0 * tokens / tps,
                ttfb_ms=ttfb,
                input_tokens=rng.randint(1, 3000),
                output_tokens=tokens,
                exhausted_for_s=30.0 if rng.random() < 0.03 else None,
            )
        )

    def step(self) -> None:
        rng, view = self.rng, self.view
        self.now += rng.choice([0.0, 0.3, 2.0, 10.0, 45.0, 130.0, 700.0])
        m = rng.choice(self.catalog)
        keys = self.keys[m.platform]
        key_id = rng.choice(keys) if keys else f"{m.platform}.gone"
        roll = rng.random()
        if roll < 0.2:
            self.success(m, key_id, rng.choice(SPEEDS))
        elif roll < 0.3 and view.stats.max_tps is not None:
            # The fastest model a little faster or slower: across a grid point or within one.
            fastest = next(
                x for x in self.catalog if (s := view.stats.of(x.ref)) and s.tps == view.stats.max_tps
            )
            factor = rng.choice([0.5, 0.97, 0.99, 1.01, 1.03, 1.06, 1.3])
            self.success(
                fastest, rng.choice(self.keys[fastest.platform] or ["x"]), view.stats.max_tps * factor
            )
        elif roll < 0.45:
            # 429s: the key cools; once every key of the model is cooling, the model gets penalty points.
            self.fold(
                AttemptFailed(
                    **self.attempt(m, key_id),
                    kind="rate_limited",
                    retry_after_s=rng.choice([None, 5.0, 30.0, 200.0]),
                )
            )
        elif roll < 0.52:
            kind = rng.choice(["server_error", "connect", "stall_mid", "model_missing", "empty", "auth"])
            self.fold(AttemptFailed(**self.attempt(m, key_id), kind=kind))
        elif roll < 0.62:
            started = AttemptStarted(
                **self.attempt(m, key_id),
                reserved_tokens=rng.choice([0, 1000, 20_000]),
                session=rng.choice([None, "s1", "s2"]),
            )
            self.fold(started)
            self.open.append(started)
        elif roll < 0.7 and self.open:
            started = self.open.pop(rng.randrange(len(self.open)))
            base = {f: getattr(started, f) for f in ("request_id", "attempt", "platform", "model", "key_id")}
            base["ts"] = self.now
            if rng.random() < 0.6:
                done = next(x for x in self.catalog if x.ref == f"{started.platform}/{started.model}")
                self.success(done, started.key_id, rng.choice(SPEEDS), base)
            else:
                self.fold(AttemptFailed(**base, kind="server_error"))
        elif roll < 0.77:
            self.fold(
                ModelUpdated(
                    ts=self.now,
                    platform=m.platform,
                    model=m.id,
                    enabled=rng.choice([None, True, True, False]),
                    fallback=rng.choice([None, True, False]),
                    pool=rng.choice([None, "fast", "smart", "balanced"]),
                )
            )
        elif roll < 0.85:
            platform = rng.choice(PLATFORMS)
            known = self.keys[platform]
            choice = rng.random()
            if choice < 0.35 or not known:
                self.add_key(platform, f"{platform}.k{rng.randint(0, 4)}")
            elif choice < 0.6:
                gone = known.pop(rng.randrange(len(known)))
                self.fold(KeyRemoved(ts=self.now, key_id=gone))
            else:
                k = rng.choice(known)
                self.fold(
                    rng.choice(
                        [
                            KeyInvalidated(ts=self.now, key_id=k, status=401),
                            KeyDisabled(ts=self.now, key_id=k),
                            KeyEnabled(ts=self.now, key_id=k),
                        ]
                    )
                )
        elif roll < 0.92:
            session = rng.choice(["s1", "s2"])
            self.fold(
                rng.choice(
                    [
                        SessionPinned(
                            ts=self.now, session=session, platform=m.platform, model=m.id, key_id=key_id
                        ),
                        SessionBanned(ts=self.now, session=session, platform=m.platform, reason="stall"),
                        SessionPinCleared(ts=self.now, session=session, reason="cooling"),
                    ]
                )
            )
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            self.decide_both()

    def route(self) -> RouteInput:
        rng = self.rng
        mode = rng.choice(["auto", "auto-fast", "auto-smart"])
        refs = [m.ref for m in self.catalog]
        roll = rng.random()
        if roll < 0.65:
            requested: tuple[str, ...] = (mode,)
        elif roll < 0.85:
            requested = (mode, rng.choice(refs))
        else:
            requested = tuple(rng.sample(refs, min(len(refs), rng.randint(1, 2))))
            mode = "auto"
        all_keys = [(k, m.ref) for m in self.catalog for k in self.keys[m.platform]]
        return RouteInput(
            mode=mode,
            requested=requested,
            use_chain=rng.random() < 0.9,
            est_tokens=rng.choice([10, 10, 5_000, 50_000]),
            reserve_tokens=rng.choice([0, 1000]),
            tried=tuple(rng.sample(all_keys, min(len(all_keys), rng.choice([0, 0, 1, 3])))),
            skip_models=tuple(
                (r, "404") for r in rng.sample(refs, min(len(refs), rng.choice([0, 0, 0, 1, 2])))
            ),
            skip_platforms=(("p1", "stall"),) if rng.random() < 0.1 else (),
            min_context=rng.choice([None, None, None, 8_000, 32_000]),
            session=rng.choice([None, None, "s1", "s2"]),
            use_pin=rng.random() < 0.5,
        )

    def decide_both(self) -> None:
        view, req = self.view, self.route()
        seed = self.rng.getrandbits(32)
        self.counts.decisions += 1
        if view.cooldowns.penalties(self.now):
            self.counts.penalised += 1
        self.counts.floors.add(
            speed_grid(max(PRIOR_TPS_AT_RANK_1, view.stats.max_tps or 0.0), PRIOR_TPS_AT_RANK_1)[0]
        )
        # Either may go first: both fill the view's cached score parts, with the same values.
        calls = [reference_decide, decide] if self.rng.random() < 0.5 else [decide, reference_decide]
        outcomes = {fn: _decide_or_unknown(fn, view, req, self.now, seed) for fn in calls}
        expected, got = outcomes[reference_decide], outcomes[decide]
        if expected is None or got is None:
            assert expected is got is None  # both found a named model unknown
            self.counts.unknown += 1
            return
        assert (got.chosen_ref, got.chosen_key, got.candidate_refs) == (
            expected.chosen_ref,
            expected.chosen_key,
            expected.candidate_refs,
        ), (req, self.now, seed)
        assert got == expected  # scores, exclusions and counts alike
        self.counts.chosen += got.chosen is not None


def _decide_or_unknown(
    fn: Callable[[RoutingView, RouteInput, float, random.Random], Decision],
    view: RoutingView,
    req: RouteInput,
    now: float,
    seed: int,
) -> Decision | None:
    try:
        return fn(view, req, now, random.Random(seed))
    except UnknownModel:
        return None


POLICIES = (
    RoutingPolicy(),
    RoutingPolicy(penalty_weight=0.5, penalty_per_429=4.0),  # penalties large enough to reorder models
    RoutingPolicy(speed_weight=1.5, smart_speed=0.9),  # the speed term dominates: the grid matters
    RoutingPolicy(speed_weight=0.0, penalty_weight=0.0),
)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 120), policy=st.sampled_from(POLICIES))
def test_decisions_on_a_kept_order_are_those_of_a_heap_over_every_model(
    seed: int, steps: int, policy: RoutingPolicy
) -> None:
    driver = Driver(random.Random(seed), policy)
    for _ in range(steps):
        driver.step()


def test_the_driver_exercises_the_kept_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property above is only as good as its runs: they must move kept keys, cross grid points of the
    fastest speed, decide under penalties, and choose something most of the time."""
    moved = 0
    update = BoundOrder.update

    def counting(self: BoundOrder, pos: int, key: Key) -> None:
        nonlocal moved
        moved += key != self.keys[pos]
        update(self, pos, key)

    monkeypatch.setattr(bound_order_module.BoundOrder, "update", counting)
    totals = Counts()
    for seed in range(6):
        driver = Driver(random.Random(seed), POLICIES[seed % len(POLICIES)])
        for _ in range(150):
            driver.step()
        c = driver.counts
        totals.decisions += c.decisions
        totals.chosen += c.chosen
        totals.unknown += c.unknown
        totals.penalised += c.penalised
        totals.floors |= c.floors
    assert totals.decisions > 500
    assert totals.chosen > totals.decisions // 3
    assert totals.unknown > 0
    assert totals.penalised > 20
    assert moved > 50
    assert len(totals.floors) >= 5


def test_the_fastest_slowing_below_its_grid_point_rebuilds_the_kept_order() -> None:
    """Keys kept under a higher grid floor would be below the exact bounds once the fastest model slows:
    here b would be visited before a (b's exact bound is between a's stale key and a's exact bound)."""
    f, a, b = (
        model("p", "f", intelligence=3),
        model("p", "a", intelligence=3),
        model("p", "b", intelligence=1),
    )
    view = RoutingView([f, a, b], RoutingPolicy(speed_weight=1.5, intelligence_weight=1.39))
    view.apply(1, KeyAdded(ts=0.0, key_id="k", platform="p", label="k", source="env"))

    def success(m: CatalogModel, tps: float) -> None:
        view.apply(
            view.seq + 1,
            AttemptSucceeded(
                ts=0.0,
                platform=m.platform,
                model=m.id,
                key_id="k",
                attempt=1,
                latency_ms=100.0 + 1000.0 * 100 / tps,
                ttfb_ms=100.0,
                input_tokens=1,
                output_tokens=100,
            ),
        )

    for m, tps in ((f, 450.0), (a, 425.0), (b, 20.0)):
        success(m, tps)
    req = RouteInput(mode="auto", requested=("auto",))
    assert _floor(view) == PRIOR_TPS_AT_RANK_1 * SPEED_GRID**2  # 441
    assert decide(view, req, 1.0, random.Random(0)) == reference_decide(view, req, 1.0, random.Random(0))
    success(f, 350.0)  # EWMA: 450 -> 430, below 441
    assert view.stats.max_tps == pytest.approx(430.0)
    assert _floor(view) == PRIOR_TPS_AT_RANK_1 * SPEED_GRID
    for seed in range(5):
        assert decide(view, req, 1.0, random.Random(seed)) == reference_decide(
            view, req, 1.0, random.Random(seed)
        )


def test_loose_keys_are_never_above_exact_ones_in_sorted_order() -> None:
    """What the walk relies on, checked directly: each kept key is at most the model's exact bound key."""
    view = RoutingView(
        [model("p0", f"m{i}", pool=("fast", "balanced", "smart")[i % 3], speed=1 + i % 4) for i in range(9)],
        RoutingPolicy(penalty_weight=0.5),
    )
    now = 1_800_000_000.0
    view.apply(1, KeyAdded(ts=now, key_id="k", platform="p0", label="k", source="config"))
    seq = 1
    rng = random.Random(3)
    for mode in ("auto", "auto-fast", "auto-smart"):
        for _ in range(30):
            seq += 1
            m = rng.choice(view.catalog.models())
            tokens = rng.randint(50, 800)
            view.apply(
                seq,
                AttemptSucceeded(
                    ts=now,
                    platform=m.platform,
                    model=m.id,
                    key_id="k",
                    attempt=1,
                    latency_ms=100.0 + 1000.0 * tokens / rng.choice(SPEEDS),
                    ttfb_ms=100.0,
                    input_tokens=1,
                    output_tokens=tokens,
                ),
            )
            decide(view, RouteInput(mode=mode, requested=(mode,)), now, random.Random(seq))
            order = view.bound_order(mode, (view.chains_basis, _grid(view)))
            assert order is not None
            parts = _Parts(view, view.policy, mode, now)
            chain = view.chain(mode)
            assert not order.stale  # the decision brought every touched key up to date
            for pos, m in enumerate(chain.models):
                assert order.keys[pos] <= (_group(m.pool, mode), -1.0 - parts.of(m)[0], pos)
            assert order.sorted == sorted(order.keys)


def _grid(view: RoutingView) -> tuple[float, float]:
    return speed_grid(max(PRIOR_TPS_AT_RANK_1, view.stats.max_tps or 0.0), PRIOR_TPS_AT_RANK_1)


def _floor(view: RoutingView) -> float:
    return _grid(view)[0]


# -- Negative speed and penalty weights (the config allows them): the loose keys widen the other way


def _two_platform_view(policy: RoutingPolicy, *models: CatalogModel) -> RoutingView:
    view = RoutingView(models, policy)
    for platform in ("p", "q"):
        view.apply(
            view.seq + 1, KeyAdded(ts=0.0, key_id=f"k{platform}", platform=platform, label="k", source="env")
        )
    return view


def test_a_negative_penalty_weight_still_chooses_the_best_score() -> None:
    a, c, b = (
        model("p", "a", intelligence=1),
        model("p", "c", intelligence=15),
        model("q", "b", intelligence=30),
    )
    view = _two_platform_view(RoutingPolicy(penalty_weight=-1.0, intelligence_weight=3.0), a, c, b)
    for _ in range(3):  # b's only key 429s: about 9 penalty points, each now worth +1
        view.apply(
            view.seq + 1,
            AttemptFailed(
                ts=0.0,
                platform="q",
                model="b",
                key_id="kq",
                attempt=1,
                kind="rate_limited",
                retry_after_s=1.0,
            ),
        )
    req = RouteInput(mode="auto", requested=("auto",))
    assert view.cooldowns.penalties(10.0)["q/b"] > 8.0
    expected = reference_decide(view, req, 10.0, random.Random(0))
    assert expected.chosen_ref == "q/b"  # theta + about 9 beats anything a or c can score (at most 1 + 3.3)
    assert decide(view, req, 10.0, random.Random(0)) == expected


def test_a_negative_speed_weight_visits_models_in_exact_bound_order() -> None:
    z, y = model("p", "z", intelligence=1), model("q", "y", intelligence=2)
    view = _two_platform_view(RoutingPolicy(speed_weight=-1.0, intelligence_weight=0.953), z, y)
    for m, key_id, tps in ((z, "kp", 430), (y, "kq", 20)):  # z the fastest at 430 tok/s: grid floor 420
        view.apply(
            view.seq + 1,
            AttemptSucceeded(
                ts=0.0,
                platform=m.platform,
                model=m.id,
                key_id=key_id,
                attempt=1,
                latency_ms=1100.0,
                ttfb_ms=100.0,
                input_tokens=1,
                output_tokens=tps,
            ),
        )
    req = RouteInput(mode="auto", requested=("auto",))
    # Exact fixed parts: y 0.25 - 20/430 = 0.2035 > z 0.25 + 0.953 - 1 = 0.203 > y's loose 0.25 - 20/420.
    assert decide(view, req, 10.0, random.Random(0)) == reference_decide(view, req, 10.0, random.Random(0))
