"""`switchboard backup DEST`: a consistent copy of a data dir while the gateway runs.

The master key goes first (it never changes, and a database without it cannot start), then the database
through SQLite's online backup API, a few hundred pages at a time: the copy is one consistent moment of
the log, and the serving gateway's writes wait at most one step. Nothing is overwritten.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import apsw

from events.sqlite_store import BUSY_TIMEOUT_MS

STEP_PAGES = 256


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
    for path in (target, key_target):
        if path.exists():
            raise BackupError(f"{path} already exists: back up into an empty or new directory")
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    copied_key = None
    if master_key.exists():
        # 0600 from creation, as the original: the key is never readable by others, not even briefly.
        fd = os.open(key_target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, master_key.open("rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        copied_key = key_target
    source = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        source.set_busy_timeout(BUSY_TIMEOUT_MS)
        copy = apsw.Connection(str(target))
        try:
            with copy.backup("main", source, "main") as step:
                while not step.done:
                    step.step(STEP_PAGES)
            events = int(copy.execute("SELECT count(*) FROM events").get)
            copy.execute("PRAGMA journal_mode = WAL")  # as the gateway keeps it
        finally:
            copy.close()
    except apsw.Error as exc:
        target.unlink(missing_ok=True)
        raise BackupError(f"cannot back up {db_path} to {target}: {exc}") from None
    finally:
        source.close()
    return BackupDone(target, copied_key, events, target.stat().st_size, time.monotonic() - started)
