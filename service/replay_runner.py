"""`switchboard replay` over the SQLite log, on two cores when the log is long.

Replaying a range of the log is independent of replaying another: each needs only the view folded up to its
decisions. So a long replay forks once: the child re-decides the decisions recorded in the first part of the
log, the parent folds through that part (folding is cheap next to deciding) and re-decides the rest, and
the child sends back how many it replayed and, for the ones that differ, what it chose instead (the parent
reads their records itself: a what-if may change most decisions). The split is where both finish together:
the parent folds the child's part too, so the child takes a little more than half of the decisions.

No database connection is open across the fork (SQLite forbids carrying one into a child): the caller's
store is not used, each process opens its own. The child stops if the parent goes away. Forking is skipped
where it is unsafe or does not pay: anywhere but Linux (macOS does not support fork without exec, Windows
has no fork), other threads running (a fork copies only the calling one), a range shorter than
PARALLEL_MIN_EVENTS, or when every result is wanted (`--explain` prints them all).

Which configuration each decision is replayed under: with `config_from_log`, the one the gateway recorded
(`ConfigApplied`) before making it (events/replay.py `by_config`; `new_view` only for decisions older than
any record); without, `new_view` for every decision (a what-if, or a log of the caller's own making).
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.config_applied import view_of
from events.replay import Replayed, by_config, replay, replay_order, select_decisions, select_with_configs
from events.sqlite_store import SqliteStore
from events.types import RouteDecided
from events.view import RoutingView

PARALLEL_MIN_EVENTS = 20_000  # below this a fork (~10 ms) is a large share of the replay
# The child's share of the log's sequence range: both finish together (measured by scripts/bench_routing.py
# on a 100k-event log: 0.5 -> 0.84 s, 0.55 -> 0.78 s, 0.6 -> 0.74 s, 0.65 -> 0.81 s).
CHILD_SHARE = 0.6


@dataclass(frozen=True)
class ReplayRun:
    total: int  # decisions replayed
    results: list[Replayed]  # every result (keep_all) or only those that differ, in replay order
    events: int  # the log position the last decision was made at: how much of the log was folded
    processes: int
    configs: int = 1  # distinct configurations the decisions were replayed under
    unrecorded: int = 0  # with config_from_log: decisions older than any recorded configuration


Targets = list[tuple[int, RouteDecided]]
# Decisions replayed on one kind of view: its factory, the decisions, and the configuration's hash (None:
# `new_view`, the caller's).
Group = tuple[Callable[[], RoutingView], Targets, str | None]


@dataclass(frozen=True)
class _Part:  # what one process replayed
    total: int
    results: list[Replayed]
    events: int
    configs: frozenset[str | None]
    unrecorded: int


def run_replay(
    path: Path,
    new_view: Callable[[], RoutingView],
    *,
    request_id: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    keep_all: bool = False,
    progress: Callable[[int, int], None] | None = None,
    parallel: bool | None = None,
    config_from_log: bool = False,
) -> ReplayRun:
    """Replay the decisions selected like `select_decisions` does. `parallel`: None decides by itself, True
    forks whenever the selection is a log range, only the differences are wanted and `os.fork` exists.
    `config_from_log`: each decision under the configuration recorded when it was made (see above)."""
    store = SqliteStore(path)
    try:
        last = store.last_seq()
    finally:
        store.close()
    # Forking splits by log range: a selection by request, or every result kept, stays in one process.
    splittable = request_id is None and not keep_all
    start, end = from_seq or 1, last if to_seq is None else min(to_seq, last)
    if parallel is None:
        parallel = (
            sys.platform.startswith("linux")
            and threading.active_count() == 1
            and end - start >= PARALLEL_MIN_EVENTS
        )
    if not (parallel and splittable and end > start and hasattr(os, "fork")):
        selection = _Selection(new_view, config_from_log, request_id, from_seq, to_seq)
        return _serial(path, selection, keep_all, progress)
    split = start + int((end - start) * CHILD_SHARE)
    head = _Selection(new_view, config_from_log, None, start, split)
    tail = _Selection(new_view, config_from_log, None, split + 1, end)
    return _forked(path, head, tail, progress)


@dataclass(frozen=True)
class _Selection:
    new_view: Callable[[], RoutingView]
    config_from_log: bool
    request_id: str | None
    from_seq: int | None
    to_seq: int | None

    def groups(self, store: SqliteStore) -> list[Group]:
        where: dict[str, Any] = {
            "request_id": self.request_id,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
        }
        if not self.config_from_log:
            return [(self.new_view, select_decisions(store, **where), None)]
        targets, configs = select_with_configs(store, **where)
        groups: list[Group] = [
            (functools.partial(view_of, config), some, config.hash)
            if config is not None
            else (self.new_view, some, None)
            for config, some in by_config(targets, configs)
        ]
        return groups or [(self.new_view, [], None)]


def _serial(
    path: Path, selection: _Selection, keep_all: bool, progress: Callable[[int, int], None] | None
) -> ReplayRun:
    store = SqliteStore(path)
    try:
        part = _replay_part(store, selection, keep_all, progress)
    finally:
        store.close()
    return ReplayRun(part.total, part.results, part.events, 1, _count(part.configs), part.unrecorded)


def _replay_part(
    store: SqliteStore,
    selection: _Selection,
    keep_all: bool,
    progress: Callable[[int, int], None] | None,
) -> _Part:
    """Replay each group on its own fresh view (one fold of the log each); results in replay order."""
    groups = selection.groups(store)
    needed = [max((t[1].view_seq for t in targets), default=0) for _, targets, _ in groups]
    results: list[Replayed] = []
    done = 0
    for (new_view, targets, _), upto in zip(groups, needed, strict=True):
        report = progress
        if progress is not None and len(groups) > 1:  # one bar across every pass

            def report(seq: int, _total: int, before: int = done) -> None:
                progress(before + seq, sum(needed))

        results += [
            r for r in replay(store, new_view(), targets, progress=report) if keep_all or not r.matches
        ]
        done += upto
    if len(groups) > 1:
        results.sort(key=lambda r: replay_order(r.seq, r.recorded))
    return _Part(
        total=sum(len(targets) for _, targets, _ in groups),
        results=results,
        events=max(needed, default=0),
        configs=frozenset(key for _, targets, key in groups if targets),
        unrecorded=sum(len(t) for _, t, key in groups if key is None) if selection.config_from_log else 0,
    )


def _count(configs: frozenset[str | None]) -> int:
    return max(1, len(configs))


# What the child sends back per decision that differs: (seq, recomputed choice, named model unknown).
_Changed = tuple[int, tuple[str | None, str | None], bool]


def _forked(
    path: Path, head: _Selection, tail: _Selection, progress: Callable[[int, int], None] | None
) -> ReplayRun:
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    read_end, write_end = os.pipe()
    reaped = False
    pid = os.fork()
    if pid == 0:  # the child: never returns, whatever happens
        try:
            os.close(read_end)

            def parent_alive(_done: int, _total: int) -> None:  # called once per batch of the log
                if os.getppid() != parent:
                    os._exit(1)  # the parent was killed: nobody wants the answer

            try:
                store = SqliteStore(path)
                try:
                    part = _replay_part(store, head, False, parent_alive)
                finally:
                    store.close()
                changed: list[_Changed] = [(r.seq, r.recomputed, r.unknown_model) for r in part.results]
                answer = (part.total, changed, part.events, part.configs, part.unrecorded)
                payload = pickle.dumps(("ok", answer))
            except BaseException:  # the parent raises it with this traceback
                payload = pickle.dumps(("error", traceback.format_exc()))
            with os.fdopen(write_end, "wb") as sink:
                sink.write(payload)
        finally:
            os._exit(0)
    try:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            store = SqliteStore(path)
            try:
                part = _replay_part(store, tail, False, progress)
                results = part.results
                payload = pipe.read()
                _, status = os.waitpid(pid, 0)
                reaped = True
                if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) or not payload:
                    raise RuntimeError(f"the replay worker process died (wait status {status})")
                outcome, value = pickle.loads(payload)
                if outcome != "ok":
                    raise RuntimeError(f"the replay worker process failed:\n{value}")
                child_total, child_changed, child_events, child_configs, child_unrecorded = value
                if child_changed:
                    records = dict(select_decisions(store, from_seq=head.from_seq, to_seq=head.to_seq))
                    results += [
                        Replayed(seq, records[seq], None, False, recomputed, unknown)
                        for seq, recomputed, unknown in child_changed
                    ]
            finally:
                store.close()
        merged = sorted(results, key=lambda r: replay_order(r.seq, r.recorded))
        return ReplayRun(
            part.total + child_total,
            merged,
            max(part.events, child_events),
            2,
            _count(part.configs | child_configs),
            part.unrecorded + child_unrecorded,
        )
    finally:
        if not reaped:  # interrupted or failed before the child was waited for
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
