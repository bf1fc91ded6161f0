"""Replay: rebuild the view each recorded decision was made on, decide again with the recorded seed, and
compare. Under the same config every decision must reproduce; under another config (a what-if) the
differences are what that policy change would have done.

One pass over the log: decisions are taken in order of the view position they recorded (`view_seq`), and
each is evaluated when the fold reaches that position, so the cost is one fold of the log plus one `decide`
each. Decisions are read a page at a time alongside the fold and held only until it reaches them
(`replay_stream`): a replay of millions of them holds a window of them, not the log.

Across configuration changes: a gateway builds its view from its configuration at start and folds the whole
log into it, from seq 0, whatever configuration the older events were written under. It records that
configuration (`ConfigApplied`) when it changed, so each decision was made under the last one recorded
before it (`ConfigViews`). One pass over the log folds a view per configuration decisions were made under,
each built from its configuration, and replays every decision on its own.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import msgspec

from events.config_applied import view_of
from events.decide import Decision, UnknownModel, decide
from events.store import PAGE, Entry, LogStore, iter_after
from events.types import ConfigApplied, RouteDecided, event_tag
from events.view import RoutingView


class Replayed(NamedTuple):  # one per decision of a replay: a tuple is the cheapest record to build
    seq: int
    recorded: RouteDecided
    # The decision made again; None when the model the request named is unknown under this config, or when
    # it was not kept (a forked replay sends back only what changed: service/replay_runner.py).
    decision: Decision | None
    matches: bool
    recomputed: tuple[str | None, str | None] = (None, None)  # (model ref, key) chosen this time
    unknown_model: bool = False


_DECISIONS = frozenset({event_tag(RouteDecided)})
Targets = list[tuple[int, RouteDecided]]


def select_decisions(
    store: LogStore,
    *,
    request_id: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    batch: int = 5000,
) -> list[tuple[int, RouteDecided]]:
    if request_id is not None:
        return [(s, e) for s, e in store.read_request(request_id) if isinstance(e, RouteDecided)]
    out: list[tuple[int, RouteDecided]] = []
    seq = (from_seq or 1) - 1
    while True:
        entries = store.read_after(seq, batch, _DECISIONS)
        if not entries:
            return out
        for s, e in entries:
            if to_seq is not None and s > to_seq:
                return out
            if isinstance(e, RouteDecided):
                out.append((s, e))
        seq = entries[-1][0]


class ConfigViews:
    """The configurations decisions were made under, as the views to replay them on: for the decision at a
    seq, the last `ConfigApplied` before it (by hash: a configuration that came back, A, B, A, is one view),
    or `new_view` before any (an older log). Index 0 is `new_view`."""

    def __init__(self, configs: Sequence[Entry], new_view: Callable[[], RoutingView]) -> None:
        self._bounds = [s for s, _ in configs]
        self.keys: list[str | None] = [None]  # per index: the configuration's hash
        self.factories: list[Callable[[], RoutingView]] = [new_view]
        index: dict[str, int] = {}
        self._of_config = [0]  # per entry of `configs` (after "before any"): its index
        for _, config in configs:
            assert isinstance(config, ConfigApplied)
            if config.hash not in index:
                index[config.hash] = len(self.keys)
                self.keys.append(config.hash)
                self.factories.append(functools.partial(view_of, config))
            self._of_config.append(index[config.hash])

    def which(self, seq: int) -> int:
        """The index of the view the decision at `seq` replays on."""
        return self._of_config[bisect.bisect_left(self._bounds, seq)]


class DecisionScan(NamedTuple):
    """What a replay must know before it starts streaming decisions (events/replay.py `replay_stream`)."""

    decisions: int
    lag: int  # the most any decision's seq exceeds its view position: how far ahead to read decisions
    last_needed: int  # the highest view position a decision was made at: the fold stops there
    per_view: dict[int, int]  # decisions by the index of the view they replay on


class _Position(msgspec.Struct, gc=False):  # the two fields of a decision record a scan reads
    view_seq: int


_position = msgspec.json.Decoder(_Position)


def scan_decisions(
    store: LogStore,
    *,
    from_seq: int | None = None,
    to_seq: int | None = None,
    which: Callable[[int], int] = lambda _seq: 0,
    batch: int = PAGE,
) -> DecisionScan:
    """One pass over the decision records of a range, decoding only their view position and holding none."""
    count, lag, last, per_view = 0, 0, 0, Counter[int]()  # lag 0 at least: see replay_stream
    seq = (from_seq or 1) - 1
    while rows := store.read_raw_after(seq, batch, _DECISIONS, to_seq):
        for s, data in rows:
            view_seq = _position.decode(data).view_seq
            count += 1
            lag, last = max(lag, s - view_seq), max(last, view_seq)
            per_view[which(s)] += 1
        seq = rows[-1][0]
    return DecisionScan(count, lag, last, dict(per_view))


def scan_targets(
    targets: Sequence[tuple[int, RouteDecided]], which: Callable[[int], int] = lambda _s: 0
) -> DecisionScan:
    """What `scan_decisions` says of a log range, for decisions already in hand."""
    per_view = Counter(which(s) for s, _ in targets)
    lag = max([0, *(s - d.view_seq for s, d in targets)])
    return DecisionScan(len(targets), lag, max((d.view_seq for _, d in targets), default=0), dict(per_view))


def iter_decisions(
    store: LogStore, *, from_seq: int | None = None, to_seq: int | None = None
) -> Iterator[tuple[int, RouteDecided]]:
    """The decision records of a range in log order, a page at a time."""
    for s, e in iter_after(store, (from_seq or 1) - 1, _DECISIONS, to_seq):
        if isinstance(e, RouteDecided):
            yield s, e


def replay(
    store: LogStore,
    view: RoutingView,
    targets: list[tuple[int, RouteDecided]],
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = PAGE,
) -> Iterator[Replayed]:
    """Yield the replay of each target (any order), in order of the view position it was decided on.
    `view` must be fresh (nothing folded)."""
    ordered = sorted(targets, key=lambda t: t[0])
    scan = scan_targets(ordered)
    yield from replay_stream(
        store,
        [view],
        iter(ordered),
        lag=scan.lag,
        last_needed=scan.last_needed,
        progress=progress,
        batch=batch,
    )


def replay_stream(
    store: LogStore,
    views: Sequence[RoutingView],
    decisions: Iterator[tuple[int, RouteDecided]],
    *,
    lag: int,
    last_needed: int,
    which: Callable[[int], int] = lambda _seq: 0,
    progress: Callable[[int, int], None] | None = None,
    batch: int = PAGE,
) -> Iterator[Replayed]:
    """Yield the replay of each decision, in log order in `decisions`, in order of the view position it was
    decided on, each on `views[which(seq)]` (every view is fresh and folds the same log, in one pass).

    A decision is appended after it was made, at most `lag` seqs after its view position (`scan_decisions`
    measures it), so once the decisions up to seq P + lag are read, every one made on a view before P is in
    hand: decisions are held only for that window, never the whole log's."""
    window: list[tuple[tuple[int, float, int], RouteDecided]] = []  # a heap in replay order
    upcoming = next(decisions, None)

    def read_upto(limit: float) -> None:
        nonlocal upcoming
        while upcoming is not None and upcoming[0] <= limit:
            heapq.heappush(window, (replay_order(*upcoming), upcoming[1]))
            upcoming = next(decisions, None)

    def evaluate() -> Replayed:
        (_, _, seq), recorded = heapq.heappop(window)
        return re_decide(views[which(seq)], seq, recorded)

    seq = 0
    while seq < last_needed:
        # Only what the view folds: the decisions, requests and completions are most of the log's bytes.
        entries = store.read_after(seq, batch, RoutingView.FOLDED_TAGS)
        if not entries:
            break
        seqs = [s for s, _ in entries]
        read_upto(seqs[-1] + lag)
        done = 0
        # Fold in slices up to each decision's view position (a tight loop), evaluate it there.
        while window and window[0][0][0] < seqs[-1]:
            upto = bisect.bisect_right(seqs, window[0][0][0], lo=done)
            for view in views:
                view.apply_all(entries[done:upto])
            done = upto
            yield evaluate()
        for view in views:
            view.apply_all(entries[done:])
        seq = seqs[-1]
        if progress is not None:
            progress(seq, last_needed)
    # Every decision left saw all of the log folded so far; in replay order still, as the window allows.
    while upcoming is not None:
        read_upto(upcoming[0])
        while window and (upcoming is None or window[0][0][0] + lag < upcoming[0]):
            yield evaluate()
    while window:
        yield evaluate()


def replay_order(seq: int, recorded: RouteDecided) -> tuple[int, float, int]:
    """The order the live actor decided in: by view position, then time (request tasks may append their
    decisions in another order than they decided them)."""
    return (recorded.view_seq, recorded.now, seq)


def re_decide(view: RoutingView, seq: int, recorded: RouteDecided) -> Replayed:
    """The decision recorded at `seq` made again on `view` (folded up to its view position), and whether it
    reproduces: the same choice and the same ranking."""
    try:
        decision = decide(view, recorded.input, recorded.now, random.Random(recorded.seed))
    except UnknownModel:
        return Replayed(seq, recorded, None, False, unknown_model=True)
    chosen = (decision.chosen_ref, decision.chosen_key)
    same_ranking = decision.candidate_refs == [c.ref for c in recorded.candidates]
    matches = chosen == (recorded.chosen_ref, recorded.chosen_key) and same_ranking
    return Replayed(seq, recorded, decision, matches, chosen)
