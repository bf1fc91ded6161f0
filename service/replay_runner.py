"""`switchboard replay` over the SQLite log, on two cores when the log is long.

Replaying a range of the log is independent of replaying another: each needs only the view folded up to its
decisions. So a long replay forks once: the child re-decides the decisions recorded in the first part of the
log, the parent folds through that part (folding is cheap next to deciding) and re-decides the rest; each
writes the decisions that differ to a temporary file as it goes (a what-if may change most of them), and
the two files, each in replay order, are merged at the end. The split is where both finish together: the
parent folds the child's part too, so the child takes a little more than half of the decisions.

Memory stays flat whatever the log's length: decisions are read a page at a time and held only while they
wait for the fold to reach their view (events/replay.py `replay_stream`), results go to the caller (or the
file) as they come, and only counts are kept.

No database connection is open across the fork (SQLite forbids carrying one into a child): the caller's
store is not used, each process opens its own. The child stops if the parent goes away. Forking is skipped
where it is unsafe or does not pay: anywhere but Linux (macOS does not support fork without exec, Windows
has no fork), other threads running (a fork copies only the calling one), a range shorter than
PARALLEL_MIN_EVENTS, or when every result is wanted (`--explain` prints them all).

Which configuration each decision is replayed under: with `config_from_log`, the one the gateway recorded
(`ConfigApplied`) before making it (`new_view` only for decisions older than any record); without,
`new_view` for every decision (a what-if, or a log of the caller's own making). One pass over the log
folds a view per configuration used.
"""

from __future__ import annotations

import heapq
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from events.config_applied import recorded_configs
from events.replay import (
    ConfigViews,
    Replayed,
    iter_decisions,
    replay_stream,
    scan_decisions,
    scan_targets,
    select_decisions,
)
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
    changed: int  # of them, those that did not reproduce
    events: int  # the log position the last decision was made at: how much of the log was folded
    processes: int
    configs: int = 1  # distinct configurations the decisions were replayed under
    unrecorded: int = 0  # with config_from_log: decisions older than any recorded configuration


# Where results go as they come, in replay order: every one (keep_all) or only those that differ. Nothing
# is kept here (a log of millions of decisions replays in the memory of one page and one view).
OnResult = Callable[[Replayed], None]


@dataclass(frozen=True)
class _Part:  # what one process replayed
    total: int
    changed: int
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
    on_result: OnResult | None = None,
) -> ReplayRun:
    """Replay the decisions of a request or a log range (default: all). `parallel`: None decides by itself,
    True forks whenever the selection is a log range, only the differences are wanted and `os.fork` exists.
    `config_from_log`: each decision under the configuration recorded when it was made (see above).
    `on_result` gets each result wanted (every one with `keep_all`, else those that differ)."""
    store = SqliteStore(path, read_only=True)
    try:
        last = store.last_seq()
    finally:
        store.close()
    emit = on_result or (lambda _r: None)
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
        return _serial(path, selection, keep_all, progress, emit)
    split = start + int((end - start) * CHILD_SHARE)
    head = _Selection(new_view, config_from_log, None, start, split)
    tail = _Selection(new_view, config_from_log, None, split + 1, end)
    return _forked(path, head, tail, progress, emit)


@dataclass(frozen=True)
class _Selection:
    new_view: Callable[[], RoutingView]
    config_from_log: bool
    request_id: str | None
    from_seq: int | None
    to_seq: int | None


def _serial(
    path: Path,
    selection: _Selection,
    keep_all: bool,
    progress: Callable[[int, int], None] | None,
    emit: OnResult,
) -> ReplayRun:
    store = SqliteStore(path, read_only=True)
    try:
        part = _replay_part(store, selection, keep_all, progress, emit)
    finally:
        store.close()
    return ReplayRun(part.total, part.changed, part.events, 1, _count(part.configs), part.unrecorded)


