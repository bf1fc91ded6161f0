"""What the request runner needs from the provider side: a transport that opens calls, and per platform an
adapter that speaks the provider's format. Both live in service/ and are injected, so the runtime never
imports the edges (dependencies flow service -> actors -> events).

An adapter is the pure half of a provider kind (openai, gemini, ...): it builds the upstream request and
parses what comes back into the neutral forms of events/frames.py; the transport does the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from events.frames import Chunk
from events.outcomes import Failed


class TransportFailure(Exception):
    """The connection failed or broke (connect error, reset, protocol error). The message is secret-free.
    `local`: it failed on the gateway's own resources (out of file descriptors or buffers), which says
    nothing about the provider: no model may be cooled for it."""

    def __init__(self, message: str, *, local: bool = False) -> None:
        super().__init__(message)
        self.local = local


Operation = Literal["chat", "embeddings"]


@dataclass(frozen=True)
class UpstreamCall:
    platform: str
    model: str
    key_id: str
    # Neutral, with the upstream model id and no gateway fields: a chat-completions body, or for
    # `embeddings` OpenAI's embeddings body with `input` a list of strings and no `encoding_format` (the
    # edge encodes base64 itself, from the floats every provider can send).
    body: dict[str, Any]
    stream: bool
    operation: Operation = "chat"


class HttpRequest(NamedTuple):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


class FrameParser(Protocol):
    def frame(self, payload: bytes) -> Chunk | None:
        """One stream `data:` payload in the neutral form, or None for one that carries nothing."""
        ...


class ProviderAdapter(Protocol):
    kind: str

    def request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        """The provider's request for a neutral call (the secret goes in a header, never in the URL)."""
        ...

    def key_check(self, base_url: str, secret: str) -> HttpRequest:
        """A cheap authenticated call that succeeds exactly when the key works."""
        ...

    def key_check_status(self, status: int, raw: bytes) -> int:
        """What the key check's answer (`status`, body `raw`) says, as a status: 401 or 403 when it says the
        key is bad. Most providers say so by the status itself; one that says it otherwise (Gemini: a 400
        whose reason is API_KEY_INVALID) is read here, so the key's health never special-cases a kind."""
        ...

    def completion(self, raw: bytes) -> Any:
        """A whole 200 answer in the neutral form (a chat.completion object), or None if unreadable."""
        ...

    def frame(self, payload: bytes) -> Chunk | None:
        """One stream `data:` payload in the neutral form, or None for one that carries nothing."""
        ...

    def stream_frames(self) -> FrameParser:
        """The parser of one stream's frames. A frame's neutral form may depend on the frames before it
        (Gemini numbers a stream's tool calls across frames, OpenAI's delta `index` must count them), so
        the runner asks for one parser per stream; a kind whose frames stand alone returns itself."""
        ...

    def error(self, status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Failed:
        """A non-200 answer: its failure kind, message and retry time."""
        ...

    def embeddings_request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        """The provider's request for a neutral embeddings call (the secret in a header)."""
        ...

    def embeddings(self, raw: bytes) -> Any:
        """A whole 200 embeddings answer in the neutral form (OpenAI's `{"object": "list", "data":
        [{"object": "embedding", "index", "embedding": [floats]}], "model", "usage"}`; a root `error`
        for a failure wrapped in a 200), or None if unreadable."""
        ...


def request_for(adapter: ProviderAdapter, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
    """The upstream request of `call`, by its operation."""
    if call.operation == "embeddings":
        return adapter.embeddings_request(call, base_url, secret)
    return adapter.request(call, base_url, secret)


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up by lower-case names."""
        ...

    @property
    def adapter(self) -> ProviderAdapter:
        """How to read it: the platform's adapter."""
        ...

    def chunks(self) -> AsyncGenerator[bytes]:
        """The body as it arrives. Raises TransportFailure if the connection breaks."""
        ...


class Upstream(Protocol):
    def open(self, call: UpstreamCall) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send the request; the response is usable inside the context. Leaving it closes the connection
        if the body was not read to the end (so a cancelled attempt really hangs up).
        Raises TransportFailure when no response arrives."""
        ...

    async def check_key(self, platform: str, key_id: str) -> int:
        """Status of the adapter's key check with this key, as the adapter reads the answer
        (`ProviderAdapter.key_check_status`)."""
        ...

    def redact(self, key_id: str, text: str) -> str:
        """`text` without the key's secret or any recognisable piece of it."""
        ...
