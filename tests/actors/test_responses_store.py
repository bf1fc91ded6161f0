"""The response store: a response is found as soon as the handler tells it (before the log commits it),
a chain comes back oldest first, a start rebuilds the index from the log within the retention (deleted and
expired ones left out, the newest kept under the cap), the cache is bounded in bytes and what it evicts is
read back from the log, what the log does not have yet is never evicted, and deletion is recorded.

On `autojump_clock` with the in-memory log; the SQLite test reads in a worker thread, so it runs on the
real clock (virtual time would jump while the thread runs) and waits on no timer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from actors.log_writer import LogWriter
from actors.responses import Missing, ResponseRetention, ResponseStore, StoredResponse, TooLong
from events.sqlite_store import SqliteStore
from events.store import LogStore, MemoryStore
from events.types import KeyDisabled, ResponseDeleted, ResponseStored

NOW = 1_800_000_000.0
DAY = 86400.0


def turn(n: int, previous: int | None = None, ts: float = NOW, size: int = 10) -> StoredResponse:
    return StoredResponse(
        response_id=f"resp_{n}",
        previous_response_id=None if previous is None else f"resp_{previous}",
        messages=f'[{{"role":"user","content":"{"x" * size}{n}"}}]',
        response=f'{{"id":"resp_{n}"}}',
        ts=ts,
    )


def stored_event(r: StoredResponse) -> ResponseStored:
    return ResponseStored(
        ts=r.ts,
        request_id=f"req_{r.response_id}",
        response_id=r.response_id,
        previous_response_id=r.previous_response_id,
        messages=r.messages,
        response=r.response,
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(
    store: LogStore, retention: ResponseRetention | None = None, clock: Clock | None = None
) -> AsyncIterator[tuple[ResponseStore, LogWriter]]:
    upto = store.last_seq()
    log = LogWriter(store, after=upto)
    responses = ResponseStore(log, store, upto=upto, retention=retention, now=clock or Clock())
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(responses.run)
        yield responses, log
        nursery.cancel_scope.cancel()


async def committed(log: LogWriter) -> None:
    """Everything appended before is committed and published (a durable append flushes the batch)."""
    await log.append_durable(KeyDisabled(ts=NOW, key_id="k"))
    await trio.testing.wait_all_tasks_blocked()


async def test_a_response_is_found_before_the_log_commits_it_and_chains_oldest_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    async with running(store) as (responses, log):
        await responses.stored(turn(1), "req_1")
        await responses.stored(turn(2, previous=1), "req_2")
        assert [e for _, e in store.read_after(0)] == []  # not committed yet ...
        chain = await responses.chain("resp_2")  # ... and found
        assert isinstance(chain, list) and [r.response_id for r in chain] == ["resp_1", "resp_2"]
        await committed(log)
        events = [e for _, e in store.read_after(0) if isinstance(e, ResponseStored)]
        assert [(e.response_id, e.request_id, e.previous_response_id) for e in events] == [
            ("resp_1", "req_1", None),
            ("resp_2", "req_2", "resp_1"),
        ]
        assert events[1].messages == turn(2, previous=1).messages
        assert await responses.get("resp_9") is None
        assert await responses.chain("resp_9") == Missing("resp_9")


async def test_a_start_rebuilds_the_index_within_the_retention(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    old, kept, deleted, child = turn(1, ts=NOW - 40 * DAY), turn(2, ts=NOW - DAY), turn(3), turn(4, 2)
    store.append([stored_event(r) for r in (old, kept, deleted, child)])
    store.append([ResponseDeleted(ts=NOW, response_id="resp_3")])
    async with running(store) as (responses, _):
        assert await responses.get("resp_1") is None  # past the 30 days
        assert await responses.get("resp_3") is None  # deleted
        assert await responses.get("resp_2") == kept
        chain = await responses.chain("resp_4")
        assert chain == [kept, child]
        stats = responses.statistics()
        assert stats.ready and stats.indexed == 2 and stats.log_reads == 0  # the rebuild cached them


async def test_the_index_keeps_the_newest_under_its_cap(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    store.append([stored_event(turn(n, ts=NOW - 100 + n)) for n in range(5)])
    async with running(store, ResponseRetention(max_indexed=3)) as (responses, _):
        assert [await responses.get(f"resp_{n}") is not None for n in range(5)] == [
            False,
            False,
            True,
            True,
            True,
        ]
        await responses.stored(turn(5), "req_5")
        assert await responses.get("resp_2") is None  # the oldest made room
        assert responses.statistics().indexed == 3


async def test_the_cache_is_bounded_and_what_it_evicted_is_read_back_from_the_log(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    one = turn(0, size=1000).size
    async with running(store, ResponseRetention(cache_bytes=3 * one)) as (responses, log):
        for n in range(6):
            await responses.stored(turn(n, None if n == 0 else n - 1, size=1000), f"req_{n}")
        # Nothing is committed yet: the cache is every response's only copy, so nothing went.
        assert responses.statistics().cached == 6
        await committed(log)
        stats = responses.statistics()
        assert stats.cached == 3 and stats.cached_bytes <= 3 * one
        chain = await responses.chain("resp_5")  # the first three come back from the log
        assert chain == [turn(n, None if n == 0 else n - 1, size=1000) for n in range(6)]
        assert responses.statistics().log_reads == 3


async def test_expiry_is_lazy_and_deletion_is_recorded(autojump_clock: trio.abc.Clock) -> None:
    store, clock = MemoryStore(), Clock()
    async with running(store, clock=clock) as (responses, log):
        await responses.stored(turn(1), "req_1")
        await responses.stored(turn(2), "req_2")
        assert await responses.delete("resp_1") is True
        assert await responses.get("resp_1") is None
        assert await responses.delete("resp_1") is False
        deleted = [e.response_id for _, e in store.read_after(0) if isinstance(e, ResponseDeleted)]
        assert deleted == ["resp_1"]  # committed before delete returned
        clock.now += 31 * DAY
        assert await responses.get("resp_2") is None
        assert responses.statistics().indexed == 0
        await committed(log)


async def test_a_rebuild_from_sqlite_runs_in_a_thread_and_lookups_wait_for_it(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = SqliteStore(path)
    writer.append([stored_event(turn(n, None if n == 0 else n - 1)) for n in range(3)])
    with trio.fail_after(10):
        async with running(writer, ResponseRetention(cache_bytes=1)) as (responses, log):
            chain = await responses.chain("resp_2")  # asked at once: answered once the index is rebuilt
            assert isinstance(chain, list) and [r.response_id for r in chain] == [
                "resp_0",
                "resp_1",
                "resp_2",
            ]
            assert responses.statistics().log_reads == 3  # nothing fits the cache: read in a thread
            await responses.stored(turn(3, 2), "req_3")
            await committed(log)
            assert (await responses.get("resp_3")) == turn(3, 2)
    writer.close()


async def test_a_chain_names_the_turn_that_is_gone_and_stops_past_its_byte_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    store, clock = MemoryStore(), Clock()
    one = turn(0).messages_bytes
    async with running(store, ResponseRetention(max_chain_bytes=3 * one), clock) as (responses, log):
        for n in range(5):
            clock.now = NOW + n
            await responses.stored(turn(n, None if n == 0 else n - 1, ts=clock.now), f"req_{n}")
        chain = await responses.chain("resp_2")
        assert isinstance(chain, list) and len(chain) == 3  # exactly the budget
        assert await responses.chain("resp_4") == TooLong(4, 4 * one)  # followed no further
        assert await responses.delete("resp_3") is True
        assert await responses.chain("resp_4") == Missing("resp_3")  # the ancestor, not the id asked for
        clock.now = NOW + 30 * DAY + 0.5  # resp_0 has expired, resp_1 not yet
        assert await responses.chain("resp_1") == Missing("resp_0")
        await committed(log)


async def test_a_response_whose_append_was_cancelled_is_forgotten_not_pinned(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    log = LogWriter(store, after=0, inbox_size=1)  # not running: its inbox stays full
    responses = ResponseStore(log, store, upto=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(responses.run)
        await responses.stored(turn(1), "req_1")  # fills the inbox
        with trio.move_on_after(1) as waited:  # the client goes while the log's inbox is full
            await responses.stored(turn(2, previous=1), "req_2")
        assert waited.cancelled_caught
        assert await responses.get("resp_2") is None  # never in the log: not kept, never to be evicted
        stats = responses.statistics()
        assert (stats.indexed, stats.cached, stats.cached_bytes) == (1, 1, turn(1).size)
        nursery.cancel_scope.cancel()


def test_a_response_s_size_is_its_utf8_bytes() -> None:
    wide = StoredResponse("resp_1", None, '[{"content":"' + "é" * 100 + '"}]', '{"t":"日本"}', NOW)
    assert wide.messages_bytes == len('[{"content":""}]') + 200
    assert wide.size == wide.messages_bytes + len('{"t":""}') + 6 + 200
