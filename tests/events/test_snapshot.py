"""Snapshots of the projections: restored at any position and folded to the end, they equal a full fold;
one that does not fit (configuration, format, schema, position, bytes) is passed over, newest first, with a
line saying why, down to a full fold."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replay import T0, new_view, observable, random_events

from events import snapshot
from events.op_stats import OperationalStats
from events.snapshot import LogNotes, Snapshot, check, resume
from events.store import LogStore, MemoryStore
from events.types import (
    ConfigApplied,
    Event,
    KeyRemoved,
    ServiceStarted,
    ServiceStopped,
    SessionPinCleared,
)
from events.view import RoutingView, folded_tags, rebuild

HASH = "a" * 64


def history(seed: int, n: int) -> list[Event]:
    """test_replay's random history, with the events it lacks (configs, stops, removals, cleared pins)."""
    rng = random.Random(seed)
    events = random_events(rng, n)
    for _ in range(max(1, n // 20)):
        at = rng.randrange(len(events) + 1)
        ts = events[min(at, len(events) - 1)].ts
        events.insert(
            at,
            rng.choice(
                [
                    ConfigApplied(ts=ts, hash=rng.choice(["h1", "h2"])),
                    ServiceStopped(ts=ts),
                    ServiceStarted(ts=ts, version="t"),
                    KeyRemoved(ts=ts, key_id=rng.choice(["g2", "late", "c1"])),
                    SessionPinCleared(ts=ts, session="s1", reason="cooling"),
                ]
            ),
        )
    return events


class Folded:
    """What a start folds: the view, the operational statistics, the supervisor's notes."""

    def __init__(self) -> None:
        self.view, self.op_stats, self.notes = new_view(), OperationalStats(), LogNotes()

    def fold(self, store: LogStore, upto: int | None = None, *, only_folded: bool = False) -> int:
        types = folded_tags(OperationalStats.FOLDS, LogNotes.FOLDS) if only_folded else None
        return rebuild(store, self.view, upto=upto, also=(self.op_stats.apply, self.notes.apply), types=types)

    def encoded(self) -> tuple[bytes, bytes, bytes]:
        """A stable encoding of each projection's state: equal bytes, equal state."""
        encode = msgspec.msgpack.encode
        return encode(self.view.state()), encode(self.op_stats.state()), encode(self.notes.state())


def store_of(events: list[Event], batch: int = 7) -> MemoryStore:
    store = MemoryStore()
    for i in range(0, len(events), batch):
        store.append(events[i : i + batch])
    return store


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(0, 160),
    cut=st.floats(0, 1),
    laters=st.lists(st.floats(0, 8 * 86400), min_size=1, max_size=3),
)
def test_a_snapshot_at_any_position_folded_to_the_end_equals_a_full_fold(
    seed: int, n: int, cut: float, laters: list[float]
) -> None:
    store = store_of(history(seed, n))
    full = Folded()
    full.fold(store)

    at = round(cut * store.last_seq())
    before = Folded()
    before.fold(store, upto=at)
    snapshot.save(store, snapshot.take(before.view, before.op_stats, before.notes, HASH, T0))

    resumed = Folded()
    found, skipped = resume(store, resumed.view, HASH, resumed.op_stats, resumed.notes)
    assert found is not None and found.seq == at and skipped == []
    assert resumed.fold(store) == store.last_seq() - at  # only the tail
    assert resumed.encoded() == full.encoded()
    last = store.read_after(store.last_seq() - 1)
    end = last[0][1].ts if last else T0
    for later in laters:  # and it reads the same, caches included
        assert observable(resumed.view, end + later) == observable(full.view, end + later)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 160), cut=st.floats(0, 1), reads=st.integers(1, 20))
def test_a_snapshot_of_a_view_that_was_read_while_it_folded_reads_like_a_full_fold(
    seed: int, n: int, cut: float, reads: int
) -> None:
    """Reads prune quota windows and decayed buckets as of their `now`: the live view's state is smaller
    than a rebuild's, and everything read from it the same."""
    store = store_of(history(seed, n))
    full = Folded()
    full.fold(store)
    live = Folded()
    at = round(cut * store.last_seq())
    for seq, event in store.read_after(0, at):
        live.view.apply(seq, event)
        live.op_stats.apply(event)
        live.notes.apply(event)
        if seq % reads == 0:
            observable(live.view, event.ts)
    snapshot.save(store, snapshot.take(live.view, live.op_stats, live.notes, HASH, T0))
    resumed = Folded()
    resume(store, resumed.view, HASH, resumed.op_stats, resumed.notes)
    resumed.fold(store)
    end = store.read_after(store.last_seq() - 1)[0][1].ts
    for later in (0.0, 30.0, 3600.0, 86400.0):
        assert observable(resumed.view, end + later) == observable(full.view, end + later)
    assert resumed.encoded()[1:] == full.encoded()[1:]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 160), cut=st.floats(0, 1))
