"""The stored Responses API answers (`previous_response_id`, `GET` / `DELETE /v1/responses/{id}`): the one
owner of their index (response id -> when, its predecessor, where in the log) and of a bytes-bounded cache
of recent bodies.

The handler tells this actor of a response (`stored`) *before* its client gets it, so the client's next
turn always finds it; the `ResponseStored` event goes to the log with the usual group commit, and the seq
it gets arrives with the committed batch. A body evicted from the cache is read back from the log by that
seq, in a worker thread. Entries not yet committed are never evicted: until then the cache is their only
copy (a hard kill loses them with the rest of the last batch window, as DESIGN.md section 2 says).

At start the index is rebuilt from the log's `response_stored` and `response_deleted` rows within the
retention, newest first along the (type, ts) index (only those types are read), at most `max_indexed` of
them, in a worker thread on a read-only connection of its own; lookups wait for it, storing does not.
Expiry is lazy: an entry older than the retention is not found (and dropped when met).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import trio

from actors.log_writer import LogWriter
from events.sqlite_store import SqliteStore
from events.store import PAGE, Entry, LogStore
from events.types import ResponseDeleted, ResponseStored, event_tag

logger = logging.getLogger("switchboard.responses")

STORED_TAG = event_tag(ResponseStored)
DELETED_TAG = event_tag(ResponseDeleted)
MAX_CHAIN = 10_000  # turns followed back from one previous_response_id (a chain is never a cycle; bounded)


@dataclass(frozen=True)
class ResponseRetention:
    retention_s: float = 30 * 86400.0
    max_indexed: int = 100_000
    cache_bytes: int = 64 * 1024 * 1024
    # The most a conversation's stored messages may come to: the server's request body limit ([server]
    # max_body_mb, 32 MB by default), as the same conversation sent whole in `input` would be refused (413).
    max_chain_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class StoredResponse:
    """One stored turn: its messages in the neutral chat form and the Response object, both JSON text."""

    response_id: str
    previous_response_id: str | None
    messages: str
    response: str
    ts: float

    @cached_property
    def messages_bytes(self) -> int:
        return len(self.messages.encode())

    @cached_property
    def size(self) -> int:
        """What it holds of the cache's budget: UTF-8 bytes (the texts are JSON, often not ASCII)."""
        return self.messages_bytes + len(self.response.encode()) + 200

    @classmethod
    def of(cls, event: ResponseStored) -> StoredResponse:
        return cls(event.response_id, event.previous_response_id, event.messages, event.response, event.ts)


@dataclass(slots=True)
class _Entry:
    ts: float
    previous: str | None
    seq: int | None  # None until the log writer committed it
    size: int  # UTF-8 bytes of its messages: what a chain through it adds to the next request


@dataclass(frozen=True)
class Missing:
    """A chain's turn that is not found (unknown, expired, deleted): the one asked for, or one before it."""

    response_id: str


@dataclass(frozen=True)
class TooLong:
    """A chain whose stored messages pass `max_chain_bytes` (or MAX_CHAIN turns): followed this far."""

    turns: int
    size: int


@dataclass(frozen=True)
class ResponseStoreStatistics:
    indexed: int
    cached: int
    cached_bytes: int
    ready: bool
    log_reads: int
    rebuild_s: float | None


