"""What the request actor needs from a provider adapter. Adapters live in service/ and are injected, so
the runtime never imports the edges (dependencies flow service -> actors -> events)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


class TransportFailure(Exception):
    """The connection failed or broke (connect error, reset, protocol error). The message is secret-free."""


@dataclass(frozen=True)
class UpstreamCall:
    platform: str
    model: str
    key_id: str
    body: dict[str, Any]  # the client's body, already with the upstream model id and gateway fields removed
    stream: bool


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]  # lower-case names

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
        """Status of a cheap authenticated call (GET /models) with this key."""
        ...

    def redact(self, key_id: str, text: str) -> str:
        """`text` without the key's secret or any recognisable piece of it."""
        ...
