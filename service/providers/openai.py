"""The OpenAI-compatible adapter: most providers speak OpenAI's chat completions already, so the neutral
forms are its own and parsing is decoding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from actors.upstream import HttpRequest, UpstreamCall
from events.frames import Chunk
from events.judge import judge_error
from events.outcomes import Failed

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# What a body that is not JSON raises (msgspec checks a string's UTF-8 as it decodes it).
_UNREADABLE = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


class OpenAIAdapter:
    kind = "openai"

    def request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        headers = {
            "authorization": f"Bearer {secret}",
            "accept-encoding": "gzip",
            "content-type": "application/json",
        }
        return HttpRequest("POST", base_url.rstrip("/") + "/chat/completions", headers, _encode(call.body))

    def key_check(self, base_url: str, secret: str) -> HttpRequest:
        headers = {"authorization": f"Bearer {secret}", "accept-encoding": "gzip"}
        return HttpRequest("GET", base_url.rstrip("/") + "/models", headers)

    def key_check_status(self, status: int, raw: bytes) -> int:
        return status  # a bad key is a 401 (or 403)

    def completion(self, raw: bytes) -> Any:
        try:
            return _decode(raw) if raw else None
        except _UNREADABLE:
            return None

    def frame(self, payload: bytes) -> Chunk | None:
        try:
            obj = _decode(payload)
        except _UNREADABLE:
            return None
        if b"\n" in payload or b"\r" in payload:
            # The bytes go to the client as one `data:` line: JSON spread over several lines (or with a
            # lone CR, which a client's SSE parser reads as a line end) is written again on one.
            payload = _encode(obj)
        return Chunk(payload, obj)

    def stream_frames(self) -> OpenAIAdapter:
        return self  # an OpenAI frame stands alone: it carries its own delta indexes

    def error(self, status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Failed:
        return judge_error(status, headers, raw, now)

    # ---- embeddings -----------------------------------------------------------------------------------

    def embeddings_request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        """`POST {base_url}/embeddings` with the neutral body as it stands: it is OpenAI's already."""
        headers = {
            "authorization": f"Bearer {secret}",
            "accept-encoding": "gzip",
            "content-type": "application/json",
        }
        return HttpRequest("POST", base_url.rstrip("/") + "/embeddings", headers, _encode(call.body))

    def embeddings(self, raw: bytes) -> Any:
        return self.completion(raw)  # OpenAI's list is the neutral form: decoding is all there is
