"""The log writer: the only task that appends to the event log.

Group commit: it drains its inbox into one transaction per batch (bounded by `max_batch` events and by
`window_s` after the first one), then publishes the committed `(seq, event)` entries to every subscriber
in log order. Events another process appended (the CLI adding a key while the gateway runs) are noticed
by polling the store's data_version and published the same way, so projections see every event once.

Resource handling: `close()` ends the inbox; the writer commits what is left and returns, so a graceful
shutdown loses nothing that was accepted.

A log that cannot be written (disk full, read-only, an I/O error: the store raises StoreUnwritable) is an
outage, not a crash: the writer keeps every event it was given, in order, in memory (up to `max_held`;
durable appends are never dropped), retries every `retry_s`, and reports the outage through `outage()`
(the request runner refuses new requests while it lasts, `/healthz` says so). Once a write succeeds the
held events are committed and published in order, as if the outage had been a slow commit. Durable
appends made during an outage return None at once: they are held, not yet committed, and a caller
waiting for a disk that may never come back would wedge the requests behind it. Held events are not
folded until they are committed: during an outage only requests already running route, on what was
committed before it (a key invalidated meanwhile may be tried again by one of them, and fail again).
What is still held when the writer stops is named in the log as lost.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from actors.mailbox import Reply
from events.store import Entry, LogStore, StoreUnwritable
from events.types import Event

logger = logging.getLogger("switchboard.log")

Item = tuple[Event, "Reply[int | None] | None"]


@dataclass(frozen=True)
class LogOutage:
    """The log cannot be written: since when (wall-clock seconds), why, how many events are held."""

    since: float
    reason: str
    held: int


@dataclass(frozen=True)
class LogWriterStatistics:
    events_written: int
    batches: int
    largest_batch: int
    foreign_events: int
    last_seq: int
    queued: int
    held: int  # waiting in memory for the log to be writable again
    dropped: int  # beyond max_held during an outage: never written


class LogWriter:
    """Handle of the log-writer actor, given to everyone who appends or subscribes."""

    def __init__(
        self,
        store: LogStore,
        *,
        max_batch: int = 512,
        window_s: float = 0.002,
        poll_s: float = 0.2,
        after: int | None = None,
        inbox_size: int = 10_000,
        retry_s: float = 1.0,
        max_held: int = 200_000,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._window_s = window_s
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._max_held = max_held
        self._wall = now  # wall-clock time, for the outage's start as operators read it
        self._send, self._recv = trio.open_memory_channel[Item](inbox_size)
        self._held: deque[Item] = deque()
        self._outage_since: float | None = None
        self._outage_reason = ""
        self._next_try = 0.0
        self._dropped = 0
        self._chunk = max_batch * 8  # held events written per transaction when retrying
        self._subscribers: list[trio.MemorySendChannel[Any]] = []
        # From where the projections were rebuilt: what others appended since is published, not skipped.
        self._published = store.last_seq() if after is None else after
        self._version = store.data_version()
        self._written = self._batches = self._largest = self._foreign = 0
        self._window: trio.CancelScope | None = None  # open while the writer waits for a batch to fill

    def subscribe(self, inbox: trio.MemorySendChannel[Any]) -> None:
        """Send every committed batch (a list of entries) to `inbox` from now on; the writer closes it
        when it stops. An actor passes its own inbox, so a batch is always folded before any ask that was
        sent after the batch was committed."""
        self._subscribers.append(inbox)

    async def append(self, event: Event) -> None:
        """Queue an event; it is committed within one batch window (telemetry may lag by one batch)."""
        await self._send.send((event, None))

    async def append_durable(self, event: Event) -> int | None:
        """Append and wait until committed; returns its seq. For admin changes, before the call returns.
        During an outage it returns None as soon as the event is held (see the module's docstring)."""
        reply: Reply[int | None] = Reply()
        await self._send.send((event, reply))
        if self._window is not None:
            self._window.cancel()
        return await reply.wait()

    def close(self) -> None:
        self._send.close()

    def outage(self) -> LogOutage | None:
        """None while the log is being written; otherwise what went wrong (cheap: read per request)."""
        if self._outage_since is None:
            return None
        return LogOutage(self._outage_since, self._outage_reason, len(self._held))

    def statistics(self) -> LogWriterStatistics:
        return LogWriterStatistics(
            events_written=self._written,
            batches=self._batches,
            largest_batch=self._largest,
            foreign_events=self._foreign,
            last_seq=self._published,
            queued=self._recv.statistics().current_buffer_used,
            held=len(self._held),
            dropped=self._dropped,
        )

    async def run(self, *, task_status: trio.TaskStatus[LogWriter] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        try:
            async with self._recv:
                while True:
                    batch: list[Item] = []
                    with trio.move_on_after(self._poll_s):
                        try:
                            batch.append(await self._recv.receive())
                        except trio.EndOfChannel:
                            break
                    if not batch:
                        if self._outage_since is not None:
                            if trio.current_time() >= self._next_try:
                                await self._retry()
                        else:
                            await self._publish_foreign()
                        continue
                    # Let more arrive for a few ms, with one wake-up rather than one per event, unless someone
                    # waits for this commit (append_durable cancels the window).
                    if batch[0][1] is None:
                        with trio.CancelScope(deadline=trio.current_time() + self._window_s) as window:
                            self._window = window
                            await trio.sleep_forever()
                        self._window = None
                    while len(batch) < self._max_batch:
                        try:
                            batch.append(self._recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._commit(batch)
                # The inbox is closed: everything sent before close() was received above.
                if self._outage_since is not None:
                    await self._retry(final=True)
        finally:
            for sub in self._subscribers:
                sub.close()

    async def _commit(self, batch: list[Item]) -> None:
        if self._outage_since is not None:  # keep the order, and knock on the store at most every retry_s
            self._hold(batch)
            if trio.current_time() >= self._next_try:
                await self._retry()
            return
        try:
            await self._write(batch)
        except StoreUnwritable as exc:
            self._outage_since = self._wall()
            self._outage_reason = exc.reason
            self._next_try = trio.current_time() + self._retry_s
            self._hold(batch)
            logger.error(
                "the event log cannot be written (%s): new requests are refused and %d events are held in "
                "memory until it can; retrying every %gs",
                exc.reason,
                len(self._held),
                self._retry_s,
            )

    def _hold(self, batch: list[Item]) -> None:
        for event, reply in batch:
            if reply is None and len(self._held) >= self._max_held:
                if not self._dropped:
                    logger.error(
                        "the event log is still not writable and %d events are held: dropping further "
                        "telemetry events until it is (the count is logged when writing resumes)",
                        len(self._held),
                    )
                self._dropped += 1
                continue
            self._held.append((event, None))
            if reply is not None:
                reply.send(None)

    async def _retry(self, *, final: bool = False) -> None:
        """Write the held events, oldest first, in batches; stop at the first batch the store refuses."""
        self._next_try = trio.current_time() + self._retry_s
        total = len(self._held)
        while self._held:
            batch = [self._held.popleft() for _ in range(min(len(self._held), self._chunk))]
            try:
                await self._write(batch)
            except StoreUnwritable as exc:
                self._held.extendleft(reversed(batch))
                self._outage_reason = exc.reason
                # A little room fits a small transaction before a big one: halve until one fits.
                self._chunk = max(1, self._chunk // 2)
                if final:
                    logger.error(
                        "the event log still cannot be written (%s): %d events held since the outage began "
                        "are lost (%d dropped before)",
                        exc.reason,
                        len(self._held),
                        self._dropped,
                    )
                return
        since = self._outage_since or self._wall()
        logger.warning(
            "the event log can be written again (%s for %.0fs): %d held events written%s",
            self._outage_reason,
            max(0.0, self._wall() - since),
            total,
            f", {self._dropped} dropped" if self._dropped else "",
        )
        self._outage_since = None
        self._dropped = 0
        self._chunk = self._max_batch * 8

    async def _write(self, batch: list[Item]) -> None:
        """Append the batch in one transaction, publish it in log order, answer durable waiters."""
        events = [event for event, _ in batch]
        # Read before appending: a foreign commit landing after our append must still look unseen.
        version = self._store.data_version()
        seqs = self._store.append(events)
        self._version = version
        self._written += len(events)
        self._batches += 1
        self._largest = max(self._largest, len(events))
        if seqs[0] <= self._published:
            # Seqs handed out twice (rows at the log's end deleted under a running gateway): folding on would
            # skip these events for ever. Loud, as any corruption of the log must be.
            raise RuntimeError(
                f"the log gave seq {seqs[0]} again (the last one published was {self._published}): events at "
                "its end were deleted while the gateway ran"
            )
        if seqs[0] == self._published + 1:
            # (The batch holds members of AnyEvent, typed by their base class.)
            entries: list[Entry] = list(zip(seqs, events, strict=True))  # type: ignore[arg-type]  # see above
        else:
            # Another process appended in between: publish its events too, in log order.
            entries = self._store.read_after(self._published)
            self._foreign += len(entries) - len(events)
        await self._publish(entries)
        for (_, reply), seq in zip(batch, seqs, strict=True):
            if reply is not None:
                reply.send(seq)

    async def _publish_foreign(self) -> None:
        try:
            version = self._store.data_version()
        except StoreUnwritable:
            return  # the next append will meet it and start the outage; a poll need not

        if version == self._version:
            return
        self._version = version
        entries = self._store.read_after(self._published)
        if entries:
            self._foreign += len(entries)
            await self._publish(entries)

    async def _publish(self, entries: list[Entry]) -> None:
        self._published = entries[-1][0]
        for sub in list(self._subscribers):
            try:
                await sub.send(entries)
            except trio.BrokenResourceError:
                # That actor has stopped (shutdown; a crash propagates on its own): nothing left to feed.
                self._subscribers.remove(sub)
