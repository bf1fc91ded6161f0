"""The chat-completions protocol (`POST /v1/chat/completions`): parse the client's body into the neutral
request, render the runner's neutral results as OpenAI chat completions (a JSON body, or SSE frames with
`data: [DONE]`), following the commit contract for streams."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.request import ChatRequest
from actors.sse import DONE, error_frame, frame
from actors.stream import Routed
from actors.supervisor import Runtime
from events.attempts import Failure
from events.frames import Chunk
from service.edge import (
    Answer,
    BadRequest,
    Headers,
    error_answer,
    failure_answer,
    json_body,
    one_line,
    routing_headers,
)
from service.protocol import ClientProtocol
from service.streaming import StreamRender, stream_answer

GATEWAY_FIELDS = ("models", "fallback")  # ours: never forwarded to a provider
MAX_MODEL_NAME = 256  # characters of a model id a client may send
MAX_MODELS = 32  # ids in a request's `models`
CHAT_PATH = "/v1/chat/completions"
_encode = msgspec.json.encode
_decode = msgspec.json.decode


async def handle(runtime: Runtime, raw: bytes, request_id: str, headers: Headers) -> Answer:
    try:
        req = parse_chat_request(raw, request_id, headers.get("x-session-id"))
    except BadRequest as exc:
        return error_answer(400, str(exc), "invalid_request_error", exc.code, param=exc.param)
    if not req.stream:
        result = await runtime.requests.complete(req)
        if isinstance(result, Failure):
            return failure_answer(result)
        return Answer(200, result.body, routing_headers(result))
    return await stream_answer(runtime, req, ChatRender(), error_answer)


PROTOCOL = ClientProtocol(CHAT_PATH, handle)


class ChatRender(StreamRender):
    """Chat-completions SSE: the chunks as the provider sent them (their bytes), `data: [DONE]` at the end."""

    def routed(self, routed: Routed, *, in_headers: bool) -> bytes:
        """A stream committed by a keep-alive has sent its headers before the model was known: the routing
        reaches the client as an SSE comment before the first data frame (clients ignore comments)."""
        if in_headers:
            return b""
        lines = [f": routed-via {routed.routed_via}", f": fallback-attempts {routed.attempts - 1}"]
        if routed.skipped:
            lines.append(": skipped-models " + one_line(routed.skipped))
        return "\n".join(lines).encode() + b"\n\n"

    def chunk(self, chunk: Chunk) -> bytes:
        return frame(chunk.raw)

    async def end(self) -> bytes:
        return DONE

    def failure(self, failure: Failure) -> bytes:
        # Headers are out: a failure, before or after content, is an error event, then the end.
        return error_frame(failure.message, failure.type, failure.code) + DONE


def parse_chat_request(raw: bytes, request_id: str, session_header: str | None = None) -> ChatRequest:
    """Validate what we must understand; pass everything else through untouched."""
    body = json_body(raw, "'model' and 'messages'")
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
    if len(model) > MAX_MODEL_NAME:  # names are stored in the log and echoed in errors: bounded
        raise BadRequest(
            f"'model' is {len(model)} characters long; model ids are at most {MAX_MODEL_NAME}.",
            "model",
            "invalid_value",
        )
    requested, use_chain = gateway_routing(model, body.get("models"), body.get("fallback", True))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", "stream", "invalid_type")
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
        use_chain=use_chain,
        session_header=session_header,
    )


def gateway_routing(model: str, models: Any, fallback: Any) -> tuple[tuple[str, ...], bool]:
    """The gateway's own request fields, the same in every protocol: `models` (tried in order after a
    concrete `model`, or in the mode a virtual one names) and `fallback` (false: stop after them). Returns
    what the runner is asked for and whether the chain follows."""
    requested: tuple[str, ...] = (model,)
    if models is not None:
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise BadRequest(
                "'models' must be a non-empty list of model id strings.", "models", "invalid_type"
            )
        if len(models) > MAX_MODELS or any(len(m) > MAX_MODEL_NAME for m in models):
            raise BadRequest(
                f"'models' lists at most {MAX_MODELS} model ids of at most {MAX_MODEL_NAME} characters each.",
                "models",
                "invalid_value",
            )
        requested = (model, *models)  # a virtual `model` gives the mode, concrete ones are tried first
    if not isinstance(fallback, bool):
        raise BadRequest("'fallback' must be true or false.", "fallback", "invalid_type")
    return requested, fallback


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
