"""Replay: rebuild the view each recorded decision was made on, decide again with the recorded seed, and
compare. Under the same config every decision must reproduce; under another config (a what-if) the
differences are what that policy change would have done.

One pass over the log: decisions are sorted by the view position they recorded (`view_seq`), and each is
evaluated when the fold reaches that position, so the cost is one fold of the log plus one `decide` each.

Across configuration changes: a gateway builds its view from its configuration at start and folds the whole
log into it, from seq 0, whatever configuration the older events were written under. It records that
configuration (`ConfigApplied`) when it changed, so each decision was made under the last one recorded
before it. `by_config` groups the decisions so; each group is replayed on a view built from its
configuration and folded from seq 0, one pass per distinct configuration.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from typing import NamedTuple

from events.config_applied import CONFIG_TAG, recorded_configs
from events.decide import Decision, UnknownModel, decide
from events.store import Entry, LogStore
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
_DECISIONS_AND_CONFIGS = _DECISIONS | {CONFIG_TAG}
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


def select_with_configs(
    store: LogStore,
    *,
    request_id: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    batch: int = 5000,
) -> tuple[Targets, list[Entry]]:
    """What `select_decisions` selects, and the `ConfigApplied` records that may be in force for them (every
    one before the last selected decision). From the start of the log this is the same single pass."""
    if request_id is not None or (from_seq or 1) > 1:
        # (The configs before the range cost one more pass over the log, reading only their type.)
        some = select_decisions(store, request_id=request_id, from_seq=from_seq, to_seq=to_seq, batch=batch)
        return some, recorded_configs(store, upto=some[-1][0]) if some else []
    targets: Targets = []
    configs: list[Entry] = []
    seq = 0
    while True:
        entries = store.read_after(seq, batch, _DECISIONS_AND_CONFIGS)
        for s, e in entries:
            if to_seq is not None and s > to_seq:
                return targets, configs
            if isinstance(e, RouteDecided):
                targets.append((s, e))
            else:
                configs.append((s, e))
        if not entries:
            return targets, configs
        seq = entries[-1][0]


def by_config(targets: Targets, configs: list[Entry]) -> list[tuple[ConfigApplied | None, Targets]]:
    """The decisions (in log order) grouped by the configuration in force when each was made: the last
    `ConfigApplied` before it, None before any (an older log). One group per distinct configuration (by
    hash), in order of first use; a configuration that came back (A, B, A) is one group."""
    seqs = [s for s, _ in targets]
    groups: dict[str | None, tuple[ConfigApplied | None, Targets]] = {}
    bounds: list[tuple[int, ConfigApplied | None]] = [(0, None)]
    bounds += [(s, e) for s, e in configs if isinstance(e, ConfigApplied)]
    for i, (begin, config) in enumerate(bounds):
        lo = bisect.bisect_right(seqs, begin)
        hi = bisect.bisect_right(seqs, bounds[i + 1][0]) if i + 1 < len(bounds) else len(seqs)
        if lo < hi:
            key = None if config is None else config.hash
            groups.setdefault(key, (config, []))[1].extend(targets[lo:hi])
    return list(groups.values())


def replay(
    store: LogStore,
    view: RoutingView,
    targets: list[tuple[int, RouteDecided]],
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 5000,
) -> Iterator[Replayed]:
    """Yield the replay of each target, in order of the view position it was decided on. `view` must be
    fresh (nothing folded)."""
    pending = sorted(targets, key=lambda t: replay_order(*t))
    if not pending:
        return
    last_needed = pending[-1][1].view_seq
    i, seq = 0, 0
    while i < len(pending):
        # Only what the view folds: the decisions, requests and completions are most of the log's bytes.
        entries = store.read_after(seq, batch, RoutingView.FOLDED_TAGS) if seq < last_needed else []
        if not entries:
            while i < len(pending):  # every remaining decision saw all of the log we have
                yield _evaluate(view, *pending[i])
                i += 1
            return
        seqs = [s for s, _ in entries]
        done = 0
        # Fold in slices up to each decision's view position (a tight loop), evaluate it there.
        while i < len(pending) and pending[i][1].view_seq < seqs[-1]:
            upto = bisect.bisect_right(seqs, pending[i][1].view_seq, lo=done)
            view.apply_all(entries[done:upto])
            done = upto
            yield _evaluate(view, *pending[i])
            i += 1
        view.apply_all(entries[done:])
        seq = seqs[-1]
        if progress is not None:
            progress(seq, last_needed)


def replay_order(seq: int, recorded: RouteDecided) -> tuple[int, float, int]:
    """The order the live actor decided in: by view position, then time (request tasks may append their
    decisions in another order than they decided them)."""
    return (recorded.view_seq, recorded.now, seq)


def _evaluate(view: RoutingView, seq: int, recorded: RouteDecided) -> Replayed:
    try:
        decision = decide(view, recorded.input, recorded.now, random.Random(recorded.seed))
    except UnknownModel:
        return Replayed(seq, recorded, None, False, unknown_model=True)
    chosen = (decision.chosen_ref, decision.chosen_key)
    same_ranking = decision.candidate_refs == [c.ref for c in recorded.candidates]
    matches = chosen == (recorded.chosen_ref, recorded.chosen_key) and same_ranking
    return Replayed(seq, recorded, decision, matches, chosen)
