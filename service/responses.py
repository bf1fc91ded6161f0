"""The OpenAI Responses API (`POST /v1/responses`, `GET` / `DELETE /v1/responses/{id}`) on the one request
core: a Responses body becomes the neutral chat-completions `ChatRequest` (so routing, fallback, deadlines,
keep-alives, the commit contract, sessions, events and replay are chat's), and the runner's answer becomes
a Response object, or the Responses event stream (`event: <type>` / `data: <json>`, every event numbered by
`sequence_number` from 0).

Stored responses (`store`, true by default) are kept by actors/responses.py: told before the client gets
the response, so the client's next turn (`previous_response_id`) always finds it. A turn stores what it
added to the conversation in the chat form (its input messages, then the assistant's message); a chain is
followed back to its first turn, oldest first. `instructions` apply to their own turn only, as OpenAI's do.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from quart import Response
from quart_trio import QuartTrio

from actors.request import ChatRequest
from actors.responses import MAX_CHAIN, Missing, ResponseRetention, StoredResponse, TooLong
from actors.stream import Routed
from actors.supervisor import Runtime
from events.attempts import Failure
from events.frames import Chunk
from service.chat_completions import parse_chat_request
from service.edge import (
    Answer,
    BadRequest,
    Headers,
    error_answer,
    failure_answer,
    json_body,
    quart_response,
    quoted,
    routing_headers,
)
from service.protocol import ClientProtocol
from service.streaming import StreamRender, stream_answer

logger = logging.getLogger("switchboard.responses")

RESPONSES_PATH = "/v1/responses"
MAX_ID = 256  # characters of a response id a client may send
_encode = msgspec.json.encode
_decode = msgspec.json.decode

MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TOOL_CHOICES = ("auto", "none", "required")
# A chat finish_reason that leaves a Response incomplete, and the reason OpenAI gives for it.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- the request -----------------------------------------------------------------------------------------


@dataclass
class ResponsesCall:
    """A Responses request as parsed: the chat body it becomes (without the conversation before this turn),
    this turn's messages, and what the Response echoes."""

    chat: dict[str, Any]  # model, models, fallback, stream, tools, ... (no `messages` yet)
    instructions: str | None
    messages: list[dict[str, Any]]  # this turn's input, in the chat form
    previous_response_id: str | None
    store: bool
    stream: bool
    echo: dict[str, Any] = field(default_factory=dict)  # the request settings the Response repeats

    def chat_request(
        self, history: list[dict[str, Any]], request_id: str, session_header: str | None
    ) -> ChatRequest:
        """The neutral request: instructions, the stored conversation before this turn, this turn."""
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages = [*system, *history, *self.messages]
        if not messages:
            raise BadRequest("'input' must not be empty.", "input", "missing_required_parameter")
        body = {**self.chat, "messages": messages}
        # Through chat's own parser: one validation of model, models, fallback and one token estimate.
        req = parse_chat_request(_encode(body), request_id, session_header)
        return dataclasses.replace(req, protocol="responses")


def _decoded(raw: bytes) -> dict[str, Any]:
    return json_body(raw, "'model' and 'input'")


