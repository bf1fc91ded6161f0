"""The live feed: the log's tail, fanned out to its subscribers (the admin feed, `/admin/events`).

The log writer awaits `send` on every subscriber's inbox before it answers durable appends, so nothing here
may ever make it wait: the feed's inbox is unbounded and drained at once, and a batch is handed to each
subscriber without awaiting anything (`_fan_out`). Each subscriber has a bounded buffer of the events that
match its query. One whose buffer is full (a client that reads slower than the log grows, or not at all) is
marked lagged and its buffer dropped: it holds nothing more, and the request path never notices it.

A subscriber is read through `Feed.follow`, which joins live first and then reads from the log what came
between the position it resumes from and the live start (off the event loop, a page at a time), so the
two meet with no gap and no duplicate (every item is deduplicated by its seq). A lagged subscriber is told
(`Lagged`, with the next seq it needs) and goes through the same join again: live from the feed's position
now, the log in between. Seqs are the log's, so a position survives a restart of the gateway.

Resource handling: a subscription ends when its `follow` generator ends (the client went away, or it was
closed); when `shutting_down` is set every subscription is closed, so open feeds end at once instead of
holding the server's grace period.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import trio

from actors.log_writer import LogWriter
from events.store import Entry, LogStore
from events.types import (
    Event,
    ResponseStored,
    RouteDecided,
    decode_event,
    encode_event,
    event_type,
    without_conversation,
)

BUFFER = 1000  # events held for one subscriber before it is lagged
HEARTBEAT_S = 15.0  # a heartbeat when nothing else was sent for this long
# Live events are sent at most this often per subscriber, all that came meanwhile at once: under load a
# write per log batch per subscriber would cost the request path (one HTTP write is ~50 us of the event
# loop). The first event after a quiet spell goes at once; BUFFER holds well over this long at full load.
COALESCE_S = 0.025
PAGE = 500  # events read from the log at once: what one catching-up subscriber holds


@dataclass(slots=True)
class FeedEvent:
    """One event of the log: its seq, its type tag, and its JSON as the log stores it; and its SSE frame,
    made once for every subscriber it goes to (not frozen: a frozen init costs 3x, on the request path's
    event loop; nothing changes one)."""

    seq: int
    type: str
    data: bytes
    frame: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.frame = b"".join(
            (
                b"id: ",
                str(self.seq).encode(),
                b"\nevent: ",
                self.type.encode(),
                b"\ndata: ",
                self.data,
                b"\n\n",
            )
        )


@dataclass(frozen=True)
class Lagged:
    """The subscriber fell behind its buffer; it is fed from the log from `from_seq` on."""

    from_seq: int


@dataclass(frozen=True)
class Heartbeat:
    """Nothing was sent for a while: the connection is still alive."""


HEARTBEAT = Heartbeat()
FeedItem = FeedEvent | Lagged | Heartbeat


@dataclass(frozen=True)
class FeedQuery:
    """Which events a subscriber wants (every one given must match). `model` matches an event's model by
    its id or its `platform/id` ref (a routing decision: the model it chose; a received request: the model
    it named, as the client wrote it)."""

    types: frozenset[str] | None = None
    platform: str | None = None
    model: str | None = None
    request_id: str | None = None

    def matches(self, event: Event) -> bool:
        if self.types is not None and event_type(event) not in self.types:
            return False
        if self.request_id is not None and event.request_id != self.request_id:
            return False
        if self.platform is None and self.model is None:
            return True
        platform, model = _platform_model(event)
        if self.platform is not None and platform != self.platform:
            return False
        if self.model is not None:
            named = {model, f"{platform}/{model}"} if platform is not None and model is not None else {model}
            if isinstance(requested := getattr(event, "requested_models", None), tuple):
                named.update(requested)  # a request names the models it asked for
            if self.model not in named:
                return False
        return True


def _platform_model(event: Event) -> tuple[str | None, str | None]:
    if isinstance(event, RouteDecided):
        if event.chosen_ref is None:
            return None, None
        platform, _, model = event.chosen_ref.partition("/")
        return platform, model
    on = getattr(event, "platform", None)
    named = getattr(event, "model", None)
    if on is None and isinstance(key_id := getattr(event, "key_id", None), str) and "." in key_id:
        on = key_id.partition(".")[0]  # a key's id is `<platform>.<hash>` (service/secrets.py: key_id_for)
    return (on if isinstance(on, str) else None, named if isinstance(named, str) else None)


def feed_data(event: Event, stored: bytes | None = None) -> bytes:
    """What the feed sends for an event: its JSON as the log stores it (`stored`, when read from there),
    but for a stored Responses turn, whose conversation text stays out of the feed (the operators' live view
    of the gateway, kept in browsers: the README's promise that it never holds a prompt)."""
    if isinstance(event, ResponseStored):
        return encode_event(without_conversation(event))
    return stored if stored is not None else encode_event(event)


def read_history(store: LogStore, query: FeedQuery, after: int, upto: int) -> tuple[list[FeedEvent], int]:
    """The next page of events matching `query` with `after` < seq <= `upto`, and the position it covers
    (every seq up to it was read). Blocking: run it in a worker thread."""
    if query.request_id is not None:
        # One request's events come from its index, however long the log: all of them at once (a few dozen).
        entries = [(s, e) for s, e in store.read_request(query.request_id) if after < s <= upto]
        return [FeedEvent(s, event_type(e), feed_data(e)) for s, e in entries if query.matches(e)], upto
    rows = store.read_raw_after(after, PAGE, query.types, upto)
    page: list[FeedEvent] = []
    for seq, data in rows:
        event = decode_event(data)
        if query.matches(event):
            page.append(FeedEvent(seq, event_type(event), feed_data(event, data)))
    return page, upto if len(rows) < PAGE else rows[-1][0]


@dataclass(frozen=True)
class FeedStatistics:
    subscribers: int
    lagged: int  # times a subscriber fell behind its buffer (each one then caught up from the log)
    events_sent: int  # events handed to subscribers, live and from the log
    buffered: int  # events held in subscribers' buffers now
    catching_up: int  # subscribers reading the log now
    position: int  # the last seq fanned out


class _Subscription:
    __slots__ = ("buffer", "closed", "lagged", "limit", "query", "start", "wake")

    def __init__(self, query: FeedQuery, start: int, limit: int) -> None:
        self.query = query
        self.limit = limit
        self.start = start  # live from after this seq
        self.buffer: deque[FeedEvent] = deque()
        self.lagged = False
        self.closed = False
        self.wake = trio.Event()

    def rejoin(self, start: int) -> None:
        self.start = start
        self.lagged = False
        self.buffer.clear()


class Feed:
    """Handle of the feed actor: `follow` is one subscriber's stream of items."""

    def __init__(
        self,
        log: LogWriter,
        shutting_down: trio.Event,
        *,
        buffer: int = BUFFER,
        heartbeat_s: float = HEARTBEAT_S,
        coalesce_s: float = COALESCE_S,
    ) -> None:
        self._shutting_down = shutting_down
        self._buffer = buffer
        self._heartbeat_s = heartbeat_s
        self._coalesce_s = coalesce_s
        # Unbounded: the log writer must never wait for us. Drained as fast as batches come (no I/O here).
        self._send, self._recv = trio.open_memory_channel[list[Entry]](math.inf)
        log.subscribe(self._send)
        self._position = log.statistics().last_seq  # what the writer publishes next comes after it
        self._subscriptions: set[_Subscription] = set()
        self._closed = False
        self._lagged = self._sent = self._catching_up = 0

    def statistics(self) -> FeedStatistics:
        return FeedStatistics(
            subscribers=len(self._subscriptions),
            lagged=self._lagged,
            events_sent=self._sent,
            buffered=sum(len(s.buffer) for s in self._subscriptions),
            catching_up=self._catching_up,
            position=self._position,
        )

    async def run(self, *, task_status: trio.TaskStatus[Feed] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_at_shutdown)
            task_status.started(self)
            try:
                async with self._recv:
                    async for entries in self._recv:
                        self._fan_out(entries)
            finally:
                self._close_all()  # the log writer stopped (or we were cancelled): nothing more will come
            nursery.cancel_scope.cancel()

    async def _close_at_shutdown(self) -> None:
        await self._shutting_down.wait()
        self._close_all()

    def _close_all(self) -> None:
        self._closed = True
        for subscription in self._subscriptions:
            subscription.closed = True
            subscription.wake.set()

    def _fan_out(self, entries: list[Entry]) -> None:
        self._position = entries[-1][0]
        if not self._subscriptions:
            return
        # Subscribers with the same query (most often: none) share one filtered list per batch, and every
        # query shares each event's encoding (made once, when some subscriber first wants it): many
        # different filters cost a match each, not an encoding each, on the request path's loop.
        matching: dict[FeedQuery, list[FeedEvent]] = {}
        encoded: dict[int, FeedEvent] = {}

        def item(seq: int, event: Event) -> FeedEvent:
            found = encoded.get(seq)
            if found is None:
                found = encoded[seq] = FeedEvent(seq, event_type(event), feed_data(event))
            return found

        for sub in self._subscriptions:
            if sub.lagged or sub.closed:
                continue
            items = matching.get(sub.query)
            if items is None:
                items = matching[sub.query] = [
                    item(seq, event) for seq, event in entries if sub.query.matches(event)
                ]
            if items and items[0].seq <= sub.start:  # joined in the middle of this batch's delivery
                items = [item for item in items if item.seq > sub.start]
            if not items:
                continue
            if len(sub.buffer) + len(items) > sub.limit:
                sub.buffer.clear()  # what it missed is in the log; it reads it from there
                sub.lagged = True
                self._lagged += 1
            else:
                sub.buffer.extend(items)
            sub.wake.set()

    def _subscribe(self, query: FeedQuery) -> _Subscription:
        subscription = _Subscription(query, self._position, self._buffer)
        subscription.closed = self._closed
        self._subscriptions.add(subscription)
        return subscription

    async def follow(
        self, query: FeedQuery, after: int | None, open_reader: Callable[[], LogStore]
    ) -> AsyncGenerator[Sequence[FeedItem]]:
        """Every event matching `query` after seq `after` (from the log, then live), or only live ones when
        `after` is None; `Lagged` when this subscriber fell behind (the events after it follow from the
        log); a heartbeat when nothing was sent for `heartbeat_s`. Ends when the feed closes (shutdown).
        Items come in lists: all that is ready at once (a page of the log, or the buffer, at most every
        `coalesce_s`), so a busy log costs a write per subscriber every few batches, not one per event.
        At shutdown what is buffered goes out first. `open_reader` opens a read-only connection to the log;
        it is used and closed in a worker thread."""
        sub = self._subscribe(query)
        # Every seq up to `cursor` was sent, or did not match: the next event must come after it.
        cursor = sub.start if after is None else after
        last_out = trio.current_time()  # of anything: the heartbeat is due heartbeat_s after it
        last_write = -math.inf  # of events: the first one after a quiet spell goes at once
        try:
            while not sub.closed:
                if sub.lagged:
                    if cursor >= sub.start:  # still catching up, it was told already: the log read goes on
                        yield [Lagged(cursor + 1)]
                        last_out = trio.current_time()
                    sub.rejoin(self._position)
                    continue
                if cursor < sub.start:
                    self._catching_up += 1
                    try:
                        page, reached = await trio.to_thread.run_sync(
                            _read_page, open_reader, query, cursor, sub.start
                        )
                    finally:
                        self._catching_up -= 1
                    fresh: Sequence[FeedItem] = [item for item in page if item.seq > cursor]
                    cursor = max(cursor, reached)
                elif sub.buffer:
                    if trio.current_time() < last_write + self._coalesce_s:
                        await trio.sleep_until(last_write + self._coalesce_s)
                        continue  # more may have come (or it lagged, or the feed closed)
                    live = [item for item in sub.buffer if item.seq > cursor]
                    sub.buffer.clear()
                    if live:
                        cursor = live[-1].seq
                    fresh = live
                else:
                    sub.wake = trio.Event()
                    with trio.move_on_at(last_out + self._heartbeat_s):
                        await sub.wake.wait()
                    fresh = [] if sub.wake.is_set() else [HEARTBEAT]
                if fresh and not sub.closed:
                    self._sent += sum(isinstance(item, FeedEvent) for item in fresh)
                    yield fresh
                    last_out = last_write = trio.current_time()
            # Closed: what was already handed to it still goes, in one last write; unless it is behind
            # (lagged, or still reading the log), when that would leave a gap before it.
            rest = [item for item in sub.buffer if item.seq > cursor]
            if rest and not sub.lagged and cursor >= sub.start:
                self._sent += len(rest)
                yield rest
        finally:
            self._subscriptions.discard(sub)


def _read_page(
    open_reader: Callable[[], LogStore], query: FeedQuery, after: int, upto: int
) -> tuple[list[FeedEvent], int]:
    with closing(open_reader()) as store:
        return read_history(store, query, after, upto)
