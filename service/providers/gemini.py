"""The Gemini adapter: Google's native `generateContent` / `streamGenerateContent?alt=sse` API, translated
to and from the neutral OpenAI chat shapes at this edge.

Gemini's own API rather than its OpenAI-compatible endpoint, because only the native errors say what a 429
is: `RetryInfo.retryDelay` gives the exact cooldown, and a quota whose limit is 0 says the key may never
use the model (a free tier without it), which no retry fixes.

A stream is read by one `GeminiStream` per stream (`stream_frames()`): Gemini sends whole `functionCall`
parts, a later frame may bring another, and OpenAI's deltas number a stream's calls by `index`. The key
check lists one model; its answer is read by `key_check_status`, as Google says a bad key with a 400
(reason API_KEY_INVALID), not a 401.

A call's `thoughtSignature` rides on its chat tool call (`extra_content.google.thought_signature`); clients
that drop it (Messages, Responses) get Google's dummy signature on the call instead, as Gemini 3 refuses
an unsigned one. Calls Gemini leaves without an id get one unique to their answer.
"""

from __future__ import annotations

import math
import mimetypes
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from actors.upstream import HttpRequest, UpstreamCall
from events import taxonomy
from events.failures import FailureKind
from events.frames import Chunk
from events.outcomes import Failed

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# What a body that is not JSON raises (msgspec checks a string's UTF-8 as it decodes it).
_UNREADABLE = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

# JSON-Schema keywords Gemini's Schema object rejects ("Invalid JSON payload received. Unknown name ...").
_SCHEMA_DROPPED = frozenset(
    {
        "additionalProperties",
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
        "default",
        "examples",
        "strict",
        "const",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "contentEncoding",
        "contentMediaType",
        "readOnly",
        "writeOnly",
        "deprecated",
    }
)

_TOOL_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
# Gemini's wording for a prompt over the model's window (a 400 INVALID_ARGUMENT like any other).
_CONTEXT_MARKERS = ("input token count", "exceeds the maximum number of tokens")
# Model families that take no systemInstruction (Gemma on the Gemini API).
_NO_SYSTEM_INSTRUCTION = ("gemma-",)
_LIMIT_ZERO = re.compile(r"\blimit: 0(?![\d.])")
# The signature Google documents for a function call whose history it did not produce (a client that
# dropped `extra_content`: the anthropic SDK, Claude Code, Responses clients, a history from another
# model): it tells Gemini 3 to skip the signature check it would otherwise fail the request on (400
# "Function call is missing a thought_signature"). ai.google.dev/gemini-api/docs/thought-signatures (FAQ:
# "skip_thought_signature_validator" or "context_engineering_is_the_way_to_go").
DUMMY_SIGNATURE = "skip_thought_signature_validator"
# Families that never check signatures (Gemini 1.x/2.x make them optional; Gemma does not think): they
# get none. Every other name gets the dummy, as a list of the families that need it would miss the next.
_UNSIGNED_FAMILIES = ("gemini-1", "gemini-2", "gemma-")


