"""A fast, fault-injecting, OpenAI-compatible upstream for end-to-end tests and the benchmark.

Raw trio sockets + h11 (HTTP/1.1 keep-alive), no framework: the server can answer normally, fail with any
status, wrap errors in a 200, stall before or in the middle of a stream, drip tokens, reset the connection,
and notice a client that hangs up.

What a request gets is its *behaviour*, a spec ``name[:arg[:arg]]``, looked up in this order:
``state.key_behaviours[api_key]``, ``state.behaviours[model]``, then the model id itself parsed as a spec
(so ``model="fail:503"`` fails with 503). Unknown names behave as ``ok``.

    ok                    "Hello from <model>." (stream: role chunk, 3 content chunks, finish chunk, [DONE]);
                          with ``tools``: a call to the first tool, finish_reason "tool_calls"
    echo                  content = the last user message's text
    fail:<status>         that status with an OpenAI error body {"error": {"message", "type", "code"}}
    rate-limit[:<s>]      429, with Retry-After: <s> when given
    spent:<s>             a normal answer saying it was the key's last request: x-ratelimit-remaining-requests
                          0 and x-ratelimit-reset-requests <s>s (non-streaming)
    auth                  401 (also on GET /v1/models when it is the key's behaviour)
    context               400, code "context_length_exceeded"
    wrapped-body[:<code>] 200 + JSON {"error": {"message", "code"}} (code default 503), stream or not
    wrapped-sse[:<code>]  200 SSE: an error frame then [DONE] (a non-stream request gets wrapped-body)
    stall-pre:<s>         nothing for s seconds, then a normal answer
    stall-mid:<s>         stream: headers, role + 2 content chunks, s seconds of silence, the rest
                          (non-stream: as stall-pre)
    truncated             normal content, finish_reason "length"
    empty                 content "" and no tool calls
    reset                 read the request, then RST (SO_LINGER 0) without a response
    reset-mid             stream: headers, role + 2 content chunks, then RST
                          (non-stream: headers and half the body, then RST)
    fail-mid[:<code>]     stream: headers, role + 2 content chunks, then an error frame
                          {"error": {"message", "code"}} (code default 503) and [DONE], as a provider that
                          breaks mid-answer sends it (non-stream: wrapped-body)
    drip:<i>:<n>          stream: headers + role chunk at once, then n content chunks "t0 ", "t1 ", ...
                          each after i seconds, then the finish (non-stream: the answer after n*i seconds)
    slow:<s>              a healthy but slow upstream: wait s seconds, then answer normally
    tool-once             an agent's turn (see ``_tool_once_answer``): with ``tools`` and no tool result
                          after the last user message, a call to the first tool (each required property
                          an example value: "example", 1, true); otherwise the text
                          "The tool said: <the last tool result>." (stream or not)

``stream_options.include_usage`` adds the usual usage chunk before ``[DONE]``.

Provider shapes are chosen **by route**, as the real providers' base URLs differ, so a platform of each
``kind`` points its ``base_url`` at its provider's path on this server and gets that provider's shapes (no
setting to flip; one upstream serves every kind at once):

    kind         base_url (ROOT: the address without /v1)      the chat call it makes
    openai       ROOT/v1                                        POST /v1/chat/completions
    gemini       ROOT/v1beta                                    POST /v1beta/models/<model>:generateContent
    cohere       ROOT/compatibility/v1                          POST /compatibility/v1/chat/completions
    cloudflare   ROOT/client/v4/accounts/{account_id}/ai/v1     POST .../accounts/<id>/ai/v1/chat/completions

Gemini: ``:generateContent`` and ``:streamGenerateContent?alt=sse`` answer in Google's native shapes
(``candidates`` / ``usageMetadata``; a stream is one ``data:`` frame per piece, the last with
``finishReason``, no ``[DONE]``). The key must come in ``x-goog-api-key`` (none: 403 PERMISSION_DENIED; a
``key=`` query parameter: 400 INVALID_ARGUMENT). The model in the path (URL-decoded) picks the behaviour as
above: ``ok`` / ``echo`` / ``truncated`` (MAX_TOKENS) / ``empty`` answer, with ``functionDeclarations`` a
``functionCall`` to the first; ``fail:<status>`` errors as ``{"error": {"code", "message", "status"}}``;
``rate-limit[:<s>]`` is a 429 RESOURCE_EXHAUSTED whose ``details`` carry ``RetryInfo.retryDelay`` "<s>s";
``quota-zero[:<s>]`` the 429 for a model the key's tier has no quota for ("limit: 0", a ``QuotaFailure``
without ``quotaValue``, RetryInfo "<s>s", default 42); ``auth`` a 400 INVALID_ARGUMENT "API key not valid"
with ``ErrorInfo.reason`` API_KEY_INVALID; ``context`` a 400 "The input token count ... exceeds the maximum
number of tokens allowed"; ``stall-pre:<s>`` and ``slow:<s>`` wait, then answer. Faults in its form:
``stall-mid:<s>`` (two frames, s seconds of silence, the last frame), ``reset-mid`` (two frames, then RST),
``fail-mid[:<code>]`` (two frames, then an error frame ``{"error": {...}}``), ``wrapped-body[:<code>]`` /
``wrapped-sse[:<code>]`` (a 200 whose body, or whose only frame, is an error object; code default 503);
``tools-split``: a call to every declared function, each in its own stream frame; ``signed-tool-once``:
``tool-once`` as Gemini 3 does it, its ``functionCall`` carrying a ``thoughtSignature``, and a request
whose current turn (after the last user text) has a model step whose first ``functionCall`` is unsigned
refused with Gemini 3's 400 "... is missing a `thought_signature`" (a signature neither its own nor
Google's documented dummy, ``skip_thought_signature_validator`` / ``context_engineering_is_the_way_to_go``,
is a 400 "Corrupted thought signature."). ``GET /v1beta/models``
(the adapter's key check): key behaviour ``auth`` is the bad-key 400, ``fail:<status>`` that status.

Cohere (its compatibility endpoint): answers are OpenAI's (every behaviour above as on ``/v1``), errors
are Cohere's ``{"id", "message"}``: ``fail:<status>``, ``rate-limit[:<s>]`` (429, ``Retry-After: <s>``
when given), ``auth`` (401 "invalid api token"), ``context`` (400 "too many tokens: ..."). Wrapped and
mid-stream errors keep OpenAI's ``{"error": ...}`` form, as the endpoint is OpenAI-compatible. Its key
check is Cohere's own ``GET /v1/models`` (served by the OpenAI route: ``auth`` is a 401 there too).

Cloudflare (Workers AI's OpenAI-compatible endpoint under an account): answers are OpenAI's, errors are
the ``{"result": null, "success": false, "errors": [{"code", "message"}], "messages": []}`` envelope with
Workers AI's internal codes: ``fail:<status>`` sends the code for it at the status Cloudflare uses (400
3003, 401 10000, 403 3023, 404 as 400 5007 "No such model", 408 3007, 413 3006, 429 3040, 500 3043);
``rate-limit[:<s>]`` 429 code 3040 (``Retry-After: <s>`` when given); ``daily-quota`` 429 code 3036 (the
daily free allocation, which lasts until UTC midnight); ``auth`` 401 code 10000; ``context`` 400 code 5021
("... exceeded this model context window limit"); ``wrapped-body[:<code>]`` a **200** with the envelope
(code default 3040), ``wrapped-sse[:<code>]`` the envelope as an SSE frame, ``fail-mid[:<code>]`` two
content frames then the envelope frame. An empty (or unfilled ``{account_id}``) account is 400 code 7003;
an unknown path 400 code 7000. ``GET .../accounts/<acct>/ai/models/search`` (the adapter's key check)
lists one model; key behaviour ``auth`` is its 401 code 10000.

Names only some routes answer (``quota-zero``, ``tools-split``, ``signed-tool-once``, ``daily-quota``:
``PROVIDER_BEHAVIOURS``)
behave as ``ok`` elsewhere, like any unknown name.

Embeddings: ``POST /v1/embeddings`` (OpenAI's shape) and Gemini's ``:batchEmbedContents`` answer one
deterministic vector per input (``embedding_vector``: a function of the model id and the text, 8 numbers
unless ``dimensions`` / ``outputDimensionality`` asks otherwise). The model picks the behaviour as above:
``fail``, ``rate-limit``, ``auth`` and ``reset`` fail as for chat, ``wrapped-body`` wraps an error in a 200,
``empty`` answers no vectors, ``dims:<n>`` gives n-dimensional vectors whatever was asked, ``stall-pre`` /
``slow`` wait; anything else answers.

Use it in-process::

    state = UpstreamState()
    base_url = await nursery.start(serve_upstream, state)   # "http://127.0.0.1:PORT/v1"

or as a process: ``python scripts/fault_upstream.py [--host 127.0.0.1] [--port 0]`` prints one line
``listening on http://HOST:PORT/v1`` and serves until SIGINT/SIGTERM (exit status 0).

Timing: every wait is a ``trio.sleep``, so in-process use follows a ``MockClock``.

Client hang-ups: while a response is delayed (stall, drip, slow, a stream with pauses) a watcher task
reads the socket; EOF (or a failed send) counts in ``state.client_disconnects``, sets
``state.disconnected`` and stops the response.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import itertools
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import h11
import msgspec
import trio

__all__ = ["BEHAVIOURS", "RecordedRequest", "UpstreamState", "parse_spec", "serve_upstream"]

BEHAVIOURS = frozenset(
    {
        "ok",
        "echo",
        "spent",
        "fail",
        "rate-limit",
        "auth",
        "context",
        "wrapped-body",
        "wrapped-sse",
        "stall-pre",
        "stall-mid",
        "truncated",
        "empty",
        "reset",
        "reset-mid",
        "fail-mid",
        "drip",
        "slow",
        "tool-once",
    }
)

_PLAIN = frozenset({"ok", "echo", "truncated", "empty"})
_DELAYED = frozenset({"stall-pre", "slow"})

DEFAULT_MODELS = ("ok", "echo", "gpt-4o-mini")

_RECV = 65536
_encode = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"transfer-encoding", b"chunked"),
]
_DONE = b"data: [DONE]\n\n"
_LINGER_RST = struct.pack("ii", 1, 0)
_ids = itertools.count(1)


@dataclass
class RecordedRequest:
    """One request as the upstream saw it (``api_key`` is the Bearer token, headers are lower-cased)."""

    method: str
    path: str
    model: str | None
    api_key: str | None
    stream: bool
    body: dict | None
    headers: dict[str, str]


@dataclass
class UpstreamState:
    """What the upstream does and what it saw. Shared with the test that drives it; mutate freely."""

    requests: list[RecordedRequest] = field(default_factory=list)
    behaviours: dict[str, str] = field(default_factory=dict)
    key_behaviours: dict[str, str] = field(default_factory=dict)
    client_disconnects: int = 0
    disconnected: trio.Event = field(default_factory=trio.Event)
    open_connections: int = 0
    total_connections: int = 0  # connections accepted since start (or the last reset)
    record: bool = True  # append to ``requests``; the CLI turns it off so a long benchmark holds no history

    def reset(self) -> None:
        """Forget recorded requests, configured behaviours and disconnects (live connections stay counted)."""
        self.requests.clear()
        self.behaviours.clear()
        self.key_behaviours.clear()
        self.client_disconnects = 0
        self.total_connections = 0
        self.disconnected = trio.Event()

    def behaviour_for(self, model: str | None, api_key: str | None) -> str:
        if api_key is not None and (spec := self.key_behaviours.get(api_key)):
            return spec
        if model is not None:
            return self.behaviours.get(model) or model
        return "ok"

    def _note_disconnect(self) -> None:
        self.client_disconnects += 1
        self.disconnected.set()


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``"drip:0.1:5"`` -> ``("drip", ["0.1", "5"])``; unknown names become ``("ok", [])``."""
    name, *args = spec.split(":")
    if name not in BEHAVIOURS:
        return "ok", []
    return name, args


