"""The HTTP surface: an OpenAI-compatible API on quart-trio.

Handlers validate and translate; every decision is the request actor's. Errors always have OpenAI's
shape `{"error": {"message", "type", "code"}}` and every response carries `X-Request-Id`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.request import ChatRequest
from actors.sse import DONE, KEEPALIVE, error_frame, frame
from actors.stream import Routed, StreamEnd, StreamItem
from actors.supervisor import Runtime
from events.attempts import Completion, Failure
from events.catalog import ALIASES, VIRTUAL_MODELS
from events.frames import Chunk
from service.secrets import TokenCheck

MAX_BODY_BYTES = 32 * 1024 * 1024  # images arrive inline as data URLs
GATEWAY_FIELDS = ("models", "fallback")  # ours: never forwarded to a provider
_encode = msgspec.json.encode
_decode = msgspec.json.decode
CLOSE = {"Connection": "close"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def create_app(runtime: Runtime, gateway_tokens: TokenCheck) -> QuartTrio:
    app = QuartTrio("switchboard")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["RESPONSE_TIMEOUT"] = None  # streams end when they end; our deadlines bound them
    app.config["BODY_TIMEOUT"] = 60

    @app.before_request
    async def assign_request_id() -> Response | None:
        request.request_id = "req_" + uuid.uuid4().hex[:24]  # type: ignore[attr-defined]
        if request.path.startswith("/v1"):
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not gateway_tokens.ok(token.strip()):
                return error_response(
                    401,
                    "Invalid or missing API key. Send your gateway key as 'Authorization: Bearer <key>' "
                    "(printed when the gateway first started; see README, Troubleshooting).",
                    "invalid_request_error",
                    "invalid_api_key",
                    headers=dict(CLOSE),
                )
        return None

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = getattr(request, "request_id", "")
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        # These are answered before the body was read; closing the connection keeps a client that reuses
        # it from waiting forever behind the unread body.
        status = exc.code or 500
        if status == 413:
            return error_response(
                413,
                f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB.",
                "invalid_request_error",
                "request_too_large",
                headers=dict(CLOSE),
            )
        if status == 404:
            return error_response(
                404,
                f"Unknown path {request.path}. This gateway serves /v1/chat/completions and /v1/models.",
                "invalid_request_error",
                "not_found",
                headers=dict(CLOSE),
            )
        if status == 405:
            return error_response(
                405,
                f"Method {request.method} is not allowed on {request.path}.",
                "invalid_request_error",
                "method_not_allowed",
                headers=dict(CLOSE),
            )
        return error_response(
            status, exc.description or exc.name, "invalid_request_error", None, headers=dict(CLOSE)
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        # Always 200: the process is up and answering (a restart would not bring a key). "degraded" when no
        # provider key is usable, so every chat request would get 503: for monitoring to alert on.
        stats = runtime.health.statistics()
        body: dict[str, object] = {
            "status": "ok" if stats.keys_ok else "degraded",
            "keys": stats.keys,
            "keys_ok": stats.keys_ok,
            "models": stats.models,
        }
        if not stats.keys_ok:
            body["reason"] = (
                f"no usable provider key ({stats.keys_invalid} invalid, {stats.keys_disabled} disabled): "
                "add one with 'switchboard keys add PLATFORM' or a <PLATFORM>_API_KEY variable"
                if stats.keys
                else "no provider keys: add one with 'switchboard keys add PLATFORM' or a <PLATFORM>_API_KEY "
                "variable"
            )
        return Response(_encode(body), content_type="application/json")

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model_object(name, "switchboard") for name in VIRTUAL_MODELS]
        for avail in await runtime.health.models():
            if avail.model.enabled and avail.usable_keys:
                data.append(_model_object(avail.model.ref, avail.model.platform))
        return Response(_encode({"object": "list", "data": data}), content_type="application/json")

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        name = ALIASES.get(model_id, model_id)
        if name in VIRTUAL_MODELS:
            return Response(_encode(_model_object(name, "switchboard")), content_type="application/json")
        for avail in await runtime.health.models():
            m = avail.model
            if m.enabled and model_id in (m.ref, m.id):
                return Response(_encode(_model_object(m.ref, m.platform)), content_type="application/json")
        return error_response(
            404,
            f"The model '{model_id}' does not exist or is disabled.",
            "invalid_request_error",
            "model_not_found",
            param="model",
        )

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        try:
            req = parse_chat_request(
                await request.get_data(),
                request.request_id,  # type: ignore[attr-defined]
                request.headers.get("X-Session-Id"),
            )
        except BadRequest as exc:
            return error_response(400, str(exc), "invalid_request_error", exc.code, param=exc.param)
        if not req.stream:
            result = await runtime.requests.complete(req)
            if isinstance(result, Failure):
                return _failure_response(result)
            return Response(result.body, content_type="application/json", headers=_routing_headers(result))
        return await _stream_response(runtime, req)

    return app


def _model_object(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


MAX_SKIPPED_HEADER = 1000  # characters of X-Skipped-Models


def _routing_headers(result: Completion | Routed) -> dict[str, str]:
    headers = {"X-Routed-Via": result.routed_via, "X-Fallback-Attempts": str(result.attempts - 1)}
    if result.skipped:
        headers["X-Skipped-Models"] = _one_line(result.skipped)
    return headers


def _one_line(parts: tuple[str, ...]) -> str:
    """Printable ASCII on one line, bounded: safe as a header value and inside an SSE comment."""
    text = "; ".join(parts)[:MAX_SKIPPED_HEADER]
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _routed_comment(routed: Routed) -> bytes:
    """A stream committed by a keep-alive has sent its headers before the model was known: the routing
    reaches the client as an SSE comment before the first data frame (clients ignore comments)."""
    lines = [f": routed-via {routed.routed_via}", f": fallback-attempts {routed.attempts - 1}"]
    if routed.skipped:
        lines.append(": skipped-models " + _one_line(routed.skipped))
    return "\n".join(lines).encode() + b"\n\n"


def render_chat(item: StreamItem) -> bytes | None:
    """A neutral stream item as chat-completions SSE (None: nothing to write for it)."""
    if isinstance(item, Chunk):
        return frame(item.raw)
    if isinstance(item, StreamEnd):
        return DONE
    if isinstance(item, Failure):
        # Headers are out: a failure, before or after content, is an error event, then the end.
        return error_frame(item.message, item.type, item.code) + DONE
    return None


def _failure_response(failure: Failure) -> Response:
    headers = {"X-Fallback-Attempts": str(max(failure.attempts - 1, 0))}
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(failure.retry_after_s)))
    return error_response(failure.status, failure.message, failure.type, failure.code, headers)


async def _stream_response(runtime: Runtime, req: ChatRequest) -> Response:
    """Commit contract: wait for the first content (or the first keepalive tick), then send headers."""
    handle = await runtime.requests.open_stream(req)
    keepalive_s = runtime.requests.keepalive_s
    first: list[bytes] = []
    headers = dict(SSE_HEADERS)
    try:
        with trio.move_on_after(keepalive_s):
            item = await handle.items.receive()
            if isinstance(item, Failure):
                handle.close(client_gone=False)
                return _failure_response(item)
            assert isinstance(item, Routed)
            headers.update(_routing_headers(item))
        if not headers.get("X-Routed-Via"):
            first.append(KEEPALIVE)  # committed by the keepalive tick: the model is not known yet
    except trio.EndOfChannel:
        handle.close(client_gone=False)
        return error_response(502, "The stream ended before it started.", "upstream_error", None)
    except BaseException:
        handle.close(client_gone=True)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            for chunk in first:
                yield chunk
            while True:
                item: StreamItem | None = None
                try:
                    try:
                        # While chunks flow they are already waiting: no keepalive timer at all.
                        item = handle.items.receive_nowait()
                    except trio.WouldBlock:
                        with trio.move_on_after(keepalive_s):
                            item = await handle.items.receive()
                except trio.EndOfChannel:
                    return
                if item is None:
                    yield KEEPALIVE
                elif isinstance(item, Routed):
                    yield _routed_comment(item)
                else:
                    out = render_chat(item)
                    if out is not None:
                        yield out
                    if isinstance(item, Failure):
                        return
        finally:
            handle.close(client_gone=True)

    response = Response(body(), status=200, headers=headers)
    response.timeout = None
    return response


def parse_chat_request(raw: bytes, request_id: str, session_header: str | None = None) -> ChatRequest:
    """Validate what we must understand; pass everything else through untouched."""
    if not raw.strip():
        raise BadRequest(
            "The request body is empty; send a JSON object with 'model' and 'messages'.", code="invalid_json"
        )
    try:
        body = _decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(
            "'messages' is required: a non-empty list of chat messages.",
            "messages",
            "missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of chat messages.", "messages", "invalid_type")
    for i, message in enumerate(messages):
        _check_message(i, message)
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a model id string (or 'auto').", "model", "invalid_type")
    models = body.get("models")
    requested: tuple[str, ...] = (model,)
    if models is not None:
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise BadRequest(
                "'models' must be a non-empty list of model id strings.", "models", "invalid_type"
            )
        requested = (model, *models)  # a virtual `model` gives the mode, concrete ones are tried first
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", "stream", "invalid_type")
    fallback = body.get("fallback", True)
    if not isinstance(fallback, bool):
        raise BadRequest("'fallback' must be true or false.", "fallback", "invalid_type")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BadRequest(f"'{name}' must be a positive integer.", name, "invalid_type")
    for name in GATEWAY_FIELDS:
        body.pop(name, None)
    if session_header is not None and not session_header.strip():
        raise BadRequest("'X-Session-Id' must not be empty.", code="invalid_session_id")
    return ChatRequest(
        request_id=request_id,
        body=body,
        requested=requested,
        stream=stream,
        est_tokens=estimate_tokens(messages),
        use_chain=fallback,
        session_header=session_header,
    )


def _check_message(i: int, message: Any) -> None:
    """The parts of a message the gateway reads (for routing and session keys) must have their types."""
    where = f"messages[{i}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"'{where}' must be an object with a string 'role'.", where, "invalid_type")
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(
                    f"'{where}.content[{j}]' must be an object with a string 'type'.",
                    f"{where}.content[{j}]",
                    "invalid_type",
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise BadRequest(
                    f"'{where}.content[{j}].text' must be a string.",
                    f"{where}.content[{j}].text",
                    "invalid_type",
                )
    elif content is not None and not isinstance(content, str):
        raise BadRequest(
            f"'{where}.content' must be a string, an array of content parts, or null.",
            f"{where}.content",
            "invalid_type",
        )
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise BadRequest(f"'{where}.tool_calls' must be an array.", f"{where}.tool_calls", "invalid_type")
        for j, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("function", {}), dict):
                raise BadRequest(
                    f"'{where}.tool_calls[{j}]' must be an object whose 'function' is an object.",
                    f"{where}.tool_calls[{j}]",
                    "invalid_type",
                )


def estimate_tokens(messages: list[Any]) -> int:
    """About four characters a token for text; a flat allowance per image (a data URL is not its size)."""
    chars, images = 0, 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    if part.get("type") == "text":
                        chars += len(str(part.get("text", "")))
                    else:
                        images += 1
        for call in message.get("tool_calls") or ():
            chars += len(_encode(call))
    return chars // 4 + 4 * len(messages) + 1000 * images
