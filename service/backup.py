"""`switchboard backup DEST`: a consistent copy of a data dir while the gateway runs.

The master key goes first (it never changes, and a database without it cannot start), then the database
through SQLite's online backup API: the copy is one consistent moment of the log, and the serving
gateway's writes go on meanwhile. Nothing is overwritten, and a backup that fails or is interrupted
leaves nothing half-made behind.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import apsw

from events.sqlite_store import BUSY_TIMEOUT_MS


class BackupError(Exception):
    """The backup cannot be made; the message is one line naming the file."""


@dataclass(frozen=True)
class BackupDone:
    database: Path
    master_key: Path | None
    events: int
    bytes: int
    seconds: float


def backup(db_path: Path, master_key: Path, dest: Path) -> BackupDone:
    if not db_path.exists():
        raise BackupError(f"{db_path} does not exist: nothing to back up (is --data-dir right?)")
    target = dest / db_path.name
    key_target = dest / master_key.name
    partial = dest / f".{db_path.name}.partial"  # renamed into place only once whole
    for path in (target, key_target):
        if path.exists():
            raise BackupError(f"{path} already exists: back up into an empty or new directory")
    started = time.monotonic()
    made: list[Path] = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        copied_key = None
        if master_key.exists():
            # 0600 from creation, as the original: the key is never readable by others, not even briefly.
            fd = os.open(key_target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            made.append(key_target)
            with os.fdopen(fd, "wb") as out, master_key.open("rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            copied_key = key_target
        partial.unlink(missing_ok=True)
        made.append(partial)
        events = _copy_database(db_path, partial)
        partial.rename(target)
        made[-1] = target
    except apsw.Error as exc:
        _remove(made)
        raise BackupError(f"cannot back up {db_path} to {dest}: {exc}") from None
    except OSError as exc:
        _remove(made)
        raise BackupError(f"cannot back up into {dest}: {(exc.strerror or str(exc)).lower()}") from None
    except BaseException:  # Ctrl-C: nothing half-made that looks restorable
        _remove(made)
        raise
    return BackupDone(target, copied_key, events, target.stat().st_size, time.monotonic() - started)


def _copy_database(db_path: Path, target: Path) -> int:
    """SQLite's online backup in one step: one read transaction, so a gateway committing meanwhile neither
    waits (WAL readers do not block the writer) nor restarts the copy (a stepwise backup starts over at
    every commit to its source, and on a busy log never finishes). Returns the events copied."""
    source = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        source.set_busy_timeout(BUSY_TIMEOUT_MS)
        copy = apsw.Connection(str(target))
        try:
            with copy.backup("main", source, "main") as step:
                step.step(-1)
            events = int(copy.execute("SELECT count(*) FROM events").get)
            copy.execute("PRAGMA journal_mode = WAL")  # as the gateway keeps it
            return events
        finally:
            copy.close()
    finally:
        source.close()


def _remove(paths: list[Path]) -> None:
    for path in paths:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