class GeminiAdapter:
    kind = "gemini"

    def request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        model = str(call.body.get("model") or call.model).removeprefix("models/")
        action = ":streamGenerateContent?alt=sse" if call.stream else ":generateContent"
        url = f"{base_url.rstrip('/')}/models/{quote(model, safe='')}{action}"
        headers = {"x-goog-api-key": secret, "accept-encoding": "gzip", "content-type": "application/json"}
        return HttpRequest("POST", url, headers, _encode(gemini_body(call.body)))

    def key_check(self, base_url: str, secret: str) -> HttpRequest:
        headers = {"x-goog-api-key": secret, "accept-encoding": "gzip"}
        return HttpRequest("GET", base_url.rstrip("/") + "/models?pageSize=1", headers)

    def key_check_status(self, status: int, raw: bytes) -> int:
        """Google answers a bad key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not 401: that is
        read as the 401 it means, so the key is set aside like any other kind's bad key."""
        if status == 400 and any(_reason(d) == "API_KEY_INVALID" for d in _details(_error_object(raw))):
            return 401
        return status

    def completion(self, raw: bytes) -> Any:
        try:
            payload = _decode(raw) if raw else None
        except _UNREADABLE:
            return None
        if not isinstance(payload, dict) or "error" in payload:
            return payload  # the judge reads a root `error` as a wrapped failure
        ids = _call_prefix()
        return {
            "id": _response_id(payload),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("modelVersion"),
            "choices": [_choice(candidate, i, delta=False, ids=ids) for i, candidate in _candidates(payload)],
            "usage": _usage(payload.get("usageMetadata")),
        }

    def frame(self, payload: bytes) -> Chunk | None:
        """One frame as the first of a stream (a stream's frames go through `stream_frames()`)."""
        return GeminiStream().frame(payload)

    def stream_frames(self) -> GeminiStream:
        return GeminiStream()

    def error(self, status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Failed:
        error = _error_object(raw)
        fallback = " ".join(raw[:200].decode("utf-8", "replace").split()) or f"HTTP {status}"
        message = taxonomy.error_message(error, fallback)
        details = _details(error)
        retry = _retry_delay_s(details)
        if retry is None:
            retry = taxonomy.retry_after_s(headers, now)
        kind = taxonomy.kind_for_status(status, error)
        if status == 429:
            model = _zero_quota_model(error or {}, details)
            if model is not None:
                # No wait helps: the key's tier has no quota at all for the model. Forbidden cools this
                # key x model for the long forbidden cooldown; the other keys and models stay in play.
                what = f"model {model}" if model else "this model"
                return Failed(
                    FailureKind.FORBIDDEN,
                    f"this key has no access to {what} (its Gemini quota limit is 0): {message}",
                    status,
                )
        elif any(_reason(d) == "API_KEY_INVALID" for d in details):
            kind = FailureKind.AUTH  # Gemini answers a bad key with 400 INVALID_ARGUMENT
        elif status == 400 and any(m in message.lower() for m in _CONTEXT_MARKERS):
            kind = FailureKind.CONTEXT_EXCEEDED
        return Failed(kind, message, status, retry_after_s=retry)

    # ---- embeddings -----------------------------------------------------------------------------------

    def embeddings_request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        """`POST {base_url}/models/{model}:batchEmbedContents`: one request per input text, OpenAI's
        `dimensions` as `outputDimensionality`; the key only in `x-goog-api-key`."""
        model = str(call.body.get("model") or call.model).removeprefix("models/")
        url = f"{base_url.rstrip('/')}/models/{quote(model, safe='')}:batchEmbedContents"
        headers = {"x-goog-api-key": secret, "accept-encoding": "gzip", "content-type": "application/json"}
        inputs = call.body.get("input")
        dimensions = call.body.get("dimensions")
        requests = []
        for text in inputs if isinstance(inputs, list) else ():
            one: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
            if isinstance(dimensions, int):
                one["outputDimensionality"] = dimensions
            requests.append(one)
        return HttpRequest("POST", url, headers, _encode({"requests": requests}))

    def embeddings(self, raw: bytes) -> Any:
        """`{"embeddings": [{"values": [...]}, ...]}` as OpenAI's list (Gemini reports no token counts)."""
        try:
            payload = _decode(raw) if raw else None
        except _UNREADABLE:
            return None
        if not isinstance(payload, dict) or "error" in payload:
            return payload  # the judge reads a root `error` as a wrapped failure
        embeddings = payload.get("embeddings")
        if not isinstance(embeddings, list):
            return payload  # not an embeddings answer: the judge says so
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": e.get("values") if isinstance(e, dict) else None,
                }
                for i, e in enumerate(embeddings)
            ],
            "model": None,
        }


class GeminiStream:
    """The frames of one `streamGenerateContent` stream. Each Gemini frame holds whole `functionCall` parts,
    and a later frame may bring another call; OpenAI's deltas say which call a piece belongs to by its
    `index`, counted over the whole stream, so the calls each candidate has had so far are counted here
    (without it the second call would get index 0 again and a client would merge the two)."""

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}  # candidate index -> tool calls it has streamed so far
        self._ids = _call_prefix()  # one per stream: the ids stay stable within this answer

    def frame(self, payload: bytes) -> Chunk | None:
        try:
            obj = _decode(payload)
        except _UNREADABLE:
            return None
        if not isinstance(obj, dict):
            return None
        if "error" in obj:
            return Chunk(_encode(obj), obj)  # an error frame, judged as a wrapped failure
        choices = []
        for i, candidate in _candidates(obj):
            choice = _choice(candidate, i, delta=True, first_call=self._calls.get(i, 0), ids=self._ids)
            self._calls[i] = self._calls.get(i, 0) + len(choice["delta"].get("tool_calls", ()))
            choices.append(choice)
        chunk: dict[str, Any] = {
            "id": _response_id(obj),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": obj.get("modelVersion"),
            "choices": choices,
        }
        # Gemini repeats its running counts in every frame; the last (the one that finishes) holds the totals.
        if any(choice["finish_reason"] for choice in choices):
            usage = _usage(obj.get("usageMetadata"))
            if usage is not None:
                chunk["usage"] = usage
        return Chunk(_encode(chunk), chunk)


# ---- the request ------------------------------------------------------------------------------------------


