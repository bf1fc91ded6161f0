"""An in-process Upstream for actor tests: scripted per model, timed by trio's clock, and recording every
exchange (when it opened, when its context was left, whether a cancellation went through it).

A script is a `Reply` (or a list of them, used one per call, the last one repeated). Its `before` steps run
before the status and headers arrive, its `body` steps are the body: bytes are sent as one chunk, a number
is a `trio.sleep`, `Broken(...)` raises `TransportFailure` (a reset), `FOREVER` goes silent for good.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from actors.upstream import TransportFailure, UpstreamCall
from service.providers.openai import OpenAIAdapter

_encode = msgspec.json.encode


class _Forever:
    def __repr__(self) -> str:
        return "FOREVER"


FOREVER = _Forever()  # a step: never send anything again (the connection stays open)


@dataclass(frozen=True)
class Broken:
    """A step: the connection breaks (raises TransportFailure with this message)."""

    message: str = "connection reset by peer"
    local: bool = False  # the gateway's own resources ran out (EMFILE), not the provider's fault


Step = bytes | float | int | Broken | _Forever

JSON = {"content-type": "application/json"}
EVENT_STREAM = {"content-type": "text/event-stream"}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON))  # lower-case names
    body: tuple[Step, ...] = ()
    before: tuple[Step, ...] = ()  # before the response arrives: sleeps, Broken (connect error), FOREVER


@dataclass
class Exchange:
    """One call to the fake upstream, as the upstream saw it."""

    call: UpstreamCall
    opened_at: float
    answered_at: float | None = None  # status and headers sent
    closed_at: float | None = None  # the caller left the context: the connection is gone
    cancelled: bool = False  # a trio.Cancelled went through the context (a deadline or a disconnect)
    body_finished: bool = False  # every body step was played (the body was read to its end)
    chunks_sent: int = 0

    @property
    def ref(self) -> str:
        return f"{self.call.platform}/{self.call.model}"

    @property
    def hung_up(self) -> bool:
        """The caller closed the connection before the body ended."""
        return self.closed_at is not None and not self.body_finished


async def _play(step: Step) -> None:
    if isinstance(step, Broken):
        raise TransportFailure(step.message, local=step.local)
    if isinstance(step, _Forever):
        await trio.sleep_forever()
    elif isinstance(step, int | float):
        await trio.sleep(step)
    else:
        raise TypeError(f"not a wait step: {step!r}")


class FakeResponse:
    adapter = OpenAIAdapter()

    def __init__(self, reply: Reply, exchange: Exchange) -> None:
        self.status = reply.status
        self.headers = dict(reply.headers)
        self._reply = reply
        self._exchange = exchange

    async def chunks(self) -> AsyncGenerator[bytes]:
        for step in self._reply.body:
            if isinstance(step, bytes):
                self._exchange.chunks_sent += 1
                yield step
            else:
                await _play(step)
        self._exchange.body_finished = True


class FakeUpstream:
    """Implements actors.upstream.Upstream. A call to a model without a script is a test error."""

    def __init__(self, scripts: Mapping[str, Reply | Sequence[Reply]] | None = None) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self.exchanges: list[Exchange] = []
        self.key_status: dict[str, int] = {}
        for ref, script in (scripts or {}).items():
            self.script(ref, *([script] if isinstance(script, Reply) else script))

    def script(self, ref: str, *replies: Reply) -> None:
        assert replies, "a script needs at least one reply"
        self._scripts[ref] = list(replies)

    def calls(self, ref: str | None = None) -> list[Exchange]:
        return [e for e in self.exchanges if ref is None or e.ref == ref]

    @asynccontextmanager
    async def open(self, call: UpstreamCall) -> AsyncIterator[FakeResponse]:
        ref = f"{call.platform}/{call.model}"
        replies = self._scripts.get(ref)
        if replies is None:
            raise AssertionError(f"the test did not expect a call to {ref}")
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        exchange = Exchange(call, trio.current_time())
        self.exchanges.append(exchange)
        try:
            for step in reply.before:
                await _play(step)
            exchange.answered_at = trio.current_time()
            yield FakeResponse(reply, exchange)
        except trio.Cancelled:
            exchange.cancelled = True
            raise
        finally:
            exchange.closed_at = trio.current_time()

    async def check_key(self, platform: str, key_id: str) -> int:
        return self.key_status.get(key_id, 200)

    def redact(self, key_id: str, text: str) -> str:
        return text


# ---- building replies ----------------------------------------------------------------------------------


def completion(content: str = "Hello", *, finish: str = "stop", model: str = "m") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def json_reply(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None, *, before: Iterable[Step] = ()
) -> Reply:
    return Reply(status, {**JSON, **(headers or {})}, (_encode(obj),), tuple(before))


def error_reply(
    status: int, message: str = "upstream says no", headers: Mapping[str, str] | None = None
) -> Reply:
    return json_reply({"error": {"message": message, "type": "error", "code": status}}, status, headers)


def frame(obj: Any) -> bytes:
    """One SSE event as providers send it."""
    return b"data: " + (obj if isinstance(obj, bytes) else _encode(obj)) + b"\n\n"


def chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return frame(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


ROLE = chunk(role="assistant")
DONE_FRAME = b"data: [DONE]\n\n"


def sse_reply(*body: Step, before: Iterable[Step] = ()) -> Reply:
    return Reply(200, dict(EVENT_STREAM), tuple(body), tuple(before))


def answer(*words: str, finish: str = "stop") -> tuple[bytes, ...]:
    """A whole streamed answer: the role chunk, one chunk per word, the finish chunk and [DONE]."""
    return (ROLE, *(chunk(w) for w in words), chunk(finish=finish), DONE_FRAME)
