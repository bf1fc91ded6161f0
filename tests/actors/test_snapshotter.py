"""The snapshotter, fed by the log writer beside the model-health actor: every snapshot holds the view and
the statistics at one position (what a fold of the log up to it gives), written every N events or after
a quiet interval, a last one at shutdown; a start resumes from it; a write that fails is logged, not fatal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import apsw
import msgspec
import pytest
import trio

from actors.log_writer import LogWriter
from actors.model_health import ModelHealth
from actors.request import Deadlines
from actors.snapshotter import Snapshotter
from actors.supervisor import Runtime, Settings, load_projections, run_service
from events.catalog import CatalogModel
from events.op_stats import OperationalStats
from events.policy import RoutingPolicy
from events.snapshot import LogNotes, Snapshot, check
from events.store import MemoryStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ConfigApplied,
    Event,
    KeyAdded,
    ServiceStarted,
    ServiceStopped,
    StreamStalled,
)
from events.view import RoutingView, rebuild

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakes.py, beside this file
from fakes import FakeUpstream

T0 = 1_750_000_000.0
HASH = "c" * 64
MODELS = (
    CatalogModel("groq", "llama-70b", "balanced", True, True, 128_000, 1, 5),
    CatalogModel("gemini", "flash", "balanced", True, True, None, 3, 3),
)
KEYS = (("g1", "groq"), ("g2", "groq"), ("gm1", "gemini"))


def new_view() -> RoutingView:
    return RoutingView(MODELS, RoutingPolicy(), frozenset({"gemini"}))


def request(i: int) -> list[Event]:
    """One attempt's events, the i-th of a busy history."""
    m = MODELS[i % 2]
    key = [k for k, p in KEYS if p == m.platform][i % 2 if m.platform == "groq" else 0]
    base = {"request_id": f"r{i}", "attempt": 1, "platform": m.platform, "model": m.id, "key_id": key}
    ts = T0 + 7.0 * i
    end: Event
    if i % 5 == 0:
        end = AttemptFailed(ts=ts + 1, kind="rate_limited", status=429, **base)  # type: ignore[arg-type]
    elif i % 7 == 0:
        end = AttemptFailed(ts=ts + 1, kind="server_error", status=503, **base)  # type: ignore[arg-type]
    else:
        end = AttemptSucceeded(
            ts=ts + 1,
            latency_ms=900,
            ttfb_ms=100 + i,
            input_tokens=10,
            output_tokens=50,
            **base,  # type: ignore[arg-type]
        )
    stall = [StreamStalled(ts=ts, platform=m.platform, model=m.id, key_id=key, phase="pre", silent_s=30)]
    return [AttemptStarted(ts=ts, reserved_tokens=500, **base), *(stall if i % 11 == 0 else []), end]  # type: ignore[arg-type]


@dataclass
class Running:
    store: MemoryStore
    log: LogWriter
    snapshotter: Snapshotter