def gemini_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A neutral chat body as a Gemini `GenerateContentRequest`."""
    messages = body.get("messages")
    model = str(body.get("model") or "").removeprefix("models/")
    system, contents = _contents(messages if isinstance(messages, list) else [])
    if not model.startswith(_UNSIGNED_FAMILIES):
        _sign_unsigned_calls(contents)
    out: dict[str, Any] = {"contents": contents}
    if system:
        text = "\n\n".join(system)
        if model.startswith(_NO_SYSTEM_INSTRUCTION):
            # These models answer a systemInstruction with 400 "Developer instruction is not enabled": the
            # instructions go first in the conversation instead.
            if contents and contents[0]["role"] == "user":
                contents[0]["parts"].insert(0, {"text": text})
            else:
                contents.insert(0, {"role": "user", "parts": [{"text": text}]})
        else:
            out["systemInstruction"] = {"parts": [{"text": text}]}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = [{"functionDeclarations": tools}]
    tool_config = _tool_config(body.get("tool_choice"))
    if tool_config is not None:
        out["toolConfig"] = {"functionCallingConfig": tool_config}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


def _contents(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name (a tool result names only the id)
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "assistant":
            text = _text(message.get("content"))
            parts: list[dict[str, Any]] = [{"text": text}] if text else []
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    continue
                name = str(fn.get("name") or "")
                if isinstance(call.get("id"), str):
                    names[call["id"]] = name
                part: dict[str, Any] = {
                    "functionCall": {"name": name, "args": _arguments(fn.get("arguments"))}
                }
                signature = _signature(call)
                if signature is not None:
                    part["thoughtSignature"] = signature
                parts.append(part)
            _append(contents, "model", parts)
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")), str(message.get("name") or ""))
            response = {"name": name, "response": _result(message.get("content"))}
            _append(contents, "user", [{"functionResponse": response}])
        else:
            _append(contents, "user", _user_parts(message.get("content")))
    return system, contents


def _sign_unsigned_calls(contents: list[dict[str, Any]]) -> None:
    """Gemini 3 checks the first functionCall of each model step (parallel calls: only the first carries
    a signature): a step whose calls have none, because the client dropped it or another model made
    them, gets the documented dummy there. A real signature is never replaced."""
    for content in contents:
        if content["role"] != "model":
            continue
        calls = [part for part in content["parts"] if "functionCall" in part]
        if calls and not any("thoughtSignature" in part for part in calls):
            calls[0]["thoughtSignature"] = DUMMY_SIGNATURE


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Turns of one role in a row become one turn (parallel tool results are one `user` turn of parts)."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                parts.append(_image(url))
    return parts


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        mime, data = url[5:].split(";base64,", 1)
        return {"inlineData": {"mimeType": mime or "image/png", "data": data}}
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _signature(call: Mapping[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _arguments(arguments: Any) -> dict[str, Any]:
    """Gemini takes a call's arguments as an object, OpenAI as a JSON string."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            parsed = _decode(arguments)
        except _UNREADABLE:
            return {"arguments": arguments}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    return {}


def _result(content: Any) -> dict[str, Any]:
    """A `functionResponse.response` must be an object: a JSON object result is one, anything else is
    wrapped."""
    text = _text(content)
    try:
        parsed = _decode(text) if text else None
    except _UNREADABLE:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"result": text}


def _tools(tools: Any) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        declaration: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            declaration["description"] = fn["description"]
        parameters = fn.get("parameters")
        # An object without properties is rejected as a declaration's parameters: no arguments is no schema.
        if isinstance(parameters, dict) and not (
            parameters.get("type") == "object" and not parameters.get("properties")
        ):
            declaration["parameters"] = clean_schema(parameters)
        declarations.append(declaration)
    return declarations


