"""`GET /openapi.json`: the OpenAPI 3.1 document of the gateway's HTTP API (`/v1`, `/admin/api`, the feed,
metrics, health). Public: it describes routes, it holds nothing of this gateway's state.

The document is data: schemas first (generated from the msgspec Structs the routes decode with where there
are some, so a body a route accepts cannot drift from what the document says; written by hand for what is
validated in code: the chat body, service/chat_completions.py), then one entry per operation. The
responses each operation can give are listed with it; the error object is one schema for all of them.
tests/service/test_openapi.py holds the document to the app's routes (both ways) and to the OpenAPI 3.1
meta-schema; tests/e2e/test_schemathesis.py holds the routes' answers to the document.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import msgspec
from quart import Response
from quart_trio import QuartTrio

from events.analytics import BUCKETS, DIMS, WINDOWS, ByDim, Errors, Summary, Timeline
from events.catalog import VIRTUAL_MODELS
from events.request_story import MODES, RequestSummary, Story
from events.types import EVENT_TYPES, PROTOCOLS, event_tag
from service import __version__
from service.admin_api import DisableBody, EmptyBody, KeyAddBody, ModelPatch, ResetBody
from service.admin_auth import COOKIE, CSRF_HEADER, LoginBody
from service.admin_console import CONTENT_TYPES as CONSOLE_TYPES
from service.admin_context import AdminContext
from service.admin_requests import DEFAULT_LIMIT, MAX_LIMIT, MAX_SEQ, OUTCOMES
from service.chat_completions import MAX_MODEL_NAME, MAX_MODELS
from service.embeddings import EMBEDDINGS_PATH
from service.embeddings import MAX_INPUTS as EMBEDDINGS_MAX_INPUTS
from service.messages import COUNT_TOKENS_PATH, ERROR_TYPES, MESSAGES_PATH, STOP_REASONS

PATH = "/openapi.json"
Schema = dict[str, Any]

# -- schema helpers -------------------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(
    required: dict[str, Schema], optional: dict[str, Schema] | None = None, *, closed: bool = True
) -> Schema:
    """An object with these fields (`required` always present); `closed`: no others."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _list_of(item: Schema) -> Schema:
    return _obj({"data": {"type": "array", "items": item}})


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "number", "description": "wall-clock seconds since the epoch"}
POOL: Schema = {"enum": ["fast", "balanced", "smart"]}

# The bodies routes decode with msgspec and the answers they encode from Structs: their schemas are what
# the decoder enforces and the encoder writes.
_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    LoginBody,
    KeyAddBody,
    DisableBody,
    ResetBody,
    ModelPatch,
    EmptyBody,
    Summary,
    ByDim,
    Timeline,
    Errors,
    RequestSummary,
    Story,
)


def _struct_schemas() -> tuple[dict[str, Schema], dict[str, Schema]]:
    refs, components = msgspec.json.schema_components(_STRUCTS, ref_template="#/components/schemas/{name}")
    return {s.__name__: r for s, r in zip(_STRUCTS, refs, strict=True)}, components


