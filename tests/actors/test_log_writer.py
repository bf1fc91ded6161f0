"""The log writer: group commit, ordered fan-out to subscribers, durable appends, a clean close, and events
that other writers append to the same log ("foreign" events)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from actors.log_writer import LogWriter, LogWriterStatistics
from events.sqlite_store import SqliteStore
from events.store import Entry, LogStore, MemoryStore, StoreUnwritable
from events.types import AttemptStarted, Event, KeyAdded, KeyInvalidated


def ev(n: int, request_id: str = "r") -> AttemptStarted:
    return AttemptStarted(
        ts=float(n), request_id=request_id, attempt=n, platform="groq", model="m", key_id="k"
    )


def subscriber(log: LogWriter) -> trio.MemoryReceiveChannel[list[Entry]]:
    send, recv = trio.open_memory_channel[list[Entry]](math.inf)
    log.subscribe(send)
    return recv


def drain(recv: trio.MemoryReceiveChannel[list[Entry]]) -> list[Entry]:
    """Everything published so far, without waiting."""
    out: list[Entry] = []
    while True:
        try:
            batch = recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return out
        assert batch, "the writer never publishes an empty batch"
        out.extend(batch)


async def received_all(recv: trio.MemoryReceiveChannel[list[Entry]]) -> list[Entry]:
    """Everything published until the writer closed the channel."""
    out: list[Entry] = []
    async for batch in recv:
        assert batch
        out.extend(batch)
    return out


def numbered(events: Sequence[Event], start: int = 1) -> list[Entry]:
    return list(enumerate(events, start=start))  # type: ignore[arg-type]


# -- Group commit


async def test_queued_events_are_committed_in_batches_of_max_batch(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    log = LogWriter(store, max_batch=10)
    events = [ev(i) for i in range(1, 101)]
    for e in events:
        await log.append(e)
    assert log.statistics().queued == 100
    assert store.last_seq() == 0  # nothing is written before the writer runs

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            log.close()

    assert store.read_after(0) == numbered(events)
    assert store.data_version() == 10  # MemoryStore: one version per transaction
    assert log.statistics() == LogWriterStatistics(
        events_written=100,
        batches=10,
        largest_batch=10,
        foreign_events=0,
        last_seq=100,
        queued=0,
        held=0,
        dropped=0,
    )


async def test_events_close_together_share_a_batch_and_the_window_bounds_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    log = LogWriter(store, window_s=0.002)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for i in range(1, 51):
                await log.append(ev(i))
            await trio.sleep(1)  # longer than the window: the first batch is committed
            assert log.statistics().batches == 1
            assert store.last_seq() == 50
            for i in range(51, 54):
                await log.append(ev(i))
            await trio.sleep(1)
            log.close()
    stats = log.statistics()
    assert (stats.events_written, stats.batches, stats.largest_batch, stats.last_seq) == (53, 2, 50, 53)


async def test_many_concurrent_appenders_are_grouped(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    log = LogWriter(store, max_batch=64)
    recv = subscriber(log)

    async def producer(p: int) -> None:
        for i in range(20):
            await log.append(ev(i, request_id=f"p{p}"))
            await trio.sleep(0.0005)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            async with trio.open_nursery() as producers:
                for p in range(10):
                    producers.start_soon(producer, p)
            log.close()

    stats = log.statistics()
    assert stats.events_written == 200
    assert stats.batches < 200 // 4
    assert stats.largest_batch <= 64
    got = await received_all(recv)
    assert got == store.read_after(0)
    for p in range(10):  # each producer's events keep their order
        assert [e.attempt for _, e in got if e.request_id == f"p{p}"] == list(range(20))  # type: ignore[union-attr]


# -- Subscribers


async def test_every_subscriber_gets_every_entry_in_seq_order(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    store.append([ev(0)])  # an event from before this writer: not published again
    log = LogWriter(store, max_batch=7)
    first, second = subscriber(log), subscriber(log)
    events = [ev(i) for i in range(1, 40)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for i, e in enumerate(events):
                await log.append(e)
                if i % 5 == 0:
                    await trio.sleep(0.01)
            log.close()
    expected = numbered(events, start=2)
    assert await received_all(first) == expected
    assert await received_all(second) == expected


async def test_a_subscriber_that_closed_its_channel_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    log = LogWriter(MemoryStore())
    gone, kept = subscriber(log), subscriber(log)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await log.append_durable(ev(1))
            await gone.aclose()
            assert await log.append_durable(ev(2)) == 2
            assert await log.append_durable(ev(3)) == 3
            log.close()
    assert [s for s, _ in await received_all(kept)] == [1, 2, 3]


async def test_subscribers_are_closed_when_the_writer_is_cancelled(autojump_clock: trio.abc.Clock) -> None:
    log = LogWriter(MemoryStore())
    recv = subscriber(log)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await log.append_durable(ev(1))
            nursery.cancel_scope.cancel()
        assert [s for s, _ in await received_all(recv)] == [1]


# -- Durable appends


async def test_append_durable_returns_its_seq_after_the_commit(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    log = LogWriter(store)
    recv = subscriber(log)
    key = KeyAdded(ts=5.0, key_id="k1", platform="groq", label="main", source="config")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for i in range(1, 4):
                await log.append(ev(i))
            seq = await log.append_durable(key)
            assert seq == 4
            assert store.read_after(3) == [(4, key)]
            # Published before the reply: a subscriber that is asked next has already been sent the event.
            assert drain(recv)[-1] == (4, key)
            assert log.statistics().last_seq == 4
            log.close()


async def test_concurrent_durable_appends_each_get_their_own_seq(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    log = LogWriter(store)
    seqs: dict[int, int] = {}

    async def admin(n: int) -> None:
        seqs[n] = await log.append_durable(KeyInvalidated(ts=float(n), key_id=f"k{n}", status=401))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            async with trio.open_nursery() as admins:
                for n in range(25):
                    admins.start_soon(admin, n)
            log.close()
    assert sorted(seqs.values()) == list(range(1, 26))
    for n, seq in seqs.items():
        assert store.read_after(seq - 1, 1)[0][1].key_id == f"k{n}"  # type: ignore[union-attr]


# -- Close


async def test_close_flushes_everything_queued_then_closes_subscribers(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    log = LogWriter(store, max_batch=16)
    # A subscriber that does not read yet: the writer blocks publishing its first batch, the rest queues up.
    send, recv = trio.open_memory_channel[list[Entry]](0)
    log.subscribe(send)
    durable_seq: list[int] = []

    async def admin() -> None:
        durable_seq.append(await log.append_durable(ev(101)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for i in range(1, 101):
                await log.append(ev(i))
            nursery.start_soon(admin)
            await trio.sleep(1)
            assert log.statistics().queued > 0
            assert store.last_seq() < 101
            log.close()
            with pytest.raises(trio.ClosedResourceError):
                await log.append(ev(102))
            got = await received_all(recv)  # ends: the writer closed the channel after the last batch
    assert store.last_seq() == 101
    assert durable_seq == [101]
    assert got == store.read_after(0)
    assert [s for s, _ in got] == list(range(1, 102))
    assert log.statistics().queued == 0


async def test_close_before_run_still_commits_what_was_queued(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    log = LogWriter(store)
    recv = subscriber(log)
    await log.append(ev(1))
    log.close()
    with trio.fail_after(10):
        await log.run()
    assert store.read_after(0) == [(1, ev(1))]
    assert await received_all(recv) == [(1, ev(1))]


# -- Foreign events


def open_stores(kind: str, tmp_path: Path) -> tuple[LogStore, LogStore]:
    """The writer's store and another writer on the same log (a CLI or a second worker process)."""
    if kind == "memory":
        store = MemoryStore()
        return store, store
    return SqliteStore(tmp_path / "log.db"), SqliteStore(tmp_path / "log.db")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_events_from_another_writer_are_published_in_order(
    kind: str, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    ours, theirs = open_stores(kind, tmp_path)
    try:
        log = LogWriter(ours, poll_s=0.05)
        recv = subscriber(log)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(log.run)
                # While the writer is idle: noticed by polling.
                theirs.append([ev(1, "x"), ev(2, "x")])
                await trio.sleep(0.2)
                assert drain(recv) == [(1, ev(1, "x")), (2, ev(2, "x"))]
                assert await log.append_durable(ev(3)) == 3
                # Just before our own commit, before the writer polls: found by the gap in the seqs.
                theirs.append([ev(4, "x")])
                assert await log.append_durable(ev(5)) == 5
                assert drain(recv) == [(3, ev(3)), (4, ev(4, "x")), (5, ev(5))]
                # Several foreign batches between two polls arrive together, in order.
                theirs.append([ev(6, "x")])
                theirs.append([ev(7, "x"), ev(8, "x")])
                await trio.sleep(0.2)
                assert [s for s, _ in drain(recv)] == [6, 7, 8]
                log.close()
        stats = log.statistics()
        assert (stats.events_written, stats.foreign_events, stats.last_seq) == (2, 6, 8)
        assert await received_all(recv) == []
        assert ours.read_after(0) == theirs.read_after(0)
    finally:
        ours.close()
        theirs.close()


class ForeignCommitAfterOurs:
    """The writer's SQLite store, where another process commits right after the writer's next commit, before
    the writer reads the data version: an interleaving that a second worker process can produce."""

    def __init__(self, store: SqliteStore, other: SqliteStore) -> None:
        self._store = store
        self._other = other
        self.pending: list[Event] = []

    def append(self, events: Sequence[Event]) -> list[int]:
        seqs = self._store.append(events)
        if self.pending:
            self._other.append(self.pending)
            self.pending = []
        return seqs

    def read_after(self, seq: int, limit: int | None = None) -> list[Entry]:
        return self._store.read_after(seq, limit)

    def read_request(self, request_id: str) -> list[Entry]:
        return self._store.read_request(request_id)

    def last_seq(self) -> int:
        return self._store.last_seq()

    def data_version(self) -> int:
        return self._store.data_version()

    def close(self) -> None:
        self._store.close()


async def test_a_foreign_commit_right_after_ours_is_still_published(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    other = SqliteStore(tmp_path / "log.db")
    store = ForeignCommitAfterOurs(SqliteStore(tmp_path / "log.db"), other)
    try:
        log = LogWriter(store, poll_s=0.05)
        recv = subscriber(log)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(log.run)
                store.pending = [ev(2, "x")]
                assert await log.append_durable(ev(1)) == 1
                await trio.sleep(5)  # a hundred polls
                got = drain(recv)
                log.close()
        assert got == [(1, ev(1)), (2, ev(2, "x"))]
    finally:
        store.close()
        other.close()


# -- A log that cannot be written (README: the disk)


class BrokenDisk(MemoryStore):
    """A store whose appends fail while `reason` is set, as SQLite's would on a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.refused = 0

    def append(self, events: Sequence[Event]) -> list[int]:
        if self.reason is not None:
            self.refused += 1
            raise StoreUnwritable(self.reason)
        return super().append(events)


async def test_an_outage_holds_events_in_order_and_writes_them_once_the_disk_is_back(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenDisk()
    log = LogWriter(store, retry_s=1.0, now=trio.current_time)
    recv = subscriber(log)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await log.append_durable(ev(1))
            store.reason = "disk full"
            await log.append(ev(2))
            await trio.sleep(0.1)
            outage = log.outage()
            assert outage is not None
            assert (outage.reason, outage.held) == ("disk full", 1)
            # A durable append is held, not waited for: nothing may wedge behind a disk that never frees.
            with trio.fail_after(0.01):
                assert await log.append_durable(ev(3)) is None
            await log.append(ev(4))
            await trio.sleep(10)  # ten retries at most, not one per event or per poll
            assert 1 <= store.refused <= 12
            assert drain(recv) == [(1, ev(1))]  # nothing is published before it is committed
            assert log.statistics().held == 3
            store.reason = None
            await trio.sleep(1.5)
            assert log.outage() is None
            await log.append(ev(5))
            await trio.sleep(0.1)
            log.close()
    assert store.read_after(0) == numbered([ev(n) for n in range(1, 6)])
    assert drain(recv) == numbered([ev(n) for n in range(2, 6)], start=2)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot be written (disk full)" in m for m in messages) == 1, messages
    assert any("can be written again" in m and "3 held events written" in m for m in messages), messages


async def test_beyond_max_held_telemetry_is_dropped_and_counted_but_durable_events_are_kept(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenDisk()
    store.reason = "disk full"
    log = LogWriter(store, max_held=5)
    key = KeyAdded(ts=9.0, key_id="k1", platform="groq", label="main", source="config")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for n in range(1, 9):
                await log.append(ev(n))
            await trio.sleep(0.1)
            assert await log.append_durable(key) is None
            assert (log.statistics().held, log.statistics().dropped) == (6, 3)
            store.reason = None
            await trio.sleep(2)
            log.close()
    assert [e for _, e in store.read_after(0)] == [*(ev(n) for n in range(1, 6)), key]
    assert any("3 dropped" in r.getMessage() for r in caplog.records)


async def test_events_still_held_when_the_writer_stops_are_named_as_lost(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenDisk()
    store.reason = "read-only"
    log = LogWriter(store)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await log.append(ev(1))
            await log.append(ev(2))
            await trio.sleep(0.1)
            log.close()
    assert store.read_after(0) == []
    assert any(
        "still cannot be written (read-only): 2 events" in r.getMessage() and "lost" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_sqlite_reports_a_full_disk_as_unwritable_and_takes_writes_again_when_there_is_room(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "log.db")
    try:
        store.append([ev(1)])
        db = store._db  # the file's size cap stands in for a full disk (a tmpfs needs root)
        pages = int(db.execute("PRAGMA page_count").get)
        db.execute(f"PRAGMA max_page_count = {pages}")
        big = [
            KeyAdded(ts=1.0, key_id=f"k{n}", platform="p" * 500, label="x", source="config")
            for n in range(50)
        ]
        with pytest.raises(StoreUnwritable) as refused:
            store.append(big)
        assert refused.value.reason == "disk full"
        assert store.last_seq() == 1  # none of the batch
        db.execute("PRAGMA max_page_count = 1000000")
        assert store.append(big) == list(range(2, 52))
    finally:
        store.close()


class LittleRoom(MemoryStore):
    """A disk with room for small transactions only, as just after a few KB were freed."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits = fits

    def append(self, events: Sequence[Event]) -> list[int]:
        if len(events) > self.fits:
            raise StoreUnwritable("disk full")
        return super().append(events)


async def test_held_events_are_retried_in_smaller_transactions_until_one_fits(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = LittleRoom(fits=1000)
    log = LogWriter(store, max_batch=5000)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for n in range(1, 3001):
                await log.append(ev(n))
            await trio.sleep(0.01)
            assert log.outage() is not None  # one batch of 3000 did not fit
            store.fits = 700
            await trio.sleep(30)
            assert log.outage() is None
            log.close()
    assert [e for _, e in store.read_after(0)] == [ev(n) for n in range(1, 3001)]


def test_a_log_locked_by_another_process_costs_one_busy_timeout_then_short_waits(tmp_path: Path) -> None:
    import time

    store = SqliteStore(tmp_path / "log.db")
    other = SqliteStore(tmp_path / "log.db")
    try:
        store._db.set_busy_timeout(300)  # the first wait, shortened for the test
        other._db.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnwritable, match="locked by another process"):
            store.append([ev(1)])
        started = time.monotonic()
        for _ in range(5):
            with pytest.raises(StoreUnwritable):
                store.append([ev(1)])
        assert time.monotonic() - started < 1.0  # five retries, not five busy timeouts
        other._db.execute("COMMIT")
        assert store.append([ev(1)]) == [1]
    finally:
        store.close()
        other.close()


def test_a_new_log_that_cannot_be_made_on_a_full_disk_leaves_no_file_behind(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=False, capture_output=True
        ).returncode
    ):
        pytest.skip("needs root and the right to mount a tmpfs (a real full disk)")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(disk)], check=False))
    filler = disk / "filler"
    with filler.open("wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    path = disk / "switchboard.db"
    for _ in range(2):  # the second try must meet the same condition, not a 0-byte "damaged" file
        with pytest.raises(StoreUnwritable):
            SqliteStore(path)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    filler.unlink()
    store = SqliteStore(path)
    assert store.append([ev(1)]) == [1]
    store.close()


async def test_a_seq_handed_out_twice_stops_the_writer_loudly(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    log = LogWriter(store)
    with pytest.raises(BaseExceptionGroup) as stopped:
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await log.append_durable(ev(1))
            store._rows.clear()  # the log's end deleted under a running gateway
            store._types.clear()
            await log.append(ev(2))
            await trio.sleep(1)
    assert "gave seq 1 again" in str(stopped.value.exceptions[0])
