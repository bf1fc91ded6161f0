"""A stream between the request runner and a client protocol's edge: the neutral items it carries, the
handle the edge holds, and the producer task that runs a request into its channel.

The items are neutral (`Routed`, `Chunk`, `END`, `Failure`): chat completions, Responses and Messages each
render them in their own form. The producer runs in the request actor's nursery so it can outlive the
handler's `return Response(...)`; the edge closes the handle when its client goes away, which cancels it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import trio

from events.attempts import Completion, Failure
from events.frames import Chunk, completion_as_chunk

CONSUMER_GONE_S = 120.0  # a stream's consumer that takes nothing for this long has gone

logger = logging.getLogger("switchboard.request")


class StreamEnd:
    """The stream's normal end: the client protocol writes its own closing (`[DONE]` for chat)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = StreamEnd()


@dataclass(frozen=True)
class Routed:
    """Sent right before a stream's first content: where the answer comes from."""

    routed_via: str
    attempts: int
    skipped: tuple[str, ...] = ()  # named models that could not be used, each "ref (why)"


StreamItem = Routed | Chunk | StreamEnd | Failure
Emit = Callable[[StreamItem], Awaitable[None]]


class StreamHandle:
    """The edge's view of a running stream: receive items, and close it when the client goes."""

    def __init__(self, recv: trio.MemoryReceiveChannel[StreamItem], scope: trio.CancelScope) -> None:
        self.items = recv
        self._scope = scope
        self.client_gone = False
        self.answered = False  # the producer sent END: what is left is bookkeeping, not to be cancelled
        self.content_sent = False
        self.first_content_at: float | None = None  # trio time the first content went to the consumer

    def close(self, *, client_gone: bool) -> None:
        """Idempotent. Cancels the producer if it is still running and has not answered yet."""
        if not self.answered:
            if client_gone and not self._scope.cancel_called:
                self.client_gone = True
            self._scope.cancel()
        self.items.close()


Run = Callable[[Emit, StreamHandle], Awaitable["Completion | Failure | None"]]


async def produce(
    request_id: str,
    run: Run,
    send: trio.MemorySendChannel[StreamItem],
    scope: trio.CancelScope,
    handle: StreamHandle,
) -> None:
    """Run a request into the channel. Its last item is a `Failure`, or the answer ended with END."""

    async def emit(item: StreamItem) -> None:
        # A consumer that takes nothing for this long is gone (e.g. the client left before the response
        # body started, so its generator never ran).
        if item is END:  # before sending: the consumer may close as soon as it has it
            handle.answered = True
        elif isinstance(item, Chunk):
            if not handle.content_sent:
                handle.first_content_at = trio.current_time()
            handle.content_sent = True
        with trio.move_on_after(CONSUMER_GONE_S) as waited:
            try:
                await send.send(item)
            except trio.BrokenResourceError:
                if item is END:
                    # The client left as the answer ended (what it had not read yet, it misses): the answer
                    # was produced whole, and what is left is bookkeeping.
                    return
                raise
        if waited.cancelled_caught:
            handle.client_gone = True
            raise trio.BrokenResourceError("the client stopped reading")

    async with send:
        with scope:
            result: Completion | Failure | None
            try:
                result = await run(emit, handle)
                if isinstance(result, Completion) and not handle.content_sent and result.body:
                    # A truncated whole answer, the best there was: sent as a stream.
                    await emit(Routed(result.routed_via, result.attempts, result.skipped))
                    await emit(completion_as_chunk(msgspec.json.decode(result.body)))
                    await emit(END)
            except trio.BrokenResourceError:
                result = None  # the consumer closed its end: the client went away
            except Exception:
                # A bug met by one request: loud in the log, a 500 for that client, as Quart does for a
                # non-streaming handler; the other requests go on.
                logger.exception("request %s failed", request_id)
                result = Failure(
                    500,
                    f"The gateway failed on this request (see its log, request id {request_id}).",
                    "server_error",
                    "internal_error",
                )
            if isinstance(result, Failure) and not handle.answered:  # (after END there is nothing to say)
                # A client that is gone, or stopped reading, misses it: the failure is in the log.
                with trio.move_on_after(CONSUMER_GONE_S), contextlib.suppress(trio.BrokenResourceError):
                    await send.send(result)
