"""The HTTP surface on quart-trio: auth, request ids, errors, `/healthz`, `/v1/models`, and one route per
client protocol (each protocol's translation is its own module: service/chat_completions.py).

Handlers validate and translate; every decision is the request actor's. Errors always have OpenAI's
shape `{"error": {"message", "type", "code"}}` and every response carries `X-Request-Id`.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.supervisor import Runtime
from events.catalog import ALIASES, VIRTUAL_MODELS
from service import (
    admin_analytics,
    admin_api,
    admin_auth,
    admin_console,
    admin_feed,
    admin_requests,
    embeddings,
    messages,
    metrics,
    openapi,
    responses,
)
from service import chat_completions as chat
from service.admin_context import AdminContext
from service.edge import (
    CLOSE,
    AuthThrottle,
    authorized,
    error_answer,
    new_request_id,
    quart_response,
    quoted,
    throttled,
    too_large,
    unauthorized,
)
from service.fast_route import ASGIApp, ProtocolRoutes
from service.protocol import ClientProtocol
from service.secrets import TokenCheck

_encode = msgspec.json.encode

# Every client protocol's POST route, served by service/fast_route.py (one entry a line).
PROTOCOLS: tuple[ClientProtocol, ...] = (
    chat.PROTOCOL,
    messages.PROTOCOL,
    messages.COUNT_TOKENS_PROTOCOL,
    embeddings.PROTOCOL,
    responses.PROTOCOL,
)


def create_app(
    runtime: Runtime,
    gateway_tokens: TokenCheck,
    admin: AdminContext,
    *,
    max_body_bytes: int,
    body_timeout_s: float,
) -> ASGIApp:
    """The gateway's ASGI app: the client protocols' routes served directly (service/fast_route.py), the
    rest by Quart; both refuse an address that keeps sending invalid keys, and bound a body's size and
    time alike. The operators' surface (`/admin/...`, `/metrics`) takes the admin token only
    (service/admin_auth.py)."""
    throttle = AuthThrottle()
    quart = _quart_app(runtime, gateway_tokens, throttle, max_body_bytes, body_timeout_s)
    admin_auth.register(quart, admin.auth)
    responses.register(quart, runtime)
    for module in (admin_api, admin_requests, admin_analytics, admin_feed, metrics, admin_console, openapi):
        module.register(quart, admin)
    return ProtocolRoutes(
        quart,
        runtime,
        gateway_tokens,
        throttle,
        PROTOCOLS,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
    )


def _quart_app(
    runtime: Runtime,
    gateway_tokens: TokenCheck,
    throttle: AuthThrottle,
    max_body_bytes: int,
    body_timeout_s: float,
) -> QuartTrio:
    # No static folder: Quart's default serves `static/` under the working directory to anyone, unguarded
    # (the console serves its own files from the package: service/admin_console.py).
    app = QuartTrio("switchboard", static_folder=None)
    # Quart reads every body as it arrives (whatever the route) and drops what is past this limit.
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["RESPONSE_TIMEOUT"] = None  # streams end when they end; our deadlines bound them
    app.config["BODY_TIMEOUT"] = body_timeout_s

    @app.before_request
    async def assign_request_id() -> Response | None:
        request.request_id = new_request_id()  # type: ignore[attr-defined]  # ours, per request
        if not request.path.startswith("/v1"):
            return admin_auth.guard()
        address = request.remote_addr or "unknown"
        wait = throttle.blocked_for(address)
        if wait is not None:
            return quart_response(throttled(wait))
        if not authorized(gateway_tokens, request.headers.get("Authorization", "")):
            throttle.failed(address)
            return quart_response(unauthorized())
        return None

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = getattr(request, "request_id", "")
        if admin_auth.is_guarded(request.path) or request.path.startswith("/admin/api/"):
            # Operators' data: never kept by a browser's or a proxy's cache (the feed says so itself).
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        # These are answered before the body was read; closing the connection keeps a client that reuses
        # it from waiting forever behind the unread body.
        status = exc.code or 500
        if status == 413:
            return quart_response(too_large(max_body_bytes))
        if status == 404:
            return quart_response(
                error_answer(
                    404,
                    f"Unknown path {quoted(request.path)}. This gateway serves "
                    + ", ".join(protocol.path for protocol in PROTOCOLS)
                    + " and /v1/models; the console is at /admin/.",
                    "invalid_request_error",
                    "not_found",
                    headers=dict(CLOSE),
                )
            )
        if status == 405:
            return quart_response(
                error_answer(
                    405,
                    f"Method {request.method} is not allowed on {request.path}.",
                    "invalid_request_error",
                    "method_not_allowed",
                    headers=dict(CLOSE),
                )
            )
        return quart_response(
            error_answer(
                status, exc.description or exc.name, "invalid_request_error", None, headers=dict(CLOSE)
            )
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        # Liveness: 200 while the process answers, whatever its state says; a restart brings no key and no
        # disk space, and during a log outage it would lose the events held in memory.
        body, _ = _health(runtime)
        return Response(_encode(body), content_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        # Readiness: 503 while chat requests would all be refused (the log cannot be written, or no
        # provider key is usable), so a load balancer sends them elsewhere.
        body, ready = _health(runtime)
        return Response(_encode(body), status=200 if ready else 503, content_type="application/json")

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model_object(name, "switchboard") for name in VIRTUAL_MODELS]
        for avail in await runtime.health.models():
            if avail.model.enabled and avail.usable_keys:
                data.append(_model_object(avail.model.ref, avail.model.platform, avail.model.task))
        return Response(_encode({"object": "list", "data": data}), content_type="application/json")

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        name = ALIASES.get(model_id, model_id)
        if name in VIRTUAL_MODELS:
            return Response(_encode(_model_object(name, "switchboard")), content_type="application/json")
        for avail in await runtime.health.models():
            m = avail.model
            if m.enabled and model_id in (m.ref, m.id):
                body = _model_object(m.ref, m.platform, m.task)
                return Response(_encode(body), content_type="application/json")
        return quart_response(
            error_answer(
                404,
                f"The model '{quoted(model_id)}' does not exist or is disabled.",
                "invalid_request_error",
                "model_not_found",
                param="model",
            )
        )

    return app


def _health(runtime: Runtime) -> tuple[dict[str, object], bool]:
    """What /healthz and /readyz say: "ok"; "degraded" when no provider key is usable (every chat request
    gets 503); "log_unwritable" while the event log cannot be written (new requests get 503). And whether
    chat requests can be served now."""
    stats = runtime.health.statistics()
    body: dict[str, object] = {
        "status": "ok" if stats.keys_ok else "degraded",
        "keys": stats.keys,
        "keys_ok": stats.keys_ok,
        "models": stats.models,
        "log": {"writable": True},
        "tasks": _task_count(),
    }
    if not stats.keys_ok:
        body["reason"] = (
            f"no usable provider key ({stats.keys_invalid} invalid, {stats.keys_disabled} disabled): "
            "add one with 'switchboard keys add PLATFORM' or a <PLATFORM>_API_KEY variable"
            if stats.keys
            else "no provider keys: add one with 'switchboard keys add PLATFORM' or a <PLATFORM>_API_KEY "
            "variable"
        )
    outage = runtime.log.outage()
    if outage is not None:
        body["status"] = "log_unwritable"
        body["reason"] = (
            f"the event log cannot be written ({outage.reason}) since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(outage.since))}: new requests get 503; "
            "free space or fix the file's permissions, and writing resumes by itself"
        )
        body["log"] = {
            "writable": False,
            "reason": outage.reason,
            "since": outage.since,
            "held_events": outage.held,
            "dropped_events": runtime.log.statistics().dropped,
        }
    return body, stats.keys_ok > 0 and outage is None


def _task_count() -> int:
    """Live trio tasks in this process: flat under steady load, back to the idle count after it (soak)."""
    root = trio.lowlevel.current_root_task()
    count, stack = 0, [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def _model_object(model_id: str, owner: str, task: str = "chat") -> dict[str, Any]:
    """OpenAI's model object; `task` (ours) says which route serves it: chat, or embedding."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner, "task": task}