def _float(args: list[str], i: int, default: float) -> float:
    try:
        return float(args[i])
    except (IndexError, ValueError):
        return default


def _int(args: list[str], i: int, default: int) -> int:
    try:
        return int(args[i])
    except (IndexError, ValueError):
        return default


# ----------------------------------------------------------------------------------------------- bodies

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("requests", "rate_limit_exceeded"),
}


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Error"


def _error_body(status: int, model: str | None, message: str | None = None, code: Any = None) -> bytes:
    etype, ecode = _ERROR_TYPES.get(status, ("server_error", "server_error"))
    if message is None:
        if status == 404:
            message = f"The model `{model}` does not exist or you do not have access to it."
        elif status == 401:
            message = "Incorrect API key provided."
        elif status == 429:
            message = f"Rate limit reached for {model} on requests per min (RPM)."
        else:
            message = f"fault upstream: injected HTTP {status} for model {model}"
    return _encode({"error": {"message": message, "type": etype, "code": code or ecode}})


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _prompt_tokens(body: dict) -> int:
    messages = body.get("messages")
    n = 0
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                n += len(_message_text(m.get("content")).split())
    return max(n, 1)


def _split_words(text: str) -> list[str]:
    if not text:
        return []
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])]


@dataclass(slots=True)
class _Answer:
    """The normal answer to one chat request: content pieces (one per stream chunk) or one tool call."""

    model: str
    pieces: list[str]
    tool: str | None
    finish: str
    prompt_tokens: int
    include_usage: bool
    id: str = ""
    created: int = 0
    arguments: str = "{}"  # of the tool call

    def usage(self) -> dict:
        completion = max(len(self.pieces), 1) if self.tool is None else 1
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def completion(self) -> bytes:
        if self.tool is not None:
            message: dict = {"role": "assistant", "content": None, "tool_calls": [self._tool_call()]}
        else:
            message = {"role": "assistant", "content": "".join(self.pieces)}
        return _encode(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
                "usage": self.usage(),
            }
        )

    def _tool_call(self) -> dict:
        return {
            "id": "call_" + self.id.rpartition("-")[2],
            "type": "function",
            "function": {"name": self.tool, "arguments": self.arguments},
        }

    def _gemini_payload(self, parts: list[dict], finish: str | None, usage: bool) -> dict:
        candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = _GEMINI_FINISH[finish]
        u = self.usage()
        metadata = {"promptTokenCount": u["prompt_tokens"], "totalTokenCount": u["prompt_tokens"]}
        if usage:
            metadata = {
                "promptTokenCount": u["prompt_tokens"],
                "candidatesTokenCount": u["completion_tokens"],
                "totalTokenCount": u["total_tokens"],
            }
        return {
            "candidates": [candidate],
            "usageMetadata": metadata,
            "modelVersion": self.model,
            "responseId": self.id,
        }

    def _gemini_parts(self) -> list[dict]:
        if self.tool is not None:
            return [{"functionCall": {"name": self.tool, "args": {}}}]
        return [{"text": "".join(self.pieces)}]

    def gemini_completion(self) -> bytes:
        return _encode(self._gemini_payload(self._gemini_parts(), self.finish, True))

    def gemini_frames(self) -> list[bytes]:
        """One SSE frame per content piece (Gemini sends no role chunk and no ``[DONE]``); the last one
        carries ``finishReason`` and the full usage."""
        parts = [[{"text": p}] for p in self.pieces] if self.tool is None else [self._gemini_parts()]
        parts = parts or [[{"text": ""}]]
        payloads = [self._gemini_payload(p, None, False) for p in parts[:-1]]
        payloads.append(self._gemini_payload(parts[-1], self.finish, True))
        return [b"data: " + _encode(p) + b"\n\n" for p in payloads]

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        return (
            b"data: "
            + _encode(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )
            + b"\n\n"
        )

    def head_frames(self) -> list[bytes]:
        """The role chunk, then each content piece (or the tool-call deltas) as its own SSE frame."""
        frames = [self._chunk({"role": "assistant"})]
        if self.tool is not None:
            call = self._tool_call()
            call["index"] = 0
            call["function"] = {"name": self.tool, "arguments": ""}
            frames.append(self._chunk({"tool_calls": [call]}))
            frames.append(
                self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": self.arguments}}]})
            )
        else:
            frames.extend(self._chunk({"content": p}) for p in self.pieces)
        return frames

    def tail_frames(self) -> list[bytes]:
        """The finishing chunk, the usage chunk when asked for, and ``[DONE]``."""
        frames = [self._chunk({}, self.finish)]
        if self.include_usage:
            frames.append(
                b"data: "
                + _encode(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": self.usage(),
                    }
                )
                + b"\n\n"
            )
        frames.append(_DONE)
        return frames