# The chat body: what service/chat_completions.py reads and checks; every other field is the provider's and
# passes through untouched (so the object stays open).
_CONTENT_PART: Schema = {
    "anyOf": [
        _obj({"type": {"const": "text"}, "text": STR}, closed=False),
        _obj({"type": {"type": "string", "not": {"const": "text"}}}, closed=False),
    ]
}
_MESSAGE = _obj(
    {"role": STR},
    {
        "content": {
            "anyOf": [STR, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}],
        },
        "tool_calls": {
            "type": "array",
            "items": {"type": "object", "properties": {"function": {"type": "object"}}},
        },
    },
    closed=False,
)
_MODEL_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME}
CHAT_REQUEST = _obj(
    {"messages": {"type": "array", "minItems": 1, "items": _MESSAGE}},
    {
        "model": {
            **_MODEL_NAME,
            "default": "auto",
            "description": f"a model ref (platform/id), a model id, or a mode: {', '.join(VIRTUAL_MODELS)}",
        },
        "models": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_MODELS,
            "items": _MODEL_NAME,
            "description": "the gateway's own: models to try first, in order (never sent to a provider)",
        },
        "stream": {"type": "boolean", "default": False},
        "fallback": {
            "type": "boolean",
            "default": True,
            "description": "the gateway's own: false tries only the models named (never sent to a provider)",
        },
        "max_tokens": _nullable({"type": "integer", "minimum": 1}),
        "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
    },
    closed=False,
)
# What the provider answered, passed through: OpenAI's chat completion.
CHAT_COMPLETION = _obj(
    {"choices": {"type": "array", "items": {"type": "object"}}},
    {"id": STR, "object": STR, "created": INT, "model": STR, "usage": _nullable({"type": "object"})},
    closed=False,
)
CHAT_EVENT = _obj(
    {"data": STR, "event": {"const": "message"}},
    {"id": STR, "retry": INT},
    closed=False,
)
MODEL_OBJECT = _obj(
    {"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR},
    # Ours: the route that serves the model (embedding models only POST /v1/embeddings).
    {"task": {"enum": ["chat", "embedding"]}},
)

HEALTH = _obj(
    {"status": {"enum": ["ok", "degraded", "log_unwritable", "busy"]}},
    {
        "reason": STR,
        "keys": INT,
        "keys_ok": INT,
        "models": INT,
        "tasks": INT,
        "log": _obj(
            {"writable": BOOL},
            {"reason": STR, "since": TIME, "held_events": INT, "dropped_events": INT},
        ),
    },
)

KEY_STATUS: Schema = {"enum": ["ok", "invalid", "disabled"]}
KEY = _obj(
    {
        "id": STR,
        "platform": STR,
        "label": STR,
        "source": {"enum": ["config", "env", "vault"]},
        "status": KEY_STATUS,
        "reason": {"type": "string", "description": "why it is invalid or disabled (empty when ok)"},
        "cooldowns": {
            "type": "array",
            "items": _obj({"model": STR, "until": TIME, "kind": {"enum": ["rate_limited", "forbidden"]}}),
        },
    }
)
KEY_CHECK = _obj({"key": _ref("Key"), "ok": BOOL, "status": KEY_STATUS, "message": STR})

_LIMIT: Schema = _nullable({"type": "integer", "minimum": 1})
LIMITS = _obj({"rpm": _LIMIT, "rpd": _LIMIT, "tpm": _LIMIT, "tpd": _LIMIT})
# The session header of chat completions and Responses (Messages takes Claude Code's too: its section).
SESSION_HEADER: Schema = {
    "name": "X-Session-Id",
    "in": "header",
    "required": False,
    "description": "names the conversation for pins and thread protection (not empty)",
    "schema": {"type": "string", "pattern": "\\S"},
}
MODEL = _obj(
    {
        "ref": STR,
        "platform": STR,
        "id": STR,
        "task": {"enum": ["chat", "embedding"]},
        "family": STR,
        "pool": POOL,
        "intelligence_rank": INT,
        "speed_rank": INT,
        "context_window": _nullable(INT),
        "limits": LIMITS,
        "enabled": BOOL,
        "in_chain": BOOL,
        "chain_position": _nullable({"type": "integer", "minimum": 1}),
        "usable_keys": INT,
        "keys": INT,
        "cooldown_until": _nullable(TIME),
        "stats": _obj(
            {
                "successes": INT,
                "failures": INT,
                "decayed_successes": NUM,
                "decayed_failures": NUM,
                "tps": _nullable(NUM),
                "ttfb_ms": _nullable(NUM),
            }
        ),
        "score": _obj(
            {
                name: NUM
                for name in ("theta_mean", "speed", "ttfb", "intelligence", "penalty", "balanced", "smart")
            }
        ),
    }
)
SESSION = _obj(
    {
        "session": STR,
        "pin": _nullable(_obj({"platform": STR, "model": STR, "key_id": STR, "used_at": TIME})),
        "bans": {"type": "array", "items": _obj({"platform": STR, "reason": STR})},
        "last_use": TIME,
    }
)
# hash and applied_at: null until a configuration was recorded.
CONFIG = _obj({"hash": _nullable(STR), "applied_at": _nullable(TIME), "config": {"type": "object"}})

WINDOW: Schema = {"enum": list(WINDOWS)}
REQUEST_PAGE = _obj(
    {
        "data": {"type": "array", "items": _ref("RequestSummary")},
        "next_before": _nullable({"type": "integer", "minimum": 1}),
    }
)

# One feed event as an SSE client reads it: `event` a log event's type (or `lagged`), `id` its seq.
FEED_EVENT = _obj(
    {
        "data": {"type": "string", "contentMediaType": "application/json"},
        "event": {"enum": [*sorted(event_tag(t) for t in EVENT_TYPES), "lagged"]},
    },
    {"id": {"type": "string", "pattern": "^[0-9]+$"}, "retry": INT},
    closed=False,
)
LOGIN_ANSWER = _obj({"csrf_token": STR, "expires_at": TIME})
SESSION_ANSWER = _obj(
    {"authenticated": {"const": True}, "via": {"enum": ["bearer", "cookie"]}},
    {"csrf_token": STR, "expires_at": TIME},
)
ERROR = _obj(
    {
        "error": _obj(
            {
                "message": STR,
                "type": STR,
                "param": _nullable(STR),
                "code": _nullable(STR),
            }
        )
    }
)

SCHEMAS: dict[str, Schema] = {
    "Error": ERROR,
    "Health": HEALTH,
    "ChatRequest": CHAT_REQUEST,
    "ChatCompletion": CHAT_COMPLETION,
    "ChatEvent": CHAT_EVENT,
    "ModelObject": MODEL_OBJECT,
    "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("ModelObject")}}),
    "LoginAnswer": LOGIN_ANSWER,
    "SessionAnswer": SESSION_ANSWER,
    "Key": KEY,
    "KeyList": _list_of(_ref("Key")),
    "KeyCheck": KEY_CHECK,
    "Model": MODEL,
    "ModelListAdmin": _list_of(_ref("Model")),
    "Session": SESSION,
    "SessionList": _list_of(_ref("Session")),
    "Config": CONFIG,
    "RequestPage": REQUEST_PAGE,
    "FeedEvent": FEED_EVENT,
}

# -- embeddings (service/embeddings.py) ------------------------------------------------------------------

# What service/embeddings.py reads and checks; other fields pass through to the provider (open object).
EMBEDDINGS_REQUEST = _obj(
    {
        "model": {
            **_MODEL_NAME,
            "description": "an embedding model: a ref (platform/id), an id, or a family name; fallback "
            "stays within its family (other families' vectors are not comparable)",
        },
        "input": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": EMBEDDINGS_MAX_INPUTS,
                    "items": {"type": "string", "minLength": 1},
                },
            ],
            "description": "the text, or texts, to embed (token ids are not supported)",
        },
    },
    {
        "encoding_format": {"enum": ["float", "base64"], "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": STR,
    },
    closed=False,
)
EMBEDDING_LIST = _obj(
    {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": _obj(
                {
                    "object": {"const": "embedding"},
                    "index": INT,
                    "embedding": {
                        "anyOf": [{"type": "array", "items": NUM}, STR],
                        "description": "floats, or (encoding_format base64) their float32 little-endian "
                        "bytes in base64",
                    },
                }
            ),
        },
        "model": {"type": "string", "description": "the model that answered: platform/id"},
        "usage": _obj({"prompt_tokens": INT, "total_tokens": INT}),
    }
)
EMBEDDINGS_SCHEMAS: dict[str, Schema] = {
    "EmbeddingsRequest": EMBEDDINGS_REQUEST,
    "EmbeddingList": EMBEDDING_LIST,
}


