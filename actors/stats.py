"""Stats actor: the one owner of operational statistics (events/op_stats.py) and of the analytics
(events/analytics.py) while the gateway runs. It folds every committed batch into both and answers
snapshot asks (the admin console and metrics read it) and analytics questions; `switchboard models` folds
the same operational statistics class from the log when it runs on its own.

At start the analytics are rebuilt from the log's last 30 days up to the position the log writer publishes
after, in a worker thread on a read-only connection of their own (a month of a busy log takes seconds; see
`StatsActor.run`). Meanwhile batches are folded into the operational statistics at once and kept for the
analytics, and analytics questions wait: none is answered before the analytics have folded everything
committed before it."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from actors.log_writer import LogWriter
from actors.mailbox import Reply
from events.analytics import FOLDED_TAGS, FOLDED_TYPES, HOURS_KEPT_S, Analytics
from events.op_stats import ModelCounters, OperationalStats
from events.sqlite_store import SqliteStore
from events.store import PAGE, Entry, LogStore

logger = logging.getLogger("switchboard.stats")
T = TypeVar("T")
Question = Callable[[Analytics, float], Any]  # (the analytics, now) -> the answer


@dataclass(frozen=True)
class StatsStatistics:
    models: int
    events_applied: int
    analytics_ready: bool
    analytics_rebuild_s: float | None  # how long the start's rebuild of the last 30 days took


@dataclass(frozen=True)
class _Ask:
    question: Question
    reply: Reply[Any]


class History:
    """Where the analytics' last 30 days are read from at start: `store` up to seq `upto` (inclusive)."""

    def __init__(self, store: LogStore, upto: int) -> None:
        self.store, self.upto = store, upto


class StatsActor:
    def __init__(
        self,
        stats: OperationalStats,
        log: LogWriter,
        *,
        history: History | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._stats = stats
        self._send, self._recv = trio.open_memory_channel[list[Entry] | Reply[list[ModelCounters]] | _Ask](
            math.inf
        )
        log.subscribe(self._send.clone())
        self._applied = 0
        self._now = now
        self._history = history
        self._analytics: Analytics | None = Analytics() if history is None else None
        self._pending: list[Entry] = []  # committed while the rebuild runs, for the analytics after it
        self._waiting: list[_Ask] = []  # questions asked while it runs
        self._rebuild_s: float | None = None

    async def snapshot(self) -> list[ModelCounters]:
        reply: Reply[list[ModelCounters]] = Reply()
        await self._send.send(reply)
        return await reply.wait()

    async def analytics(self, question: Callable[[Analytics, float], T]) -> T:
        """`question(analytics, now)`, answered once the analytics hold everything committed before it."""
        reply: Reply[T] = Reply()
        await self._send.send(_Ask(question, reply))
        return await reply.wait()

    def statistics(self) -> StatsStatistics:
        return StatsStatistics(
            models=len(self._stats.models),
            events_applied=self._applied,
            analytics_ready=self._analytics is not None,
            analytics_rebuild_s=self._rebuild_s,
        )

    async def run(self, *, task_status: trio.TaskStatus[StatsActor] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        async with self._recv, trio.open_nursery() as nursery:
            if self._history is not None:
                nursery.start_soon(self._rebuild, self._history)
            async for message in self._recv:
                if isinstance(message, list):
                    for _, event in message:
                        self._stats.apply(event)
                    self._applied += len(message)
                    if self._analytics is not None:
                        for _, event in message:
                            self._analytics.apply(event)
                    else:
                        self._pending.extend(e for e in message if type(e[1]) in FOLDED_TYPES)
                elif isinstance(message, _Ask):
                    if self._analytics is None:
                        self._waiting.append(message)
                    else:
                        message.reply.send(message.question(self._analytics, self._now()))
                else:
                    message.send(self._stats.counters())

    async def _rebuild(self, history: History) -> None:
        started = time.perf_counter()
        now = self._now()
        if isinstance(history.store, SqliteStore):
            # The writer's connection belongs to the event loop's thread: the thread reads on its own.
            path = history.store.path
            stop = threading.Event()
            try:
                analytics = await trio.to_thread.run_sync(
                    _read_history, path, now, history.upto, stop.is_set, abandon_on_cancel=True
                )
            finally:
                stop.set()  # cancelled (a shutdown): the abandoned thread stops at its next page
        else:  # an in-memory log (tests): read on this thread, it is short
            analytics = _fold_history(history.store, now, history.upto, lambda: False)
        for _, event in self._pending:
            analytics.apply(event)
        self._pending.clear()
        self._analytics = analytics
        now = self._now()
        for ask in self._waiting:
            ask.reply.send(ask.question(analytics, now))
        self._waiting.clear()
        self._rebuild_s = time.perf_counter() - started
        logger.info(
            "analytics: %d events of the last 30 days folded in %.2fs", analytics.events, self._rebuild_s
        )


def _read_history(path: Path, now: float, upto: int, stopped: Callable[[], bool]) -> Analytics:
    store = SqliteStore(path, read_only=True)
    try:
        # A page's fold holds the GIL for as long as it takes: the thread then sleeps as long again, so the
        # event loop (every request's awaits) finds the GIL free half the time instead of waiting out
        # whole switch intervals for a rebuild that can take minutes on a long log.
        return _fold_history(store, now, upto, stopped, pause=time.sleep)
    finally:
        store.close()


def _fold_history(
    store: LogStore,
    now: float,
    upto: int,
    stopped: Callable[[], bool],
    pause: Callable[[float], None] = lambda _: None,
) -> Analytics:
    """The analytics of the 30 days before `now`, events with a seq up to `upto`, read type by type along the
    (type, ts) index (the fold does not care in which order): only the rows it folds are read, not the
    decisions between them that are most of the log's bytes. Past days are merged here, off the loop."""
    analytics, since = Analytics(), now - HOURS_KEPT_S
    for tag in sorted(FOLDED_TAGS):
        before: int | None = None
        while not stopped():
            began = time.perf_counter()
            page = store.newest_of_type(tag, PAGE, since=since, before=before)
            for seq, event in page:
                if seq <= upto:  # later ones come in the log writer's batches
                    analytics.apply(event)
            pause(time.perf_counter() - began)
            if len(page) < PAGE:
                break
            before = page[-1][0]
    analytics.merge_past_days(now)
    return analytics
