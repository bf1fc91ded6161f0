"""A client protocol as the HTTP edge serves it: its route, its handler, the shape of its errors and where
its clients put the gateway key. Every protocol's `POST` route is served on raw ASGI
(service/fast_route.py) with the same guards (throttle, auth before the body, size and time bounds, a
disconnect cancelling the request, a bug answered with a 500), each answered in the protocol's own shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from actors.supervisor import Runtime
from service.edge import BEARER_HOW, Answer, ErrorRender, Headers, bearer, error_answer

Handler = Callable[[Runtime, bytes, str, Headers], Awaitable[Answer]]


def bearer_credential(headers: Headers) -> str:
    return bearer(headers.get("authorization", ""))


@dataclass(frozen=True)
class ClientProtocol:
    path: str
    handle: Handler  # (runtime, body, request id, headers) -> the answer
    error: ErrorRender = error_answer
    credential: Callable[[Headers], str] = bearer_credential  # the gateway key the client sent, or ""
    how: str = BEARER_HOW  # where the key goes, as a 401 tells the client
