"""The feed actor: live fan-out, resuming from the log with no gap and no duplicate, filters, a subscriber
that falls behind its buffer (lagged, then caught up from the log, never holding the log writer up), the
heartbeat, and the end of every subscription at shutdown.

Tests that read the log's part run on the real clock: the feed reads it in a worker thread, and under
`autojump_clock` virtual time jumps while a thread runs (deadlines would fire at random). They wait on no
timer, so they take no longer for it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import trio
import trio.lowlevel
import trio.testing

from actors.feed import HEARTBEAT, Feed, FeedEvent, FeedItem, FeedQuery, Lagged
from actors.log_writer import LogWriter
from events.store import MemoryStore
from events.types import (
    AttemptStarted,
    Event,
    KeyDisabled,
    RequestReceived,
    ResponseStored,
    RouteDecided,
    RouteInput,
    encode_event,
)


def attempt(n: int, platform: str = "groq", model: str = "m", request_id: str = "r") -> AttemptStarted:
    return AttemptStarted(
        ts=float(n), request_id=request_id, attempt=n, platform=platform, model=model, key_id="k"
    )


def decided(ref: str | None, request_id: str = "r") -> RouteDecided:
    return RouteDecided(
        ts=1.0,
        request_id=request_id,
        attempt=1,
        seed=1,
        view_seq=0,
        now=1.0,
        input=RouteInput(mode="balanced"),
        candidates=(),
        excluded=(),
        chosen_ref=ref,
        chosen_key=None,
    )


@dataclass
class Running:
    store: MemoryStore
    log: LogWriter
    feed: Feed
    shutting_down: trio.Event
    nursery: trio.Nursery

    async def follow(self, query: FeedQuery | None = None, after: int | None = None) -> Follower:
        """A subscriber, once it has joined (the generator subscribes when it first runs)."""
        joined = self.feed.statistics().subscribers + 1
        follower = Follower(self.feed.follow(query or FeedQuery(), after, lambda: self.store))
        self.nursery.start_soon(follower.pull)
        await trio.testing.wait_all_tasks_blocked()
        assert self.feed.statistics().subscribers == joined
        return follower

    async def append(self, events: Sequence[Event]) -> None:
        for event in events:
            await self.log.append(event)

    async def committed(self, seq: int) -> None:
        """Until the feed has fanned out everything up to `seq`: once every task waits, the writer has
        committed what it was given and the feed has handed it on."""
        await trio.testing.wait_all_tasks_blocked()
        assert self.feed.statistics().position == seq


class Follower:
    """One subscriber, read as the HTTP edge reads it: one item list at a time, taken when asked for (a
    stuck client is one that is not asked: its generator waits at its last yield)."""

    def __init__(self, items: AsyncGenerator[Sequence[FeedItem]]) -> None:
        self.items = items
        self._send, self._recv = trio.open_memory_channel[Sequence[FeedItem]](0)
        self._scope = trio.CancelScope()

    async def pull(self) -> None:
        with self._scope:
            async with aclosing(self.items), self._send:
                async for ready in self.items:
                    await self._send.send(ready)

    def close(self) -> None:
        """The client goes away: the edge's body generator is cancelled, then closed."""
        self._scope.cancel()

    async def next(self) -> Sequence[FeedItem]:
        with trio.fail_after(60):
            return await self._recv.receive()

    async def rest(self) -> list[Sequence[FeedItem]]:
        """Until the subscription ends."""
        with trio.fail_after(60):
            return [ready async for ready in self._recv]

    async def events(self, count: int) -> list[FeedItem]:
        """The next item lists until they hold `count` events, with every `Lagged` met on the way (heartbeats
        left out); more than `count` when the last list holds more."""
        out: list[FeedItem] = []
        with trio.fail_after(60):
            while sum(isinstance(i, FeedEvent) for i in out) < count:
                out.extend(i for i in await self._recv.receive() if i is not HEARTBEAT)
        return out

    async def seqs(self, count: int) -> list[int]:
        items = await self.events(count)
        assert not [i for i in items if isinstance(i, Lagged)]
        return [i.seq for i in items if isinstance(i, FeedEvent)]


