"""The commit contract's stream loop (service/streaming.py), on a hand-fed stream and the autojump clock."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
import trio

from actors.request import ChatRequest
from actors.stream import END, Routed, StreamHandle, StreamItem
from actors.supervisor import Runtime
from events.attempts import Failure
from events.frames import Chunk
from service.edge import error_answer
from service.streaming import StreamRender, stream_answer

KEEPALIVE_S = 5.0


class _Requests:
    keepalive_s = KEEPALIVE_S

    def __init__(self, handle: StreamHandle) -> None:
        self.handle = handle

    async def open_stream(self, req: ChatRequest) -> StreamHandle:
        return self.handle


class _Runtime:
    def __init__(self, handle: StreamHandle) -> None:
        self.requests = _Requests(handle)


class SilentOnOdd(StreamRender):
    """Writes only the chunks whose text is "say": the others are ones its protocol drops."""

    def chunk(self, chunk: Chunk) -> bytes:
        return b"data: said\n\n" if chunk.obj == "say" else b""

    async def end(self) -> bytes:
        return b"end\n\n"

    def failure(self, failure: Failure) -> bytes:
        return b"failed\n\n"


def _request() -> ChatRequest:
    return ChatRequest("req_1", {"messages": [{"role": "user", "content": "hi"}]}, ("auto",), True, 1)


async def _run(
    feed: list[tuple[float, StreamItem]], render: StreamRender | None = None
) -> list[tuple[float, bytes]]:
    """Feed items at their times; return what the client got, each with when it got it."""
    send, recv = trio.open_memory_channel[StreamItem](100)
    handle = StreamHandle(recv, trio.CancelScope())
    got: list[tuple[float, bytes]] = []

    async def producer() -> None:
        async with send:
            start = trio.current_time()
            for at, item in feed:
                await trio.sleep_until(start + at)
                try:
                    await send.send(item)
                except trio.BrokenResourceError:
                    return  # the edge closed the stream (as the runner sees a client that left)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        runtime = cast(Runtime, _Runtime(handle))
        answer = await stream_answer(runtime, _request(), render or SilentOnOdd(), error_answer)
        body: Any = answer.body
        async for data in body:
            got.append((trio.current_time(), data))
    return got


async def test_a_renderer_that_writes_nothing_for_a_while_still_sends_keep_alives(autojump_clock) -> None:
    # Routed at once (committed by content), then 12 s of chunks every second that the renderer drops.
    feed: list[tuple[float, StreamItem]] = [(0.0, Routed("p/m", 1))]
    feed += [(float(i), Chunk(b"", "drop")) for i in range(1, 13)]
    feed += [(12.5, Chunk(b"", "say")), (13.0, END)]
    got = await _run(feed)
    keepalives = [at for at, data in got if data == b": keep-alive\n\n"]
    assert len(keepalives) == 2  # at 5 s and 10 s of writing nothing, though items kept coming
    assert got[-2][1] == b"data: said\n\n" and got[-1][1] == b"end\n\n"


async def test_flowing_content_needs_no_keep_alive(autojump_clock) -> None:
    feed: list[tuple[float, StreamItem]] = [(0.0, Routed("p/m", 1))]
    feed += [(float(i), Chunk(b"", "say")) for i in range(1, 13)]
    feed += [(13.0, END)]
    got = await _run(feed)
    assert [data for _, data in got].count(b": keep-alive\n\n") == 0
    assert len(got) == 13


class RaisesOnChunks(SilentOnOdd):
    def chunk(self, chunk: Chunk) -> bytes:
        raise TypeError("a renderer's bug")


async def test_a_renderer_that_raises_ends_the_stream_with_its_error_event(
    autojump_clock, caplog: pytest.LogCaptureFixture
) -> None:
    feed: list[tuple[float, StreamItem]] = [(0.0, Routed("p/m", 1)), (1.0, Chunk(b"", "say")), (2.0, END)]
    with caplog.at_level(logging.ERROR, "switchboard.http"):
        got = await _run(feed, RaisesOnChunks())
    assert [data for _, data in got] == [b"failed\n\n"]
    assert "req_1: its stream could not be rendered" in caplog.text and "a renderer's bug" in caplog.text
