"""Server-sent events on the wire: split an upstream byte stream into frames, write our own frames."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


async def data_frames(chunks: AsyncGenerator[bytes]) -> AsyncGenerator[bytes]:
    """Yield the payload of each `data:` event (multi-line data joined by newlines); comments and other
    fields are dropped. Accepts LF and CRLF line endings and frames split across chunks at any byte; a
    body that ends without the last blank line still gives its last event."""
    buffer = b""
    async with aclosing(chunks):  # closing us closes the source too (an abandoned attempt)
        async for chunk in chunks:
            buffer += chunk
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                block, buffer = buffer[:end], buffer[end + 2 :]
                if (payload := _payload(block)) is not None:
                    yield payload
    # (A CR at the very end began a CRLF that never came.)
    if (payload := _payload(buffer.removesuffix(b"\r"))) is not None:
        yield payload


def _payload(block: bytes) -> bytes | None:
    """One event's data, or None when it has no `data:` line (a comment, a keep-alive)."""
    data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_frame(message: str, type_: str, code: str | None) -> bytes:
    return frame(_encode({"error": {"message": message, "type": type_, "code": code}}))
