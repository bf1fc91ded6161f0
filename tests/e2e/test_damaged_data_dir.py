"""Issue 10's acceptance: each damaged-data-dir case stops `switchboard serve` with exit code 2 and one line
on stderr that names the file and says what to do, before anything is appended or served."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from events.sqlite_store import SqliteStore
from events.types import ServiceStarted
from service import cli
from service.secrets import open_vault

Damage = Callable[[Path], None]


def _db(data_dir: Path) -> Path:
    return data_dir / "switchboard.db"


def _drop_wal(data_dir: Path) -> None:
    for extra in ("-wal", "-shm"):
        (data_dir / f"switchboard.db{extra}").unlink(missing_ok=True)


def zero_length(data_dir: Path) -> None:
    _drop_wal(data_dir)
    _db(data_dir).write_bytes(b"")


def truncated(data_dir: Path) -> None:
    _drop_wal(data_dir)
    _db(data_dir).write_bytes(_db(data_dir).read_bytes()[:1500])


def corrupt(data_dir: Path) -> None:
    _drop_wal(data_dir)
    _db(data_dir).write_bytes(b"not a database at all, a stray text file " * 200)


def future_schema(data_dir: Path) -> None:
    import apsw

    db = apsw.Connection(str(_db(data_dir)))
    db.execute("PRAGMA user_version = 999")
    db.close()


def damaged_row(data_dir: Path) -> None:
    import apsw

    db = apsw.Connection(str(_db(data_dir)))
    db.execute("UPDATE events SET data = X'FF7B2274797065' WHERE seq = 1")  # not UTF-8, not an event
    db.close()


def read_only(data_dir: Path) -> None:
    _drop_wal(data_dir)
    _db(data_dir).chmod(0o444)
    data_dir.chmod(0o555)


def master_key_missing(data_dir: Path) -> None:
    (data_dir / "master.key").unlink()


def master_key_different(data_dir: Path) -> None:
    (data_dir / "master.key").write_text(os.urandom(32).hex() + "\n")


CASES: list[tuple[Damage, str, str]] = [
    (zero_length, "switchboard.db is empty (0 bytes)", "restore it from a backup"),
    (truncated, "switchboard.db is not a readable SQLite database", "restore it from a backup"),
    (corrupt, "switchboard.db is not a readable SQLite database", "move it away"),
    (future_schema, "has event log schema version 999", "run a newer switchboard"),
    (damaged_row, "switchboard.db: the event at seq 1 cannot be read", "restore it from a backup"),
    (read_only, "data cannot be written", "make it writable"),
    (master_key_missing, "master.key is missing, but", "restore it from a backup"),
    (master_key_different, "master.key is not the master key", "restore the original from a backup"),
]


@pytest.mark.parametrize(("damage", "said", "fix"), CASES, ids=[c[0].__name__ for c in CASES])
def test_a_damaged_data_dir_stops_the_start_with_one_line_and_exit_code_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    damage: Damage,
    said: str,
    fix: str,
) -> None:
    monkeypatch.delenv("SWITCHBOARD_SECRET_KEY", raising=False)
    data_dir = tmp_path / "data"
    if damage is read_only and os.geteuid() == 0:
        # Root writes read-only files anyway: a read-only file system stops root too.
        data_dir.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data_dir)], check=False
        ).returncode:
            pytest.skip("running as root without the right to mount a read-only file system")
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(data_dir)], check=False))
    store = SqliteStore(_db(data_dir))  # a data dir a gateway has run in: a log, a master key, its check
    store.append([ServiceStarted(ts=1.0, version="0")])
    store.close()
    _, vault = open_vault(data_dir, _db(data_dir), {})
    vault.close()
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[server]\nport = 0\ndata_dir = "{data_dir}"\n[catalog]\nbuiltin = false\n')
    if damage is read_only and os.geteuid() == 0:
        _drop_wal(data_dir)
        subprocess.run(["mount", "-o", "remount,ro", str(data_dir)], check=True)
    else:
        damage(data_dir)
    try:
        code = cli.main(["serve", "--config", str(config)])
    finally:
        if not (damage is read_only and os.geteuid() == 0):
            data_dir.chmod(0o755)
    err = capsys.readouterr().err
    assert code == (1 if damage is read_only else 2)  # 1: the lock, before the log is looked at
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert said in err and fix in err, err