def _build_answer(name: str, args: list[str], model: str, body: dict) -> _Answer:
    tool = None
    finish = "stop"
    if name == "echo":
        pieces = []
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in reversed(messages):
                if isinstance(m, dict) and m.get("role") == "user":
                    pieces = _split_words(_message_text(m.get("content")))
                    break
    elif name == "empty":
        pieces = []
    elif name == "drip":
        pieces = [f"t{i} " for i in range(_int(args, 1, 5))]
    else:
        pieces = ["Hello", " from", f" {model}."]
        tools = body.get("tools")
        if tools and isinstance(tools, list) and isinstance(tools[0], dict):
            fn = tools[0].get("function") or {}
            tool = str(fn.get("name") or tools[0].get("name") or "tool")
            finish = "tool_calls"
    if name == "truncated":
        finish = "length"
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    n = next(_ids)
    return _Answer(
        model=model,
        pieces=pieces,
        tool=tool,
        finish=finish,
        prompt_tokens=_prompt_tokens(body),
        include_usage=include_usage,
        id=f"chatcmpl-{n:08d}",
        created=int(time.time()),
    )


# ------------------------------------------------------------------------------------- an agent's turn


def _tool_once_answer(model: str, body: dict) -> _Answer:
    """``tool-once``: what an agent loop needs from a model, a tool call and then an answer that uses the
    tool's result. A call to the first tool while no ``tool`` message follows the last user message;
    once one does, the text "The tool said: <its content>." (so a test sees the result reached the model)."""
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    result = None
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") == "user":
            break
        if m.get("role") == "tool":
            result = _message_text(m.get("content"))
            break
    if result is None:
        answer = _build_answer("ok", [], model, body)  # with tools: a call to the first one ...
        answer.arguments = _example_arguments(body)  # ... whose arguments its schema accepts
        return answer
    answer = _build_answer("ok", [], model, {**body, "tools": None})
    answer.pieces = _split_words(f"The tool said: {result}.")
    return answer


_EXAMPLES = {"string": "example", "integer": 1, "number": 1, "boolean": True}


def _example_arguments(body: dict) -> str:
    """Arguments for the first tool: each required property of a simple type gets an example value."""
    tools = body.get("tools") or [{}]
    fn = (tools[0].get("function") if isinstance(tools[0], dict) else None) or {}
    schema = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    args = {
        name: _EXAMPLES.get(props.get(name, {}).get("type"), "example")
        for name in schema.get("required") or ()
        if isinstance(name, str) and isinstance(props.get(name), dict)
    }
    return _encode(args).decode()


# ------------------------------------------------------------------------------------- gemini bodies

_GEMINI_PREFIX = "/v1beta/models/"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}


def _gemini_answer(name: str, model: str, body: dict) -> _Answer:
    """The chat answer for a Gemini request: ``contents`` read as messages, ``functionDeclarations`` as
    tools, so every plain behaviour answers the same words in either shape."""
    messages = []
    contents = body.get("contents")
    if isinstance(contents, list):
        for c in contents:
            if isinstance(c, dict) and isinstance(c.get("parts"), list):
                text = "".join(
                    p["text"] for p in c["parts"] if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
                messages.append(
                    {"role": "user" if c.get("role") != "model" else "assistant", "content": text}
                )
    tools = []
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            tools.extend({"function": d} for d in t.get("functionDeclarations") or [] if isinstance(d, dict))
    return _build_answer(name, [], model, {"messages": messages, "tools": tools})


# -------------------------------------------------- provider shapes: Gemini faults, Cohere, Cloudflare

# Behaviour names only some provider routes answer (elsewhere they are unknown names, so ``ok``).
PROVIDER_BEHAVIOURS = frozenset({"quota-zero", "tools-split", "signed-tool-once", "daily-quota"})
_GEMINI_ONLY = frozenset({"quota-zero", "tools-split", "signed-tool-once"})
_GEMINI_FAULTS = frozenset({"stall-mid", "reset-mid", "fail-mid", "wrapped-body", "wrapped-sse"})
_GEMINI_BAD_KEY = "API key not valid. Please pass a valid API key."
_GEMINI_KEY_INVALID = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
    "metadata": {"service": "generativelanguage.googleapis.com"},
}
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"