def _embeddings_paths() -> dict[str, dict[str, Schema]]:
    """`POST /v1/embeddings`, documented apart from the chat routes it shares the runner with."""
    return {
        EMBEDDINGS_PATH: {
            "post": _op(
                "createEmbedding",
                "Embedding vectors, routed among the keys and platforms of one embedding model family",
                "v1",
                GATEWAY,
                {
                    "200": _json(
                        "The vectors, one per input, in input order.",
                        _ref("EmbeddingList"),
                        "X-Routed-Via",
                        "X-Fallback-Attempts",
                    ),
                    "4XX": _json(
                        "A chat model or a mode named (400 `model_not_supported`), or every provider "
                        "tried refused the request as invalid (`upstream_bad_request`).",
                        _ref("Error"),
                        "X-Fallback-Attempts",
                    ),
                    "502": _json(
                        "Every attempt within the family failed (`all_attempts_failed`).",
                        _ref("Error"),
                        "X-Fallback-Attempts",
                    ),
                    "504": _json(
                        "Every attempt timed out before it answered (`stream_timeout`).",
                        _ref("Error"),
                        "X-Fallback-Attempts",
                    ),
                },
                (404,),
                body=_ref("EmbeddingsRequest"),
            )
        }
    }


# -- responses ------------------------------------------------------------------------------------------

_HEADERS: dict[str, Schema] = {
    "X-Request-Id": {"description": "this request's id, as the event log records it", "schema": STR},
    "Retry-After": {"description": "seconds to wait before trying again", "schema": STR},
    "X-Routed-Via": {"description": "the model that answered: platform/model", "schema": STR},
    "X-Fallback-Attempts": {"description": "failed attempts before this answer", "schema": STR},
    "X-Skipped-Models": {
        "description": "models named by the request that were passed over, and why",
        "schema": STR,
    },
    "Location": {"description": "where the resource is", "schema": STR},
    "ETag": {"description": "the file's version, for If-None-Match", "schema": STR},
    "Content-Security-Policy": {
        "description": "only this origin's scripts, styles and connections",
        "schema": STR,
    },
    "Set-Cookie": {
        "description": f"the console session: {COOKIE}=...; HttpOnly; SameSite=Strict",
        "schema": STR,
    },
}


def _headers(*names: str) -> dict[str, Schema]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-Id", *names)}


# Every error the gateway gives, by status: when it comes, and the headers it carries.
ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: (
        "Bad input: `param` names the field (`code` `invalid_field`, or `invalid_json` for a body that is "
        "not JSON).",
        (),
    ),
    401: ("No valid credentials for this route.", ()),
    403: (
        "A change made with the console's cookie without its CSRF token (`csrf_failed`) or from another "
        "origin (`bad_origin`).",
        (),
    ),
    404: ("No such resource (`not_found`, `model_not_found`).", ()),
    408: ("The request body did not arrive in time (`request_timeout`).", ()),
    409: ("The change cannot be made as asked (`conflict`).", ()),
    413: ("The request body is larger than [server] max_body_mb (`request_too_large`).", ()),
    429: (
        "Too many failed attempts from this address (`too_many_failed_attempts`), or every candidate model "
        "is rate-limited (`rate_limit_exceeded`).",
        ("Retry-After",),
    ),
    503: (
        "The gateway cannot take this now: the event log cannot be written (`log_unwritable`, nothing was "
        "changed), no model is available (`no_available_model`), or it is at its connection limit "
        "(`too_many_connections`).",
        ("Retry-After",),
    ),
}
_STATUS_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "BodyTimeout",
    409: "Conflict",
    413: "TooLarge",
    429: "TooManyRequests",
    503: "Unavailable",
}


def _error_responses() -> dict[str, Schema]:
    return {
        _STATUS_NAMES[status]: {
            "description": description,
            "headers": _headers(*headers),
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for status, (description, headers) in ERRORS.items()
    }


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"$ref": f"#/components/responses/{_STATUS_NAMES[s]}"} for s in sorted(set(statuses))}


def _json(description: str, schema: Schema, *headers: str) -> Schema:
    return {
        "description": description,
        "headers": _headers(*headers),
        "content": {"application/json": {"schema": schema}},
    }


def _empty(description: str, *headers: str) -> Schema:
    return {"description": description, "headers": _headers(*headers)}


# -- operations -----------------------------------------------------------------------------------------

Security = list[dict[str, list[str]]]
GATEWAY: Security = [{"gatewayKey": []}]
ADMIN: Security = [{"adminToken": []}, {"adminSession": []}]
# A change made with the console's cookie also needs its CSRF token.
ADMIN_CHANGE: Security = [{"adminToken": []}, {"adminSession": [], "csrfToken": []}]
PUBLIC: Security = []
_AUTH_ERRORS = (401, 429)  # every guarded route: no valid credentials, an address that keeps sending bad ones
_BODY_ERRORS = (400, 408, 413)  # every route that reads a body


def _path_param(name: str, description: str, *, slashes: bool = False) -> Schema:
    schema: Schema = {"type": "string", "minLength": 1}
    if not slashes:
        schema["pattern"] = "^[^/]+$"
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _op(
    op_id: str,
    summary: str,
    tag: str,
    security: Security,
    responses: dict[str, Schema],
    errors: Iterable[int] = (),
    *,
    params: Iterable[Schema] = (),
    body: Schema | None = None,
    body_required: bool = True,
    description: str | None = None,
    busy_503: bool = True,
) -> Schema:
    """One operation; the errors every route of its kind can give are added to `errors`. `busy_503`: at
    the connection cap it is answered 503 (service/http_server.py) like every route but /healthz."""
    error_statuses = set(errors)
    if busy_503:
        error_statuses.add(503)
    if security is not PUBLIC:
        error_statuses.update(_AUTH_ERRORS)
    if security is ADMIN_CHANGE:
        error_statuses.add(403)
    if body is not None:
        error_statuses.update(_BODY_ERRORS)
    op: Schema = {"operationId": op_id, "summary": summary, "tags": [tag], "security": security}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    # An operation's own answer for a status (e.g. /readyz's 503) is the one it gives.
    op["responses"] = {**responses, **_errors(*(s for s in error_statuses if str(s) not in responses))}
    return op