class ResponseStore:
    def __init__(
        self,
        log: LogWriter,
        store: LogStore,
        *,
        upto: int,
        retention: ResponseRetention | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._store = store
        self._upto = upto  # the rebuild reads up to here; later events come in the log writer's batches
        self.retention = retention or ResponseRetention()
        self._now = now
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._cache: OrderedDict[str, StoredResponse] = OrderedDict()  # least recently used first
        self._cached_bytes = 0
        self._ready = trio.Event()
        self._send, self._recv = trio.open_memory_channel[list[Entry]](math.inf)
        log.subscribe(self._send.clone())
        self._log_reads = 0
        self._rebuild_s: float | None = None

    def statistics(self) -> ResponseStoreStatistics:
        return ResponseStoreStatistics(
            indexed=len(self._index),
            cached=len(self._cache),
            cached_bytes=self._cached_bytes,
            ready=self._ready.is_set(),
            log_reads=self._log_reads,
            rebuild_s=self._rebuild_s,
        )

    async def run(self, *, task_status: trio.TaskStatus[ResponseStore] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        async with self._recv, trio.open_nursery() as nursery:
            nursery.start_soon(self._rebuild)
            async for batch in self._recv:
                for seq, event in batch:
                    if isinstance(event, ResponseStored):
                        entry = self._index.get(event.response_id)
                        if entry is not None and entry.seq is None:
                            entry.seq = seq
                self._evict()  # what waited for its commit may go now
            nursery.cancel_scope.cancel()

    # ---- for the HTTP side ------------------------------------------------------------------------------

    async def stored(self, response: StoredResponse, request_id: str) -> None:
        """Index and cache a response, then append its event: found from now on, before the log has it."""
        rid = response.response_id
        entry = _Entry(response.ts, response.previous_response_id, None, response.messages_bytes)
        self._index[rid] = entry
        self._index.move_to_end(rid)
        self._cache_put(response)
        while len(self._index) > self.retention.max_indexed:
            oldest, _ = self._index.popitem(last=False)
            self._cache_drop(oldest)
        try:
            await self._log.append(
                ResponseStored(
                    ts=response.ts,
                    request_id=request_id,
                    response_id=rid,
                    previous_response_id=response.previous_response_id,
                    messages=response.messages,
                    response=response.response,
                )
            )
        except BaseException:
            # Not appended (the client went while the log's inbox was full, or the log is closed): the
            # log will never give it a seq, so it would stay pinned in the cache for ever. Its client
            # never heard it was whole; forget it.
            if self._index.get(rid) is entry:
                del self._index[rid]
                self._cache_drop(rid)
            raise

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None (unknown, expired or deleted)."""
        await self._ready.wait()
        if self._live(response_id) is None:
            return None
        found = await self._bodies([response_id])
        return None if isinstance(found, Missing) else found[0]

    async def chain(self, response_id: str) -> list[StoredResponse] | Missing | TooLong:
        """The conversation that ends with `response_id`, oldest first; or the first turn of it, going
        back, that is not found (expired, deleted or never stored); or, when its messages pass
        `max_chain_bytes`, how far it was followed (sizes come from the index: nothing is read for it)."""
        await self._ready.wait()
        ids: list[str] = []
        size = 0
        current: str | None = response_id
        while current is not None:
            entry = self._live(current)
            if entry is None:
                return Missing(current)
            ids.append(current)
            size += entry.size
            if size > self.retention.max_chain_bytes or len(ids) > MAX_CHAIN:
                return TooLong(len(ids), size)
            current = entry.previous
        ids.reverse()
        return await self._bodies(ids)

    async def _bodies(self, ids: list[str]) -> list[StoredResponse] | Missing:
        """The bodies of indexed responses, from the cache or read back from the log, in that order."""
        found = {rid: self._cache[rid] for rid in ids if rid in self._cache}
        missing = [(rid, self._index[rid].seq) for rid in ids if rid not in found]
        if missing:
            read = await self._read(missing)
            if isinstance(read, Missing):
                return read
            found.update((r.response_id, r) for r in read)
        for rid in ids:  # in order: the newest turn ends the most recently used
            if rid in self._cache:
                self._cache.move_to_end(rid)
            elif rid in self._index:  # (not deleted while it was read)
                self._cache_put(found[rid])
        return [found[rid] for rid in ids]

    async def delete(self, response_id: str) -> bool:
        """Forget a stored response (a `ResponseDeleted`, committed before the answer); False if unknown."""
        await self._ready.wait()
        if self._live(response_id) is None:
            return False
        del self._index[response_id]
        self._cache_drop(response_id)
        await self._log.append_durable(ResponseDeleted(ts=self._now(), response_id=response_id))
        return True

    # ---- the index and the cache -----------------------------------------------------------------------

    def _live(self, response_id: str) -> _Entry | None:
        entry = self._index.get(response_id)
        if entry is None:
            return None
        if entry.ts < self._now() - self.retention.retention_s:
            del self._index[response_id]
            self._cache_drop(response_id)
            return None
        return entry

    def _cache_put(self, response: StoredResponse) -> None:
        self._cache_drop(response.response_id)
        self._cache[response.response_id] = response
        self._cached_bytes += response.size
        self._evict()

    def _cache_drop(self, response_id: str) -> None:
        gone = self._cache.pop(response_id, None)
        if gone is not None:
            self._cached_bytes -= gone.size

    def _evict(self) -> None:
        """Least recently used first, but never one the log does not have yet (the cache is its only copy)."""
        if self._cached_bytes <= self.retention.cache_bytes:
            return
        for rid in list(self._cache):
            if self._cached_bytes <= self.retention.cache_bytes:
                return
            entry = self._index.get(rid)
            if entry is None or entry.seq is not None:
                self._cache_drop(rid)

    async def _read(self, wanted: list[tuple[str, int | None]]) -> list[StoredResponse] | Missing:
        """Bodies read back from the log by seq (the first that cannot be found there, if one cannot)."""
        for rid, seq in wanted:
            if seq is None:
                return Missing(rid)  # uncommitted and not cached cannot happen (never evicted); be safe
        seqs = [(rid, seq) for rid, seq in wanted if seq is not None]
        self._log_reads += len(seqs)
        if isinstance(self._store, SqliteStore):
            # The writer's connection belongs to the event loop's thread: the thread reads on its own.
            return await trio.to_thread.run_sync(_read_from, self._store.path, seqs)
        return _read_stored(self._store, seqs)

    async def _rebuild(self) -> None:
        started = time.perf_counter()
        since = self._now() - self.retention.retention_s
        limit = self.retention.max_indexed
        if isinstance(self._store, SqliteStore):
            path, stop = self._store.path, threading.Event()
            try:
                found = await trio.to_thread.run_sync(
                    _rebuild_from,
                    path,
                    since,
                    self._upto,
                    limit,
                    self.retention.cache_bytes,
                    stop.is_set,
                    abandon_on_cancel=True,
                )
            finally:
                stop.set()  # cancelled (a shutdown): the abandoned thread stops at its next page
        else:  # an in-memory log (tests): read here, it is short
            found = _rebuild_index(
                self._store, since, self._upto, limit, self.retention.cache_bytes, lambda: False
            )
        entries, bodies = found
        # What came meanwhile (stored since the start) is newer than everything the rebuild read. Nothing
        # was deleted meanwhile: delete() waits for the rebuild, as lookups do.
        live = self._index
        self._index = OrderedDict((rid, entry) for rid, entry in entries if rid not in live)
        self._index.update(live)
        for body in bodies:
            if body.response_id in self._index and body.response_id not in self._cache:
                self._cache[body.response_id] = body
                self._cache.move_to_end(body.response_id, last=False)  # older than what came meanwhile
                self._cached_bytes += body.size
        self._evict()
        self._rebuild_s = time.perf_counter() - started
        self._ready.set()
        logger.info("responses: %d stored responses indexed in %.2fs", len(entries), self._rebuild_s)


Rebuilt = tuple[list[tuple[str, _Entry]], list[StoredResponse]]  # the index oldest first; bodies to cache


def _rebuild_from(
    path: Path, since: float, upto: int, limit: int, cache_bytes: int, stopped: Callable[[], bool]
) -> Rebuilt:
    store = SqliteStore(path, read_only=True)
    try:
        return _rebuild_index(store, since, upto, limit, cache_bytes, stopped)
    finally:
        store.close()


def _newest(store: LogStore, tag: str, since: float, stopped: Callable[[], bool]) -> Iterable[Entry]:
    before: int | None = None
    while not stopped():
        page = store.newest_of_type(tag, PAGE, since=since, before=before)
        yield from page
        if len(page) < PAGE:
            return
        before = page[-1][0]


def _rebuild_index(
    store: LogStore, since: float, upto: int, limit: int, cache_bytes: int, stopped: Callable[[], bool]
) -> Rebuilt:
    """The newest `limit` responses stored within the retention and not deleted, up to seq `upto`; the
    newest of them, up to `cache_bytes`, with their bodies."""
    deleted = {
        e.response_id
        for s, e in _newest(store, DELETED_TAG, since, stopped)
        if isinstance(e, ResponseDeleted)
    }
    newest: list[tuple[str, _Entry]] = []
    bodies: list[StoredResponse] = []
    room = cache_bytes
    for seq, event in _newest(store, STORED_TAG, since, stopped):
        if seq > upto or not isinstance(event, ResponseStored) or event.response_id in deleted:
            continue
        body = StoredResponse.of(event)
        newest.append(
            (event.response_id, _Entry(event.ts, event.previous_response_id, seq, body.messages_bytes))
        )
        if body.size <= room:
            bodies.append(body)
            room -= body.size
        if len(newest) >= limit:
            break
    newest.reverse()
    return newest, bodies


def _read_from(path: Path, wanted: list[tuple[str, int]]) -> list[StoredResponse] | Missing:
    store = SqliteStore(path, read_only=True)
    try:
        return _read_stored(store, wanted)
    finally:
        store.close()


def _read_stored(store: LogStore, wanted: list[tuple[str, int]]) -> list[StoredResponse] | Missing:
    out: list[StoredResponse] = []
    types: Any = (STORED_TAG,)
    for rid, seq in wanted:
        found = store.read_after(seq - 1, 1, types)
        if not found or found[0][0] != seq:
            return Missing(rid)  # compacted away meanwhile
        event = found[0][1]
        if not isinstance(event, ResponseStored) or event.response_id != rid:
            return Missing(rid)
        out.append(StoredResponse.of(event))
    return out
