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
    fields are dropped. Lines end in LF, CRLF or a lone CR (the SSE rule), frames may be split across
    chunks at any byte, and a body that ends without the last blank line still gives its last event."""
    buffer = b""
    async with aclosing(chunks):  # closing us closes the source too (an abandoned attempt)
        async for chunk in chunks:
            buffer += chunk
            if b"\r" in buffer:
                # Every line end becomes LF, but for a CR at the very end: the next chunk may make it a CRLF.
                held = buffer.endswith(b"\r")
                buffer = _lf(buffer[:-1] if held else buffer) + (b"\r" if held else b"")
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                block, buffer = buffer[:end], buffer[end + 2 :]
                if (payload := _payload(block)) is not None:
                    yield payload
    if (payload := _payload(_lf(buffer))) is not None:
        yield payload


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _payload(block: bytes) -> bytes | None:
    """One event's data, or None when it has no `data:` line (a comment, a keep-alive)."""
    data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_frame(message: str, type_: str, code: str | None) -> bytes:
    return frame(_encode({"error": {"message": message, "type": type_, "code": code}}))
