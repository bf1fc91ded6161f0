"""The routing view: every projection `decide` reads, folded from the log in one place and in one order.

`seq` is the last event folded; a decision records it, so a replay can rebuild exactly the view the live
process decided on (events committed later, even if appended before the decision, are not in it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from events.bound_order import BoundOrder
from events.catalog import Catalog, CatalogModel, CatalogState
from events.cooldowns import Cooldowns, CooldownsState
from events.key_health import KeyHealth, KeyHealthState
from events.model_stats import Stats, StatsState
from events.policy import RoutingPolicy
from events.quotas import Quotas, QuotasState
from events.sessions import InFlight, InFlightState, Sessions, SessionsState
from events.store import Entry, LogStore
from events.types import EVENT_TYPES, AttemptSucceeded, Event, Excluded, ExclusionCode, event_tag


@dataclass(frozen=True)
class SessionPolicy:
    """Config that shapes session routing: per-platform protection, single-flight, pin lifetime."""

    protection: Mapping[str, str] = field(default_factory=dict)  # platform -> provider-ban | model-skip | off
    single_flight: frozenset[str] = frozenset()
    pin_ttl_s: float = 1800.0
    max_sessions: int = 10_000
    provider_ban_window_s: float = 180.0

    def level(self, platform: str) -> str:
        return self.protection.get(platform, "model-skip")


@dataclass(frozen=True)
class ChainIndex:
    """A mode's chain with the filters that change only with the catalog or the set of keyed platforms."""

    models: tuple[CatalogModel, ...]  # enabled, in the chain, in the mode's pools, platform has a key
    pool_excluded: tuple[Excluded, ...]
    no_key: int
    min_context: int  # the smallest context window among `models` (a request below it fits them all)


POOL_REASON = "pool: smart models serve auto-smart or requests that name them"


def split_pool(excluded: Iterable[Excluded]) -> tuple[list[str], list[Excluded]]:
    """(refs the mode's pool left out, every other exclusion): the pool's share one reason."""
    pool: list[str] = []
    others: list[Excluded] = []
    for e in excluded:
        # (Records older than exclusion codes have only the reason.)
        if e.code == ExclusionCode.POOL or (not e.code and e.reason == POOL_REASON):
            pool.append(e.ref)
        else:
            others.append(e)
    return pool, others


# The view's projections in the order each event is folded into them: cooldowns after health (it reads the
# keys' state including the same event).
FOLD_ORDER = (Catalog, KeyHealth, Cooldowns, Quotas, Stats, Sessions, InFlight)


class ViewState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Every projection's state at `seq` (events/snapshot.py stores it); caches are left out, they refill."""

    seq: int
    catalog: CatalogState
    health: KeyHealthState
    cooldowns: CooldownsState
    quotas: QuotasState
    stats: StatsState
    sessions: SessionsState
    in_flight: InFlightState