def test_a_rebuild_that_reads_only_the_folded_types_equals_one_that_reads_everything(
    seed: int, n: int, cut: float
) -> None:
    store = store_of(history(seed, n))
    at = round(cut * store.last_seq())
    everything, folded_only = Folded(), Folded()
    everything.fold(store, upto=at)
    folded_only.fold(store, upto=at, only_folded=True)
    assert folded_only.view.seq == everything.view.seq == at
    assert folded_only.encoded() == everything.encoded()
    everything.fold(store)
    folded_only.fold(store, only_folded=True)
    assert folded_only.view.seq == store.last_seq()
    assert folded_only.encoded() == everything.encoded()


def snapshot_at(store: LogStore, upto: int, config_hash: str = HASH) -> Snapshot:
    folded = Folded()
    folded.fold(store, upto=upto)
    return snapshot.take(folded.view, folded.op_stats, folded.notes, config_hash, T0)


def log() -> MemoryStore:
    return store_of(history(3, 120))


def resumed(store: LogStore) -> tuple[Snapshot | None, list[str], Folded]:
    folded = Folded()
    found, skipped = resume(store, folded.view, HASH, folded.op_stats, folded.notes)
    folded.fold(store)
    return found, skipped, folded


def full_fold(store: LogStore) -> Folded:
    folded = Folded()
    folded.fold(store)
    return folded


def test_a_snapshot_under_another_configuration_is_passed_over_for_an_older_one() -> None:
    store = log()
    snapshot.save(store, snapshot_at(store, 40))
    snapshot.save(store, snapshot_at(store, 80, config_hash="b" * 64))
    found, skipped, folded = resumed(store)
    assert found is not None and found.seq == 40
    assert skipped == [
        f"snapshot at seq 80 ignored: it was made under another configuration (bbbbbbbbbbbb, now {HASH[:12]})"
    ]
    assert folded.encoded() == full_fold(store).encoded()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"format": snapshot.FORMAT + 1}, f"its format is version {snapshot.FORMAT + 1}, this build reads"),
        ({"schema": snapshot.LOG_SCHEMA - 1}, f"it was made on event log schema {snapshot.LOG_SCHEMA - 1}"),
        ({"seq": 10_000}, "its position 10000 is past the log's end (1"),
    ],
)
def test_a_snapshot_that_does_not_fit_is_ignored_and_the_log_folded_whole(
    change: dict[str, int], why: str
) -> None:
    store = log()
    snapshot.save(store, msgspec.structs.replace(snapshot_at(store, 60), **change))
    found, skipped, folded = resumed(store)
    assert found is None
    assert len(skipped) == 1 and skipped[0].startswith("snapshot at seq ") and why in skipped[0]
    assert folded.encoded() == full_fold(store).encoded()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"\x00garbage" + data,
        lambda data: b"",
        # The header fits, the body does not: a field of the wrong type deep inside.
        lambda data: msgspec.msgpack.encode({**msgspec.msgpack.decode(data), "view": [1, 2]}),
    ],
)
def test_a_snapshot_that_does_not_decode_is_ignored(damage: object) -> None:
    store = log()
    snapshot.save(store, snapshot_at(store, 30))
    good = snapshot.encode(snapshot_at(store, 90))
    store.save_snapshot(90, damage(good), snapshot.KEEP)  # type: ignore[operator]
    found, skipped, folded = resumed(store)
    assert found is not None and found.seq == 30
    assert len(skipped) == 1 and skipped[0].startswith("snapshot at seq 90 ignored: it does not decode")
    assert folded.encoded() == full_fold(store).encoded()


def test_check_reads_a_good_snapshot_back_whole() -> None:
    store = log()
    taken = snapshot_at(store, 70)
    assert check(snapshot.encode(taken), HASH, store.last_seq()) == taken


def test_the_notes_say_the_last_configuration_and_the_last_start_or_stop() -> None:
    notes = LogNotes()
    assert (notes.config_hash, notes.lifecycle) == (None, None)
    started = ServiceStarted(ts=T0, version="t")
    for event in [ConfigApplied(ts=T0, hash="h1"), started, ConfigApplied(ts=T0, hash="h2")]:
        notes.apply(event)
    assert (notes.config_hash, notes.lifecycle) == ("h2", started)


def test_restore_drops_what_the_view_had_cached() -> None:
    store = log()
    view: RoutingView = new_view()
    rebuild(store, view)
    view.intelligence()
    view.chain("auto")
    fresh = snapshot_at(store, 20)
    view.restore(fresh.view)
    expected = new_view()
    expected.restore(fresh.view)
    end = T0 + 10 * 86400
    assert observable(view, end) == observable(expected, end)
    assert view.chain("auto") == expected.chain("auto")


def test_decay_buckets_that_are_not_whole_are_damage() -> None:
    store = log()
    taken = snapshot_at(store, 90)
    stats = taken.view.stats
    first = stats.models[0]
    broken = msgspec.structs.replace(first, total=msgspec.structs.replace(first.total, buckets=b"12345"))
    view = msgspec.structs.replace(taken.view, stats=msgspec.structs.replace(stats, models=(broken,)))
    snapshot.save(store, msgspec.structs.replace(taken, view=view))
    found, skipped, _ = resumed(store)
    assert found is None
    assert skipped == [
        f"snapshot at seq 90 ignored: it does not decode (the decay buckets of {first.ref} are 5 bytes, "
        "not whole buckets)"
    ]