_COHERE_PREFIX = "/compatibility/v1/"
# Cohere's compatibility endpoint answers errors with a root ``message`` (docs.cohere.com/reference/errors).
_COHERE_MESSAGES = {
    400: "invalid request: fault upstream injected a bad request",
    401: "invalid api token",
    402: "Please add a payment method to continue using the API",
    404: "model '{model}' not found, make sure the correct model ID was used and that you have access to "
    "the model.",
    429: "You are using a Trial key, which is limited to 20 API calls / minute. You can continue to use the "
    "Trial key for free or upgrade to a Production key with higher rate limits.",
    500: "internal server error, this has been reported to our developers. id fault-upstream",
    503: "service unavailable",
}

_CLOUDFLARE_PREFIX = "/client/v4/accounts/"
# ``fail:<status>`` on Cloudflare: the status Workers AI sends, its internal code and message
# (developers.cloudflare.com/workers-ai/platform/errors). "No such model" is a 400 there.
_CLOUDFLARE_FAIL = {
    400: (400, 3003, "Request is missing headers or body: messages"),
    401: (401, 10000, "Authentication error"),
    403: (403, 3023, "Service unavailable for account"),
    404: (400, 5007, "No such model {model} or task"),
    408: (408, 3007, "AiError: Request timeout"),
    413: (413, 3006, "AiError: Request is too large"),
    429: (429, 3040, "AiError: AiError: Capacity temporarily exceeded, please try again."),
    500: (500, 3043, "AiError: AiError: Internal server error"),
}
_CLOUDFLARE_CODE_MESSAGES = {
    3036: "AiError: AiError: You have used up your daily free allocation of 10,000 neurons. Please upgrade "
    "to Cloudflare's Workers Paid plan if you would like to continue usage.",
    3040: "AiError: AiError: Capacity temporarily exceeded, please try again.",
    5007: "No such model {model} or task",
    10000: "Authentication error",
}


def _chat_body(raw: bytes) -> tuple[dict | None, str | None, bool]:
    """(the JSON object body or None, its model, whether it asks to stream)."""
    try:
        decoded = _decode_json(raw) if raw else None
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        return None, None, False
    model = decoded.get("model")
    return decoded, model if isinstance(model, str) else None, decoded.get("stream") is True


def _gemini_error_obj(status: int, message: str | None, details: list | None = None) -> dict:
    error: dict = {
        "code": status,
        "message": message or f"fault upstream: injected HTTP {status}",
        "status": _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _gemini_zero_quota(model: str, retry_s: str) -> tuple[str, list]:
    """Google's 429 for a model the key's tier has no quota for: "limit: 0" in the message, the
    QuotaFailure violations without a ``quotaValue`` (proto3 JSON leaves a zero out), and a RetryInfo
    that no wait would satisfy."""
    message = (
        "You exceeded your current quota, please check your plan and billing details.\n* Quota exceeded "
        "for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, "
        f"model: {model}"
    )
    violation = {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        "quotaDimensions": {"location": "global", "model": model},
    }
    details = [
        {"@type": _QUOTA_FAILURE, "violations": [violation]},
        {"@type": _RETRY_INFO, "retryDelay": f"{retry_s}s"},
    ]
    return message, details


_GEMINI3_SIGNATURE = "ZmF1bHQtdXBzdHJlYW0tc2lnbmF0dXJl"  # what ``signed-tool-once`` signs its calls with
# Google's documented signatures for a history it did not produce
# (ai.google.dev/gemini-api/docs/thought-signatures).
_GEMINI_DUMMY_SIGNATURES = frozenset(
    {"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"}
)


def _gemini3_signature_error(contents: list[dict]) -> str | None:
    """Gemini 3's rule, as its 400 says it: in the current turn (from the last user content with text),
    the first ``functionCall`` of each model step must carry a signature (parallel calls: only the first
    has one). None when the history passes."""
    start = 0
    for i, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content.get("parts"), list) else []
        if content.get("role") != "model" and any(isinstance(p, dict) and "text" in p for p in parts):
            start = i
    for k in range(start, len(contents)):
        content = contents[k]
        parts = content.get("parts") if isinstance(content.get("parts"), list) else []
        calls = [p for p in parts if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)]
        if content.get("role") != "model" or not calls:
            continue
        signature = calls[0].get("thoughtSignature")
        if signature is None:
            name = calls[0]["functionCall"].get("name")
            return (
                f"Unable to submit request because function call `{name}` in the {k + 1}. content block is "
                "missing a `thought_signature`. Learn more: https://ai.google.dev/gemini-api/docs/thought-signatures"
            )
        if signature != _GEMINI3_SIGNATURE and signature not in _GEMINI_DUMMY_SIGNATURES:
            return "Corrupted thought signature."
    return None


def _sse(payload: dict | bytes) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else _encode(payload)) + b"\n\n"


def _cohere_error(status: int, model: str | None, message: str | None = None) -> bytes:
    text = message or _COHERE_MESSAGES.get(status, f"fault upstream: injected HTTP {status}")
    return _encode({"id": f"fault-{next(_ids):08d}", "message": text.format(model=model)})