KEY_ID = _path_param("key_id", "the key's id (GET /admin/api/keys)")
MODEL_PLATFORM = _path_param("platform", "the model's platform")
MODEL_ID = _path_param("model_id", "the model's id on its platform (it may contain '/')", slashes=True)
SESSION_KEY = _path_param("session", "the session key (GET /admin/api/sessions)")
WINDOW_Q = _query("window", {**WINDOW, "default": "24h"}, "the window the figures cover")


def _chat(op_id: str, summary: str, security: Security) -> Schema:
    """The chat completion (service/chat_completions.py), by whichever route serves it."""
    return _op(
        op_id,
        summary,
        "v1" if security is GATEWAY else "console",
        security,
        {
            "200": {
                "description": "The provider's answer (`stream: true`: server-sent events, to "
                "`data: [DONE]`; a failure after the headers went out: an error event, `[DONE]`).",
                "headers": _headers("X-Routed-Via", "X-Fallback-Attempts", "X-Skipped-Models"),
                "content": {
                    "application/json": {"schema": _ref("ChatCompletion")},
                    "text/event-stream": {"schema": _ref("ChatEvent")},
                },
            },
            "4XX": _json(
                "Every provider tried refused the request as invalid (`upstream_bad_request`): its own 4xx "
                "status.",
                _ref("Error"),
                "X-Fallback-Attempts",
            ),
            "502": _json(
                "Every attempt failed (`all_attempts_failed`).", _ref("Error"), "X-Fallback-Attempts"
            ),
            "504": _json(
                "Every attempt timed out before it answered (`stream_timeout`).",
                _ref("Error"),
                "X-Fallback-Attempts",
            ),
        },
        (404,),
        params=[SESSION_HEADER],
        body=_ref("ChatRequest"),
    )


def _console_file(description: str, content: dict[str, Schema]) -> Schema:
    return {
        "description": description,
        "headers": _headers("ETag", "Content-Security-Policy"),
        "content": content,
    }


