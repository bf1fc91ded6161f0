"""The snapshotter: writes snapshots of the projections (events/snapshot.py) while the gateway runs, every
`every_events` events or every `every_s` seconds when anything was folded since the last one, and a last
one at shutdown, so the next start folds only what came after.

A snapshot must hold every projection at one position. The routing view is the model-health actor's; it
copies it between two batches when asked (`ModelHealth.view_state`). The operational statistics belong to
the stats actor, which folds at its own pace, so the snapshotter folds its own copy of them (and of the
supervisor's notes), a few dict updates per attempt: it is subscribed to the same committed batches, so it
reaches the view's position exactly, at a batch boundary, before it takes the rest.

Error handling: a snapshot is derived data. One that cannot be written is logged and skipped (the next
start folds more of the log); it never stops the gateway.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import apsw
import trio

from actors.log_writer import LogWriter
from actors.model_health import ModelHealth
from events import snapshot
from events.op_stats import OperationalStats
from events.snapshot import LogNotes, Snapshot
from events.sqlite_store import StoreDamaged
from events.store import Entry, LogStore
from events.view import RoutingView

logger = logging.getLogger("switchboard.snapshot")


@dataclass(frozen=True)
class SnapshotterStatistics:
    snapshots: int
    last_seq: int  # of the last snapshot written (or loaded at start)
    last_bytes: int
    last_ms: float  # from asking for the view's state to written (other tasks ran in between)
    failures: int


class Snapshotter:
    def __init__(
        self,
        store: LogStore,
        log: LogWriter,
        health: ModelHealth,
        op_stats: OperationalStats,
        notes: LogNotes,
        *,
        config_hash: str,
        seq: int,
        saved_seq: int,
        every_events: int = 100_000,
        every_s: float = 600.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        """`op_stats` and `notes` are the snapshotter's own, folded up to `seq` (the view's position);
        `saved_seq` is the position of the newest snapshot in the store (0 if none)."""
        self._store = store
        self._health = health
        self._stats = op_stats
        self._notes = notes
        self._config_hash = config_hash
        self._seq = seq
        self._saved_seq = saved_seq
        self._every_events = every_events
        self._every_s = every_s
        self._now = now
        self._send, self._recv = trio.open_memory_channel[list[Entry]](math.inf)
        log.subscribe(self._send)
        self._snapshots = self._failures = self._last_bytes = 0
        self._last_ms = 0.0

    def statistics(self) -> SnapshotterStatistics:
        return SnapshotterStatistics(
            self._snapshots, self._saved_seq, self._last_bytes, self._last_ms, self._failures
        )

    async def run(self, *, task_status: trio.TaskStatus[Snapshotter] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        due_at = trio.current_time() + self._every_s
        async with self._recv:
            while True:
                with trio.move_on_at(due_at):
                    try:
                        self._fold(await self._recv.receive())
                    except trio.EndOfChannel:
                        return
                    if self._seq - self._saved_seq < self._every_events:
                        continue
                if self._seq > self._saved_seq:
                    await self._snapshot()
                due_at = trio.current_time() + self._every_s

    def _fold(self, entries: list[Entry]) -> None:
        for _, event in entries:
            self._stats.apply(event)
            self._notes.apply(event)
        self._seq = entries[-1][0]

    async def _snapshot(self) -> None:
        started = time.perf_counter()
        view = await self._health.view_state()
        if view.seq < self._seq:
            # The view had not received the batch this copy folded last (subscribers are fed one after the
            # other): try again later rather than mix two positions.
            return
        while self._seq < view.seq:  # the batches the view folded and this inbox has (or is about to get)
            try:
                self._fold(await self._recv.receive())
            except trio.EndOfChannel:
                return  # the log writer stopped: the shutdown snapshot (`final`) is the one to write
        if self._seq != view.seq:  # cannot happen: every subscriber gets the same batches
            raise AssertionError(f"snapshot positions differ: view at {view.seq}, statistics at {self._seq}")
        taken = Snapshot(
            format=snapshot.FORMAT,
            schema=snapshot.LOG_SCHEMA,
            seq=view.seq,
            config_hash=self._config_hash,
            created=self._now(),
            view=view,
            op_stats=self._stats.state(),
            notes=self._notes.state(),
        )
        self._write(taken, started)

    def final(self, view: RoutingView) -> None:
        """At shutdown, after the log writer's last commit and with every actor stopped: bring the view
        and this copy to the log's end and write the last snapshot there."""
        try:
            caught_up = self._store.read_after(view.seq)
            tail = self._store.read_after(self._seq)
        except (apsw.Error, StoreDamaged) as exc:  # an I/O-error outage at shutdown: no last snapshot
            self._failures += 1
            logger.warning(
                "no snapshot at shutdown (%s): the next start folds the log from an older one", exc
            )
            return
        for seq, event in caught_up:
            view.apply(seq, event)
        if tail:
            self._fold(tail)
        if view.seq == self._saved_seq:
            return
        started = time.perf_counter()
        taken = snapshot.take(view, self._stats, self._notes, self._config_hash, self._now())
        self._write(taken, started)

    def _write(self, taken: Snapshot, started: float) -> None:
        seq = taken.seq
        try:
            # A number too large for msgpack (past 64 bits) cannot be saved: a snapshot only saves a start
            # some folding, so that is a warning, not the end of the service.
            data = snapshot.encode(taken)
            self._store.save_snapshot(seq, data, snapshot.KEEP)
        except (apsw.Error, OverflowError) as exc:
            self._failures += 1
            logger.warning(
                "snapshot at seq %d not written (%s): the next start folds the log from an older one",
                seq,
                exc,
            )
            return
        self._snapshots += 1
        self._saved_seq = seq
        self._last_bytes = len(data)
        self._last_ms = (time.perf_counter() - started) * 1000
