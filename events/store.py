"""The log store protocol and its in-memory implementation.

A store appends batches, reads after a position, and lets a reader notice what other writers appended
(`data_version`), so projections never care which process wrote an event (DESIGN.md section 8).
Stores are synchronous: every call is short, and the log writer batches appends into one transaction.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from typing import Protocol

from events.types import AnyEvent, Event, decode_event, encode_event, event_type

Entry = tuple[int, AnyEvent]


class StoreUnwritable(Exception):
    """The store cannot take a write now (disk full, read-only, an I/O error, another writer holding the
    lock too long); nothing of the batch was written. It may pass: the writer holds the batch and retries.
    `reason` is a few words for operators and `/healthz`."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class LogStore(Protocol):
    def append(self, events: Sequence[Event]) -> list[int]:
        """Append a batch in one transaction; return the sequence number given to each event. Raises
        StoreUnwritable, having written none of it, when the store cannot be written now."""
        ...

    def read_after(
        self, seq: int, limit: int | None = None, types: Collection[str] | None = None
    ) -> list[Entry]:
        """Events with sequence number greater than `seq`, in order, at most `limit` of them; only those
        whose type tag is in `types` when given (the others are not even decoded)."""
        ...

    def read_raw_after(
        self, seq: int, limit: int, types: Collection[str] | None = None, upto: int | None = None
    ) -> list[tuple[int, bytes]]:
        """What `read_after` reads (`upto`: no seq above it), as the stored JSON, not decoded: for readers
        that need a field or two, or output that needs no event."""
        ...

    def last_of(self, tag: str, before: int | None = None) -> Entry | None:
        """The last event whose type tag is `tag` (with a seq below `before`, if given), if any; cheap
        however long the log is."""
        ...

    def read_request(self, request_id: str) -> list[Entry]:
        """Every event of one request, in order."""
        ...

    def read_requests(self, request_ids: Collection[str], types: Collection[str]) -> list[Entry]:
        """The events of `types` of the requests named, in log order (found by request id)."""
        ...

    def newest_of_type(
        self,
        tag: str,
        limit: int,
        *,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
    ) -> list[Entry]:
        """At most `limit` events of type `tag`, newest first by (ts, seq), stamped within [since, until]
        and, with `before` (a seq), older than the event at that seq: a cursor for paging back in time.
        Found by the (type, ts) index: as fast at the end of a long log as at its start."""
        ...

    def last_seq(self) -> int:
        """The highest sequence number in the log (0 when empty)."""
        ...

    def data_version(self) -> int:
        """A number that changes when another writer commits; cheap enough to poll every few ms."""
        ...

    def save_snapshot(self, seq: int, data: bytes, keep: int) -> None:
        """Store an encoded snapshot of the projections at `seq`; keep only the newest `keep` of them."""
        ...

    def snapshots(self) -> Iterator[tuple[int, bytes]]:
        """The stored snapshots as (seq, data), newest first."""
        ...

    def close(self) -> None: ...


# Events read at once by the paged readers: bounds what a reader of the whole log holds.
PAGE = 5000


def iter_after(
    store: LogStore,
    seq: int,
    types: Collection[str] | None = None,
    upto: int | None = None,
    page: int = PAGE,
) -> Iterator[Entry]:
    """Every event after `seq` (up to seq `upto` inclusive, of `types` if given), read `page` at a time: a
    reader of the whole log holds one page, never the log."""
    while True:
        entries = store.read_after(seq, page, types)
        for entry in entries:
            if upto is not None and entry[0] > upto:
                return
            yield entry
        if len(entries) < page:
            return
        seq = entries[-1][0]


def _cursor(entries: Sequence[Entry], before: int) -> tuple[float, int]:
    """`newest_of_type`'s position for `before`: (ts, seq) of the event at that seq, or of the last one
    before it (a compaction may have removed it)."""
    found = [(e.ts, s) for s, e in entries if s <= before]
    return (found[-1][0], before) if found else (-math.inf, before)


class MemoryStore:
    """The log in a list. Events go through the same codec as on disk, so tests see what SQLite sees."""

    def __init__(self) -> None:
        self._rows: list[tuple[int, bytes]] = []
        self._types: list[str] = []
        self._version = 0
        self._snapshots: list[tuple[int, bytes]] = []  # oldest first

    def append(self, events: Sequence[Event]) -> list[int]:
        if not events:
            return []
        encoded = [encode_event(e) for e in events]  # all or nothing, like one transaction
        start = len(self._rows) + 1
        seqs = list(range(start, start + len(events)))
        self._rows.extend(zip(seqs, encoded, strict=True))
        self._types.extend(event_type(e) for e in events)
        self._version += 1
        return seqs

    def read_after(
        self, seq: int, limit: int | None = None, types: Collection[str] | None = None
    ) -> list[Entry]:
        rows = self._rows[max(seq, 0) :]
        if types is not None:
            rows = [row for row in rows if self._types[row[0] - 1] in types]
        if limit is not None:
            rows = rows[:limit]
        return [(s, decode_event(data)) for s, data in rows]

    def read_raw_after(
        self, seq: int, limit: int, types: Collection[str] | None = None, upto: int | None = None
    ) -> list[tuple[int, bytes]]:
        rows = self._rows[max(seq, 0) : len(self._rows) if upto is None else max(upto, 0)]
        if types is not None:
            rows = [row for row in rows if self._types[row[0] - 1] in types]
        return rows[:limit]

    def last_of(self, tag: str, before: int | None = None) -> Entry | None:
        top = len(self._rows) if before is None else min(len(self._rows), before - 1)
        for seq in range(top, 0, -1):
            if self._types[seq - 1] == tag:
                return seq, decode_event(self._rows[seq - 1][1])
        return None

    def read_request(self, request_id: str) -> list[Entry]:
        return [(s, e) for s, e in self.read_after(0) if e.request_id == request_id]

    def read_requests(self, request_ids: Collection[str], types: Collection[str]) -> list[Entry]:
        wanted = set(request_ids)
        return [(s, e) for s, e in self.read_after(0, types=types) if e.request_id in wanted]

    def newest_of_type(
        self,
        tag: str,
        limit: int,
        *,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
    ) -> list[Entry]:
        rows = self.read_after(0, types={tag})
        if since is not None:
            rows = [r for r in rows if r[1].ts >= since]
        if until is not None:
            rows = [r for r in rows if r[1].ts <= until]
        if before is not None:
            cursor = _cursor(self.read_after(0), before)
            rows = [r for r in rows if (r[1].ts, r[0]) < cursor]
        rows.sort(key=lambda r: (r[1].ts, r[0]), reverse=True)
        return rows[:limit]

    def last_seq(self) -> int:
        return len(self._rows)

    def data_version(self) -> int:
        return self._version

    def close(self) -> None:
        pass

    def save_snapshot(self, seq: int, data: bytes, keep: int) -> None:
        self._snapshots.append((seq, data))
        self._snapshots.sort(key=lambda s: s[0])  # stable: at one seq, the later one stays newer
        del self._snapshots[: max(0, len(self._snapshots) - keep)]

    def snapshots(self) -> Iterator[tuple[int, bytes]]:
        return iter(reversed(self._snapshots))
