"""The commit contract of a streamed answer, for every client protocol (DESIGN.md section 5).

`stream_answer` opens the request's stream and waits for its first content or the first keep-alive tick,
whichever comes first: a failure before then is a real HTTP error (in the protocol's shape); after it the
headers are out, and the protocol's `StreamRender` turns the neutral items (`Routed`, `Chunk`, `END`,
`Failure`) into its own events. While the client waits, before the first token or between tokens, it hears
the protocol's own keep-alive every `keepalive_s`.

A renderer is made for one stream and may keep state (sequence numbers, open blocks, the output so far).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator

import trio

from actors.request import ChatRequest
from actors.sse import KEEPALIVE
from actors.stream import Routed, StreamEnd, StreamItem
from actors.supervisor import Runtime
from events.attempts import Failure
from events.frames import Chunk
from service.edge import Answer, ErrorRender, failure_answer, routing_headers

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
logger = logging.getLogger("switchboard.http")


def _internal(request_id: str) -> Failure:
    return Failure(
        500,
        f"The gateway failed on this request (see its log, request id {request_id}).",
        "server_error",
        "internal_error",
        after_content=True,
    )


class StreamRender(ABC):
    """How one protocol writes a stream: each protocol says its chunks, its end and its failure; the
    keep-alive and the routed moment have defaults it may override."""

    def keepalive(self) -> bytes:
        """Sent after `keepalive_s` of silence (also the first bytes of a stream committed by the tick)."""
        return KEEPALIVE

    def routed(self, routed: Routed, *, in_headers: bool) -> bytes:
        """Right before the first content: where the answer comes from. `in_headers`: the routing went out in
        the response headers already (the stream was committed by its first content, not a keep-alive)."""
        return b""

    @abstractmethod
    def chunk(self, chunk: Chunk) -> bytes:
        """One neutral chunk in the protocol's form (b"": nothing to write for it)."""

    @abstractmethod
    async def end(self) -> bytes:
        """The normal end. Async: a protocol may record its answer before the client hears it is whole."""

    @abstractmethod
    def failure(self, failure: Failure) -> bytes:
        """A failure after the headers went out (before or after content): the protocol's error event."""


async def stream_answer(
    runtime: Runtime, req: ChatRequest, render: StreamRender, error: ErrorRender
) -> Answer:
    """Commit contract: wait for the first content (or the first keepalive tick), then send headers."""
    handle = await runtime.requests.open_stream(req)
    keepalive_s = runtime.requests.keepalive_s
    first: list[bytes] = []
    headers = dict(SSE_HEADERS)
    try:
        with trio.move_on_after(keepalive_s):
            item = await handle.items.receive()
            if isinstance(item, Failure):
                handle.close(client_gone=False)
                return failure_answer(item, error)
            assert isinstance(item, Routed)
            headers.update(routing_headers(item))
            first.append(render.routed(item, in_headers=True))
        if not first:
            first.append(render.keepalive())  # committed by the keepalive tick: the model is not known yet
    except trio.EndOfChannel:
        handle.close(client_gone=False)
        return error(502, "The stream ended before it started.", "upstream_error", None)
    except BaseException:
        handle.close(client_gone=True)
        raise

    async def body() -> AsyncGenerator[bytes]:
        try:
            for data in first:
                if data:
                    yield data
            # The keep-alive counts from the last bytes written, not the last item: a renderer may write
            # nothing for many items (Messages drops reasoning unless thinking was asked for).
            written = trio.current_time()
            while True:
                item: StreamItem | None = None
                try:
                    try:
                        # While chunks flow they are already waiting: no keepalive timer at all.
                        item = handle.items.receive_nowait()
                    except trio.WouldBlock:
                        with trio.move_on_at(written + keepalive_s):
                            item = await handle.items.receive()
                except trio.EndOfChannel:
                    return
                try:
                    if item is None:
                        out = render.keepalive()
                    elif isinstance(item, Routed):
                        out = render.routed(item, in_headers=False)
                    elif isinstance(item, Chunk):
                        out = render.chunk(item)
                    elif isinstance(item, StreamEnd):
                        out = await render.end()
                    else:
                        out = render.failure(item)
                except Exception:
                    # A bug in a renderer, met after the headers went out: loud in the log, and the client
                    # gets its protocol's error event rather than a stream cut off without one.
                    logger.exception("request %s: its stream could not be rendered", req.request_id)
                    yield render.failure(_internal(req.request_id))
                    return
                if isinstance(item, StreamEnd | Failure):
                    yield out
                    return  # the client's answer is whole: the runner's bookkeeping goes on alone
                now = trio.current_time()
                if not out and now - written >= keepalive_s:
                    out = render.keepalive()
                if out:
                    written = now
                    yield out
        finally:
            handle.close(client_gone=True)

    # `close` too: a generator that never started would not run its `finally`.
    return Answer(200, body(), headers, "text/event-stream", lambda: handle.close(client_gone=True))
