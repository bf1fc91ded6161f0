"""The stats actor: operational statistics as before, and analytics rebuilt at start from the log's last
30 days (in a worker thread on SQLite) without answering a question before they hold everything committed
before it, then folded from the log writer's batches."""

from __future__ import annotations

from pathlib import Path

import trio

from actors.log_writer import LogWriter
from actors.stats import History, StatsActor
from events.analytics import Analytics, Summary
from events.op_stats import OperationalStats
from events.sqlite_store import SqliteStore
from events.store import LogStore, MemoryStore
from events.types import AttemptSucceeded, Event, RequestCompleted

NOW = 1_800_000_000.0


def answered(i: int, ts: float) -> list[Event]:
    return [
        AttemptSucceeded(
            ts=ts,
            request_id=f"r{i}",
            attempt=1,
            platform="p",
            model="m",
            key_id="k",
            latency_ms=300.0,
            ttfb_ms=50.0,
            input_tokens=3,
            output_tokens=4,
        ),
        RequestCompleted(ts=ts, request_id=f"r{i}", outcome="ok", status=200, attempts=1, latency_ms=310.0),
    ]


def summary(a: Analytics, now: float) -> Summary:
    return a.summary(now, "30d")


async def run_with_history(store: LogStore) -> tuple[Summary, Summary, int]:
    # A month and a half of history: the oldest two weeks are past what analytics keep.
    history = [e for i in range(90) for e in answered(i, NOW - (89 - i) * 12 * 3600)]
    store.append(history)
    upto = store.last_seq()
    log = LogWriter(store, after=upto)
    stats = StatsActor(OperationalStats(), log, history=History(store, upto), now=lambda: NOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(stats.run)
        first = await stats.analytics(summary)  # asked at once: answered only once the history is in
        await log.append_durable(answered(1000, NOW - 1)[1])
        second = await stats.analytics(summary)
        models = len(await stats.snapshot())
        nursery.cancel_scope.cancel()  # as the supervisor stops its actors
    assert stats.statistics().analytics_ready
    return first, second, models


async def test_a_start_rebuilds_the_last_30_days_then_folds_batches_from_memory() -> None:
    first, second, _ = await run_with_history(MemoryStore())
    assert first.requests == 60  # two a day for 30 days; the older ones are not kept
    assert second.requests == 61  # the batch after the position counted once, not twice
    assert first.tokens.output == 60 * 4


async def test_a_start_rebuilds_in_a_thread_from_sqlite_before_answering(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "log.db")
    try:
        first, second, models = await run_with_history(store)
    finally:
        store.close()
    assert (first.requests, second.requests) == (60, 61)
    assert models == 0  # the operational statistics were given empty and saw only the batch's completion


async def test_without_history_questions_are_answered_from_the_batches() -> None:
    store = MemoryStore()
    log = LogWriter(store)
    stats = StatsActor(OperationalStats(), log, now=lambda: NOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(stats.run)
        for event in answered(1, NOW - 5):
            await log.append_durable(event)
        got = await stats.analytics(lambda a, now: a.by(now, "1h", "model"))
        counters = await stats.snapshot()
        nursery.cancel_scope.cancel()  # as the supervisor stops its actors
    assert [(r.name, r.attempts, r.ok) for r in got.data] == [("p/m", 1, 1)]
    assert [(c.ref, c.successes) for c in counters] == [("p/m", 1)]
