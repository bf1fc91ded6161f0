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
    fields are dropped. Accepts LF and CRLF line endings and frames split across chunks at any byte."""
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
                data = [
                    line[5:].lstrip(b" ") if line.startswith(b"data:") else None
                    for line in block.split(b"\n")
                ]
                payload = b"\n".join(d for d in data if d is not None)
                if any(d is not None for d in data):
                    yield payload
    if buffer.strip().startswith(b"data:"):
        yield buffer.strip()[5:].lstrip(b" ")


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_frame(message: str, type_: str, code: str | None) -> bytes:
    return frame(_encode({"error": {"message": message, "type": type_, "code": code}}))
