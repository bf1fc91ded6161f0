"""One contract for every log store: each backend subclasses `StoreContract` and must pass all of it."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import sqlite_store
from events import store as memory_store
from events.sqlite_store import MIGRATIONS, SchemaVersionError, SqliteStore
from events.store import Entry, LogStore, MemoryStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    ClientDisconnected,
    Event,
    KeyAdded,
    ModelUpdated,
    RequestCompleted,
    RequestReceived,
    ServiceStarted,
    StreamStalled,
    event_type,
)


def sample_events(request_id: str = "r1", ts: float = 1000.0) -> list[Event]:
    """One request's life plus request-less events, covering tuples, None and Literal fields."""
    return [
        ServiceStarted(ts=ts, version="0.1.0", events_replayed=3),
        RequestReceived(
            ts=ts + 0.1,
            request_id=request_id,
            model="auto",
            stream=True,
            messages=2,
            est_input_tokens=40,
            requested_models=("groq/llama", "gemini/flash"),
        ),
        AttemptStarted(
            ts=ts + 0.2, request_id=request_id, attempt=1, platform="groq", model="llama", key_id="k1"
        ),
        AttemptFailed(
            ts=ts + 0.3,
            request_id=request_id,
            attempt=1,
            platform="groq",
            model="llama",
            key_id="k1",
            kind="rate_limited",
            status=429,
            retry_after_s=None,
        ),
        StreamStalled(
            ts=ts + 0.4,
            request_id=request_id,
            platform="gemini",
            model="flash",
            key_id="k2",
            phase="mid",
            silent_s=4.5,
        ),
        ClientDisconnected(ts=ts + 0.5, request_id=request_id, platform=None, model=None),
        RequestCompleted(
            ts=ts + 0.6,
            request_id=request_id,
            outcome="client_abort",
            status=499,
            attempts=2,
            latency_ms=600.0,
        ),
        KeyAdded(ts=ts + 0.7, key_id="k3", platform="mistral", label="spare", source="vault"),
        ModelUpdated(ts=ts + 0.8, platform="groq", model="llama", enabled=False, fallback=None, pool=None),
    ]


def entries(first_seq: int, events: list[Event]) -> list[Entry]:
    return list(enumerate(events, start=first_seq))  # type: ignore[arg-type]


# Bounded ints (the JSON codec is 64-bit) and finite floats (JSON writes NaN as null, which does not decode).
_ts = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_request_id = st.sampled_from([None, "r1", "r2", "r3"])
_name = st.text(max_size=10)
_count = st.integers(min_value=0, max_value=2**31)
_float = st.floats(allow_nan=False, allow_infinity=False)
_event = st.one_of(
    st.builds(
        RequestReceived,
        ts=_ts,
        request_id=_request_id,
        model=_name,
        stream=st.booleans(),
        messages=_count,
        est_input_tokens=_count,
        requested_models=st.lists(_name, max_size=3).map(tuple),
    ),
    st.builds(
        AttemptFailed,
        ts=_ts,
        request_id=_request_id,
        attempt=_count,
        platform=_name,
        model=_name,
        key_id=_name,
        kind=st.sampled_from(["connect", "auth", "stall_mid", "some_future_kind"]),
        status=st.none() | st.integers(min_value=100, max_value=599),
        retry_after_s=st.none() | _float,
    ),
    st.builds(
        StreamStalled,
        ts=_ts,
        request_id=_request_id,
        platform=_name,
        model=_name,
        key_id=_name,
        phase=st.sampled_from(["pre", "mid"]),
        silent_s=_float,
    ),
    st.builds(
        ModelUpdated,
        ts=_ts,
        platform=_name,
        model=_name,
        enabled=st.none() | st.booleans(),
        pool=st.none() | _name,
    ),
    st.builds(
        KeyAdded, ts=_ts, key_id=_name, platform=_name, label=_name, source=st.sampled_from(["config", "env"])
    ),
)
_TAGS = ("request_received", "attempt_failed", "stream_stalled", "model_updated", "key_added")  # of _event