def _paths(structs: dict[str, Schema]) -> dict[str, dict[str, Schema]]:
    key = _json("The key.", _ref("Key"))
    model = _json("The model.", _ref("Model"))
    session = _json("The session.", _ref("Session"))
    return {
        "/healthz": {
            "get": _op(
                "healthz",
                "Liveness: 200 while the process answers, saying what is wrong if anything",
                "health",
                PUBLIC,
                {"200": _json("The gateway's state (`busy` at the connection cap).", _ref("Health"))},
                busy_503=False,
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "Readiness: 503 while every chat request would be refused",
                "health",
                PUBLIC,
                {
                    "200": _json("Ready.", _ref("Health")),
                    "503": _json(
                        "Not ready: the log cannot be written, or no provider key is usable (or, at the "
                        "connection cap, the error object).",
                        {"anyOf": [_ref("Health"), _ref("Error")]},
                    ),
                },
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "This document",
                "meta",
                PUBLIC,
                {"200": _json("The OpenAPI 3.1 document.", {"type": "object"})},
            )
        },
        "/v1/chat/completions": {
            "post": _chat(
                "createChatCompletion", "A chat completion, routed to a model and key, with fallback", GATEWAY
            )
        },
        "/v1/models": {
            "get": _op(
                "listModels",
                "The modes and every enabled model with a usable key",
                "v1",
                GATEWAY,
                {"200": _json("The models.", _ref("ModelList"))},
            )
        },
        "/v1/models/{model_id}": {
            "get": _op(
                "retrieveModel",
                "One model (a mode, a ref platform/id, or an id)",
                "v1",
                GATEWAY,
                {"200": _json("The model.", _ref("ModelObject"))},
                (404,),
                params=[_path_param("model_id", "a mode, a ref (platform/id) or an id", slashes=True)],
            )
        },
        "/admin/api/login": {
            "post": _op(
                "adminLogin",
                "Log the console in with the admin token: a session cookie and its CSRF token",
                "admin",
                PUBLIC,
                {"200": _json("Logged in.", _ref("LoginAnswer"), "Set-Cookie")},
                (401, 403, 429, 503),
                body=structs["LoginBody"],
            )
        },
        "/admin/api/logout": {
            "post": _op(
                "adminLogout",
                "End the console session",
                "admin",
                PUBLIC,
                {"204": _empty("Logged out; the cookie is cleared.", "Set-Cookie")},
                (403,),
                description=(
                    "A live session ends only with its CSRF token (and no foreign Origin): 403 otherwise. "
                    "Without a live session (expired, or none) the cookie is just cleared."
                ),
            )
        },
        "/admin/api/session": {
            "get": _op(
                "adminSession",
                "Who the caller is (and the console's CSRF token)",
                "admin",
                ADMIN,
                {"200": _json("Authenticated.", _ref("SessionAnswer"))},
            )
        },
        "/admin/api/keys": {
            "get": _op(
                "listKeys", "Every provider key", "keys", ADMIN, {"200": _json("The keys.", _ref("KeyList"))}
            ),
            "post": _op(
                "addKey",
                "Add a provider key (stored encrypted; never shown again)",
                "keys",
                ADMIN_CHANGE,
                {"201": _json("Added.", _ref("Key")), "200": _json("Already stored.", _ref("Key"))},
                body=structs["KeyAddBody"],
            ),
        },
        "/admin/api/keys/{key_id}": {
            "delete": _op(
                "removeKey",
                "Remove a key added here (a config or env key: 409, disable it or remove it there)",
                "keys",
                ADMIN_CHANGE,
                {"204": _empty("Removed.")},
                (404, 409),
                params=[KEY_ID],
            )
        },
        "/admin/api/keys/{key_id}/disable": {
            "post": _op(
                "disableKey",
                "Stop using a key",
                "keys",
                ADMIN_CHANGE,
                {"200": key},
                (404,),
                params=[KEY_ID],
                body=structs["DisableBody"],
                body_required=False,
            )
        },
        "/admin/api/keys/{key_id}/enable": {
            "post": _op(
                "enableKey",
                "Use a key again",
                "keys",
                ADMIN_CHANGE,
                {"200": key},
                (404,),
                params=[KEY_ID],
                body=structs["EmptyBody"],
                body_required=False,
            )
        },
        "/admin/api/keys/{key_id}/check": {
            "post": _op(
                "checkKey",
                "Check a key with its provider now",
                "keys",
                ADMIN_CHANGE,
                {"200": _json("What the provider said.", _ref("KeyCheck"))},
                (404,),
                params=[KEY_ID],
            )
        },
        "/admin/api/keys/{key_id}/reset-cooldowns": {
            "post": _op(
                "resetKeyCooldowns",
                "End a key's cooldowns (all, or one model's)",
                "keys",
                ADMIN_CHANGE,
                {"200": key},
                (404,),
                params=[KEY_ID],
                body=structs["ResetBody"],
                body_required=False,
            )
        },
        "/admin/api/models": {
            "get": _op(
                "listAdminModels",
                "Every model: pool, ranks, limits, keys, cooldown, statistics and score, in chain order",
                "models",
                ADMIN,
                {"200": _json("The models.", _ref("ModelListAdmin"))},
            )
        },
        "/admin/api/models/{platform}/{model_id}": {
            "get": _op(
                "getAdminModel",
                "One model",
                "models",
                ADMIN,
                {"200": model},
                (404,),
                params=[MODEL_PLATFORM, MODEL_ID],
            ),
            "patch": _op(
                "updateModel",
                "Change a model's pool, enabled, in chain, intelligence rank, limits (a null limit lifts it)",
                "models",
                ADMIN_CHANGE,
                {"200": model},
                (404,),
                params=[MODEL_PLATFORM, MODEL_ID],
                body=structs["ModelPatch"],
            ),
        },
        "/admin/api/sessions": {
            "get": _op(
                "listSessions",
                "Conversations with a pin or bans, most recent first",
                "sessions",
                ADMIN,
                {"200": _json("The sessions.", _ref("SessionList"))},
            )
        },
        "/admin/api/sessions/{session}": {
            "get": _op(
                "getSession", "One session", "sessions", ADMIN, {"200": session}, (404,), params=[SESSION_KEY]
            )
        },
        "/admin/api/sessions/{session}/pin": {
            "delete": _op(
                "clearSessionPin",
                "Clear a session's pin",
                "sessions",
                ADMIN_CHANGE,
                {"200": session},
                (404,),
                params=[SESSION_KEY],
            )
        },
        "/admin/api/sessions/{session}/bans/{platform}": {
            "delete": _op(
                "clearSessionBan",
                "Lift a session's ban of a platform",
                "sessions",
                ADMIN_CHANGE,
                {"200": session},
                (404,),
                params=[SESSION_KEY, _path_param("platform", "the banned platform")],
            )
        },
        "/admin/api/config": {
            "get": _op(
                "getConfig",
                "The effective configuration (no secrets), its hash and when it was applied",
                "config",
                ADMIN,
                {"200": _json("The configuration.", _ref("Config"))},
            )
        },
        "/admin/api/analytics/summary": {
            "get": _op(
                "analyticsSummary",
                "Requests, success rate, latency and TTFB percentiles, tokens, fallbacks",
                "analytics",
                ADMIN,
                {"200": _json("The summary.", structs["Summary"])},
                (400,),
                params=[WINDOW_Q],
            )
        },
        "/admin/api/analytics/by/{dim}": {
            "get": _op(
                "analyticsBy",
                "Attempts by model, platform or key",
                "analytics",
                ADMIN,
                {"200": _json("One row per name.", structs["ByDim"])},
                (400,),
                params=[
                    {
                        "name": "dim",
                        "in": "path",
                        "required": True,
                        "description": "what the rows are by",
                        "schema": {"enum": list(DIMS)},
                    },
                    WINDOW_Q,
                ],
            )
        },
        "/admin/api/analytics/timeline": {
            "get": _op(
                "analyticsTimeline",
                "Requests, errors and latency over time",
                "analytics",
                ADMIN,
                {"200": _json("The points, oldest first.", structs["Timeline"])},
                (400,),
                params=[
                    WINDOW_Q,
                    _query(
                        "bucket",
                        {"enum": list(BUCKETS)},
                        "the bucket (default: by the window; minutes are kept for 24 h)",
                    ),
                ],
            )
        },
        "/admin/api/analytics/errors": {
            "get": _op(
                "analyticsErrors",
                "Attempt failures by kind, most first",
                "analytics",
                ADMIN,
                {"200": _json("The kinds.", structs["Errors"])},
                (400,),
                params=[WINDOW_Q],
            )
        },
        "/admin/api/requests": {
            "get": _op(
                "listRequests",
                "Recent requests, newest first, with filters",
                "requests",
                ADMIN,
                {"200": _json("A page of requests.", _ref("RequestPage"))},
                (400,),
                params=[
                    _query("outcome", {"enum": list(OUTCOMES)}, "how they ended (running: not yet)"),
                    _query(
                        "status",
                        {"type": "integer", "minimum": 100, "maximum": 599},
                        "the HTTP status they were answered with",
                    ),
                    _query("platform", STR, "where it was answered (or, while it runs, tried last)"),
                    _query("model", STR, "the model (id or platform/id) that answered or was tried last"),
                    _query("mode", {"enum": list(MODES)}, "the mode asked for (named: models named)"),
                    _query("protocol", {"enum": list(PROTOCOLS)}, "the client protocol it came by"),
                    _query("since", NUM, "received at or after (epoch seconds)"),
                    _query("until", NUM, "received before (epoch seconds; not before since)"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                        "at most this many",
                    ),
                    _query(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
                        "the cursor: `next_before` of the previous page",
                    ),
                ],
            )
        },
        "/admin/api/requests/{request_id}": {
            "get": _op(
                "getRequest",
                "One request's whole story: its events, attempts, decisions and their replay",
                "requests",
                ADMIN,
                {"200": _json("The request.", structs["Story"])},
                (404,),
                params=[_path_param("request_id", "the request's id (X-Request-Id)")],
            )
        },
        "/admin/events": {
            "get": _op(
                "adminEvents",
                "The event log's tail as server-sent events, resumable",
                "feed",
                ADMIN,
                {
                    "200": {
                        "description": "Each event: `id: <seq>`, `event: <type>`, `data: <the event as the "
                        'log stores it>`; `event: lagged` (data `{"from": seq}`) when the subscriber fell '
                        "behind; a `: heartbeat` comment every 15 s. It ends when the client or the gateway "
                        "does.",
                        "headers": _headers(),
                        "content": {"text/event-stream": {"schema": _ref("FeedEvent")}},
                    }
                },
                (400,),
                params=[
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "resume after this seq (an EventSource sends it on reconnect)",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                    _query("after", {"type": "integer", "minimum": 0}, "resume after this seq"),
                    _query(
                        "types",
                        {"type": "string", "minLength": 1},
                        "event types, comma-separated: "
                        + ", ".join(sorted(event_tag(t) for t in EVENT_TYPES)),
                    ),
                    _query("platform", STR, "only this platform's events"),
                    _query("model", STR, "only this model's events"),
                    _query("request_id", STR, "only this request's events"),
                ],
            )
        },
        "/admin": {
            "get": _op(
                "consoleRedirect",
                "The console, at /admin/",
                "console",
                PUBLIC,
                {"308": {"description": "To /admin/.", "headers": _headers("Location")}},
            )
        },
        "/admin/": {
            "get": _op(
                "consolePage",
                "The console's page (it holds no data: it logs in through this API)",
                "console",
                PUBLIC,
                {
                    "200": _console_file("The page.", {"text/html": {"schema": STR}}),
                    "304": _empty("Unchanged since the ETag sent in If-None-Match.", "ETag"),
                },
            )
        },
        "/admin/static/{name}": {
            "get": _op(
                "consoleFile",
                "One of the console's files (its scripts, styles, vendored library)",
                "console",
                PUBLIC,
                {
                    "200": _console_file(
                        "The file.",
                        {media.partition(";")[0]: {"schema": STR} for media in CONSOLE_TYPES.values()},
                    ),
                    "304": _empty("Unchanged since the ETag sent in If-None-Match.", "ETag"),
                },
                (404,),
                params=[_path_param("name", "the file's name, e.g. app.js or vendor/...", slashes=True)],
            )
        },
        "/admin/api/playground/chat": {
            "post": _chat(
                "playgroundChat",
                "The console's Playground: a chat completion as /v1/chat/completions answers it, with the "
                "admin token or session instead of a gateway key",
                ADMIN_CHANGE,
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics",
                "metrics",
                ADMIN,
                {
                    "200": {
                        "description": "The Prometheus text exposition format (README, Metrics).",
                        "headers": _headers(),
                        "content": {"text/plain": {"schema": STR}},
                    }
                },
            )
        },
    }


