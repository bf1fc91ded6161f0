"""The log writer: the only task that appends to the event log.

Group commit: it drains its inbox into one transaction per batch (bounded by `max_batch` events and by
`window_s` after the first one), then publishes the committed `(seq, event)` entries to every subscriber
in log order. Events another process appended (the CLI adding a key while the gateway runs) are noticed
by polling the store's data_version and published the same way, so projections see every event once.

Resource handling: `close()` ends the inbox; the writer commits what is left and returns, so a graceful
shutdown loses nothing that was accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from actors.mailbox import Reply
from events.store import Entry, LogStore
from events.types import Event


@dataclass(frozen=True)
class LogWriterStatistics:
    events_written: int
    batches: int
    largest_batch: int
    foreign_events: int
    last_seq: int
    queued: int


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
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._window_s = window_s
        self._poll_s = poll_s
        self._send, self._recv = trio.open_memory_channel[tuple[Event, Reply[int] | None]](inbox_size)
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

    async def append_durable(self, event: Event) -> int:
        """Append and wait until committed; returns its seq. For admin changes, before the call returns."""
        reply: Reply[int] = Reply()
        await self._send.send((event, reply))
        if self._window is not None:
            self._window.cancel()
        return await reply.wait()

    def close(self) -> None:
        self._send.close()

    def statistics(self) -> LogWriterStatistics:
        return LogWriterStatistics(
            events_written=self._written,
            batches=self._batches,
            largest_batch=self._largest,
            foreign_events=self._foreign,
            last_seq=self._published,
            queued=self._recv.statistics().current_buffer_used,
        )

    async def run(self, *, task_status: trio.TaskStatus[LogWriter] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        try:
            async with self._recv:
                while True:
                    batch: list[tuple[Event, Reply[int] | None]] = []
                    with trio.move_on_after(self._poll_s):
                        try:
                            batch.append(await self._recv.receive())
                        except trio.EndOfChannel:
                            break
                    if not batch:
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
        finally:
            for sub in self._subscribers:
                sub.close()

    async def _commit(self, batch: list[tuple[Event, Reply[int] | None]]) -> None:
        events = [event for event, _ in batch]
        # Read before appending: a foreign commit landing after our append must still look unseen.
        self._version = self._store.data_version()
        seqs = self._store.append(events)
        self._written += len(events)
        self._batches += 1
        self._largest = max(self._largest, len(events))
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
        version = self._store.data_version()
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