class StoreContract:
    """The behaviour every `LogStore` owes its callers. Subclasses fill in the two hooks."""

    def make_store(self, directory: Path) -> LogStore:
        """A store for the log kept in `directory`; a persistent one reopens the same log."""
        raise NotImplementedError

    def second_writer(self, store: LogStore, directory: Path) -> LogStore:
        """Another writer on the same log: what a second worker process would hold."""
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[LogStore]:
        with closing(self.make_store(tmp_path)) as store:
            yield store

    @pytest.fixture
    def writer(self, store: LogStore, tmp_path: Path) -> Iterator[LogStore]:
        with closing(self.second_writer(store, tmp_path)) as writer:
            yield writer

    def test_empty_store(self, store: LogStore) -> None:
        assert store.last_seq() == 0
        assert store.read_after(0) == []
        assert store.read_request("r1") == []

    def test_append_numbers_from_one_and_round_trips(self, store: LogStore) -> None:
        events = sample_events()
        assert store.append(events) == list(range(1, len(events) + 1))
        assert store.last_seq() == len(events)
        assert store.read_after(0) == entries(1, events)

    def test_read_after_returns_the_later_events_in_order(self, store: LogStore) -> None:
        events = sample_events()
        store.append(events)
        for n in range(len(events) + 2):
            assert store.read_after(n) == entries(n + 1, events[n:])

    def test_read_after_limit(self, store: LogStore) -> None:
        events = sample_events()
        store.append(events)
        assert store.read_after(0, limit=3) == entries(1, events[:3])
        assert store.read_after(4, limit=2) == entries(5, events[4:6])
        assert store.read_after(len(events) - 1, limit=5) == entries(len(events), events[-1:])
        assert store.read_after(0, limit=0) == []

    # -- read_after(..., types=...): only the events of the given type tags, `limit` counting those

    def test_read_after_types_returns_only_those_types_with_their_real_seqs(self, store: LogStore) -> None:
        events = sample_events("r1", ts=1.0) + sample_events("r2", ts=2.0)
        store.append(events)
        wanted = {"attempt_failed", "key_added"}
        expected = [(s, e) for s, e in entries(1, events) if event_type(e) in wanted]
        assert [s for s, _ in expected] == [4, 8, 13, 17]  # the fixture's layout: not renumbered from 1
        for types in (wanted, frozenset(wanted), sorted(wanted), tuple(wanted)):
            assert store.read_after(0, types=types) == expected
        assert store.read_after(0, types={"model_updated"}) == [(9, events[8]), (18, events[17])]

    def test_read_after_types_with_a_limit_counts_only_matching_events(self, store: LogStore) -> None:
        events = sample_events("r1", ts=1.0) + sample_events("r2", ts=2.0) + sample_events("r3", ts=3.0)
        store.append(events)
        wanted = ("service_started", "model_updated")
        matching = [(s, e) for s, e in entries(1, events) if event_type(e) in wanted]
        assert len(matching) == 6
        # Not the first 3 rows filtered (one match): the first 3 matches, which reach seq 10.
        assert store.read_after(0, limit=3, types=wanted) == matching[:3]
        assert [s for s, _ in store.read_after(0, limit=3, types=wanted)] == [1, 9, 10]
        assert store.read_after(0, limit=1, types=wanted) == matching[:1]
        assert store.read_after(0, limit=100, types=wanted) == matching
        assert store.read_after(0, limit=0, types=wanted) == []

    def test_read_after_types_starts_after_the_position(self, store: LogStore) -> None:
        events = sample_events("r1", ts=1.0) + sample_events("r2", ts=2.0)
        store.append(events)
        wanted = {"attempt_started", "attempt_failed"}
        matching = [(s, e) for s, e in entries(1, events) if event_type(e) in wanted]
        assert [s for s, _ in matching] == [3, 4, 12, 13]
        assert store.read_after(3, types=wanted) == matching[1:]  # strictly after seq 3
        assert store.read_after(4, types=wanted) == matching[2:]  # skips the non-matching 5..11
        assert store.read_after(5, limit=1, types=wanted) == matching[2:3]
        assert store.read_after(12, limit=5, types=wanted) == matching[3:]
        assert store.read_after(13, types=wanted) == []
        assert store.read_after(len(events) + 5, types=wanted) == []

    def test_read_after_no_types_returns_nothing(self, store: LogStore) -> None:
        store.append(sample_events())
        for empty in ((), [], set(), frozenset()):
            assert store.read_after(0, types=empty) == []
            assert store.read_after(0, limit=3, types=empty) == []
        assert store.read_after(0, types={"no_such_type", "route_decided"}) == []  # none in the log
        assert len(store.read_after(0, types=None)) == len(sample_events())  # None: no filter

    def test_read_after_types_does_not_decode_the_other_events(
        self, store: LogStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        events = sample_events("r1", ts=1.0) + sample_events("r2", ts=2.0)
        store.append(events)
        decoded: list[bytes | str] = []
        decode = memory_store.decode_event

        def counting(data: bytes | str) -> Event:
            decoded.append(data)
            return decode(data)

        for module in (memory_store, sqlite_store):  # whichever this backend decodes with
            monkeypatch.setattr(module, "decode_event", counting)
        got = store.read_after(0, types={"key_added"})
        assert [e for _, e in got] == [events[7], events[16]]
        assert len(decoded) == 2
        decoded.clear()
        assert len(store.read_after(0, limit=1, types={"key_added", "request_completed"})) == 1
        assert len(decoded) == 1

    def test_read_request_filters_in_order(self, store: LogStore) -> None:
        first, second = sample_events("r1", ts=1.0), sample_events("r2", ts=2.0)
        store.append(first[:5])
        store.append(second)
        store.append(first[5:])
        got = store.read_request("r1")
        assert [e for _, e in got] == [e for e in first if e.request_id == "r1"]
        assert [s for s, _ in got] == sorted(s for s, _ in got)
        assert all(store.read_after(s - 1, limit=1) == [(s, e)] for s, e in got)
        assert [e for _, e in store.read_request("r2")] == [e for e in second if e.request_id == "r2"]
        assert store.read_request("nobody") == []

    def test_read_requests_gives_those_requests_events_of_those_types_in_order(self, store: LogStore) -> None:
        first, second, third = (sample_events(r, ts=t) for r, t in (("r1", 1.0), ("r2", 2.0), ("r3", 3.0)))
        store.append(first[:4])
        store.append(second)
        store.append(third)
        store.append(first[4:])
        got = store.read_requests(["r1", "r2", "nobody"], {"attempt_failed", "request_completed"})
        assert [(e.request_id, event_type(e)) for _, e in got] == [
            ("r1", "attempt_failed"),
            ("r2", "attempt_failed"),
            ("r2", "request_completed"),
            ("r1", "request_completed"),
        ]
        assert [s for s, _ in got] == sorted(s for s, _ in got)
        assert store.read_requests([], {"request_completed"}) == []

    def test_newest_of_type_pages_back_by_time_then_seq(self, store: LogStore) -> None:
        # Stamps out of seq order (another process's clock, a request that took long): time comes first.
        stamps = [5.0, 3.0, 5.0, 1.0, 4.0, 5.0]
        store.append([ServiceStarted(ts=0.5, version="x")])
        seqs = store.append([ServiceStarted(ts=t, version="x") for t in stamps])
        store.append([KeyAdded(ts=9.0, key_id="k", platform="p", label="", source="vault")])
        by_time = sorted(zip(stamps, seqs, strict=True), reverse=True)
        newest = store.newest_of_type("service_started", 3)
        assert [(e.ts, s) for s, e in newest] == by_time[:3]
        following = store.newest_of_type("service_started", 10, before=newest[-1][0])
        assert [(e.ts, s) for s, e in following] == [*by_time[3:], (0.5, 1)]
        within = store.newest_of_type("service_started", 10, since=3.0, until=4.5)
        assert [e.ts for _, e in within] == [4.0, 3.0]
        assert store.newest_of_type("key_added", 10, until=8.0) == []
        assert store.newest_of_type("nothing", 10) == []

    def test_last_of_before_a_seq(self, store: LogStore) -> None:
        a, b, c = store.append([ServiceStarted(ts=float(i), version=str(i)) for i in range(3)])
        assert store.last_of("service_started") == (c, ServiceStarted(ts=2.0, version="2"))
        assert store.last_of("service_started", before=c) == (b, ServiceStarted(ts=1.0, version="1"))
        assert store.last_of("service_started", before=a) is None

    def test_empty_batch_is_a_no_op(self, store: LogStore) -> None:
        assert store.append([]) == []
        assert store.last_seq() == 0
        store.append(sample_events()[:2])
        assert store.append([]) == []
        assert store.last_seq() == 2
        assert len(store.read_after(0)) == 2

    def test_seqs_keep_increasing_across_batches(self, store: LogStore) -> None:
        events = sample_events()
        assert store.append(events[:1]) == [1]
        assert store.append(events[1:4]) == [2, 3, 4]
        assert store.append(events[4:]) == list(range(5, len(events) + 1))
        assert store.read_after(0) == entries(1, events)

    def test_writers_share_one_sequence(self, store: LogStore, writer: LogStore) -> None:
        events = sample_events()
        assert store.append(events[:3]) == [1, 2, 3]
        assert writer.append(events[3:5]) == [4, 5]
        assert store.append(events[5:]) == list(range(6, len(events) + 1))
        assert store.read_after(0) == writer.read_after(0) == entries(1, events)
        assert writer.last_seq() == len(events)

    @settings(
        max_examples=40,
        deadline=None,
        # Each backend subclass runs this inherited test; that is the point, not a mistake.
        suppress_health_check=[HealthCheck.differing_executors],
    )
    @given(batches=st.lists(st.lists(_event, max_size=8), max_size=6))
    def test_reads_match_everything_appended(self, batches: list[list[Event]]) -> None:
        with tempfile.TemporaryDirectory() as directory, closing(self.make_store(Path(directory))) as store:
            appended: list[Event] = []
            for batch in batches:
                seqs = store.append(batch)
                assert seqs == list(range(len(appended) + 1, len(appended) + len(batch) + 1))
                appended.extend(batch)
            assert store.last_seq() == len(appended)
            for k in range(len(appended) + 2):
                assert store.read_after(k) == entries(k + 1, appended[k:])
                assert store.read_after(k, limit=3) == entries(k + 1, appended[k : k + 3])
            for request_id in ("r1", "r2", "r3"):
                expected = [(s, e) for s, e in entries(1, appended) if e.request_id == request_id]
                assert store.read_request(request_id) == expected

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(
        batches=st.lists(st.lists(_event, max_size=8), max_size=5),
        types=st.sets(st.sampled_from([*_TAGS, "route_decided", "no_such_type"]), max_size=4),
        limit=st.none() | st.integers(0, 6),
    )
    def test_typed_reads_match_filtering_everything_appended(
        self, batches: list[list[Event]], types: set[str], limit: int | None
    ) -> None:
        with tempfile.TemporaryDirectory() as directory, closing(self.make_store(Path(directory))) as store:
            appended = [e for batch in batches for e in batch]
            for batch in batches:
                store.append(batch)
            for k in range(len(appended) + 2):
                expected = [(s, e) for s, e in entries(k + 1, appended[k:]) if event_type(e) in types]
                assert store.read_after(k, limit, types) == expected[:limit]


class TestMemoryStore(StoreContract):
    def make_store(self, directory: Path) -> LogStore:
        return MemoryStore()

    def second_writer(self, store: LogStore, directory: Path) -> LogStore:
        return store


class TestSqliteStore(StoreContract):
    def make_store(self, directory: Path) -> SqliteStore:
        return SqliteStore(directory / "log.db")

    def second_writer(self, store: LogStore, directory: Path) -> LogStore:
        # A second connection to the file, as another worker process holds; tail relies on data_version.
        return self.make_store(directory)

    def test_creates_the_parent_directory(self, tmp_path: Path) -> None:
        with closing(SqliteStore(tmp_path / "a" / "b" / "log.db")) as store:
            store.append(sample_events()[:1])
        assert (tmp_path / "a" / "b" / "log.db").is_file()

    def test_reopening_keeps_events_and_seqs_continue(self, tmp_path: Path) -> None:
        events = sample_events()
        with closing(self.make_store(tmp_path)) as store:
            store.append(events[:4])
        with closing(self.make_store(tmp_path)) as store:
            assert store.last_seq() == 4
            assert store.append(events[4:]) == list(range(5, len(events) + 1))
        with closing(self.make_store(tmp_path)) as store:
            assert store.read_after(0) == entries(1, events)

    def test_file_is_in_wal_mode_at_the_latest_schema_version(self, tmp_path: Path) -> None:
        self.make_store(tmp_path).close()
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            assert db.execute("PRAGMA user_version").get == len(MIGRATIONS)
            assert db.execute("PRAGMA journal_mode").get == "wal"

    def test_indexes_exist(self, tmp_path: Path) -> None:
        self.make_store(tmp_path).close()
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
            columns = {tuple(c for _, _, c in db.execute(f"PRAGMA index_info({n})")) for n in names}
        assert columns == {("request_id",), ("type", "ts")}

    def test_a_newer_schema_is_refused(self, tmp_path: Path) -> None:
        self.make_store(tmp_path).close()
        newer = len(MIGRATIONS) + 1
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            db.execute(f"PRAGMA user_version = {newer}")
        with pytest.raises(SchemaVersionError, match=f"schema version {newer}.*newer switchboard"):
            self.make_store(tmp_path)
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            assert db.execute("PRAGMA user_version").get == newer

    def test_an_old_file_is_migrated_in_order(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        events = sample_events()
        with closing(self.make_store(tmp_path)) as store:
            store.append(events)
        later = [
            "ALTER TABLE events ADD COLUMN note TEXT",
            "CREATE INDEX events_note ON events (note)",  # fails unless the previous migration ran first
        ]
        monkeypatch.setattr(sqlite_store, "MIGRATIONS", [*MIGRATIONS, *later])
        with closing(self.make_store(tmp_path)) as store:
            assert store.read_after(0) == entries(1, events)
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            assert db.execute("PRAGMA user_version").get == len(MIGRATIONS) + 2
            assert "note" in [c for _, c, *_ in db.execute("PRAGMA table_info(events)")]

    def test_a_failed_migration_changes_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.make_store(tmp_path).close()
        broken = "CREATE TABLE scratch (x); SELECT no_such_column FROM events"
        monkeypatch.setattr(sqlite_store, "MIGRATIONS", [*MIGRATIONS, broken])
        with pytest.raises(apsw.SQLError):
            self.make_store(tmp_path)
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            assert db.execute("PRAGMA user_version").get == len(MIGRATIONS)
            assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'scratch'").get == 0

    def test_a_batch_failing_to_encode_writes_nothing(
        self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store.append(sample_events("r0")[:2])
        encode = sqlite_store.encode_event
        calls = 0

        def encode_failing_on_third(event: Event) -> bytes:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise ValueError("cannot encode")
            return encode(event)

        monkeypatch.setattr(sqlite_store, "encode_event", encode_failing_on_third)
        with pytest.raises(ValueError, match="cannot encode"):
            store.append(sample_events("r1"))
        assert store.last_seq() == 2
        assert store.read_request("r1") == []

    def test_a_batch_failing_in_the_database_writes_nothing(self, store: SqliteStore) -> None:
        store.append(sample_events("r0")[:2])
        events = sample_events("r1")
        # SQLite stores NaN as NULL, so the third row breaks `ts NOT NULL` after two rows were inserted.
        events[2] = AttemptStarted(
            ts=math.nan, request_id="r1", attempt=1, platform="groq", model="llama", key_id="k1"
        )
        with pytest.raises(apsw.ConstraintError):
            store.append(events)
        assert store.last_seq() == 2
        assert store.read_request("r1") == []
        # The failed transaction is closed: the next batch commits and takes the next seqs.
        assert store.append(sample_events("r2")[:3]) == [3, 4, 5]


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_bytes(b"this is not a database at all" * 100), "not a readable SQLite database"),
        (lambda p: p.write_bytes(p.read_bytes()[:1500]), "not a readable SQLite database"),
    ],
    ids=["zero-length", "garbage", "truncated"],
)
def test_a_damaged_log_file_stops_with_one_line_naming_it(tmp_path: Path, damage, said: str) -> None:  # type: ignore[no-untyped-def]
    # From issue 10's list: a zero-length file started a fresh log without a word; others gave tracebacks.
    from events.sqlite_store import StoreDamaged

    path = tmp_path / "switchboard.db"
    store = SqliteStore(path)
    store.append(sample_events())
    store.close()
    for extra in ("-wal", "-shm"):
        (tmp_path / f"switchboard.db{extra}").unlink(missing_ok=True)
    damage(path)
    with pytest.raises(StoreDamaged) as err:
        SqliteStore(path).close()
    message = str(err.value)
    assert str(path) in message and said in message and "\n" not in message