def _bad_type(param: str, what: str) -> BadRequest:
    return BadRequest(f"'{param}' must be {what}.", param, "invalid_type")


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """The field, None when absent or null; a bool is not a number here (JSON tells them apart)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _bad_type(name, what)
    return value


def parse_responses_request(raw: bytes) -> ResponsesCall:
    """Validate what we read and translate it; fields the SDKs send that we do not use are ignored."""
    body = _decoded(raw)
    # Server-side state this gateway does not keep: ignoring it would answer without the conversation or
    # the prompt the client meant, so it is refused, saying what works instead.
    if body.get("conversation") is not None:
        raise BadRequest(
            "'conversation' is not supported: this gateway keeps no conversation objects; continue one "
            "with 'previous_response_id', or send the conversation in 'input'.",
            "conversation",
            "unsupported_parameter",
        )
    if body.get("prompt") is not None:
        raise BadRequest(
            "'prompt' (a stored prompt template) is not supported by this gateway; send the prompt's text "
            "as 'instructions' and 'input'.",
            "prompt",
            "unsupported_parameter",
        )
    chat: dict[str, Any] = {}
    for name in ("model", "models", "fallback"):  # validated by chat's parser
        if name in body:
            chat[name] = body[name]
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad_type("stream", "true or false")
    chat["stream"] = stream
    if stream:
        chat["stream_options"] = {"include_usage": True}  # the final event's usage, when the provider counts
    store = body.get("store", True)
    if store is None:
        store = True
    if not isinstance(store, bool):
        raise _bad_type("store", "true or false")
    instructions = _optional(body, "instructions", str, "a string")
    previous = _optional(body, "previous_response_id", str, "a response id string")
    if previous is not None and not (0 < len(previous) <= MAX_ID):
        raise BadRequest(
            f"'previous_response_id' must be a response id of 1 to {MAX_ID} characters.",
            "previous_response_id",
            "invalid_value",
        )
    messages = input_messages(body.get("input"))
    echo: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad_type("tools", "an array of tools")
        if tools:
            chat["tools"] = [_tool(i, tool) for i, tool in enumerate(tools)]
    echo["tools"] = tools or []
    choice = body.get("tool_choice")
    if choice is not None:
        checked = _tool_choice(choice)
        if tools:  # without tools, providers refuse a tool_choice (OpenAI's chat API does)
            chat["tool_choice"] = checked
    echo["tool_choice"] = choice if choice is not None else "auto"
    parallel = _optional(body, "parallel_tool_calls", bool, "true or false")
    if parallel is not None and tools:
        chat["parallel_tool_calls"] = parallel
    echo["parallel_tool_calls"] = True if parallel is None else parallel
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 1:
            raise _bad_type("max_output_tokens", "a positive integer")
        chat["max_tokens"] = max_output
    echo["max_output_tokens"] = max_output
    for name in ("temperature", "top_p"):
        value = _optional(body, name, (int, float), "a number")
        if value is not None:
            chat[name] = value
        echo[name] = value
    user = _optional(body, "user", str, "a string")
    if user is not None:
        chat["user"] = user
    echo["user"] = user
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise _bad_type("metadata", "an object of string values")
    echo["metadata"] = metadata or {}
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise _bad_type("text", "an object")
        fmt = text.get("format")
        if fmt is not None:
            response_format = _text_format(fmt)
            if response_format is not None:
                chat["response_format"] = response_format
    echo["text"] = text if isinstance(text, dict) and text.get("format") else {"format": {"type": "text"}}
    truncation = body.get("truncation")
    echo["truncation"] = truncation if isinstance(truncation, str) else "disabled"
    echo["instructions"] = instructions
    echo["previous_response_id"] = previous
    echo["store"] = store
    return ResponsesCall(chat, instructions, messages, previous, store, stream, echo)


def input_messages(value: Any) -> list[dict[str, Any]]:
    """`input` (a string, or a list of items) as chat messages. An assistant's `function_call` items join
    its message as tool calls (chat puts them there); `reasoning` items are dropped (we never send
    encrypted reasoning, and no chat provider takes it back)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad_type("input", "a string or an array of input items")
    messages: list[dict[str, Any]] = []
    # Images of function call outputs, for one user message after the run of tool messages they came in
    # (chat wants every tool message of a turn right after the assistant's calls).
    pending_images: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad_type(where, "an object")
        kind = item.get("type")
        if pending_images and kind != "function_call_output":
            messages.append({"role": "user", "content": pending_images})
            pending_images = []
        if kind is None and "role" in item:
            kind = "message"  # the SDK's EasyInputMessage
        if kind == "message":
            messages.append(_message(where, item))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", where),
                "type": "function",
                "function": {
                    "name": _string(item, "name", where),
                    "arguments": _string(item, "arguments", where, allow_empty=True),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            text, images = _tool_output(where, item.get("output"))
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            if images:
                pending_images.append(
                    {"type": "text", "text": f"The images function call {call_id} returned:"}
                )
                pending_images.extend(images)
        elif kind == "reasoning":
            continue
        elif isinstance(kind, str):
            raise BadRequest(
                f"'{where}.type' {quoted(kind)!r} is not supported; this gateway takes 'message', "
                "'function_call', 'function_call_output' and 'reasoning' (dropped) items.",
                f"{where}.type",
                "invalid_value",
            )
        else:
            raise _bad_type(f"{where}.type", "a string")
    if pending_images:
        messages.append({"role": "user", "content": pending_images})
    return messages


def _string(item: dict[str, Any], name: str, where: str, *, allow_empty: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise _bad_type(f"{where}.{name}", "a string" if allow_empty else "a non-empty string")
    return value


def _tool_output(where: str, output: Any) -> tuple[str, list[dict[str, Any]]]:
    """A function call's output: its text, and its images as chat image parts (a chat tool message carries
    text only: they go in a user message after it). Codex and the agents SDK send screenshots and MCP
    results as `input_image`; a file is named in the text (no chat provider takes a file here). Clients
    resend the whole history every turn, so an output refused once would be refused for ever."""
    if isinstance(output, str):
        return output, []
    if not isinstance(output, list):
        raise _bad_type(f"{where}.output", "a string or an array of content parts")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, part in enumerate(output):
        at = f"{where}.output[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad_type(at, "an object with a string 'type'")
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            texts.append(_part_text(at, part))
        elif kind == "input_image" and isinstance(part.get("image_url"), str) and part["image_url"]:
            image: dict[str, Any] = {"url": part["image_url"]}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            images.append({"type": "image_url", "image_url": image})
        elif kind in ("input_image", "input_file"):
            # A file id (we hold no files) or a file: the model is told what was there, the log why not.
            name = next(
                (part[k] for k in ("filename", "file_id", "file_url") if isinstance(part.get(k), str)), "?"
            )
            what = "image" if kind == "input_image" else "file"
            texts.append(f"[{what} {name!r} omitted: not supported by this gateway]")
            logger.warning("responses: %s %s in a function call's output replaced by a note", at, kind)
        else:
            raise BadRequest(
                f"'{at}.type' {quoted(kind)!r} is not supported in a function call's output; this gateway "
                "takes input_text, output_text, input_image and input_file parts.",
                f"{at}.type",
                "invalid_value",
            )
    return "".join(texts), images


def _part_text(at: str, part: dict[str, Any]) -> str:
    """A text part's text (`input_text` / `output_text`), which must be a string."""
    text = part.get("text")
    if not isinstance(text, str):
        raise _bad_type(f"{at}.text", "a string")
    return text


def _message(where: str, item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        raise BadRequest(
            f"'{where}.role' must be one of {', '.join(MESSAGE_ROLES)}.", f"{where}.role", "invalid_value"
        )
    content = item.get("content")
    chat_role = MESSAGE_ROLES[role]
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise _bad_type(f"{where}.content", "a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad_type(at, "an object with a string 'type'")
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": _part_text(at, part)})
        elif kind == "refusal":
            if not isinstance(part.get("refusal"), str):
                raise _bad_type(f"{at}.refusal", "a string")
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and chat_role == "user":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise BadRequest(
                    f"'{at}.image_url' must be an image URL or a data URL (file ids are not supported).",
                    f"{at}.image_url",
                    "invalid_type",
                )
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise BadRequest(
                f"'{at}.type' {quoted(kind)!r} is not supported in a {role} message; this gateway takes "
                "input_text and input_image (user), output_text and refusal (assistant).",
                f"{at}.type",
                "invalid_value",
            )
    if chat_role != "user" or all(p["type"] == "text" for p in parts):
        # Text only: one string, which every chat provider takes (system and assistant content must be).
        return {"role": chat_role, "content": "".join(p["text"] for p in parts)}
    return {"role": chat_role, "content": parts}


def _tool(i: int, tool: Any) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise _bad_type(where, "an object")
    kind = tool.get("type")
    if kind != "function":
        raise BadRequest(
            f"'{where}.type' {quoted(str(kind))!r} is not supported: this gateway takes function tools only.",
            f"{where}.type",
            "invalid_value",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_type(f"{where}.name", "a non-empty string")
    function: dict[str, Any] = {"name": name}
    description = tool.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise _bad_type(f"{where}.description", "a string")
        function["description"] = description
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise _bad_type(f"{where}.parameters", "a JSON Schema object")
        function["parameters"] = parameters
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _bad_type(f"{where}.strict", "true or false")
        function["strict"] = strict
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad_type("tool_choice.name", "a non-empty string")
        return {"type": "function", "function": {"name": name}}
    raise BadRequest(
        "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
        "tool_choice",
        "invalid_value",
    )


def _text_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise _bad_type("text.format", "an object with a string 'type'")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise _bad_type("text.format.name", "a non-empty string")
        if not isinstance(schema, dict):
            raise _bad_type("text.format.schema", "a JSON Schema object")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for extra in ("strict", "description"):
            if fmt.get(extra) is not None:
                spec[extra] = fmt[extra]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest(
        f"'text.format.type' {quoted(kind)!r} is not supported: text, json_object or json_schema.",
        "text.format.type",
        "invalid_value",
    )


# ---- the response ----------------------------------------------------------------------------------------


@dataclass
class Turn:
    """What one answer came to, in the neutral form: text, tool calls, finish, usage."""

    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)  # chat tool calls (id, function name/args)
    finish: str | None = None
    usage: dict[str, Any] | None = None  # the provider's chat usage, if it counted

    def assistant_message(self) -> dict[str, Any]:
        """The assistant's message in the chat form, as the next turn's history holds it."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": dict(c["function"])} for c in self.calls
            ]
        return message

    @classmethod
    def of_completion(cls, completion: Any) -> Turn:
        """The answer in a chat completion; shapes a provider got wrong are skipped, never raised on (the
        attempt already counted as a success: a 500 now would answer a good request with a bug)."""
        completion = completion if isinstance(completion, dict) else {}
        choices = _list(completion.get("choices"))
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        text = content if isinstance(content, str) else ""
        calls = []
        for call in _list(message.get("tool_calls")):
            if isinstance(call, dict):
                fn = call["function"] if isinstance(call.get("function"), dict) else {}
                call_id, name = call.get("id"), fn.get("name")
                calls.append(
                    {
                        "id": call_id if isinstance(call_id, str) and call_id else new_id("call"),
                        "function": {
                            "name": name if isinstance(name, str) else "",
                            "arguments": arguments_text(fn.get("arguments")),
                        },
                    }
                )
        if not text and not calls:
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            text = reasoning if isinstance(reasoning, str) else ""
        usage = completion.get("usage")
        return cls(text, calls, _finish(choice), usage if isinstance(usage, dict) else None)


def _list(value: Any) -> list[Any]:
    """A list from provider data, or none: a field of the wrong type is ignored, as chat passes it."""
    return value if isinstance(value, list) else []


def _finish(choice: dict[str, Any]) -> str | None:
    finish = choice.get("finish_reason")
    return finish if isinstance(finish, str) and finish else None


def arguments_text(value: Any) -> str:
    """A tool call's arguments as the JSON text Responses carries: some providers send the object itself."""
    if isinstance(value, str):
        return value
    return "" if value is None else _encode(value).decode()


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_object(
    usage: dict[str, Any] | None, est_input: int, text: str, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """The Responses usage from the provider's chat usage; without one, estimated as the gateway's
    accounting does (the request's input estimate, four characters an output token)."""
    usage = usage or {}
    input_tokens = _count(usage.get("prompt_tokens")) or est_input
    output_chars = len(text) + sum(
        len(c["function"]["arguments"]) + len(c["function"]["name"]) for c in calls
    )
    output_tokens = _count(usage.get("completion_tokens")) or (output_chars + 3) // 4
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    cached = _count(prompt_details.get("cached_tokens"))
    cache_write = _count(prompt_details.get("cache_write_tokens"))
    reasoning = (
        _count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    )
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text_part(text)] if status != "in_progress" else [],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
    }


@dataclass
class ResponseShell:
    """The parts of a Response fixed when the request arrives: its id, when, and the echoed settings."""

    response_id: str
    created_at: int
    echo: dict[str, Any]
    model: str

    def build(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model,
            "output": output,
            "usage": usage,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            **self.echo,
        }


def response_of(shell: ResponseShell, turn: Turn, est_input: int) -> dict[str, Any]:
    """A whole Response from a whole answer: its message (if it has text), then its function calls."""
    incomplete = INCOMPLETE_REASONS.get(turn.finish or "")
    status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    if turn.text or not turn.calls:
        output.append(message_item(new_id("msg"), turn.text, status))
    output.extend(call_item(new_id("fc"), call, "completed") for call in turn.calls)
    usage = usage_object(turn.usage, est_input, turn.text, turn.calls)
    return shell.build(status, output, usage, incomplete=incomplete)


def stored_turn(
    shell: ResponseShell, call: ResponsesCall, turn: Turn, response: dict[str, Any], now: float
) -> StoredResponse:
    return StoredResponse(
        response_id=shell.response_id,
        previous_response_id=call.previous_response_id,
        messages=_encode([*call.messages, turn.assistant_message()]).decode(),
        response=_encode(response).decode(),
        ts=now,
    )


# ---- the stream ------------------------------------------------------------------------------------------


def sse_event(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + _encode(data) + b"\n\n"


@dataclass
class _OpenCall:
    output_index: int
    item_id: str
    call: dict[str, Any]


class ResponsesRender(StreamRender):
    """The Responses event stream from the neutral items. Every item stays open until the end, so deltas
    of a text and of several tool calls may interleave and each keeps its own output index."""

    def __init__(
        self,
        shell: ResponseShell,
        est_input: int,
        finished: Callable[[dict[str, Any], Turn], Any] | None = None,
    ) -> None:
        self.shell = shell
        self.est_input = est_input
        self._finished = finished  # async (response, turn): records a stored answer before it is told
        self._seq = 0
        self._started = False
        self._text_index: int | None = None
        self._text_id = ""
        self._calls: list[_OpenCall] = []  # in the order they opened
        self._by_index: dict[int, _OpenCall] = {}  # the latest call opened at each chat delta `index`
        self._last_call: _OpenCall | None = None  # where a fragment without an index goes
        self._reasoning: list[str] = []  # the answer's text if it ends with no text and no call
        self._items = 0
        self.turn = Turn()

    def _event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(data)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = self.shell.build("in_progress", [])
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def routed(self, routed: Routed, *, in_headers: bool) -> bytes:
        self.shell.model = routed.routed_via
        return self._start()

    def chunk(self, chunk: Chunk) -> bytes:
        obj = chunk.obj
        if not isinstance(obj, dict):
            return b""
        out = [self._start()]
        if isinstance(obj.get("usage"), dict):
            self.turn.usage = obj["usage"]
        for choice in _list(obj.get("choices")):
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                text = delta.get("content")
                if isinstance(text, str) and text:
                    out.append(self._text(text))
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(reasoning, str):
                    self._reasoning.append(reasoning)
                for call in _list(delta.get("tool_calls")):
                    if isinstance(call, dict):
                        out.append(self._call(call))
            self.turn.finish = _finish(choice) or self.turn.finish
        return b"".join(out)

    def _text(self, text: str) -> bytes:
        out = b""
        if self._text_index is None:
            self._text_index, self._text_id = self._items, new_id("msg")
            self._items += 1
            out = self._event(
                "response.output_item.added",
                output_index=self._text_index,
                item=message_item(self._text_id, "", "in_progress"),
            ) + self._event(
                "response.content_part.added",
                item_id=self._text_id,
                output_index=self._text_index,
                content_index=0,
                part=output_text_part(""),
            )
        self.turn.text += text
        return out + self._event(
            "response.output_text.delta",
            item_id=self._text_id,
            output_index=self._text_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call(self, delta: dict[str, Any]) -> bytes:
        """A tool-call delta. A new `id` starts a new call even at an `index` already seen (some providers
        number every call 0), and so does a name when there is no `index` (whole calls, one per delta);
        only a fragment with neither continues: the call at its index, else the last one opened."""
        index = delta.get("index") if isinstance(delta.get("index"), int) else None
        call_id = delta.get("id") if isinstance(delta.get("id"), str) and delta.get("id") else None
        fn = delta.get("function")
        fn = fn if isinstance(fn, dict) else {}
        name, args = fn.get("name"), arguments_text(fn.get("arguments"))
        name = name if isinstance(name, str) and name else None
        open_ = self._by_index.get(index) if index is not None else self._last_call
        new = (
            open_ is None
            or (call_id is not None and call_id != open_.call["id"])
            or (index is None and call_id is None and name is not None)
        )
        out = b""
        if open_ is None or new:
            call = {
                "id": call_id or new_id("call"),
                "function": {"name": name or "", "arguments": ""},
            }
            open_ = _OpenCall(self._items, new_id("fc"), call)
            self._items += 1
            self._calls.append(open_)
            if index is not None:
                self._by_index[index] = open_
            self.turn.calls.append(call)
            out = self._event(
                "response.output_item.added",
                output_index=open_.output_index,
                item=call_item(open_.item_id, call, "in_progress"),
            )
        elif name is not None and not open_.call["function"]["name"]:
            open_.call["function"]["name"] = name
        self._last_call = open_
        if args:
            open_.call["function"]["arguments"] += args
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=open_.item_id,
                output_index=open_.output_index,
                delta=args,
            )
        return out

    def _output(self, status: str) -> list[dict[str, Any]]:
        items: list[tuple[int, dict[str, Any]]] = []
        if self._text_index is not None:
            items.append((self._text_index, message_item(self._text_id, self.turn.text, status)))
        for c in self._calls:
            items.append((c.output_index, call_item(c.item_id, c.call, status)))
        return [item for _, item in sorted(items, key=lambda pair: pair[0])]

    def _close_items(self, status: str) -> bytes:
        out: list[bytes] = []
        closing: list[tuple[int, Callable[[], bytes]]] = []
        if self._text_index is not None:
            index, item_id = self._text_index, self._text_id

            def text_done() -> bytes:
                text = self.turn.text
                return (
                    self._event(
                        "response.output_text.done",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                    + self._event(
                        "response.content_part.done",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        part=output_text_part(text),
                    )
                    + self._event(
                        "response.output_item.done",
                        output_index=index,
                        item=message_item(item_id, text, status),
                    )
                )

            closing.append((index, text_done))
        for c in self._calls:

            def call_done(c: _OpenCall = c) -> bytes:
                return self._event(
                    "response.function_call_arguments.done",
                    item_id=c.item_id,
                    output_index=c.output_index,
                    name=c.call["function"]["name"],
                    arguments=c.call["function"]["arguments"],
                ) + self._event(
                    "response.output_item.done",
                    output_index=c.output_index,
                    item=call_item(c.item_id, c.call, status),
                )

            closing.append((c.output_index, call_done))
        for _, done in sorted(closing, key=lambda pair: pair[0]):
            out.append(done())
        return b"".join(out)

    async def end(self) -> bytes:
        incomplete = INCOMPLETE_REASONS.get(self.turn.finish or "")
        status = "incomplete" if incomplete else "completed"
        out = self._start()
        if not self.turn.text and not self._calls and self._reasoning:
            # A reasoning-only answer: its reasoning is the text, as the whole answer's is
            # (events/frames.py: normalise_message), so a stream and a whole answer say the same.
            out += self._text("".join(self._reasoning))
        out += self._close_items(status)
        usage = usage_object(self.turn.usage, self.est_input, self.turn.text, self.turn.calls)
        response = self.shell.build(status, self._output(status), usage, incomplete=incomplete)
        if self._finished is not None:
            await self._finished(response, self.turn)
        kind = "response.incomplete" if incomplete else "response.completed"
        return out + self._event(kind, response=response)

    def failure(self, failure: Failure) -> bytes:
        # Headers are out: the client hears what went wrong as the Response's own failure, with what it
        # has received so far. A stall's code says so (`stall_mid`, the runner's kind).
        out = self._start()
        error = {"code": failure.code or failure.type, "message": failure.message}
        response = self.shell.build("failed", self._output("incomplete"), error=error)
        return out + self._event("response.failed", response=response)


# ---- the handlers ----------------------------------------------------------------------------------------


def not_found_previous(response_id: str, missing: str) -> Answer:
    """The response the client named, or an earlier one its conversation continues (named, so the client
    knows which turn is gone), is not found."""
    which = (
        f"Previous response with id '{quoted(response_id)}'"
        if missing == response_id
        else f"Previous response '{quoted(response_id)}' continues response '{quoted(missing)}', which is"
    )
    return error_answer(
        400,
        f"{which} not found (unknown, expired, deleted, or created with store: false).",
        "invalid_request_error",
        "previous_response_not_found",
        param="previous_response_id",
    )


def too_long_chain(response_id: str, chain: TooLong, retention: ResponseRetention) -> Answer:
    if chain.size > retention.max_chain_bytes:
        mb = retention.max_chain_bytes / (1024 * 1024)
        why = f"its last {chain.turns} stored turns hold more than {mb:g} MB of messages (the largest "
        why += "request this gateway takes, [server] max_body_mb)"
    else:
        why = f"it has more than {MAX_CHAIN} turns"
    return error_answer(
        400,
        f"The conversation ending with response '{quoted(response_id)}' is too long to continue by "
        f"reference: {why}. Start a new conversation, sending what you want to keep of it as 'input'.",
        "invalid_request_error",
        "conversation_too_long",
        param="previous_response_id",
    )


async def handle(runtime: Runtime, raw: bytes, request_id: str, headers: Headers) -> Answer:
    try:
        call = parse_responses_request(raw)
        history: list[dict[str, Any]] = []
        if call.previous_response_id is not None:
            chain = await runtime.responses.chain(call.previous_response_id)
            if isinstance(chain, Missing):
                return not_found_previous(call.previous_response_id, chain.response_id)
            if isinstance(chain, TooLong):
                return too_long_chain(call.previous_response_id, chain, runtime.responses.retention)
            for earlier in chain:
                history.extend(_decode(earlier.messages))
        req = call.chat_request(history, request_id, headers.get("x-session-id"))
    except BadRequest as exc:
        return error_answer(400, str(exc), "invalid_request_error", exc.code, param=exc.param)
    requested = str(call.chat.get("model") or "auto")
    shell = ResponseShell(new_id("resp"), int(runtime.clock.now()), call.echo, requested)

    async def keep(response: dict[str, Any], turn: Turn) -> None:
        if call.store:  # told before the client hears it is whole: its next turn can never miss it
            await runtime.responses.stored(
                stored_turn(shell, call, turn, response, runtime.clock.now()), request_id
            )

    if not req.stream:
        result = await runtime.requests.complete(req)
        if isinstance(result, Failure):
            return failure_answer(result)
        shell.model = result.routed_via
        turn = Turn.of_completion(_decode(result.body)) if result.body else Turn()
        response = response_of(shell, turn, req.est_tokens)
        await keep(response, turn)
        return Answer(200, _encode(response), routing_headers(result))
    return await stream_answer(runtime, req, ResponsesRender(shell, req.est_tokens, keep), error_answer)


PROTOCOL = ClientProtocol(RESPONSES_PATH, handle)


def register(app: QuartTrio, runtime: Runtime) -> None:
    """`GET` and `DELETE /v1/responses/{id}` (the app's `/v1` guard checks the gateway key)."""

    def not_found(response_id: str) -> Response:
        return quart_response(
            error_answer(
                404,
                f"Response with id '{quoted(response_id)}' not found.",
                "invalid_request_error",
                "not_found",
                param="response_id",
            )
        )

    @app.get(RESPONSES_PATH + "/<response_id>")
    async def get_response(response_id: str) -> Response:
        stored = await runtime.responses.get(response_id) if len(response_id) <= MAX_ID else None
        if stored is None:
            return not_found(response_id)
        return Response(stored.response, content_type="application/json")

    @app.delete(RESPONSES_PATH + "/<response_id>")
    async def delete_response(response_id: str) -> Response:
        if len(response_id) > MAX_ID or not await runtime.responses.delete(response_id):
            return not_found(response_id)
        body = {"id": response_id, "object": "response.deleted", "deleted": True}
        return Response(_encode(body), content_type="application/json")