def clean_schema(schema: Any) -> Any:
    """A JSON Schema as Gemini's Schema object takes it: the keywords it rejects removed at every level
    (property *names* kept, whatever they are), `oneOf` as `anyOf`, a type list with "null" as
    `nullable`."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_DROPPED:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: clean_schema(sub) for name, sub in value.items()}
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out["anyOf" if key == "oneOf" else key] = [clean_schema(sub) for sub in value]
        elif key == "items":
            out[key] = clean_schema(value)
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            if len(types) != len(value):
                out["nullable"] = True
            if types:
                out[key] = types[0]
        else:
            out[key] = value
    return out


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}
    return None


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    for key, value in (
        ("maxOutputTokens", max_tokens),
        ("temperature", body.get("temperature")),
        ("topP", body.get("top_p")),
        ("candidateCount", body.get("n")),
        ("seed", body.get("seed")),
        ("presencePenalty", body.get("presence_penalty")),
        ("frequencyPenalty", body.get("frequency_penalty")),
    ):
        if isinstance(value, int | float) and not isinstance(value, bool):
            config[key] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = [s for s in stop if isinstance(s, str)]
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            config["responseSchema"] = clean_schema(spec["schema"])
    return config


# ---- the answer -------------------------------------------------------------------------------------------


def _response_id(payload: Mapping[str, Any]) -> str:
    rid = payload.get("responseId")
    return f"chatcmpl-{rid}" if isinstance(rid, str) and rid else "chatcmpl-gemini"


def _candidates(payload: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    candidates = payload.get("candidates")
    if isinstance(candidates, list) and candidates:
        return [
            (c.get("index", i) if isinstance(c.get("index"), int) else i, c)
            for i, c in enumerate(candidates)
            if isinstance(c, dict)
        ]
    feedback = payload.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        # The prompt itself was blocked: no candidate at all, said as a filtered, empty answer.
        return [(0, {"finishReason": "SAFETY"})]
    return []


def _call_prefix() -> str:
    """The start of the tool-call ids of one answer. Gemini names its calls by function only, and ids
    made from their position alone (`call_0_0`) repeat every turn, so an agent's history (Claude Code,
    the agents SDK) would hold the same id for different calls and pair results with the wrong one."""
    return "call_" + secrets.token_hex(6)


def _choice(
    candidate: Mapping[str, Any], index: int, *, delta: bool, ids: str, first_call: int = 0
) -> dict[str, Any]:
    """A candidate as an OpenAI choice (a stream's delta when `delta`); its tool calls are numbered from
    `first_call`, the calls this candidate already streamed, their ids made from the answer's `ids`."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            (thoughts if part.get("thought") else texts).append(text)
        fn = part.get("functionCall")
        if isinstance(fn, dict):
            n = first_call + len(calls)
            call: dict[str, Any] = {
                "id": fn["id"] if isinstance(fn.get("id"), str) else f"{ids}_{index}_{n}",
                "type": "function",
                "function": {"name": str(fn.get("name") or ""), "arguments": _args_text(fn.get("args"))},
            }
            if isinstance(part.get("thoughtSignature"), str):
                # A thinking model's call must come back with its signature on the next turn; it rides on
                # the tool call where Google's own OpenAI-compatible API puts it, which clients keep.
                call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
            calls.append({"index": n, **call} if delta else call)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not delta else None}
    if not texts and not delta and calls:
        message["content"] = None
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    if delta:
        message = {k: v for k, v in message.items() if v is not None}
    reason = candidate.get("finishReason")
    finish = None
    if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
        finish = "tool_calls" if calls and reason == "STOP" else _FINISH.get(reason, "stop")
    return {"index": index, "delta" if delta else "message": message, "finish_reason": finish}


def _args_text(args: Any) -> str:
    return _encode(args if isinstance(args, dict) else {}).decode()


def _usage(metadata: Any) -> dict[str, int] | None:
    if not isinstance(metadata, dict):
        return None

    def tokens(name: str) -> int:
        value = metadata.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    prompt = tokens("promptTokenCount")
    completion = tokens("candidatesTokenCount") + tokens("thoughtsTokenCount")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ---- errors -----------------------------------------------------------------------------------------------


def _error_object(raw: bytes) -> dict[str, Any] | None:
    """The `error` object of a Google error body (None when there is none)."""
    try:
        payload = _decode(raw) if raw else None
    except _UNREADABLE:
        payload = None
    if isinstance(payload, list) and payload:
        payload = payload[0]  # a stream request's error comes as a one-element array
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else ({"message": str(error)} if error else None)


def _details(error: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    details = error.get("details") if error else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _reason(detail: Mapping[str, Any]) -> Any:
    return detail.get("reason") if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo") else None


def _retry_delay_s(details: list[dict[str, Any]]) -> float | None:
    """`RetryInfo.retryDelay`, a protobuf Duration in JSON ("17s", "0.5s"), bounded like any retry time."""
    for detail in details:
        if not str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                return None
            if math.isfinite(seconds):
                return min(taxonomy.MAX_WAIT_S, max(0.0, seconds))
    return None


def _zero_quota_model(error: Mapping[str, Any], details: list[dict[str, Any]]) -> str | None:
    """The model a quota of limit 0 was hit for ("" when unnamed), or None when the quota is a real one.
    proto3 JSON leaves a zero `quotaValue` out, so the message's "limit: 0" is the other sign of it."""
    zero = _LIMIT_ZERO.search(str(error.get("message", ""))) is not None
    model = ""
    for detail in details:
        if not str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            continue
        violations = detail.get("violations")
        for violation in violations if isinstance(violations, list) else ():
            if not isinstance(violation, dict):
                continue
            if str(violation.get("quotaValue")) == "0":
                zero = True
            dims = violation.get("quotaDimensions")
            if isinstance(dims, dict) and isinstance(dims.get("model"), str):
                model = model or dims["model"]
    return model if zero else None