# -- Anthropic Messages (service/messages.py) -----------------------------------------------------------
# Its own error shape (Anthropic's) and its own credentials (x-api-key, or a bearer): its operations take
# their error answers from these components, not from the OpenAI-shaped ones above.

MESSAGES_ERROR = _obj(
    {
        "type": {"const": "error"},
        "error": _obj({"type": {"enum": sorted({*ERROR_TYPES.values(), "api_error"})}, "message": STR}),
    }
)
_BLOCK: Schema = {"type": "object", "properties": {"type": STR}, "required": ["type"]}
_MESSAGES_FIELDS: dict[str, Schema] = {
    "system": {"anyOf": [STR, {"type": "array", "items": _BLOCK}]},
    "tools": {"type": "array", "items": {"type": "object"}},
    "tool_choice": {"type": "object", "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}}},
}
_MESSAGES_TURNS: Schema = {
    "type": "array",
    "minItems": 1,
    "items": _obj(
        {
            "role": {"enum": ["user", "assistant"]},
            "content": {"anyOf": [STR, {"type": "array", "items": _BLOCK}]},
        },
        closed=False,
    ),
}
_CLAUDE = "a Claude model name (claude-*) routes as [messages] claude_model; any other name as chat's `model`"
MESSAGES_REQUEST = _obj(
    {
        "model": {**_MODEL_NAME, "description": _CLAUDE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": _MESSAGES_TURNS,
    },
    {
        **_MESSAGES_FIELDS,
        "stream": BOOL,
        "stop_sequences": {"type": "array", "items": STR},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    },
    closed=False,
)
COUNT_TOKENS_REQUEST = _obj(
    {"model": {**_MODEL_NAME, "description": _CLAUDE}, "messages": _MESSAGES_TURNS},
    _MESSAGES_FIELDS,
    closed=False,
)
MESSAGE = _obj(
    {
        "id": STR,
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": STR,
        "content": {"type": "array", "items": _BLOCK},
        "stop_reason": {"enum": sorted({*STOP_REASONS.values(), "end_turn"})},
        "stop_sequence": {"type": "null"},
        "usage": _obj(
            {
                "input_tokens": INT,
                "output_tokens": INT,
                "cache_creation_input_tokens": INT,
                "cache_read_input_tokens": INT,
            }
        ),
    }
)
MESSAGES_EVENT = _obj(
    {
        "data": STR,
        "event": {
            "enum": [
                "ping",
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
                "error",
            ]
        },
    },
    {"id": STR, "retry": INT},
    closed=False,
)
MESSAGES_SCHEMAS: dict[str, Schema] = {
    "MessagesError": MESSAGES_ERROR,
    "MessagesRequest": MESSAGES_REQUEST,
    "CountTokensRequest": COUNT_TOKENS_REQUEST,
    "Message": MESSAGE,
    "MessagesEvent": MESSAGES_EVENT,
    "InputTokens": _obj({"input_tokens": INT}),
}
# Every error a Messages route gives, by status (the connection cap's 503 comes before any route: chat's
# error shape).
MESSAGES_ERRORS: dict[int | str, tuple[str, Schema, tuple[str, ...]]] = {
    400: ("Bad input (`invalid_request_error`); the message names the field.", _ref("MessagesError"), ()),
    401: (
        "No valid gateway key in x-api-key or a bearer (`authentication_error`).",
        _ref("MessagesError"),
        (),
    ),
    404: ("The model does not exist or is disabled (`not_found_error`).", _ref("MessagesError"), ()),
    408: ("The request body did not arrive in time (`timeout_error`).", _ref("MessagesError"), ()),
    413: (
        "The request body is larger than [server] max_body_mb (`request_too_large`).",
        _ref("MessagesError"),
        (),
    ),
    429: (
        "Too many failed key attempts from this address, or every candidate is rate-limited "
        "(`rate_limit_error`).",
        _ref("MessagesError"),
        ("Retry-After",),
    ),
    502: ("Every attempt failed (`api_error`).", _ref("MessagesError"), ("X-Fallback-Attempts",)),
    503: (
        "No model can take the request, or the log cannot be written (`overloaded_error`); at the "
        "connection cap, chat's error object.",
        {"anyOf": [_ref("MessagesError"), _ref("Error")]},
        ("Retry-After",),
    ),
    504: (
        "Every attempt timed out before it answered (`timeout_error`).",
        _ref("MessagesError"),
        ("X-Fallback-Attempts",),
    ),
    "4XX": (
        "Every provider tried refused the request as invalid: its own 4xx status.",
        _ref("MessagesError"),
        ("X-Fallback-Attempts",),
    ),
}


def _messages_error_responses() -> dict[str, Schema]:
    # "4XX" too: a routed request that every provider refused as invalid gets the provider's own status.
    return {
        f"Messages{status}": {
            "description": description,
            "headers": _headers(*headers),
            "content": {"application/json": {"schema": schema}},
        }
        for status, (description, schema, headers) in MESSAGES_ERRORS.items()
    }


MESSAGES_KEY: Security = [{"gatewayKey": []}, {"messagesKey": []}]


def _messages_op(
    op_id: str, summary: str, ok: Schema, body: str, statuses: tuple[int | str, ...], description: str
) -> Schema:
    responses: dict[str, Schema] = {"200": ok}
    responses.update({str(s): {"$ref": f"#/components/responses/Messages{s}"} for s in statuses})
    return {
        "operationId": op_id,
        "summary": summary,
        "description": description,
        "tags": ["v1"],
        "security": MESSAGES_KEY,
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": what,
                "schema": {"type": "string", "pattern": "\\S"},
            }
            for name, what in (
                ("X-Claude-Code-Session-Id", "names the conversation for pins and thread protection"),
                ("X-Session-Id", "the same, when X-Claude-Code-Session-Id is not sent"),
            )
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": responses,
    }


def _messages_paths() -> dict[str, dict[str, Schema]]:
    routed: tuple[int | str, ...] = (400, 401, 404, 408, 413, 429, 502, 503, 504, "4XX")
    return {
        MESSAGES_PATH: {
            "post": _messages_op(
                "createMessage",
                "Anthropic Messages, routed to a model and key, with fallback",
                {
                    "description": "The answer as a message (`stream: true`: Messages server-sent events, "
                    "with `ping` keep-alives; a failure after the headers went out: an `error` event).",
                    "headers": _headers("X-Routed-Via", "X-Fallback-Attempts", "X-Skipped-Models"),
                    "content": {
                        "application/json": {"schema": _ref("Message")},
                        "text/event-stream": {"schema": _ref("MessagesEvent")},
                    },
                },
                "MessagesRequest",
                routed,
                "The same routing, fallback, deadlines, sessions and events as chat completions "
                "(service/messages.py says what is translated). anthropic-version and anthropic-beta are "
                "accepted and ignored.",
            )
        },
        COUNT_TOKENS_PATH: {
            "post": _messages_op(
                "countMessageTokens",
                "The gateway's input-token estimate for a Messages body (no provider is called)",
                _json("The estimate.", _ref("InputTokens")),
                "CountTokensRequest",
                (400, 401, 408, 413, 429, 503),
                "The estimate the router uses for this body: its messages (system included) and tools.",
            )
        },
    }


# -- the Responses API (service/responses.py) ------------------------------------------------------------

_RESPONSES_INPUT_ITEM = _obj(
    {},
    {
        "type": {"enum": ["message", "function_call", "function_call_output", "reasoning"]},
        "role": {"enum": ["user", "assistant", "system", "developer"]},
        "content": {"anyOf": [STR, {"type": "array", "items": {"type": "object"}}]},
        "call_id": STR,
        "name": STR,
        "arguments": STR,
        "output": {"anyOf": [STR, {"type": "array", "items": {"type": "object"}}]},
    },
    closed=False,
)
RESPONSES_REQUEST = _obj(
    {},
    {
        "model": {
            **_MODEL_NAME,
            "default": "auto",
            "description": f"a model ref (platform/id), a model id, or a mode: {', '.join(VIRTUAL_MODELS)}",
        },
        "models": CHAT_REQUEST["properties"]["models"],
        "fallback": CHAT_REQUEST["properties"]["fallback"],
        "input": {"anyOf": [STR, {"type": "array", "items": _RESPONSES_INPUT_ITEM}]},
        "instructions": _nullable(STR),
        "previous_response_id": _nullable({"type": "string", "minLength": 1, "maxLength": 256}),
        "store": {"type": "boolean", "default": True},
        "stream": {"type": "boolean", "default": False},
        "tools": {
            "type": "array",
            "description": "function tools only ({type: function, name, description, parameters, strict})",
            "items": _obj({"type": {"const": "function"}, "name": STR}, closed=False),
        },
        "tool_choice": {"anyOf": [{"enum": ["auto", "none", "required"]}, {"type": "object"}]},
        "parallel_tool_calls": _nullable(BOOL),
        "max_output_tokens": _nullable({"type": "integer", "minimum": 1}),
        "temperature": _nullable({"type": "number"}),
        "top_p": _nullable({"type": "number"}),
        "metadata": _nullable({"type": "object", "additionalProperties": STR}),
        "user": _nullable(STR),
        "text": {"type": "object"},
    },
    closed=False,
)
RESPONSE_OBJECT = _obj(
    {
        "id": STR,
        "object": {"const": "response"},
        "created_at": INT,
        "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
        "model": STR,
        "output": {"type": "array", "items": {"type": "object"}},
    },
    {"usage": _nullable({"type": "object"}), "error": _nullable({"type": "object"})},
    closed=False,
)
RESPONSE_EVENT = _obj({"data": STR, "event": STR}, {"id": STR, "retry": INT}, closed=False)
RESPONSE_DELETED = _obj({"id": STR, "object": {"const": "response.deleted"}, "deleted": {"const": True}})
RESPONSES_SCHEMAS: dict[str, Schema] = {
    "ResponsesRequest": RESPONSES_REQUEST,
    "Response": RESPONSE_OBJECT,
    "ResponseEvent": RESPONSE_EVENT,
    "ResponseDeleted": RESPONSE_DELETED,
}


def _responses_paths() -> dict[str, dict[str, Schema]]:
    """`POST /v1/responses` (on the one request core, as chat) and the stored responses by id."""
    response_id = _path_param("response_id", "a stored response's id (resp_...)")
    stored = (404,)
    return {
        "/v1/responses": {
            "post": _op(
                "createResponse",
                "A model response (OpenAI's Responses API), routed to a model and key, with fallback",
                "v1",
                GATEWAY,
                {
                    "200": {
                        "description": "The Response object (`stream: true`: Responses events, each with "
                        "`type` and `sequence_number`, ending with `response.completed`, "
                        "`response.incomplete` or `response.failed`).",
                        "headers": _headers("X-Routed-Via", "X-Fallback-Attempts", "X-Skipped-Models"),
                        "content": {
                            "application/json": {"schema": _ref("Response")},
                            "text/event-stream": {"schema": _ref("ResponseEvent")},
                        },
                    },
                    "4XX": _json(
                        "Invalid input (`param` names the field), `previous_response_not_found`, or every "
                        "provider tried refused the request as invalid.",
                        _ref("Error"),
                        "X-Fallback-Attempts",
                    ),
                    "502": _json("Every attempt failed.", _ref("Error"), "X-Fallback-Attempts"),
                    "504": _json(
                        "Every attempt timed out before it answered (`stream_timeout`).",
                        _ref("Error"),
                        "X-Fallback-Attempts",
                    ),
                },
                (404,),
                params=[SESSION_HEADER],
                body=_ref("ResponsesRequest"),
            )
        },
        "/v1/responses/{response_id}": {
            "get": _op(
                "retrieveResponse",
                "A stored response (within [responses] retention_days)",
                "v1",
                GATEWAY,
                {"200": _json("The Response object.", _ref("Response"))},
                stored,
                params=[response_id],
            ),
            "delete": _op(
                "deleteResponse",
                "Delete a stored response",
                "v1",
                GATEWAY,
                {"200": _json("Deleted.", _ref("ResponseDeleted"))},
                stored,
                params=[response_id],
            ),
        },
    }


@cache
def document() -> Schema:
    """The whole document (built once; it depends on nothing but the code)."""
    structs, struct_components = _struct_schemas()
    paths = {**_paths(structs), **_messages_paths(), **_embeddings_paths(), **_responses_paths()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "switchboard",
            "version": __version__,
            "description": "A self-hosted, OpenAI-compatible LLM gateway. `/v1` is OpenAI's API (chat "
            "completions, Responses, models) with a gateway key; `/admin/api`, `/admin/events` and "
            "`/metrics` are the operators' surface, with the admin token or the console's session. The "
            "admin API's contract, the feed and the error shape are in docs/admin-api.md; setup, "
            "configuration and troubleshooting in the README.",
        },
        "tags": [
            {"name": tag}
            for tag in sorted({t for item in paths.values() for op in item.values() for t in op["tags"]})
        ],
        "paths": paths,
        "components": {
            "schemas": {
                **struct_components,
                **SCHEMAS,
                **MESSAGES_SCHEMAS,
                **EMBEDDINGS_SCHEMAS,
                **RESPONSES_SCHEMAS,
            },
            "responses": {**_error_responses(), **_messages_error_responses()},
            "headers": _HEADERS,
            "securitySchemes": {
                "gatewayKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a gateway API key ([gateway] api_keys, or printed at the first start)",
                },
                "messagesKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "a gateway API key, as Anthropic's clients send it (Messages routes)",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token ([admin] token, or printed at the first start); a "
                    "gateway key never grants admin",
                },
                "adminSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE,
                    "description": "the console's session, from POST /admin/api/login",
                },
                "csrfToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": CSRF_HEADER,
                    "description": "with the session cookie, on every change: the csrf_token login gave",
                },
            },
        },
    }


def register(app: QuartTrio, admin: AdminContext) -> None:
    """`GET /openapi.json`, public (admin_auth guards only the operators' paths)."""
    body = msgspec.json.encode(document())

    @app.get(PATH)
    async def openapi_json() -> Response:
        return Response(body, content_type="application/json")