@asynccontextmanager
async def running(
    *, buffer: int = 1000, heartbeat_s: float = 15.0, coalesce_s: float = 0.0
) -> AsyncIterator[Running]:
    store = MemoryStore()
    log = LogWriter(store, window_s=0.0)
    shutting_down = trio.Event()
    feed = Feed(log, shutting_down, buffer=buffer, heartbeat_s=heartbeat_s, coalesce_s=coalesce_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(feed.run)
        async with trio.open_nursery() as followers:
            yield Running(store, log, feed, shutting_down, followers)
            followers.cancel_scope.cancel()
        log.close()


# -- Live, and resuming from the log


async def test_live_events_come_in_log_order_as_the_log_stores_them(autojump_clock: trio.abc.Clock) -> None:
    async with running() as r:
        follower = await r.follow()
        await r.append([attempt(n) for n in range(1, 6)])
        items = await follower.events(5)
        stored = r.store.read_raw_after(0, 100)
        assert items == [FeedEvent(seq, "attempt_started", data) for seq, data in stored]
        assert stored[0][1] == encode_event(attempt(1))
        first = items[0]
        assert isinstance(first, FeedEvent)
        assert first.frame == b"id: 1\nevent: attempt_started\ndata: " + stored[0][1] + b"\n\n"
        follower.close()
        await trio.testing.wait_all_tasks_blocked()
        assert r.feed.statistics().subscribers == 0  # closing the generator ends the subscription


async def test_without_a_position_only_events_after_the_subscription_come(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as r:
        await r.append([attempt(n) for n in range(1, 4)])
        await r.committed(3)
        follower = await r.follow()
        await r.append([attempt(n) for n in range(4, 6)])
        assert await follower.seqs(2) == [4, 5]


async def test_resume_reads_the_log_then_joins_live_with_no_gap_and_no_duplicate() -> None:
    async with running() as r:
        await r.append([attempt(n) for n in range(1, 11)])
        await r.committed(10)
        # Appended but not yet fanned out when the subscriber joins: they must come once, live.
        await r.append([attempt(n) for n in range(11, 21)])
        follower = await r.follow(after=3)
        first = await follower.seqs(1)
        await r.append([attempt(n) for n in range(21, 31)])
        rest = await follower.seqs(30 - 3 - len(first))
        assert first + rest == list(range(4, 31))
        assert r.feed.statistics().events_sent == 27


async def test_a_stored_responses_turn_reaches_the_feed_without_its_conversation() -> None:
    stored = ResponseStored(
        ts=1.0,
        request_id="r",
        response_id="resp_1",
        messages='[{"role":"user","content":"my secret plan"}]',
        response='{"output":"my secret plan"}',
    )
    async with running() as r:
        await r.append([stored])
        await r.committed(1)
        await r.append([stored])  # once from the log (the resume below), once live
        follower = await r.follow(after=0)
        items = await follower.events(2)
    for item in items:
        assert isinstance(item, FeedEvent) and item.type == "response_stored"
        assert b"secret" not in item.data and b'"response_id":"resp_1"' in item.data
    assert b"secret" in r.store.read_raw_after(0, 1)[0][1]  # the log keeps it: continuing needs it


async def test_a_position_past_the_log_end_sends_only_what_comes_after_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as r:
        await r.append([attempt(n) for n in range(1, 4)])
        await r.committed(3)
        follower = await r.follow(after=5)  # e.g. from a log that was moved away: nothing up to 5 is sent
        await r.append([attempt(n) for n in range(4, 9)])
        assert await follower.seqs(3) == [6, 7, 8]


async def test_live_events_that_come_close_together_go_out_together(autojump_clock: trio.abc.Clock) -> None:
    async with running(coalesce_s=0.025) as r:
        follower = await r.follow()
        await r.append([attempt(1)])
        start = trio.current_time()
        assert [i.seq for i in await follower.next() if isinstance(i, FeedEvent)] == [1]  # at once
        assert trio.current_time() == start
        for n in range(2, 5):
            await trio.sleep(0.005)
            await r.append([attempt(n)])
        assert [i.seq for i in await follower.next() if isinstance(i, FeedEvent)] == [2, 3, 4]
        assert trio.current_time() == start + 0.025  # one write for the three, 25 ms after the last one
        await trio.sleep(1)
        await r.append([attempt(5)])
        sent = trio.current_time()
        assert [i.seq for i in await follower.next() if isinstance(i, FeedEvent)] == [5]
        assert trio.current_time() == sent  # after a quiet spell: at once


# -- Filters, on the log's part and the live part alike


async def test_filters_apply_to_history_and_live_alike() -> None:
    mixed: list[Event] = [
        attempt(1, platform="groq", model="llama", request_id="a"),
        attempt(2, platform="cerebras", model="llama", request_id="b"),
        decided("groq/qwen/qwen3", request_id="a"),
        decided(None, request_id="c"),
        KeyDisabled(ts=1.0, key_id="k"),
        RequestReceived(
            ts=1.0,
            request_id="d",
            model="auto",
            stream=False,
            messages=1,
            est_input_tokens=1,
            requested_models=("groq/llama",),
        ),
    ]
    cases = [
        (FeedQuery(types=frozenset({"route_decided"})), [3, 4]),
        (FeedQuery(types=frozenset({"key_disabled", "attempt_started"})), [1, 2, 5]),
        (FeedQuery(platform="groq"), [1, 3]),
        (FeedQuery(model="llama"), [1, 2]),
        (FeedQuery(model="groq/llama"), [1, 6]),
        (FeedQuery(model="qwen/qwen3"), [3]),  # a model id may hold a slash
        (FeedQuery(model="groq/qwen/qwen3", platform="groq"), [3]),
        (FeedQuery(request_id="a"), [1, 3]),
        (FeedQuery(request_id="a", types=frozenset({"route_decided"})), [3]),
        (FeedQuery(platform="cerebras", request_id="a"), []),
    ]
    async with running() as r:
        await r.append(mixed)
        await r.committed(6)
        followers = [(await r.follow(query, after=0), expected) for query, expected in cases]
        await r.append(mixed)  # seqs 7..12: the same events, live
        await r.committed(12)
        for follower, expected in followers:
            want = expected + [s + 6 for s in expected]
            got = [i.seq for i in await follower.events(len(want)) if isinstance(i, FeedEvent)]
            assert got == want
        # ... and nothing more came for any of them.
        r.shutting_down.set()
        for follower, _ in followers:
            assert all(i is HEARTBEAT for ready in await follower.rest() for i in ready)


# -- A subscriber that falls behind


async def test_a_stuck_subscriber_is_lagged_and_then_gets_every_event_once_from_the_log() -> None:
    async with running(buffer=8) as r:
        stuck, reader = await r.follow(), await r.follow()
        await r.append([attempt(1)])
        assert await stuck.seqs(1) == [1]  # ... and then it reads nothing
        read: list[int] = []

        async def keep_reading() -> None:
            while True:
                read.extend(i.seq for i in await reader.next() if isinstance(i, FeedEvent))

        r.nursery.start_soon(keep_reading)
        for n in range(2, 501, 4):
            await r.append([attempt(n + i) for i in range(4)])
            await r.committed(n + 3)
            # The writer never waits for the stuck one: each batch is committed, nothing stays queued, and
            # it holds at most its buffer (dropped when it overflowed).
            assert r.log.statistics().queued == 0
            assert r.feed.statistics().buffered <= 8
        assert r.feed.statistics().lagged == 1
        # The subscriber that reads got every event as it came.
        assert read == list(range(1, 502))
        await r.append([attempt(n) for n in range(502, 511)])

        items = await stuck.events(509)
        # It is told once, naming the next seq it needs (its last item list was taken before it stopped).
        [lagged] = [n for n, i in enumerate(items) if isinstance(i, Lagged)]
        before = [i.seq for i in items[:lagged] if isinstance(i, FeedEvent)]
        assert items[lagged] == Lagged(before[-1] + 1 if before else 2)
        assert [i.seq for i in items if isinstance(i, FeedEvent)] == list(range(2, 511))  # each once


async def test_a_subscriber_lagged_again_while_it_catches_up_loses_nothing() -> None:
    async with running(buffer=4) as r:
        follower = await r.follow()
        await r.append([attempt(1)])
        assert await follower.seqs(1) == [1]
        await r.append([attempt(n) for n in range(2, 2001)])
        await r.committed(2000)
        seen: list[int] = []
        lagged: list[Lagged] = []
        while len(seen) < 5000 - 1:
            top = r.store.last_seq()
            if top < 5000:
                # More than the buffer arrives between two pages read from the log: lagged again.
                await r.append([attempt(n) for n in range(top + 1, top + 101)])
                await r.committed(top + 100)
            for item in await follower.next():
                if isinstance(item, FeedEvent):
                    seen.append(item.seq)
                elif isinstance(item, Lagged):
                    assert item == Lagged(seen[-1] + 1 if seen else 2)  # the next seq it needs
                    lagged.append(item)
        assert seen == list(range(2, 5001))
        # Falling behind again while it still reads the log goes untold: that read simply goes further.
        assert len(lagged) < r.feed.statistics().lagged


# -- Heartbeat and shutdown


async def test_a_heartbeat_every_15_s_of_silence(autojump_clock: trio.abc.Clock) -> None:
    async with running() as r:
        start = trio.current_time()
        follower = await r.follow()
        assert await follower.next() == [HEARTBEAT]
        assert trio.current_time() - start == 15.0
        assert await follower.next() == [HEARTBEAT]
        assert trio.current_time() - start == 30.0
        await trio.sleep(10)
        await r.append([attempt(1)])
        assert [i.seq for i in await follower.next() if isinstance(i, FeedEvent)] == [1]
        sent = trio.current_time()
        assert await follower.next() == [HEARTBEAT]  # 15 s after the last thing sent
        assert trio.current_time() - sent == 15.0


async def test_shutdown_ends_every_subscription_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with running() as r:
        waiting, behind = await r.follow(), await r.follow(after=0)
        await r.append([attempt(n) for n in range(1, 4)])
        assert await waiting.seqs(3) == [1, 2, 3]
        await r.committed(3)  # `behind` is not read: its edge holds the one item list it took
        start = trio.current_time()
        r.shutting_down.set()
        assert await waiting.rest() == []
        # That list, and what had been handed to it, in one last write; then the end.
        assert [i.seq for ready in await behind.rest() for i in ready if isinstance(i, FeedEvent)] == [
            1,
            2,
            3,
        ]
        assert trio.current_time() == start  # no heartbeat period, no grace: at once
        assert r.feed.statistics().subscribers == 0
        late = Follower(r.feed.follow(FeedQuery(), 0, lambda: r.store))
        r.nursery.start_soon(late.pull)
        assert await late.rest() == []  # a subscriber after the shutdown began ends at once


async def test_a_subscriber_still_reading_the_log_at_shutdown_is_sent_nothing_past_a_gap() -> None:
    async with running() as r:
        await r.append([attempt(n) for n in range(1, 2001)])
        await r.committed(2000)
        follower = await r.follow(after=0)  # its edge takes the first page of the log, then waits
        await r.append([attempt(n) for n in range(2001, 2011)])  # held for it, live
        await r.committed(2010)
        r.shutting_down.set()
        sent = [i.seq for ready in await follower.rest() for i in ready if isinstance(i, FeedEvent)]
        # The page it had, and not the live events after the part of the log it never read: its
        # Last-Event-ID stays where a resume loses nothing.
        assert sent == list(range(1, len(sent) + 1))
        assert len(sent) < 2000


def test_a_keys_events_match_the_platform_in_its_id_and_a_model_filter_never_matches_none() -> None:
    from actors.feed import FeedQuery
    from events.types import CooldownsReset, KeyAdded, KeyDisabled

    reset = CooldownsReset(ts=1.0, key_id="local.0123456789", model="m-b")
    assert FeedQuery(platform="local").matches(reset)
    assert FeedQuery(model="local/m-b").matches(reset) and FeedQuery(model="m-b").matches(reset)
    assert FeedQuery(platform="local").matches(KeyDisabled(ts=1.0, key_id="local.0123456789"))
    assert not FeedQuery(platform="groq").matches(reset)
    added = KeyAdded(ts=1.0, key_id="local.0123456789", platform="local", label="…1234", source="vault")
    assert not FeedQuery(model="local/None").matches(added)
