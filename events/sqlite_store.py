"""The event log in one SQLite file (apsw, WAL), shareable by several worker processes.

Durability: WAL with `synchronous=NORMAL` fsyncs at checkpoints, not at every commit. A crashed or killed
process loses nothing it committed (the WAL is already in the OS page cache); a power loss or kernel crash may
lose the last few transactions, never corrupt the file. The gateway accepts that for telemetry; admin changes
are committed before their HTTP call returns, which survives any process death.

Several processes share the file: writes take the lock up front (`BEGIN IMMEDIATE`) and wait up to the busy
timeout for it, so a busy log slows a writer down instead of failing it. Every call is synchronous and short:
it runs on the trio thread, and a thread hop would ignore cancellation (STYLE.md, thread traps).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import apsw
import msgspec

from events.store import Entry, StoreUnwritable
from events.types import Event, decode_event, encode_event, event_type

# Migration i takes the schema from user_version i to i + 1. Append only: a released entry never changes.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        type TEXT NOT NULL,
        request_id TEXT,
        data BLOB NOT NULL
    );
    CREATE INDEX events_request_id ON events (request_id);
    CREATE INDEX events_type_ts ON events (type, ts);
    """,
    # Snapshots of the projections (events/snapshot.py): derived data, any of them may be dropped; a few rows,
    # so no index.
    """
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        created REAL NOT NULL,
        data BLOB NOT NULL
    );
    """,
]

BUSY_TIMEOUT_MS = 5000
OUTAGE_BUSY_TIMEOUT_MS = 50

_INSERT = "INSERT INTO events (ts, type, request_id, data) VALUES (?, ?, ?, ?)"


