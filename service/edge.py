"""What every client protocol's HTTP edge shares: the error it raises for a malformed request, OpenAI-shaped
error responses, and the routing headers (`X-Routed-Via`, `X-Fallback-Attempts`, `X-Skipped-Models`)."""

from __future__ import annotations

import msgspec
from quart import Response

from actors.stream import Routed
from events.attempts import Completion, Failure

_encode = msgspec.json.encode
CLOSE = {"Connection": "close"}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(_encode(body), status=status, content_type="application/json", headers=headers or {})


MAX_SKIPPED_HEADER = 1000  # characters of X-Skipped-Models


def routing_headers(result: Completion | Routed) -> dict[str, str]:
    headers = {"X-Routed-Via": result.routed_via, "X-Fallback-Attempts": str(result.attempts - 1)}
    if result.skipped:
        headers["X-Skipped-Models"] = one_line(result.skipped)
    return headers


def one_line(parts: tuple[str, ...]) -> str:
    """Printable ASCII on one line, bounded: safe as a header value and inside an SSE comment."""
    text = "; ".join(parts)[:MAX_SKIPPED_HEADER]
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def failure_response(failure: Failure) -> Response:
    headers = {"X-Fallback-Attempts": str(max(failure.attempts - 1, 0))}
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(failure.retry_after_s)))
    return error_response(failure.status, failure.message, failure.type, failure.code, headers)
