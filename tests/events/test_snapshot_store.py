"""What every log store owes snapshots and the read-only commands: snapshots kept newest first, only the
newest few, beside the log; the last event of a type found without reading the log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import apsw
import pytest

from events.sqlite_store import MIGRATIONS, SqliteStore
from events.store import LogStore, MemoryStore
from events.types import ConfigApplied, KeyEnabled, ServiceStarted


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStore]:
    s: LogStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "log.db")
    yield s
    s.close()


def test_snapshots_come_back_newest_first_and_only_the_newest_are_kept(store: LogStore) -> None:
    assert list(store.snapshots()) == []
    for seq in (10, 30, 20, 40):
        store.save_snapshot(seq, f"at {seq}".encode(), keep=3)
    assert list(store.snapshots()) == [(40, b"at 40"), (30, b"at 30"), (20, b"at 20")]
    store.save_snapshot(40, b"again at 40", keep=2)
    assert list(store.snapshots()) == [(40, b"again at 40"), (40, b"at 40")]


def test_last_of_finds_the_last_event_of_a_type(store: LogStore) -> None:
    assert store.last_of("config_applied") is None
    store.append([ConfigApplied(ts=1.0, hash="h1"), ServiceStarted(ts=1.0, version="t")])
    store.append([KeyEnabled(ts=2.0, key_id="k")] * 5 + [ConfigApplied(ts=3.0, hash="h2")])
    store.append([KeyEnabled(ts=4.0, key_id="k")] * 5)
    assert store.last_of("config_applied") == (8, ConfigApplied(ts=3.0, hash="h2"))
    assert store.last_of("key_enabled") == (13, KeyEnabled(ts=4.0, key_id="k"))
    assert store.last_of("service_stopped") is None


def test_snapshots_live_in_their_own_table_from_migration_2(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "log.db").close()
    with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
        assert db.execute("PRAGMA user_version").get == len(MIGRATIONS) >= 2
        columns = [row[1] for row in db.execute("PRAGMA table_info(snapshots)")]
    assert columns == ["id", "seq", "created", "data"]


def test_a_log_from_before_snapshots_is_migrated_and_has_none(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with closing(apsw.Connection(str(path))) as db:
        db.execute(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
    store = SqliteStore(path)
    try:
        assert list(store.snapshots()) == []
        store.save_snapshot(1, b"x", keep=3)
        assert list(store.snapshots()) == [(1, b"x")]
    finally:
        store.close()


def test_a_file_without_the_table_reads_as_no_snapshots(tmp_path: Path) -> None:
    """A file opened without migrating it (read-only) may not have the table yet."""
    store = SqliteStore(tmp_path / "log.db")
    try:
        with closing(apsw.Connection(str(tmp_path / "log.db"))) as db:
            db.execute("DROP TABLE snapshots")
        assert list(store.snapshots()) == []
    finally:
        store.close()
