"""Every client protocol's `POST` route (`/v1/chat/completions`, ...: service/protocol.py) served on ASGI
directly; every other request goes to the Quart app.

Why: on the request path every request takes, Quart's dispatch (request and response objects, routing,
hooks, context variables) measured about a tenth of the gateway's CPU per request. These routes do the
same things Quart did for them, no more, each answer in the protocol's own shape: a request id on every
answer, the gateway key checked before the body is read, the body bounded in size (413) and time (408),
answers that close the connection when the body was not read, a client that goes away cancelling the
request, a bug answered with a 500 and logged.

Resource handling: the request runs in a nursery beside a task that waits for `http.disconnect`; a client
that goes away cancels the nursery, so the runner sees a disconnect at whatever it was awaiting. A
stream's body generator is closed on every path (its `finally` closes the stream's handle).
"""

from __future__ import annotations

import logging
from contextlib import aclosing

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)

from actors.supervisor import Runtime
from service.edge import (
    CLOSE,
    Answer,
    AuthThrottle,
    body_timeout,
    new_request_id,
    quoted,
    throttled,
    too_large,
    unauthorized,
)
from service.protocol import ClientProtocol
from service.secrets import TokenCheck

ASGIApp = ASGIFramework
Receive = ASGIReceiveCallable
Send = ASGISendCallable

logger = logging.getLogger("switchboard.http")


class ProtocolRoutes:
    def __init__(
        self,
        fallback: ASGIApp,
        runtime: Runtime,
        tokens: TokenCheck,
        throttle: AuthThrottle,
        protocols: tuple[ClientProtocol, ...],
        *,
        max_body_bytes: int,
        body_timeout_s: float,
    ) -> None:
        self._fallback = fallback
        self.protocols = {protocol.path: protocol for protocol in protocols}
        self._runtime = runtime
        self._tokens = tokens
        self._throttle = throttle
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            protocol = self.protocols.get(scope["path"])
            if protocol is not None:
                if scope["method"] == "POST":
                    await self._serve(protocol, scope, receive, send)
                else:
                    await _answer(send, new_request_id(), _not_allowed(protocol, scope["method"]))
                return
        await self._fallback(scope, receive, send)

    async def _serve(self, protocol: ClientProtocol, scope: HTTPScope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # ASGI names are lower-case; the first of a repeat wins
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        client = scope.get("client")
        address = client[0] if client else "unknown"
        error = protocol.error
        wait = self._throttle.blocked_for(address)
        if wait is not None:
            await _answer(send, request_id, throttled(wait, error))
            return
        key = protocol.credential(headers)
        if not key or not self._tokens.ok(key):
            self._throttle.failed(address)
            await _answer(send, request_id, unauthorized(error, protocol.how))
            return
        length = headers.get("content-length", "")
        max_body = self._max_body_bytes
        if length.isdigit() and int(length) > max_body:
            await _answer(send, request_id, too_large(max_body, error))
            return
        body = bytearray()
        early: Answer | None = None  # decided while reading, sent after (never inside the time bound)
        with trio.move_on_after(self._body_timeout_s) as waited:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if message["type"] != "http.request":
                    continue
                body += message.get("body", b"")
                if len(body) > max_body:
                    early = too_large(max_body, error)
                    break
                if not message.get("more_body", False):
                    break
        if waited.cancelled_caught:
            early = body_timeout(self._body_timeout_s, error)
        if early is not None:
            await _answer(send, request_id, early)
            return
        raw = bytes(body)
        del body  # one copy of a large body in memory while the request runs, not two
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            sent = _Sent()
            try:
                answer = await protocol.handle(self._runtime, raw, request_id, headers)
                await _answer(send, request_id, answer, sent)
            except Exception:
                # A bug met by this request: loud in the log, a 500 for this client (as Quart answers one).
                logger.exception("request %s failed", request_id)
                if not sent.started:
                    failed = error(
                        500,
                        f"The gateway failed on this request (see its log, request id {request_id}).",
                        "server_error",
                        "internal_error",
                    )
                    await _answer(send, request_id, failed)
            nursery.cancel_scope.cancel()


def _not_allowed(protocol: ClientProtocol, method: str) -> Answer:
    return protocol.error(
        405,
        f"Method {quoted(method)} is not allowed on {protocol.path}; use POST.",
        "invalid_request_error",
        "method_not_allowed",
        headers={"Allow": "POST", **CLOSE},  # any body it sent is unread
    )


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class _Sent:
    started = False  # the response's start went out: a failure now can only cut it short


async def _answer(send: Send, request_id: str, answer: Answer, sent: _Sent | None = None) -> None:
    """Send the answer; its `close` runs on every path (a stream's handle, even if its body never ran)."""
    try:
        headers = [
            (b"content-type", answer.content_type.encode()),
            (b"x-request-id", request_id.encode()),
            # UTF-8, as Quart sends header values (a model id may be any text).
            *((name.lower().encode(), value.encode()) for name, value in answer.headers.items()),
        ]
        if isinstance(answer.body, bytes):
            headers.append((b"content-length", str(len(answer.body)).encode()))
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": answer.status,
            "headers": headers,
            "trailers": False,
        }
        await send(start)
        if sent is not None:
            sent.started = True
        if isinstance(answer.body, bytes):
            await send(_body(answer.body, more=False))
            return
        async with aclosing(answer.body) as chunks:
            async for chunk in chunks:
                await send(_body(chunk, more=True))
        await send(_body(b"", more=False))
    finally:
        if answer.close is not None:
            answer.close()


def _body(data: bytes, *, more: bool) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": data, "more_body": more}