def _cloudflare_envelope(code: int, message: str) -> bytes:
    return _encode(
        {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    )


def _cloudflare_code_error(code: int, model: str) -> bytes:
    message = _CLOUDFLARE_CODE_MESSAGES.get(code, f"fault upstream: wrapped Cloudflare error {code}")
    return _cloudflare_envelope(code, message.format(model=model))


# ------------------------------------------------------------------------------------------ connection

_RESET = object()  # sentinel in a stream schedule: abort the connection here


class _Disconnected(Exception):
    """The client hung up while we were responding."""


class _Conn:
    """One client connection: an h11 state machine over a trio SocketStream."""

    __slots__ = ("h11", "state", "stream")

    def __init__(self, stream: trio.SocketStream, state: UpstreamState) -> None:
        self.stream = stream
        self.state = state
        self.h11 = h11.Connection(h11.SERVER)

    async def serve(self) -> None:
        """Answer requests until the client closes, an error, or a behaviour ends the connection.

        Error handling: transport errors end the connection quietly; a protocol error gets a 400 when the
        state machine still allows one. Nothing escapes to ``serve_listeners`` (which would stop the server).
        """
        state = self.state
        state.open_connections += 1
        state.total_connections += 1
        try:
            while True:
                request = await self._read_request()
                if request is None:
                    return
                if not await self._dispatch(*request):
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Disconnected):
            pass
        except h11.RemoteProtocolError as exc:
            await self._protocol_error(exc)
        finally:
            state.open_connections -= 1
            await self.stream.aclose()

    async def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = _error_body(exc.error_status_hint, None, message=f"bad request: {exc}")
        try:
            data = self.h11.send(
                h11.Response(
                    status_code=exc.error_status_hint,
                    headers=[_JSON, (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
                )
            )
            await self.stream.send_all(data + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    async def _read_request(self) -> tuple[h11.Request, bytes] | None:
        conn = self.h11
        request = None
        body: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self._send(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                try:
                    data = await self.stream.receive_some(_RECV)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(data)
                continue
            if type(event) is h11.Request:
                request = event
            elif type(event) is h11.Data:
                body.append(event.data)
            elif type(event) is h11.EndOfMessage:
                return request, body[0] if len(body) == 1 else b"".join(body)
            else:  # ConnectionClosed, or PAUSED after a response that must close
                return None

    # ------------------------------------------------------------------------------------------ routes

    async def _dispatch(self, request: h11.Request, raw: bytes) -> bool:
        """Answer one request; return False when the connection must end."""
        state = self.state
        api_key = None
        for name, value in request.headers:  # h11 lower-cases names
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    api_key = value[7:].strip().decode("latin-1")
                break
        method = request.method.decode()
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        if path.startswith(_GEMINI_PREFIX):
            return await self._gemini(request, target, path, raw)
        if path == "/v1beta/models":
            return await self._gemini_models(request)
        if path.startswith(_COHERE_PREFIX):
            return await self._cohere(request, path, raw, api_key)
        if path.startswith(_CLOUDFLARE_PREFIX):
            return await self._cloudflare(request, path, raw, api_key)

        body: dict | None = None
        model = None
        stream = False
        bad_json = False
        if raw:
            try:
                decoded = _decode_json(raw)
            except msgspec.DecodeError:
                decoded = None
            if isinstance(decoded, dict):
                body = decoded
                m = body.get("model")
                model = m if isinstance(m, str) else None
                stream = body.get("stream") is True
            else:
                bad_json = True
        if state.record:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            state.requests.append(RecordedRequest(method, path, model, api_key, stream, body, headers))

        if path == "/v1/chat/completions":
            if method != "POST":
                return await self._error(405, None)
            if body is None or bad_json:
                return await self._error(400, None, "request body must be a JSON object")
            spec = state.behaviour_for(model, api_key)
            return await self._chat(spec, model or "unknown", body, stream)
        if path == "/v1/embeddings":
            return await self._embeddings(method, body, model, api_key)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                return await self._error(405, None)
            return await self._models(path, api_key)
        return await self._error(404, None, f"no route for {method} {path}", code="not_found")

    async def _gemini(self, request: h11.Request, target: str, path: str, raw: bytes) -> bool:
        """Google's native API: the key in ``x-goog-api-key``, the model and action in the path."""
        state = self.state
        api_key = next((v.decode("latin-1") for k, v in request.headers if k == b"x-goog-api-key"), None)
        quoted, _, action = path[len(_GEMINI_PREFIX) :].rpartition(":")
        model = unquote(quoted)  # the adapter quotes the id, so a spec's own ":" arrives as %3A
        stream = action == "streamGenerateContent"
        body: dict | None = None
        if raw:
            try:
                decoded = _decode_json(raw)
            except msgspec.DecodeError:
                decoded = None
            body = decoded if isinstance(decoded, dict) else None
        if state.record:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            state.requests.append(RecordedRequest("POST", path, model, api_key, stream, body, headers))
        query = target.partition("?")[2]
        if request.method == b"POST" and action == "batchEmbedContents" and "key=" not in query:
            return await self._gemini_embeddings(model, api_key, body)
        if request.method != b"POST" or action not in ("generateContent", "streamGenerateContent"):
            return await self._gemini_error(404, f"no route for {request.method.decode()} {path}")
        if any(p.startswith("key=") for p in query.split("&")):
            return await self._gemini_error(
                400, "fault upstream: the key belongs in x-goog-api-key, not the URL"
            )
        if api_key is None:
            message = "Method doesn't allow unregistered callers. Please use an API Key."
            return await self._gemini_error(403, message)
        if body is None:
            return await self._gemini_error(400, "Invalid JSON payload received.")
        name, args = parse_spec(state.behaviour_for(model, api_key))
        if name == "fail":
            status = _int(args, 0, 500)
            return await self._gemini_error(status if 400 <= status <= 599 else 500, None)
        if name == "rate-limit":
            details = [{"@type": _RETRY_INFO, "retryDelay": f"{args[0]}s"}] if args and args[0] else []
            message = "You exceeded your current quota, please check your plan and billing details."
            return await self._gemini_error(429, message, details)
        if name == "auth":
            return await self._gemini_error(400, _GEMINI_BAD_KEY, [_GEMINI_KEY_INVALID])
        if name == "context":
            message = (
                f"The input token count ({_prompt_tokens(body) + 1048576}) exceeds the maximum number of "
                "tokens allowed (1048576)."
            )
            return await self._gemini_error(400, message)
        own, *own_args = state.behaviour_for(model, api_key).split(":")
        if own in _GEMINI_ONLY:
            return await self._gemini_fault(own, own_args, model, body, stream)
        if name in _GEMINI_FAULTS:
            return await self._gemini_fault(name, args, model, body, stream)
        answer = _gemini_answer(name, model, body)
        delay = _float(args, 0, 1.0) if name in _DELAYED else 0.0
        if stream:
            return await self._stream(None, [(0.0, f) for f in answer.gemini_frames()], delay=delay)
        if delay > 0:
            return await self._watched(self._delayed_gemini, delay, answer)
        return await self._json(200, answer.gemini_completion())

    async def _delayed_gemini(self, delay: float, answer: _Answer) -> bool:
        await trio.sleep(delay)
        return await self._json(200, answer.gemini_completion())

    async def _gemini_error(self, status: int, message: str | None, details: list | None = None) -> bool:
        return await self._json(status, _encode(_gemini_error_obj(status, message, details)))

    # ------------------------------------------------ provider shapes: Gemini faults, Cohere, Cloudflare

    async def _gemini_fault(self, name: str, args: list[str], model: str, body: dict, stream: bool) -> bool:
        """Gemini's native form of the faults and of the behaviours only its route has."""
        if name == "quota-zero":
            message, details = _gemini_zero_quota(model, args[0] if args and args[0] else "42")
            return await self._gemini_error(429, message, details)
        answer = _gemini_answer("ok", model, body)
        if name == "tools-split":
            return await self._gemini_split_calls(answer, body, stream)
        if name == "signed-tool-once":
            return await self._gemini_signed_tool_once(answer, body, stream)
        code = _int(args, 0, 503)
        error = _gemini_error_obj(
            code if 400 <= code <= 599 else 503, f"fault upstream: wrapped error {code}"
        )
        if name in ("wrapped-body", "wrapped-sse", "fail-mid") and not stream:
            return await self._json(200, _encode(error))
        if name in ("wrapped-body", "wrapped-sse"):
            return await self._stream(None, [(0.0, _sse(error))])
        frames = answer.gemini_frames()
        if name == "fail-mid":
            return await self._stream(None, [(0.0, f) for f in [*frames[:2], _sse(error)]])
        if name == "reset-mid":
            if not stream:
                return await self._reset_mid_body(answer.gemini_completion())
            return await self._stream(None, [(0.0, f) for f in frames[:2]] + [(0.0, _RESET)])
        # stall-mid: two frames, silence, the rest (non-stream: the answer after the silence)
        pause = _float(args, 0, 1.0)
        if not stream:
            return await self._watched(self._delayed_gemini, pause, answer)
        schedule = [(0.0, f) for f in frames]
        schedule[2:3] = [(pause, schedule[2][1])] if len(schedule) > 2 else [(pause, b"")]
        return await self._stream(None, schedule)

    async def _gemini_split_calls(self, answer: _Answer, body: dict, stream: bool) -> bool:
        """A call to every declared function: each in its own frame (stream), or all in one answer."""
        names = [
            str(d.get("name"))
            for t in body.get("tools") or []
            if isinstance(t, dict)
            for d in t.get("functionDeclarations") or []
            if isinstance(d, dict)
        ] or ["tool"]
        parts = [{"functionCall": {"name": n, "args": {"n": i}}} for i, n in enumerate(names)]
        if not stream:
            return await self._json(200, _encode(answer._gemini_payload(parts, "tool_calls", True)))
        last = len(parts) - 1
        payloads = [
            answer._gemini_payload([p], "tool_calls" if i == last else None, i == last)
            for i, p in enumerate(parts)
        ]
        return await self._stream(None, [(0.0, _sse(p)) for p in payloads])

    async def _gemini_signed_tool_once(self, answer: _Answer, body: dict, stream: bool) -> bool:
        """``signed-tool-once``: Gemini 3's signature check on the history, then ``tool-once``'s turn."""
        contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
        refused = _gemini3_signature_error(contents)
        if refused is not None:
            return await self._gemini_error(400, refused)
        last = contents[-1].get("parts") if contents else None
        results = [
            p["functionResponse"].get("response")
            for p in (last if isinstance(last, list) else ())
            if isinstance(p, dict) and isinstance(p.get("functionResponse"), dict)
        ]
        if results:
            said = [
                r["result"] if isinstance(r, dict) and set(r) == {"result"} else _encode(r).decode()
                for r in results
            ]
            parts: list[dict] = [{"text": f"The tool said: {' '.join(map(str, said))}."}]
            finish = "stop"
        else:
            tools = [
                {"function": d}
                for t in body.get("tools") or []
                if isinstance(t, dict)
                for d in t.get("functionDeclarations") or []
                if isinstance(d, dict)
            ]
            name = str(tools[0]["function"].get("name")) if tools else "tool"
            args = _decode_json(_example_arguments({"tools": tools or [{}]}))
            call = {"functionCall": {"name": name, "args": args}, "thoughtSignature": _GEMINI3_SIGNATURE}
            parts, finish = [call], "tool_calls"
        payload = answer._gemini_payload(parts, finish, True)
        if stream:
            return await self._stream(None, [(0.0, _sse(payload))])
        return await self._json(200, _encode(payload))

    async def _gemini_models(self, request: h11.Request) -> bool:
        """``GET /v1beta/models`` (the adapter's key check): key behaviour ``auth`` is Google's bad-key
        400."""
        api_key = next((v.decode("latin-1") for k, v in request.headers if k == b"x-goog-api-key"), None)
        self._record_request(request, "/v1beta/models", None, None, api_key, False)
        if api_key is None:
            return await self._gemini_error(403, "Method doesn't allow unregistered callers.")
        spec = self.state.key_behaviours.get(api_key, "ok")
        if spec.split(":", 1)[0] == "auth":
            return await self._gemini_error(400, _GEMINI_BAD_KEY, [_GEMINI_KEY_INVALID])
        if spec.split(":", 1)[0] == "fail":
            return await self._gemini_error(_int(spec.split(":")[1:], 0, 500), None)
        models = [{"name": f"models/{m}", "displayName": m} for m in DEFAULT_MODELS]
        return await self._json(200, _encode({"models": models}))

    async def _reset_mid_body(self, body: bytes) -> bool:
        conn = self.h11
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        await self._send(
            conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")) + body[: len(body) // 2]
        )
        await self._abort()
        return False

    def _record_request(
        self,
        request: h11.Request,
        path: str,
        body: dict | None,
        model: str | None,
        api_key: str | None,
        stream: bool,
    ) -> None:
        if self.state.record:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            self.state.requests.append(
                RecordedRequest(request.method.decode(), path, model, api_key, stream, body, headers)
            )

    async def _cohere(self, request: h11.Request, path: str, raw: bytes, api_key: str | None) -> bool:
        """Cohere's compatibility endpoint: OpenAI's answers, Cohere's ``{"message"}`` errors."""
        body, model, stream = _chat_body(raw)
        self._record_request(request, path, body, model, api_key, stream)
        if path != _COHERE_PREFIX + "chat/completions" or request.method != b"POST":
            return await self._json(
                404, _cohere_error(404, model, f"no route for {request.method.decode()} {path}")
            )
        if body is None:
            return await self._json(
                400, _cohere_error(400, model, "invalid request: body must be a JSON object")
            )
        if api_key is None:
            return await self._json(401, _cohere_error(401, model, "no api key supplied"))
        model = model or "unknown"
        spec = self.state.behaviour_for(model, api_key)
        name, args = parse_spec(spec)
        if name == "fail":
            status = _int(args, 0, 500)
            return await self._json(status if 400 <= status <= 599 else 500, _cohere_error(status, model))
        if name == "rate-limit":
            extra = [(b"retry-after", args[0].encode())] if args and args[0] else []
            return await self._json(429, _cohere_error(429, model), extra)
        if name == "auth":
            return await self._json(401, _cohere_error(401, model))
        if name == "context":
            message = (
                "too many tokens: total number of tokens in the prompt cannot exceed 256000 - received "
                "301544. Try using a shorter prompt or enable prompt truncating."
            )
            return await self._json(400, _cohere_error(400, model, message))
        return await self._chat(spec, model, body, stream)

    async def _cloudflare(self, request: h11.Request, path: str, raw: bytes, api_key: str | None) -> bool:
        """Workers AI's OpenAI-compatible endpoint under an account: OpenAI's answers, Cloudflare's
        ``success: false`` envelope for errors (on an error status, or a 200)."""
        account, _, rest = path[len(_CLOUDFLARE_PREFIX) :].partition("/")
        body, model, stream = _chat_body(raw)
        self._record_request(request, path, body, model, api_key, stream)
        if not account or unquote(account) == "{account_id}":
            message = f"Could not route to {path}, perhaps your object identifier is invalid?"
            return await self._json(400, _cloudflare_envelope(7003, message))
        if api_key is None:
            return await self._json(401, _cloudflare_code_error(10000, ""))
        if rest == "ai/models/search" and request.method == b"GET":
            if self.state.key_behaviours.get(api_key, "ok").split(":", 1)[0] == "auth":
                return await self._json(401, _cloudflare_code_error(10000, ""))
            found = [
                {"id": "fault-model", "name": m, "task": {"name": "Text Generation"}}
                for m in DEFAULT_MODELS[:1]
            ]
            result = {
                "success": True,
                "result": found,
                "errors": [],
                "messages": [],
                "result_info": {"count": 1},
            }
            return await self._json(200, _encode(result))
        if rest != "ai/v1/chat/completions" or request.method != b"POST":
            return await self._json(400, _cloudflare_envelope(7000, "No route for that URI"))
        if body is None:
            return await self._json(
                400, _cloudflare_envelope(3003, "Request is missing headers or body: messages")
            )
        model = model or "unknown"
        spec = self.state.behaviour_for(model, api_key)
        name, args = parse_spec(spec)
        if spec.split(":", 1)[0] == "daily-quota":
            return await self._json(429, _cloudflare_code_error(3036, model))
        if name == "fail":
            status, code, message = _CLOUDFLARE_FAIL.get(
                _int(args, 0, 500), (_int(args, 0, 500), 3043, "AiError: AiError: Internal server error")
            )
            status = status if 400 <= status <= 599 else 500
            return await self._json(status, _cloudflare_envelope(code, message.format(model=model)))
        if name == "rate-limit":
            extra = [(b"retry-after", args[0].encode())] if args and args[0] else []
            return await self._json(429, _cloudflare_code_error(3040, model), extra)
        if name == "auth":
            return await self._json(401, _cloudflare_code_error(10000, model))
        if name == "context":
            message = (
                "AiError: AiError: The estimated number of input and maximum output tokens (9000) exceeded "
                "this model context window limit (8192)."
            )
            return await self._json(400, _cloudflare_envelope(5021, message))
        code = _int(args, 0, 3040)
        if name == "wrapped-body" or (name in ("wrapped-sse", "fail-mid") and not stream):
            return await self._json(200, _cloudflare_code_error(code, model))
        if name == "wrapped-sse":
            return await self._stream(None, [(0.0, _sse(_cloudflare_code_error(code, model))), (0.0, _DONE)])
        if name == "fail-mid":
            head = _build_answer("ok", [], model, body).head_frames()[:3]
            frames = [*head, _sse(_cloudflare_code_error(code, model)), _DONE]
            return await self._stream(None, [(0.0, f) for f in frames])
        return await self._chat(spec, model, body, stream)

    async def _models(self, path: str, api_key: str | None) -> bool:
        spec = self.state.key_behaviours.get(api_key, "ok") if api_key is not None else "ok"
        name, args = parse_spec(spec)
        if name in ("auth", "fail", "rate-limit", "reset"):
            return await self._chat(spec, "models", {}, False)
        if name in ("slow", "stall-pre", "stall-mid"):
            await trio.sleep(_float(args, 0, 1.0))
        ids = list(dict.fromkeys([*DEFAULT_MODELS, *self.state.behaviours]))
        if path != "/v1/models":
            wanted = path[len("/v1/models/") :]
            return await self._json(200, _encode(_model_obj(wanted)))
        return await self._json(200, _encode({"object": "list", "data": [_model_obj(i) for i in ids]}))

    async def _chat(self, spec: str, model: str, body: dict, stream: bool) -> bool:
        name, args = parse_spec(spec)
        if name in _PLAIN or name == "tool-once":
            answer = (
                _build_answer(name, args, model, body) if name in _PLAIN else _tool_once_answer(model, body)
            )
            if stream:
                return await self._stream(answer, [(0.0, f) for f in answer.head_frames()])
            return await self._json(200, answer.completion())
        if name == "fail":
            status = _int(args, 0, 500)
            return await self._error(status if 200 <= status <= 999 else 500, model)
        if name == "spent":
            answer = _build_answer("ok", [], model, body)
            headers = [
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-reset-requests", f"{_float(args, 0, 60.0):g}s".encode()),
            ]
            return await self._json(200, answer.completion(), extra=headers)
        if name == "rate-limit":
            extra = [(b"retry-after", args[0].encode())] if args and args[0] else []
            return await self._error(429, model, extra=extra)
        if name == "auth":
            return await self._error(401, model)
        if name == "context":
            message = (
                "This model's maximum context length is 8192 tokens. However, your messages resulted in "
                f"{_prompt_tokens(body) + 8192} tokens. Please reduce the length of the messages."
            )
            return await self._error(400, model, message, code="context_length_exceeded")
        if name == "wrapped-body" or (name in ("wrapped-sse", "fail-mid") and not stream):
            return await self._json(200, _wrapped(model, _int(args, 0, 503)))
        if name == "wrapped-sse":
            frame = b"data: " + _wrapped(model, _int(args, 0, 503)) + b"\n\n"
            return await self._stream(None, [(0.0, frame), (0.0, _DONE)])
        if name == "reset":
            await self._abort()
            return False
        if name == "fail-mid":
            head = _build_answer("ok", [], model, body).head_frames()[:3]
            frame = b"data: " + _wrapped(model, _int(args, 0, 503)) + b"\n\n"
            return await self._stream(None, [(0.0, f) for f in [*head, frame, _DONE]])
        answer = _build_answer(name, args, model, body)
        if name in _DELAYED or (name == "stall-mid" and not stream):
            delay = _float(args, 0, 1.0)
            if stream:
                return await self._stream(answer, [(0.0, f) for f in answer.head_frames()], delay=delay)
            return await self._watched(self._delayed_json, delay, answer)
        if name == "drip":
            interval = _float(args, 0, 0.1)
            if not stream:
                return await self._watched(self._delayed_json, interval * len(answer.pieces), answer)
            frames = answer.head_frames()
            return await self._stream(answer, [(0.0, frames[0]), *((interval, f) for f in frames[1:])])
        # stall-mid (stream) and reset-mid: role chunk + 2 content chunks, then silence or a reset.
        if name == "reset-mid" and not stream:
            return await self._reset_mid_json(answer)
        frames = [(0.0, f) for f in answer.head_frames()]
        if name == "reset-mid":
            frames.insert(3, (0.0, _RESET))
            return await self._stream(answer, frames)
        if len(frames) > 3:
            frames[3] = (_float(args, 0, 1.0), frames[3][1])
        else:
            frames.append((_float(args, 0, 1.0), b""))
        return await self._stream(answer, frames)

    # ------------------------------------------------------------------------------------- embeddings

    async def _embeddings(
        self, method: str, body: dict | None, model: str | None, api_key: str | None
    ) -> bool:
        """OpenAI's ``POST /v1/embeddings``: one vector per input (see ``embedding_vector``), or the
        behaviour's failure: ``fail``, ``rate-limit``, ``auth``, ``wrapped-body``, ``empty`` (no data),
        ``dims:<n>`` (n-dimensional vectors whatever ``dimensions`` asks), ``stall-pre`` / ``slow``."""
        if method != "POST":
            return await self._error(405, None)
        if body is None:
            return await self._error(400, None, "request body must be a JSON object")
        texts = _embedding_inputs(body.get("input"))
        if texts is None:
            return await self._error(400, model, "'input' must be a string or an array of strings")
        name, args = parse_spec(self.state.behaviour_for(model, api_key))
        model = model or "unknown"
        if name in ("fail", "rate-limit", "auth", "reset"):
            return await self._chat(self.state.behaviour_for(model, api_key), model, body, False)
        if name in ("wrapped-body", "wrapped-sse", "fail-mid"):
            return await self._json(200, _wrapped(model, _int(args, 0, 503)))
        dims = body.get("dimensions")
        dims = _int(args, 0, 8) if name == "dims" else dims if isinstance(dims, int) and dims > 0 else 8
        vectors = [] if name == "empty" else [embedding_vector(model, t, dims) for t in texts]
        tokens = sum(len(t.split()) for t in texts)
        answer = _encode(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        if name in _DELAYED:
            return await self._watched(self._delayed_body, _float(args, 0, 1.0), answer)
        return await self._json(200, answer)

    async def _delayed_body(self, delay: float, body: bytes) -> bool:
        await trio.sleep(delay)
        return await self._json(200, body)

    async def _gemini_embeddings(self, model: str, api_key: str | None, body: dict | None) -> bool:
        """Google's ``:batchEmbedContents``: ``{"embeddings": [{"values": [...]}]}``, one per request,
        ``outputDimensionality`` honoured; failures as ``_gemini``'s (``fail``, ``rate-limit``, ``auth``)."""
        if api_key is None:
            message = "Method doesn't allow unregistered callers. Please use an API Key."
            return await self._gemini_error(403, message)
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return await self._gemini_error(400, "* BatchEmbedContentsRequest.requests: must not be empty")
        name, args = parse_spec(self.state.behaviour_for(model, api_key))
        if name == "fail":
            status = _int(args, 0, 500)
            return await self._gemini_error(status if 400 <= status <= 599 else 500, None)
        if name == "rate-limit":
            details = [{"@type": _RETRY_INFO, "retryDelay": f"{args[0]}s"}] if args and args[0] else []
            return await self._gemini_error(429, "You exceeded your current quota.", details)
        if name == "auth":
            return await self._gemini_error(400, "API key not valid. Please pass a valid API key.")
        out = []
        for r in requests:
            parts = ((r.get("content") or {}).get("parts") or []) if isinstance(r, dict) else []
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
            dims = r.get("outputDimensionality") if isinstance(r, dict) else None
            out.append({"values": embedding_vector(model, text, dims if isinstance(dims, int) else 8)})
        return await self._json(200, _encode({"embeddings": out}))

    # ---------------------------------------------------------------------------------------- writing

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            self.state._note_disconnect()
            raise _Disconnected from None

    async def _json(self, status: int, body: bytes, extra: list | None = None) -> bool:
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        if extra:
            headers.extend(extra)
        conn = self.h11
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        await self._send(data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        return True

    async def _error(
        self, status: int, model: str | None, message: str | None = None, code: Any = None, extra=None
    ) -> bool:
        return await self._json(status, _error_body(status, model, message, code), extra)

    async def _delayed_json(self, delay: float, answer: _Answer) -> bool:
        await trio.sleep(delay)
        return await self._json(200, answer.completion())

    async def _reset_mid_json(self, answer: _Answer) -> bool:
        body = answer.completion()
        conn = self.h11
        head = conn.send(
            h11.Response(
                status_code=200, headers=[_JSON, (b"content-length", str(len(body)).encode())], reason=b"OK"
            )
        )
        await self._send(head + body[: len(body) // 2])
        await self._abort()
        return False

    async def _stream(
        self, answer: _Answer | None, schedule: list[tuple[float, Any]], delay: float = 0.0
    ) -> bool:
        """Send an SSE response: ``schedule`` is (pause before, frame); the answer's tail frames follow.

        Frames with no pause before them are sent in one write. Pauses (and ``delay`` before the headers)
        run under a watcher that notices the client hanging up.
        """
        if answer is not None:
            schedule = schedule + [(0.0, f) for f in answer.tail_frames()]
        if delay <= 0 and all(pause <= 0 and frame is not _RESET for pause, frame in schedule):
            conn = self.h11
            out = [conn.send(h11.Response(status_code=200, headers=_SSE_HEADERS, reason=b"OK"))]
            out.extend(conn.send(h11.Data(data=frame)) for _, frame in schedule if frame)
            out.append(conn.send(h11.EndOfMessage()))
            await self._send(b"".join(out))
            return True
        return await self._watched(self._stream_paced, schedule, delay)

    async def _stream_paced(self, schedule: list[tuple[float, Any]], delay: float) -> bool:
        conn = self.h11
        if delay > 0:
            await trio.sleep(delay)
        out = [conn.send(h11.Response(status_code=200, headers=_SSE_HEADERS, reason=b"OK"))]
        for pause, frame in schedule:
            if frame is _RESET:
                await self._send(b"".join(out))
                return False  # the caller aborts once the watcher is gone
            if pause > 0:
                if out:
                    await self._send(b"".join(out))
                    out = []
                await trio.sleep(pause)
            if frame:
                out.append(conn.send(h11.Data(data=frame)))
        out.append(conn.send(h11.EndOfMessage()))
        await self._send(b"".join(out))
        return True

    async def _watched(self, respond, *args) -> bool:
        """Run ``respond(*args)`` while a watcher reads the socket; EOF means the client hung up.

        Bytes that arrive meanwhile (a pipelined request) go into h11's buffer for the next cycle.
        If ``respond`` returns False the connection is reset abortively (``reset-mid``).
        """
        hung_up = False  # the watcher saw EOF
        send_failed = False  # a send failed (already counted by _send)
        keep = True
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal hung_up
                while True:
                    try:
                        data = await self.stream.receive_some(_RECV)
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        hung_up = True
                        nursery.cancel_scope.cancel()
                        return
                    self.h11.receive_data(data)

            nursery.start_soon(watch)
            try:
                keep = await respond(*args)
            except _Disconnected:  # caught here: strict exception groups would wrap it at the nursery
                send_failed = True
            nursery.cancel_scope.cancel()
        if hung_up and not send_failed:
            self.state._note_disconnect()
        if hung_up or send_failed:
            raise _Disconnected
        if not keep:
            await self._abort()
        return keep

    async def _abort(self) -> None:
        """Close with SO_LINGER 0, so the kernel sends RST instead of FIN."""
        with contextlib.suppress(OSError):
            self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        await self.stream.aclose()


def embedding_vector(model: str, text: str, dims: int) -> list[float]:
    """A deterministic vector for ``text`` from ``model``: the same on every platform serving the same
    model id, different between models (as real vectors of different families are)."""
    seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    return [round(seed[i % len(seed)] / 255 - 0.5, 4) for i in range(max(1, min(dims, 4096)))]


def _embedding_inputs(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def _wrapped(model: str, code: int) -> bytes:
    return _encode(
        {"error": {"message": f"fault upstream: wrapped error {code} for model {model}", "code": code}}
    )


def _model_obj(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "fault-upstream"}


# --------------------------------------------------------------------------------------------- serving


async def serve_upstream(
    state: UpstreamState | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the fault-injecting upstream; ``task_status.started(base_url)`` once it accepts connections.

    ``base_url`` ends in ``/v1`` (e.g. ``http://127.0.0.1:41234/v1``). Runs until cancelled.
    """
    if state is None:
        state = UpstreamState()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    task_status.started(f"http://{url_host}:{bound_port}/v1")

    async def handler(stream: trio.SocketStream) -> None:
        await _Conn(stream, state).serve()

    await trio.serve_listeners(handler, listeners)


async def _main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            state = UpstreamState(record=False)
            base_url = await nursery.start(functools.partial(serve_upstream, state, host=host, port=port))
            print(f"listening on {base_url}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fault-injecting OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args(argv)
    trio.run(_main, ns.host, ns.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