class RoutingView:
    # Events some projection of the view folds: a replay reads only these, which skips the bulk of the log
    # (decision records are most of its bytes). A rebuild leaves the view at the log's last position, where
    # the log writer goes on from: it reads everything, or only these (and what the projections folded
    # beside the view need: `folded_tags`) and then moves the position to the end itself.
    FOLDED_TAGS: frozenset[str] = frozenset(
        event_tag(t) for t in EVENT_TYPES if any(t in p.FOLDS for p in FOLD_ORDER)
    )

    def __init__(
        self,
        models: Iterable[CatalogModel],
        policy: RoutingPolicy,
        rolling_day_platforms: frozenset[str] = frozenset(),
        session_policy: SessionPolicy | None = None,
    ) -> None:
        self.policy = policy
        self.session_policy = session_policy or SessionPolicy()
        self.catalog = Catalog(models)
        self.health = KeyHealth(policy.rate_limit_cooldown_s, policy.key_forbidden_cooldown_s)
        self.quotas = Quotas(rolling_day_platforms)
        self.cooldowns = Cooldowns(policy, self.health)
        self.stats = Stats(policy.decay_days)
        self.sessions = Sessions(self.session_policy.pin_ttl_s, self.session_policy.max_sessions)
        self.in_flight = InFlight()
        self.seq = 0
        self._ranked_version = -1
        self._intelligence: dict[str, float] = {}
        # Score parts that change only with a model's own stats (or the catalog / fastest speed): cached, so
        # a decision over a hundred models does not recompute them.
        self.parts_cache: dict[str, tuple[float, float, float, float, float, float]] = {}
        self._parts_basis = -1
        self._chains: dict[str, ChainIndex] = {}
        self._chains_basis: tuple[int, int] = (-1, -1)
        self._orders: dict[str, tuple[Hashable, BoundOrder]] = {}
        projections = (
            self.catalog,
            self.health,
            self.cooldowns,
            self.quotas,
            self.stats,
            self.sessions,
            self.in_flight,
        )
        assert tuple(map(type, projections)) == FOLD_ORDER
        self._folds: dict[type[Event], tuple[Callable[[Event], None], ...]] = {
            t: tuple(p.apply for p in projections if t in p.FOLDS) for t in EVENT_TYPES
        }

    def apply(self, seq: int, event: Event) -> None:
        self.seq = seq
        for apply in self._folds[type(event)]:
            apply(event)
        if type(event) is AttemptSucceeded:
            ref = f"{event.platform}/{event.model}"
            self.parts_cache.pop(ref, None)
            for _, order in self._orders.values():
                order.touch(ref)

    def state(self) -> ViewState:
        """A copy of what the view has folded, sharing nothing mutable with it."""
        return ViewState(
            self.seq,
            self.catalog.state(),
            self.health.state(),
            self.cooldowns.state(),
            self.quotas.state(),
            self.stats.state(),
            self.sessions.state(),
            self.in_flight.state(),
        )

    def restore(self, state: ViewState) -> None:
        """Take over `state` (of a view built from the same configuration: events/snapshot.py checks it)."""
        self.catalog.restore(state.catalog)
        self.health.restore(state.health)
        self.cooldowns.restore(state.cooldowns)
        self.quotas.restore(state.quotas)
        self.stats.restore(state.stats)
        self.sessions.restore(state.sessions)
        self.in_flight.restore(state.in_flight)
        self.seq = state.seq
        # Nothing derived from what the view held before may survive (the versions they key on restart).
        self._ranked_version = self._parts_basis = -1
        self.parts_cache.clear()
        self._chains.clear()
        self._chains_basis = (-1, -1)
        self._orders.clear()

    def chain(self, mode: str) -> ChainIndex:
        basis = self.chains_basis
        if basis != self._chains_basis:
            self._chains.clear()
            self._chains_basis = basis
        index = self._chains.get(mode)
        if index is None:
            models, excluded, no_key = [], [], 0
            for m in self.catalog.models():
                if not (m.enabled and m.fallback) or m.task != "chat":  # the chain is chat's alone
                    continue
                if mode == "auto" and m.pool == "smart":
                    excluded.append(Excluded(ref=m.ref, reason=POOL_REASON, code=ExclusionCode.POOL))
                elif not self.health.has_keys(m.platform):
                    no_key += 1
                else:
                    models.append(m)
            windows = [m.context_window for m in models if m.context_window is not None]
            index = self._chains[mode] = ChainIndex(
                tuple(models), tuple(excluded), no_key, min(windows, default=2**62)
            )
        return index

    @property
    def chains_basis(self) -> tuple[int, int]:
        """Changes whenever `chain()` of any mode would."""
        return (self.catalog.version, self.health.platforms_version)

    def bound_order(self, mode: str, basis: Hashable) -> BoundOrder | None:
        """The mode's best-possible-score order (events/bound_order.py) if it was kept under `basis`."""
        kept = self._orders.get(mode)
        return kept[1] if kept is not None and kept[0] == basis else None

    def keep_bound_order(self, mode: str, order: BoundOrder, basis: Hashable) -> None:
        self._orders[mode] = (basis, order)

    def cached_parts(self) -> dict[str, tuple[float, float, float, float, float, float]]:
        basis = self.catalog.version
        if basis != self._parts_basis:
            self.parts_cache.clear()
            self._parts_basis = basis
        return self.parts_cache

    def apply_all(self, entries: Sequence[Entry]) -> None:
        for seq, event in entries:
            self.apply(seq, event)

    def intelligence(self) -> dict[str, float]:
        """Normalised rank per model ref in [0, 1]: 1 for the smartest enabled model, 0 for the least."""
        if self._ranked_version != self.catalog.version:
            models = self.catalog.models()
            ranks = [m.intelligence_rank for m in models if m.enabled] or [1]
            best, worst = min(ranks), max(ranks)
            self._intelligence = {
                m.ref: 1.0
                if worst == best
                else max(0.0, min(1.0, (worst - m.intelligence_rank) / (worst - best)))
                for m in models
            }
            self._ranked_version = self.catalog.version
        return self._intelligence


def folded_tags(*folds: frozenset[type[Event]]) -> frozenset[str]:
    """The type tags the view folds and those of other projections' `FOLDS`: what a rebuild into them
    needs to read."""
    return RoutingView.FOLDED_TAGS | frozenset(event_tag(t) for f in folds for t in f)


def rebuild(
    store: LogStore,
    view: RoutingView,
    upto: int | None = None,
    batch: int = 5000,
    also: Sequence[Callable[[Event], None]] = (),
    types: Collection[str] | None = None,
) -> int:
    """Fold the log (after the view's position, up to seq `upto` inclusive) into `view`, and into each
    of `also` (other projections) in the same pass; returns how many events were read.

    With `types` (`folded_tags(...)` of everything folded), only those events are read and decoded,
    a fraction of the log's bytes (decision records are most of them); the view still ends at `upto`, the
    log's end when None, as if it had read every event: the others change no projection."""
    if types is not None and upto is None:
        upto = store.last_seq()
    seq, count = view.seq, 0
    while True:
        entries = store.read_after(seq, batch, types)
        if upto is not None:
            entries = [e for e in entries if e[0] <= upto]
        if not entries:
            break
        view.apply_all(entries)
        for apply in also:
            for _, event in entries:
                apply(event)
        seq = entries[-1][0]
        count += len(entries)
    if types is not None and upto is not None and upto > view.seq:
        view.seq = upto
    return count