@contextmanager
def _immediate(db: apsw.Connection) -> Iterator[None]:
    """One write transaction: `BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # Some errors (disk full, I/O) already rolled back; a second ROLLBACK would hide the first error.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SchemaVersionError(RuntimeError):
    """The file was written by a newer switchboard; this build must not guess at its schema."""


class StoreDamaged(RuntimeError):
    """The log file cannot be used as it is; the message names it and says what to do."""


# What a failed write means for an operator. Each may pass (space freed, permissions fixed, the other writer
# done), so the writer holds the batch and retries; any other error is a bug and ends the process.
_UNWRITABLE: dict[type[Exception], str] = {
    apsw.FullError: "disk full",
    apsw.IOError: "I/O error",
    apsw.ReadOnlyError: "read-only",
    apsw.PermissionsError: "permission denied",
    apsw.CantOpenError: "cannot open the file",
    apsw.BusyError: "locked by another process",
    apsw.CorruptError: "damaged database",
}
_UNWRITABLE_TYPES = tuple(_UNWRITABLE)


def unwritable_reason(exc: Exception) -> str:
    """What a failed write means for an operator, in a few words (`StoreUnwritable.reason`)."""
    return _UNWRITABLE.get(type(exc), type(exc).__name__)


_RESTORE = "restore it from a backup, or move it away to start a new, empty log"

# Rows a compaction deletes per transaction: a serving gateway waits for the write lock at most this long.
COMPACT_BATCH = 20_000


class SqliteStore:
    """The `LogStore` on SQLite: one append-only `events` table, `seq` is the rowid."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """`read_only`: for commands that only read. The file is opened without write access, so a read-only
        file, directory or medium can be read; a missing file reads as an empty log and is not created."""
        self.path = Path(path)
        self.read_only = read_only
        self.immutable = False  # opened as a file nothing writes (see _open_read_only): blind to later writes
        if self.path.exists() and self.path.stat().st_size == 0:
            # SQLite would take an empty file for a new database: a log that was there would be lost unseen.
            raise StoreDamaged(f"{self.path} is empty (0 bytes), so its events are gone: {_RESTORE}")
        self._busy_lowered = False
        if read_only:
            self._db = self._open_read_only()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        try:
            self._db = apsw.Connection(str(self.path))
        except apsw.CantOpenError:
            raise StoreDamaged(
                f"{self.path} cannot be opened: check that it and its directory exist and are readable"
            ) from None
        try:
            # Busy timeout first: the pragmas and migrations below may meet another process's lock.
            self._db.set_busy_timeout(BUSY_TIMEOUT_MS)
            if self._db.readonly("main"):
                # SQLite opens a file it may not write read-only without a word; the first append would fail.
                raise apsw.ReadOnlyError
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except (apsw.NotADBError, apsw.CorruptError):
            self._db.close()
            raise StoreDamaged(
                f"{self.path} is not a readable SQLite database (damaged or truncated): {_RESTORE}"
            ) from None
        except (apsw.ReadOnlyError, apsw.CantOpenError, apsw.PermissionsError):
            self._db.close()
            raise StoreDamaged(
                f"{self.path} cannot be written (a read-only file or directory): make both writable"
            ) from None
        except (apsw.FullError, apsw.IOError) as exc:
            # Opening in WAL mode writes the -shm index (and a migration the file): on a full disk that
            # fails, and it may pass, so the caller decides whether to wait (service/server.py).
            self._db.close()
            if not existed:
                # A new log that could not be made leaves nothing behind: an empty file would be taken for
                # a lost log at the next try.
                for leftover in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.path}{leftover}").unlink(missing_ok=True)
            reason = unwritable_reason(exc)
            raise StoreUnwritable(
                reason, f"{self.path} cannot be opened ({reason}): is its file system full? Free some space"
            ) from None
        except BaseException:
            self._db.close()
            raise

    def _open_read_only(self) -> apsw.Connection:
        if not self.path.exists():
            db = apsw.Connection(":memory:")  # nothing to read, and nothing to create on disk
            for migration in MIGRATIONS:
                db.execute(migration)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            return db
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            return self._checked(apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI))
        except (apsw.ReadOnlyError, apsw.CantOpenError):
            # A WAL database needs its -shm index, which a read-only directory (or medium) cannot hold.
            pass
        shm, wal = (self.path.with_name(self.path.name + suffix) for suffix in ("-shm", "-wal"))
        if shm.exists():
            raise StoreDamaged(
                f"{self.path} cannot be read: its {shm.name} index is not readable; make it readable"
            )
        if wal.exists() and wal.stat().st_size > 0:
            # Immutable mode ignores the WAL: the events committed there would be missing without a word.
            raise StoreDamaged(
                f"{self.path} cannot be read where it is: its {wal.name} holds committed events that SQLite "
                "can only read beside a writable -shm; copy the database and its -wal to a writable directory"
            )
        # No -shm means no connection has the log open in WAL mode, so nothing writes to it while we read:
        # the one case where `immutable=1` (no locks, no -shm) is safe.
        self.immutable = True
        try:
            return self._checked(
                apsw.Connection(uri + "&immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
            )
        except (apsw.ReadOnlyError, apsw.CantOpenError, apsw.PermissionsError):
            raise StoreDamaged(f"{self.path} cannot be opened: check that it is readable") from None

    def _checked(self, db: apsw.Connection) -> apsw.Connection:
        """`db` once it has read the schema version (the first read that can fail); closed if it fails."""
        try:
            db.set_busy_timeout(BUSY_TIMEOUT_MS)
            version = self._check_version(db)
            if version == 0:
                raise StoreDamaged(f"{self.path} holds no switchboard event log: {_RESTORE}")
            return db
        except (apsw.NotADBError, apsw.CorruptError):
            db.close()
            raise StoreDamaged(
                f"{self.path} is not a readable SQLite database (damaged or truncated): {_RESTORE}"
            ) from None
        except BaseException:
            db.close()
            raise

    def _migrate(self) -> None:
        if self._check_version() == len(MIGRATIONS):
            return
        # Two processes may open an old file at once: read the version again under the write lock.
        with _immediate(self._db):
            for version in range(self._check_version(), len(MIGRATIONS)):
                self._db.execute(MIGRATIONS[version])
                self._db.execute(f"PRAGMA user_version = {version + 1}")

    def _check_version(self, db: apsw.Connection | None = None) -> int:
        version = int((db or self._db).execute("PRAGMA user_version").get)
        if version > len(MIGRATIONS):
            raise SchemaVersionError(
                f"{self.path} has event log schema version {version}, but this build knows versions up to "
                f"{len(MIGRATIONS)}; run a newer switchboard or point it at another data directory"
            )
        return version

    def append(self, events: Sequence[Event]) -> list[int]:
        if not events:
            return []
        # Encode before taking the write lock: other processes wait for as short a time as possible.
        rows = [(e.ts, event_type(e), e.request_id, encode_event(e)) for e in events]
        try:
            with _immediate(self._db):
                self._db.executemany(_INSERT, rows)
                # No other writer can run inside BEGIN IMMEDIATE, so the batch got consecutive rowids.
                last = self._db.last_insert_rowid()
        except _UNWRITABLE_TYPES as exc:
            if isinstance(exc, apsw.BusyError):
                # Calls run on the event loop: once another process has held the lock for a whole busy
                # timeout, each retry waits only briefly, or every retry would freeze the process.
                self._db.set_busy_timeout(OUTAGE_BUSY_TIMEOUT_MS)
                self._busy_lowered = True
            raise StoreUnwritable(unwritable_reason(exc)) from exc
        if self._busy_lowered:
            self._db.set_busy_timeout(BUSY_TIMEOUT_MS)
        self._busy_lowered = False
        return list(range(last - len(rows) + 1, last + 1))

    def read_after(
        self, seq: int, limit: int | None = None, types: Collection[str] | None = None
    ) -> list[Entry]:
        if types is None:
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, -1 if limit is None else limit),
            )
        else:
            wanted = sorted(types)
            # By rowid, checking the type of each row: the (type, ts) index would need a sort by seq.
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE seq > ? AND +type IN "
                f"({', '.join('?' * len(wanted))}) ORDER BY seq LIMIT ?",
                (seq, *wanted, -1 if limit is None else limit),
            )
        return self._decoded(rows)

    def _decoded(self, rows: Iterable[tuple[int, bytes]]) -> list[Entry]:
        out: list[Entry] = []
        append, seq = out.append, 0
        try:
            for seq, data in rows:
                append((seq, decode_event(data)))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # A damaged row inside a sound file: one line naming it, not a traceback from deep in a fold.
            raise StoreDamaged(
                f"{self.path}: the event at seq {seq} cannot be read ({type(exc).__name__}): {_RESTORE} "
                "(`switchboard log export` copies the rows as stored)"
            ) from None
        return out

    def read_raw_after(
        self, seq: int, limit: int, types: Collection[str] | None = None, upto: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Like `read_after` (`upto`: no seq above it), as the stored JSON: for output that needs no event."""
        top = -1 if upto is None else upto
        if types is None:
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE seq > ? AND (? < 0 OR seq <= ?) ORDER BY seq LIMIT ?",
                (seq, top, top, limit),
            )
        else:
            wanted = sorted(types)
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE seq > ? AND (? < 0 OR seq <= ?) AND +type IN "
                f"({', '.join('?' * len(wanted))}) ORDER BY seq LIMIT ?",
                (seq, top, top, *wanted, limit),
            )
        return [(s, bytes(data)) for s, data in rows]

    def seq_before_last(self, n: int, upto: int, types: Collection[str] | None = None) -> int:
        """The seq after which the last `n` events up to `upto` (of `types`, if given) begin: 0 when there
        are fewer. Holds nothing (seqs have gaps after a compaction): backwards along the rowid, or for some
        types along their (type, ts) index, which reads no event (a rare type's last may be far back)."""
        if n <= 0:
            return upto
        wanted = sorted(types) if types is not None else []
        where = f" AND type IN ({', '.join('?' * len(wanted))})" if types is not None else ""
        found = self._db.execute(
            f"SELECT seq FROM events WHERE seq <= ?{where} ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (upto, *wanted, n - 1),
        ).get
        return found - 1 if isinstance(found, int) else 0

    def read_between(self, seq: int, upto: int, types: Collection[str], limit: int) -> list[Entry]:
        """At most `limit` events of `types` with `seq` < seq <= `upto`, in order, found by their (type, ts)
        index: for a few events of some types, which a walk along the rowid would look for across the log
        (SQLite sorts what the index finds, so keep `limit` to a page)."""
        wanted = sorted(types)
        rows = self._db.execute(
            f"SELECT seq, data FROM events WHERE type IN ({', '.join('?' * len(wanted))}) AND seq > ? "
            "AND seq <= ? ORDER BY seq LIMIT ?",
            (*wanted, seq, upto, limit),
        )
        return self._decoded(rows)

    def first_seq_at(self, ts: float) -> int:
        """The first seq of an event stamped at or after `ts` (one past the last seq when there is none)."""
        # In seq order, stopping at the first: `min(seq)` with a condition would read the whole table.
        found = self._db.execute("SELECT seq FROM events WHERE ts >= ? ORDER BY seq LIMIT 1", (ts,)).get
        return found if isinstance(found, int) else self.last_seq() + 1

    def count_by_type(self, before: int, types: Collection[str]) -> Counter[str]:
        """How many events of each of `types` have a seq below `before`."""
        wanted = sorted(types)
        rows = self._db.execute(
            f"SELECT type, count(*) FROM events WHERE seq < ? AND type IN ({', '.join('?' * len(wanted))}) "
            "GROUP BY type",
            (before, *wanted),
        )
        return Counter({str(t): int(c) for t, c in rows})

    def delete_before(
        self, before: int, types: Collection[str], batch: int = COMPACT_BATCH
    ) -> Iterator[Counter[str]]:
        """Delete the events of `types` with a seq below `before`, one short `BEGIN IMMEDIATE` transaction per
        `batch` rows of the log (so a gateway appending meanwhile waits for one batch at most); yields what
        each transaction deleted, by type. The seqs of the rest never change."""
        wanted = sorted(types)
        # `+type`: by rowid range, not by the (type, ts) index, which would walk every batch's type again.
        where = f"seq > ? AND seq <= ? AND +type IN ({', '.join('?' * len(wanted))})"
        # The newest event always stays: `seq` is the rowid, and SQLite gives a new row max(seq) + 1, so
        # deleting the end of the log would hand its seqs out again, to events a running gateway (which
        # has published them already) and the snapshots would never fold.
        before = min(before, self.last_seq())
        lo = 0
        while lo < before - 1:
            hi = min(lo + batch, before - 1)
            try:
                with _immediate(self._db):
                    window = (lo, hi, *wanted)
                    rows = self._db.execute(
                        f"SELECT type, count(*) FROM events WHERE {where} GROUP BY type", window
                    )
                    counts = Counter({str(t): int(c) for t, c in rows})
                    self._db.execute(f"DELETE FROM events WHERE {where}", window)
            except _UNWRITABLE_TYPES as exc:
                reason = unwritable_reason(exc)
                raise StoreUnwritable(
                    reason,
                    f"{self.path} cannot be compacted now ({reason}): deleting writes to its -wal too, so it "
                    "needs a little free space; what was deleted so far stays deleted",
                ) from None
            yield counts
            lo = hi

    def file_bytes(self) -> int:
        """The bytes the log takes on disk: the database and its write-ahead log."""
        return sum(
            p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists()
        )

    def free_bytes(self) -> int:
        """Bytes of free pages inside the file: deleted rows' space, reused by the next appends."""
        pages = int(self._db.execute("PRAGMA freelist_count").get)
        return pages * int(self._db.execute("PRAGMA page_size").get)

    def vacuum(self) -> None:
        """Rewrite the file without its free pages, giving the space back to the system. It holds the write
        lock for the whole rewrite and needs free disk space the size of the log: never beside a gateway."""
        self._db.execute("VACUUM")
        # In WAL mode the rewritten file first lands in the -wal: fold it in and cut the -wal to nothing.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def last_of(self, tag: str, before: int | None = None) -> Entry | None:
        # From the (type, ts) index: the rows of a rare type, however long the log.
        row = self._db.execute(
            "SELECT seq, data FROM events INDEXED BY events_type_ts WHERE type = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT 1",
            (tag, 2**63 - 1 if before is None else before),
        ).fetchone()
        return None if row is None else self._decoded([row])[0]

    def read_request(self, request_id: str) -> list[Entry]:
        rows = self._db.execute(
            "SELECT seq, data FROM events WHERE request_id = ? ORDER BY seq", (request_id,)
        )
        return self._decoded(rows)

    def read_requests(self, request_ids: Collection[str], types: Collection[str]) -> list[Entry]:
        ids, wanted = sorted(set(request_ids)), sorted(types)
        if not ids or not wanted:
            return []
        # By the request id index; `+type` keeps SQLite from walking the (type, ts) index instead.
        rows = self._db.execute(
            f"SELECT seq, data FROM events WHERE request_id IN ({', '.join('?' * len(ids))}) "
            f"AND +type IN ({', '.join('?' * len(wanted))}) ORDER BY seq",
            (*ids, *wanted),
        )
        return self._decoded(rows)

    def newest_of_type(
        self,
        tag: str,
        limit: int,
        *,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
    ) -> list[Entry]:
        top_ts, top_seq = math.inf if until is None else until, 2**63 - 1
        if before is not None:
            found = self._db.execute(
                "SELECT ts FROM events WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (before,)
            ).get
            cursor_ts = float(found) if isinstance(found, int | float) else -math.inf
            top_ts, top_seq = min(top_ts, cursor_ts), before if cursor_ts <= top_ts else top_seq
        # Backwards along the (type, ts) index, whose entries end with the rowid: no sort, however many
        # rows the range holds. (ts, seq) below the cursor: the cursor's own ts only for smaller seqs.
        rows = self._db.execute(
            "SELECT seq, data FROM events INDEXED BY events_type_ts WHERE type = ? AND ts >= ? AND ts <= ? "
            "AND (ts < ? OR seq < ?) ORDER BY ts DESC, seq DESC LIMIT ?",
            (tag, -math.inf if since is None else since, top_ts, top_ts, top_seq, limit),
        )
        return self._decoded(rows)

    def last_seq(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM events").get)

    def data_version(self) -> int:
        # Changes only when another connection commits; this connection's own appends leave it alone.
        try:
            return int(self._db.execute("PRAGMA data_version").get)
        except _UNWRITABLE_TYPES as exc:  # read before each append: a failing disk is an outage there too
            raise StoreUnwritable(unwritable_reason(exc)) from exc

    def close(self) -> None:
        self._db.close()

    # ---- snapshots of the projections (events/snapshot.py encodes and checks them) ----------------------

    def save_snapshot(self, seq: int, data: bytes, keep: int) -> None:
        with _immediate(self._db):
            self._db.execute(
                "INSERT INTO snapshots (seq, created, data) VALUES (?, ?, ?)", (seq, time.time(), data)
            )
            self._db.execute(
                "DELETE FROM snapshots WHERE id NOT IN "
                "(SELECT id FROM snapshots ORDER BY seq DESC, id DESC LIMIT ?)",
                (keep,),
            )

    def snapshots(self) -> Iterator[tuple[int, bytes]]:
        # A file opened without migrating (read-only) may predate the table: it simply has none.
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'").get:
            # One row at a time, newest first: a reader that takes the first valid one decodes only it.
            yield from self._db.execute("SELECT seq, data FROM snapshots ORDER BY seq DESC, id DESC")