@asynccontextmanager
async def running(store: MemoryStore, *, every_events: int, every_s: float = 600.0) -> AsyncIterator[Running]:
    log = LogWriter(store)
    health = ModelHealth(new_view(), log, lambda: T0)
    snapshotter = Snapshotter(
        store,
        log,
        health,
        OperationalStats(),
        LogNotes(),
        config_hash=HASH,
        seq=0,
        saved_seq=0,
        every_events=every_events,
        every_s=every_s,
        now=lambda: T0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(health.run)
        await nursery.start(snapshotter.run)
        for key_id, platform in KEYS:
            await log.append(KeyAdded(ts=T0, key_id=key_id, platform=platform, label=key_id, source="config"))
        yield Running(store, log, snapshotter)
        nursery.cancel_scope.cancel()


def stored(store: MemoryStore) -> list[Snapshot]:
    found = [check(data, HASH, store.last_seq()) for _, data in store.snapshots()]
    assert all(isinstance(s, Snapshot) for s in found), found
    return found  # type: ignore[return-value]  # checked just above


def assert_is_a_fold_up_to_its_position(store: MemoryStore, snap: Snapshot) -> None:
    view, op_stats, notes = new_view(), OperationalStats(), LogNotes()
    rebuild(store, view, upto=snap.seq, also=(op_stats.apply, notes.apply))
    assert view.seq == snap.seq
    encode = msgspec.msgpack.encode
    assert encode(snap.view) == encode(view.state())
    assert encode(snap.op_stats) == encode(op_stats.state())
    assert encode(snap.notes) == encode(notes.state())


async def test_every_snapshot_holds_every_projection_at_one_position(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with running(store, every_events=40) as gw:
        for i in range(120):
            for event in request(i):
                await gw.log.append(event)
            if i % 3 == 0:
                await trio.sleep(0.001)  # batches of varying size
        await gw.log.append_durable(ServiceStarted(ts=T0, version="t"))
        await trio.sleep(1)
        snapshots = stored(store)
    assert gw.snapshotter.statistics().snapshots >= 5
    assert len(snapshots) == 3  # the newest few
    assert [s.seq for s in snapshots] == sorted((s.seq for s in snapshots), reverse=True)
    for snap in snapshots:
        assert_is_a_fold_up_to_its_position(store, snap)


async def test_a_quiet_gateway_snapshots_what_came_since_the_last_one_after_the_interval(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    async with running(store, every_events=10**6, every_s=600) as gw:
        for event in request(1):
            await gw.log.append(event)
        await trio.sleep(599)
        assert stored(store) == []
        await trio.sleep(2)
        assert [s.seq for s in stored(store)] == [store.last_seq()]
        await trio.sleep(3600)  # nothing new: nothing written
        assert gw.snapshotter.statistics().snapshots == 1
        await gw.log.append_durable(ConfigApplied(ts=T0, hash="h"))
        await trio.sleep(601)
        (newest, _) = stored(store)
    assert newest.seq == store.last_seq() and newest.notes.config_hash == "h"
    assert_is_a_fold_up_to_its_position(store, newest)


class FullStore(MemoryStore):
    def save_snapshot(self, seq: int, data: bytes, keep: int) -> None:
        raise apsw.FullError("database or disk is full")


async def test_a_snapshot_that_cannot_be_written_is_logged_and_the_gateway_goes_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FullStore()
    with caplog.at_level(logging.WARNING, "switchboard.snapshot"):
        async with running(store, every_events=5) as gw:
            for i in range(4):
                for event in request(i):
                    await gw.log.append(event)
                await trio.sleep(0.01)
            seq = await gw.log.append_durable(ConfigApplied(ts=T0, hash="h"))
    assert seq == store.last_seq() and gw.snapshotter.statistics().failures >= 1
    assert (
        "not written (database or disk is full): the next start folds the log from an older one"
        in caplog.text
    )


async def test_a_snapshot_too_large_to_encode_is_logged_and_the_gateway_goes_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A number past 64 bits in the projections (a log written before provider counts were bounded) cannot
    be saved in msgpack: the snapshot is skipped with a warning, the actor and the gateway go on."""
    store = MemoryStore()
    [started, succeeded] = [e for e in request(1) if isinstance(e, AttemptStarted | AttemptSucceeded)]
    assert isinstance(succeeded, AttemptSucceeded)
    huge = msgspec.structs.replace(succeeded, input_tokens=2**70)
    with caplog.at_level(logging.WARNING, "switchboard.snapshot"):
        async with running(store, every_events=2) as gw:
            for event in (started, huge, *request(2), *request(3)):
                await gw.log.append(event)
            await trio.sleep(0.01)
            seq = await gw.log.append_durable(ConfigApplied(ts=T0, hash="h"))
    assert seq == store.last_seq() and gw.snapshotter.statistics().failures >= 1
    assert "not written (" in caplog.text


def settings() -> Settings:
    return Settings(
        models=MODELS,
        keys=[(k, p, k, "config") for k, p in KEYS],
        deadlines=Deadlines(first_byte_s=30.0, stall_s=45.0, keepalive_s=10.0),
        max_attempts=3,
        policy=RoutingPolicy(),
        version="t",
        rolling_day_platforms=frozenset({"gemini"}),
        platforms=frozenset({"groq", "gemini"}),
        snapshot_every_events=25,
    )


async def serve(store: MemoryStore, *events: Event) -> None:
    """One run of the gateway that appends `events` while it serves, then shuts down."""

    async def serve_http(runtime: Runtime) -> None:
        for event in events:
            await runtime.log.append(event)
        await runtime.log.append_durable(ConfigApplied(ts=T0, hash="not this start's"))

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_service(
                store, FakeUpstream(), settings(), serve_http, handle_signals=False, task_status=task_status
            )
        )


async def test_shutdown_writes_a_snapshot_at_the_final_position_and_the_next_start_resumes_there(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    await serve(store, *(e for i in range(30) for e in request(i)))
    newest = check(next(iter(store.snapshots()))[1], settings().config_record(0).hash, store.last_seq())
    assert isinstance(newest, Snapshot) and newest.seq == store.last_seq()
    assert isinstance(store.read_after(newest.seq - 1)[0][1], ServiceStopped)

    loaded = load_projections(store, settings())
    assert (loaded.snapshot_seq, loaded.replayed) == (store.last_seq(), 0)
    whole = settings().new_view()
    op_stats, notes = OperationalStats(), LogNotes()
    rebuild(store, whole, also=(op_stats.apply, notes.apply))
    encode = msgspec.msgpack.encode
    assert encode(loaded.view.state()) == encode(whole.state())
    assert encode(loaded.op_stats.state()) == encode(op_stats.state())
    assert (loaded.notes.config_hash, loaded.notes.lifecycle) == ("not this start's", notes.lifecycle)

    # The second start sees the first's stop (clean) and records its configuration again (the last one
    # recorded is not its own), from the snapshot's notes.
    before = store.last_seq()
    await serve(store)
    second = store.read_after(before)
    assert type(second[0][1]) is ConfigApplied and second[0][1].hash == settings().config_record(0).hash
    started = next(e for _, e in second if isinstance(e, ServiceStarted))
    assert started.unclean_previous_start is None and started.events_replayed == before


async def test_a_snapshotter_behind_the_view_catches_up_to_its_position_before_it_writes(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore()
    log = LogWriter(store)
    health = ModelHealth(new_view(), log, lambda: T0)
    snapshotter = Snapshotter(
        store,
        log,
        health,
        OperationalStats(),
        LogNotes(),
        config_hash=HASH,
        seq=0,
        saved_seq=0,
        every_events=1,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(health.run)
        for i in range(6):  # batches the view folds while the snapshotter is not running yet
            for event in request(i):
                await log.append_durable(event)
        await trio.sleep(1)
        await nursery.start(snapshotter.run)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    (first, *_) = reversed(stored(store))  # the oldest: taken when the view was already at the end
    assert first.seq == store.last_seq()
    assert_is_a_fold_up_to_its_position(store, first)