def _replay_part(
    store: SqliteStore,
    selection: _Selection,
    keep_all: bool,
    progress: Callable[[int, int], None] | None,
    emit: OnResult,
) -> _Part:
    """Replay the selection in one pass over the log: one fresh view per configuration the decisions were
    made under, every view folding the same events; results in replay order."""
    configs = recorded_configs(store, upto=selection.to_seq) if selection.config_from_log else []
    views = ConfigViews(configs, selection.new_view)
    which = views.which
    if selection.request_id is not None:  # a request's few decisions
        found = select_decisions(store, request_id=selection.request_id)
        scan = scan_targets(found, which)
        decisions: Iterator[tuple[int, RouteDecided]] = iter(found)
    else:
        lo, hi = selection.from_seq, selection.to_seq
        scan = scan_decisions(store, from_seq=lo, to_seq=hi, which=which)
        decisions = iter_decisions(store, from_seq=lo, to_seq=hi)
    # A view only for the configurations some decision was made under: each costs a fold of the log.
    used = sorted(scan.per_view)
    position = {i: n for n, i in enumerate(used)}
    changed = 0
    for r in replay_stream(
        store,
        [views.factories[i]() for i in used],
        decisions,
        lag=scan.lag,
        last_needed=scan.last_needed,
        which=lambda seq: position[which(seq)],
        progress=progress,
    ):
        changed += not r.matches
        if keep_all or not r.matches:
            emit(r)
    return _Part(
        total=scan.decisions,
        changed=changed,
        events=scan.last_needed,
        configs=frozenset(views.keys[i] for i in used),
        unrecorded=scan.per_view.get(0, 0) if selection.config_from_log else 0,
    )


def _count(configs: frozenset[str | None]) -> int:
    return max(1, len(configs))


class _Changed(msgspec.Struct, array_like=True, gc=False):
    """A decision that did not reproduce, as a forked replay writes it to its results file: where it is in
    the log and in replay order, and what was chosen this time (its record is read again from the log when
    it is passed on, so a what-if that changes most decisions writes a few bytes each)."""

    seq: int
    view_seq: int
    now: float
    recomputed: tuple[str | None, str | None]
    unknown_model: bool


_changed_decoder = msgspec.json.Decoder(_Changed)


def _write_changed(sink: IO[bytes]) -> OnResult:
    def write(r: Replayed) -> None:
        changed = _Changed(r.seq, r.recorded.view_seq, r.recorded.now, r.recomputed, r.unknown_model)
        sink.write(msgspec.json.encode(changed) + b"\n")

    return write


def _read_changed(source: IO[bytes]) -> Iterator[_Changed]:
    source.flush()
    source.seek(0)
    for line in source:
        yield _changed_decoder.decode(line)


def _merged(store: SqliteStore, *sources: IO[bytes]) -> Iterator[Replayed]:
    """The results files, each in replay order, as one stream in replay order, each with its record."""
    for c in heapq.merge(*map(_read_changed, sources), key=lambda c: (c.view_seq, c.now, c.seq)):
        ((seq, recorded),) = store.read_after(c.seq - 1, 1)
        assert seq == c.seq and isinstance(recorded, RouteDecided)
        yield Replayed(seq, recorded, None, False, c.recomputed, c.unknown_model)


def _forked(
    path: Path,
    head: _Selection,
    tail: _Selection,
    progress: Callable[[int, int], None] | None,
    emit: OnResult,
) -> ReplayRun:
    """The child replays `head`, the parent `tail`; each writes the decisions that differ to its own
    temporary file as they come, and the two files, each in replay order, are merged into `emit`."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    read_end, write_end = os.pipe()
    reaped = False
    with tempfile.TemporaryFile() as child_results, tempfile.TemporaryFile() as own_results:
        pid = os.fork()
        if pid == 0:  # the child: never returns, whatever happens
            try:
                os.close(read_end)

                def parent_alive(_done: int, _total: int) -> None:  # called once per batch of the log
                    if os.getppid() != parent:
                        os._exit(1)  # the parent was killed: nobody wants the answer

                try:
                    store = SqliteStore(path, read_only=True)
                    try:
                        part = _replay_part(store, head, False, parent_alive, _write_changed(child_results))
                    finally:
                        store.close()
                    child_results.flush()
                    answer = (part.total, part.changed, part.events, part.configs, part.unrecorded)
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
                store = SqliteStore(path, read_only=True)
                try:
                    part = _replay_part(store, tail, False, progress, _write_changed(own_results))
                finally:
                    store.close()
                payload = pipe.read()
                _, status = os.waitpid(pid, 0)
                reaped = True
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) or not payload:
                raise RuntimeError(f"the replay worker process died (wait status {status})")
            outcome, value = pickle.loads(payload)
            if outcome != "ok":
                raise RuntimeError(f"the replay worker process failed:\n{value}")
            child_total, child_changed, child_events, child_configs, child_unrecorded = value
            store = SqliteStore(path, read_only=True)
            try:
                for r in _merged(store, child_results, own_results):
                    emit(r)
            finally:
                store.close()
            return ReplayRun(
                part.total + child_total,
                part.changed + child_changed,
                max(part.events, child_events),
                2,
                _count(part.configs | child_configs),
                part.unrecorded + child_unrecorded,
            )
        finally:
            if not reaped:  # interrupted or failed before the child was waited for
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
