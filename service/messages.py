"""The Anthropic Messages protocol (`POST /v1/messages`, `POST /v1/messages/count_tokens`): translate a
Messages body into the neutral `ChatRequest` (a chat-completions body) and render the runner's neutral
results as Messages, so Claude clients (the anthropic SDK, Claude Code) get the same routing, fallback,
deadlines, commit contract, sessions and events as chat clients.

What is translated (anything else in the body is accepted and not forwarded, as new Anthropic fields keep
coming and a gateway that refused them would break Claude Code on its next release):

- `system` (a string or text blocks) -> a system message; `cache_control` anywhere is ignored.
- user blocks: `text`, `image` (base64 -> a data URL, or a URL), `document` with a text (or text
  `content`) source -> text, any other document (a PDF, a URL, a file) -> a placeholder saying what it
  was (a warning is logged): clients resend the history, so a 400 would end the conversation for good;
  `tool_result` -> one `tool` message each, in order, before a user message holding the turn's other
  blocks (a result's images join that user message: chat tool messages carry text only; a block kind
  it does not know is a placeholder too, as a tool made it, not the client).
- assistant blocks: `text` -> content, `tool_use` -> `tool_calls` (arguments = the input's JSON);
  `thinking` / `redacted_thinking` are dropped (no provider here could verify their signatures).
- `thinking` (enabled): the provider's reasoning (`reasoning_content`) comes back as thinking blocks
  with an empty signature; without it, reasoning is dropped, as Anthropic sends no thinking unasked.
  An answer that is only reasoning has it as its text, streamed or not (else the client gets nothing).
- `tools` -> function tools (server tools such as `web_search_*` are refused: no provider runs them),
  `tool_choice`, `stop_sequences`, `temperature`, `top_p`, `max_tokens` (at most `[messages]
  max_tokens_cap`: Claude Code asks for 32,000, more than many free models give), `stream`.

A Claude model name (`claude-*`) routes as `[messages] claude_model` (a mode or a model id); any other
name routes as chat would. The answer's `model` is where it was served (`platform/id`).

Choices where chat and Messages do not map one to one:
- `stop_reason`: chat's `stop` cannot tell a stop sequence from a natural end, so it is `end_turn`
  (`stop_sequence` null); `length` -> `max_tokens`; tool calls -> `tool_use`; `content_filter` -> `refusal`.
- Tool-call arguments that are not a JSON object become the input `{}` in a whole message (a warning is
  logged, without the arguments); a stream forwards the provider's argument fragments as they come, as
  Anthropic's own streams do, so the client's parser judges them.
- Usage: the provider's token counts when it sent them, else the gateway's estimate (four characters a
  token). `cache_*_input_tokens` are always 0: no prompt cache here.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.request import ChatRequest
from actors.stream import Routed
from actors.supervisor import Runtime
from events.attempts import Failure
from events.frames import Chunk, normalise_message
from service.chat_completions import MAX_MODEL_NAME, estimate_tokens, gateway_routing
from service.edge import Answer, BadRequest, Headers, bearer, failure_answer, json_body, routing_headers
from service.protocol import ClientProtocol
from service.streaming import StreamRender, stream_answer

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
KEY_HOW = "'x-api-key: <key>' or 'Authorization: Bearer <key>'"
SESSION_HEADERS = ("x-claude-code-session-id", "x-session-id")  # the first one given is the session
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
CLAUDE_PREFIX = "claude-"

logger = logging.getLogger("switchboard.messages")
_encode = msgspec.json.encode
_decode = msgspec.json.decode

# ---- errors -------------------------------------------------------------------------------------------

# Anthropic's error type for each status (its SDK picks the exception class by status, the type is what
# a client reads): docs.anthropic.com "Errors".
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Answer:
    """Every error of these routes, in Anthropic's shape `{"type": "error", "error": {"type", "message"}}`.
    The type follows the status (the OpenAI-style `type_` and `code` of the shared edge have no place in
    it); `param` is named in the message, as Anthropic's messages name the field."""
    if param and param not in message:
        message = f"{param}: {message}"
    body = {"type": "error", "error": {"type": error_type(status), "message": message}}
    return Answer(status, _encode(body), headers or {})


def credential(headers: Headers) -> str:
    """Anthropic's SDK sends `x-api-key` (api_key) or `Authorization: Bearer` (auth_token): either works."""
    return headers.get("x-api-key", "").strip() or bearer(headers.get("authorization", ""))


# ---- handlers -----------------------------------------------------------------------------------------


async def handle(runtime: Runtime, raw: bytes, request_id: str, headers: Headers) -> Answer:
    try:
        call = parse_messages_request(
            raw, request_id, runtime.claude_model, session_header(headers), runtime.messages_max_tokens
        )
    except BadRequest as exc:
        return anthropic_error(400, str(exc), "invalid_request_error")
    req, msg_id = call.req, message_id(request_id)
    if not req.stream:
        result = await runtime.requests.complete(req)
        if isinstance(result, Failure):
            return failure_answer(result, anthropic_error)
        completion = _decode(result.body)
        message = message_from_completion(completion, msg_id, req.est_tokens, thinking=call.thinking)
        message["model"] = result.routed_via
        return Answer(200, _encode(message), routing_headers(result))
    render = MessagesRender(msg_id, req.est_tokens, thinking=call.thinking)
    return await stream_answer(runtime, req, render, anthropic_error)


async def handle_count_tokens(runtime: Runtime, raw: bytes, request_id: str, headers: Headers) -> Answer:
    """The runner's own input estimate for this body; no provider is called."""
    try:
        body = _body(raw)
        chat = translate(body, count_only=True)
    except BadRequest as exc:
        return anthropic_error(400, str(exc), "invalid_request_error")
    return Answer(200, _encode({"input_tokens": input_estimate(chat)}))


PROTOCOL = ClientProtocol(MESSAGES_PATH, handle, anthropic_error, credential, KEY_HOW)
COUNT_TOKENS_PROTOCOL = ClientProtocol(
    COUNT_TOKENS_PATH, handle_count_tokens, anthropic_error, credential, KEY_HOW
)


def session_header(headers: Headers) -> str | None:
    for name in SESSION_HEADERS:
        if name in headers:
            return headers[name]
    return None


def message_id(request_id: str) -> str:
    """The message's id carries the request's, so a client's message id finds the request in the log."""
    return "msg_" + request_id.removeprefix("req_")


# ---- the request --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessagesCall:
    """A Messages request: the neutral request, and what rendering its answer needs to know."""

    req: ChatRequest
    thinking: bool  # the client asked for thinking: the provider's reasoning comes back as thinking blocks


def parse_messages_request(
    raw: bytes,
    request_id: str,
    claude_model: str,
    session: str | None = None,
    max_tokens_cap: int | None = None,
) -> MessagesCall:
    """`max_tokens_cap`: `[messages] max_tokens_cap`, the most output tokens asked of a provider."""
    body = _body(raw)
    chat = translate(body)
    if max_tokens_cap is not None and chat["max_tokens"] > max_tokens_cap:
        chat["max_tokens"] = max_tokens_cap
    model = chat["model"]
    mode = claude_model if model.lower().startswith(CLAUDE_PREFIX) else model
    chat["model"] = mode
    requested, use_chain = gateway_routing(mode, body.get("models"), body.get("fallback", True))
    if session is not None and not session.strip():
        raise BadRequest("The session header (X-Claude-Code-Session-Id or X-Session-Id) must not be empty.")
    req = ChatRequest(
        request_id=request_id,
        body=chat,
        requested=requested,
        stream=chat["stream"],
        est_tokens=input_estimate(chat),
        use_chain=use_chain,
        session_header=session,
        protocol="messages",
    )
    thinking = body.get("thinking")
    return MessagesCall(req, isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"))


def input_estimate(chat: dict[str, Any]) -> int:
    """The runner's estimate of the translated messages (system included), plus the tool definitions."""
    tools = chat.get("tools")
    return estimate_tokens(chat["messages"]) + (len(_encode(tools)) // 4 if tools else 0)


def _body(raw: bytes) -> dict[str, Any]:
    return json_body(raw, "'model', 'max_tokens' and 'messages'")


def _fail(path: str, what: str) -> BadRequest:
    return BadRequest(f"{path}: {what}", path)


def translate(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """A Messages body as a chat-completions body. `count_only`: count_tokens' body (no max_tokens or
    stream, which it ignores if sent)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "Field required: a model name string.")
    if len(model) > MAX_MODEL_NAME:  # names are stored in the log and echoed in errors: bounded
        raise _fail("model", f"{len(model)} characters long; model names are at most {MAX_MODEL_NAME}.")
    chat: dict[str, Any] = {"model": model}
    stream = False
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _fail("max_tokens", "Field required: the most tokens the answer may have.")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _fail("max_tokens", "must be a positive integer.")
        chat["max_tokens"] = max_tokens
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _fail("stream", "must be true or false.")
    chat["stream"] = stream
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _fail("messages", "Field required: a non-empty list of messages.")
    messages = [message for i, turn in enumerate(turns) for message in _turn(i, turn)]
    if not messages:
        raise _fail("messages", "has no content the gateway can send (only thinking blocks).")
    chat["messages"] = _system(body.get("system")) + messages
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if choice is not None:
            chat.update(_tool_choice(choice))
    elif body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"])  # checked all the same; without tools there is nothing to choose
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _fail("stop_sequences", "must be a list of strings.")
        if stops:
            chat["stop"] = stops
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise _fail(name, "must be a number from 0 to 1.")
        chat[name] = value
    top_k = body.get("top_k")  # checked, not sent: chat has no top_k
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _fail("top_k", "must be a non-negative integer.")
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise _fail("system", "must be a string or a list of text blocks.")
    texts = []
    for j, block in enumerate(system):
        path = f"system[{j}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _fail(f"{path}.type", "system blocks must be text blocks ({'type': 'text', 'text': ...}).")
        texts.append(_text(block, path))
    text = "\n\n".join(t for t in texts if t)
    return [{"role": "system", "content": text}] if text else []


def _text(block: dict[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _fail(f"{path}.text", "must be a string.")
    return text


def _turn(i: int, turn: Any) -> list[dict[str, Any]]:
    where = f"messages[{i}]"
    if not isinstance(turn, dict):
        raise _fail(where, "must be an object with 'role' and 'content'.")
    role = turn.get("role")
    if role not in ("user", "assistant"):
        raise _fail(f"{where}.role", "must be 'user' or 'assistant'.")
    content = turn.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _fail(f"{where}.content", "must be a string or a list of content blocks.")
    blocks: list[tuple[str, dict[str, Any]]] = []
    for j, block in enumerate(content):
        path = f"{where}.content[{j}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _fail(path, "must be an object with a string 'type'.")
        blocks.append((path, block))
    return _user(blocks) if role == "user" else _assistant(blocks)


def _user(blocks: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Tool results first, each its own `tool` message in order (chat wants them right after the calls),
    then one user message with the turn's other blocks."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for path, block in blocks:
        kind = block["type"]
        if kind == "tool_result":
            text, images = _tool_result(path, block)
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            parts.extend(images)
        elif kind in ("thinking", "redacted_thinking"):
            continue
        elif kind == "tool_use":
            raise _fail(f"{path}.type", "'tool_use' blocks belong in assistant messages.")
        else:
            parts.append(_part(path, block))
    if not parts:
        return results
    if all(part["type"] == "text" for part in parts):
        # Plain text as a string: every provider takes that, not all take arrays of parts.
        return [*results, {"role": "user", "content": "\n\n".join(part["text"] for part in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _part(path: str, block: dict[str, Any]) -> dict[str, Any]:
    """A user block as a chat content part."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _text(block, path)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(path, block)}}
    if kind == "document":
        return {"type": "text", "text": _document(path, block)}
    raise _fail(f"{path}.type", f"content blocks of type '{kind[:40]}' are not supported here.")


def _document(path: str, block: dict[str, Any]) -> str:
    """A document as the text a chat model reads: a text source is its text (a `content` source its text
    blocks). Any other (a base64 PDF from Claude Code's Read tool, a URL, a Files API file) becomes a
    placeholder saying what it was, not a 400: clients resend the history every turn, so refusing it
    would make the conversation unusable for good."""
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise _fail(f"{path}.source", "must be an object with a string 'type'.")
    kind = source["type"]
    title = block.get("title")
    text: str | None = None
    if kind == "text":
        if not isinstance(source.get("data"), str):
            raise _fail(f"{path}.source.data", "must be the document's text.")
        text = source["data"]
    elif kind == "content" and isinstance(source.get("content"), str):
        text = source["content"]
    elif kind == "content" and isinstance(source.get("content"), list):
        parts = source["content"]
        if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
            text = "\n\n".join(_text(p, f"{path}.source.content[{k}]") for k, p in enumerate(parts))
    if text is None:
        text = _unsupported_document(path, source)
    return f"{title}\n\n{text}" if isinstance(title, str) and title else text


def _unsupported_document(path: str, source: dict[str, Any]) -> str:
    kind = source["type"]
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise _fail(f"{path}.source", "a base64 document needs string 'media_type' and 'data'.")
        padding = len(data) - len(data.rstrip("="))
        what = f"{media_type[:60]}, {len(data) * 3 // 4 - padding} bytes"  # the decoded size
    elif kind == "url":
        what = "a URL"  # not the URL itself: a signed URL is a credential
    elif kind == "file":
        what = "a Files API file"
    else:
        what = f"a '{kind[:40]}' source"
    # What it was and where, never its content.
    logger.warning("%s: a document (%s) is not supported; the model is told so in its place", path, what)
    return f"[document: {what}, not supported by this gateway]"


def _image_url(path: str, block: dict[str, Any]) -> str:
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if not isinstance(media_type, str) or not isinstance(data, str):
                raise _fail(f"{path}.source", "a base64 image needs string 'media_type' and 'data'.")
            return f"data:{media_type};base64,{data}"
        if source.get("type") == "url":
            url = source.get("url")
            if not isinstance(url, str) or not url:
                raise _fail(f"{path}.source.url", "must be a URL string.")
            return url
    raise _fail(f"{path}.source.type", "image sources must be 'base64' or 'url'.")


def _tool_result(path: str, block: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text, and its images (for the user message after the tool messages)."""
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise _fail(f"{path}.tool_use_id", "must be the id of the tool_use block it answers.")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, item in enumerate(content):
            where = f"{path}.content[{k}]"
            if isinstance(item, dict) and item.get("type") == "text":
                texts.append(_text(item, where))
            elif isinstance(item, dict) and item.get("type") == "image":
                images.append({"type": "image_url", "image_url": {"url": _image_url(where, item)}})
            elif isinstance(item, dict) and item.get("type") == "document":
                texts.append(_document(where, item))
            elif isinstance(item, dict) and isinstance(item.get("type"), str):
                # A tool's output is what the tool made (an MCP server's new block kind), not the client's
                # choice, and is resent every turn: a placeholder, not a 400 the user cannot get past.
                kind = item["type"][:40]
                logger.warning("%s: a tool result block of type '%s' is not supported", where, kind)
                texts.append(f"[{kind} block: not supported by this gateway]")
            else:
                raise _fail(f"{where}.type", "must be a content block with a string 'type'.")
    elif content is not None:
        raise _fail(f"{path}.content", "must be a string or a list of text and image blocks.")
    text = "\n\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"  # chat has no error flag: the model reads it here
    return text, images


def _assistant(blocks: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for path, block in blocks:
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, path))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise _fail(f"{path}.id", "must be the tool call's id string.")
            if not isinstance(name, str) or not name:
                raise _fail(f"{path}.name", "must be the tool's name.")
            if not isinstance(arguments, dict):
                raise _fail(f"{path}.input", "must be an object.")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": _encode(arguments).decode()},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        elif kind == "tool_result":
            raise _fail(f"{path}.type", "'tool_result' blocks belong in user messages.")
        else:
            raise _fail(f"{path}.type", f"content blocks of type '{kind[:40]}' are not supported here.")
    text = "".join(texts)
    if not text and not calls:
        return []  # only thinking: nothing a chat model can read
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _fail("tools", "must be a list of tool definitions.")
    out = []
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _fail(path, "must be an object with 'name' and 'input_schema'.")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _fail(
                f"{path}.type",
                f"server tools ('{str(kind)[:40]}') are not supported: no provider behind this gateway runs "
                "them; define a custom tool with 'name', 'description' and 'input_schema'.",
            )
        name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
        if not isinstance(name, str) or not name:
            raise _fail(f"{path}.name", "must be the tool's name.")
        if not isinstance(schema, dict):
            raise _fail(f"{path}.input_schema", "must be a JSON Schema object.")
        if description is not None and not isinstance(description, str):
            raise _fail(f"{path}.description", "must be a string.")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if description:
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise _fail("tool_choice", "must be an object with a 'type'.")
    kind = choice.get("type")
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _fail("tool_choice.name", "must name the tool to call.")
        out = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        raise _fail("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'.")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _fail("tool_choice.disable_parallel_tool_use", "must be true or false.")
    if disable and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# ---- the answer ---------------------------------------------------------------------------------------

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: Any, has_calls: bool) -> str:
    if has_calls:
        return "tool_use"  # some providers finish a tool call with "stop"
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def tool_use_id(call_id: Any) -> str:
    return call_id if isinstance(call_id, str) and call_id else "toolu_" + uuid.uuid4().hex[:24]


def _input(arguments: Any, msg_id: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            parsed = _decode(arguments)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    logger.warning("%s: a tool call's arguments are not a JSON object; its input is {}", msg_id)
    return {}


def message_from_completion(
    completion: Any, msg_id: str, est_input: int, *, thinking: bool = False
) -> dict[str, Any]:
    """A chat.completion (already judged a good answer by the runner) as an Anthropic message; the caller
    sets `model` to where it was served. `thinking`: the client asked for thinking, so the provider's
    reasoning beside an answer comes first as a thinking block (a reasoning-only answer is the text)."""
    choice: dict[str, Any] = {}
    if isinstance(completion, dict):
        choices = completion.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
    message = dict(choice.get("message") or {})
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    answered = bool(message.get("content") or message.get("tool_calls"))
    normalise_message(message)
    content: list[dict[str, Any]] = []
    if thinking and answered and isinstance(reasoning, str) and reasoning:
        content.append(_thinking_block(reasoning))
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.get("id")),
                "name": str(function.get("name") or ""),
                "input": _input(function.get("arguments"), msg_id),
            }
        )
    has_calls = any(block["type"] == "tool_use" for block in content)
    usage = completion.get("usage") if isinstance(completion, dict) else None
    out_chars = sum(
        len(b.get("text", "")) + len(b.get("thinking", "")) + len(_encode(b.get("input", "")))
        for b in content
    )
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": "",
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), has_calls),
        "stop_sequence": None,
        "usage": _usage(
            _count(usage, "prompt_tokens", est_input), _count(usage, "completion_tokens", out_chars // 4)
        ),
    }


def _count(usage: Any, name: str, default: int) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _thinking_block(thinking: str) -> dict[str, Any]:
    # No signature: no Anthropic model made it (and the gateway drops thinking blocks it is sent back).
    return {"type": "thinking", "thinking": thinking, "signature": ""}


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class MessagesRender(StreamRender):
    """Messages SSE from chat chunks: `message_start` when the model is known, then content blocks (text,
    tool_use; thinking when the client asked for it) with their indices, `message_delta` and
    `message_stop`; a failure is an `error` event.

    Blocks are opened and closed one at a time, as Anthropic sends them: a block lasts until a delta of
    another kind (or another tool call) comes. A provider that interleaves the argument fragments of
    several calls gets its late fragments sent on the earlier call's block index (the SDKs accumulate by
    index), so no argument is lost."""

    def __init__(self, msg_id: str, est_input: int, *, thinking: bool = False) -> None:
        self.msg_id = msg_id
        self.est_input = est_input
        self.thinking = thinking  # the provider's reasoning goes out as thinking blocks (else it is dropped)
        self.started = False
        self.blocks = 0  # blocks opened so far: the next block's index
        self.open: int | None = None  # the index of the open block
        self.open_kind: str | None = None  # "text", "thinking" or "tool_use"
        self.calls: dict[int, int] = {}  # a tool call's serial number (`_call_key`) -> its block index
        self.pending: dict[int, dict[str, Any]] = {}  # calls whose name has not come yet
        self.call_ids: dict[str, int] = {}  # a chat tool call's `id` -> its serial number
        self.call_indexes: dict[int, int] = {}  # a chat tool call's `index` -> the latest call with it
        self.call_count = 0
        self.last_call: int | None = None  # the call a fragment with neither id nor index continues
        self.finish: Any = None
        self.output_tokens: int | None = None
        self.input_tokens: int | None = None  # the provider's count, when it sends usage
        self.out_chars = 0
        # The reasoning, kept while nothing else came: an answer that is only reasoning has it as its text
        # (as a whole answer does: events/frames.py normalise_message), not an empty message.
        self.reasoning: list[str] = []
        self.answered = False  # text or a tool call came

    def keepalive(self) -> bytes:
        return PING

    def routed(self, routed: Routed, *, in_headers: bool) -> bytes:
        return self._start(routed.routed_via)

    def _start(self, model: str) -> bytes:
        if self.started:
            return b""
        self.started = True
        message: dict[str, Any] = {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self.est_input, 0),
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def chunk(self, chunk: Chunk) -> bytes:
        obj = chunk.obj
        if not isinstance(obj, dict):
            return b""
        out = [self._start("")]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.output_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.input_tokens = usage["prompt_tokens"]
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return b"".join(out)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                if self.thinking:
                    out.append(self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning}))
                if not self.answered:
                    self.reasoning.append(reasoning)
            text = delta.get("content")
            calls = delta.get("tool_calls")
            if (isinstance(text, str) and text) or (isinstance(calls, list) and calls):
                self.answered, self.reasoning = True, []
            if isinstance(text, str) and text:
                out.append(self._delta("text", {"type": "text_delta", "text": text}))
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    out.append(self._call(call))
        if choice.get("finish_reason") is not None:
            self.finish = choice["finish_reason"]
        return b"".join(out)

    def _delta(self, kind: str, delta: dict[str, Any]) -> bytes:
        """A text or thinking delta, in the open block of its kind (opened here if another is open)."""
        out = b""
        if self.open is None or self.open_kind != kind:
            block = {"type": "text", "text": ""} if kind == "text" else _thinking_block("")
            out += self._open(block, kind)
        self.out_chars += len(delta[kind])
        return out + self._block_delta(self.blocks - 1, delta)  # the open block is the newest

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def _call(self, call: dict[str, Any]) -> bytes:
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments")
        fragment = (
            arguments if isinstance(arguments, str) else _encode(arguments).decode() if arguments else ""
        )
        return self._feed(self._call_key(call, function), call.get("id"), function.get("name"), fragment)

    def _call_key(self, call: dict[str, Any], function: dict[str, Any]) -> int:
        """Which call of this answer a tool-call delta belongs to (a serial number). A new `id` is a new
        call, whatever its `index` (providers that send whole calls reuse index 0, or send none); an
        `index` alone finds its call; without either, a name starts a call (unless the last one is still
        waiting for its name) and a bare fragment continues the last call."""
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        index = call.get("index") if isinstance(call.get("index"), int) else None
        if call_id is not None and call_id in self.call_ids:
            return self.call_ids[call_id]
        if call_id is None and index is not None and index in self.call_indexes:
            return self.call_indexes[index]
        last = self.last_call
        waiting = last is not None and last in self.pending and not self.pending[last]["name"]
        if call_id is None and index is None and last is not None and (not function.get("name") or waiting):
            return last
        key = self.call_count
        self.call_count += 1
        if call_id is not None:
            self.call_ids[call_id] = key
        if index is not None:
            self.call_indexes[index] = key  # a later fragment with this index alone is this call's
        self.last_call = key
        return key

    def _feed(self, key: int, call_id: Any, name: Any, fragment: str) -> bytes:
        out = b""
        index = self.calls.get(key)
        if index is None:
            pending = self.pending.setdefault(key, {"id": None, "name": None, "arguments": ""})
            pending["id"] = pending["id"] or call_id
            pending["name"] = pending["name"] or name
            pending["arguments"] += fragment
            if not pending["name"]:
                return b""  # a block starts with its name: wait for it
            del self.pending[key]
            block = {
                "type": "tool_use",
                "id": tool_use_id(pending["id"]),
                "name": str(pending["name"]),
                "input": {},
            }
            out += self._open(block, "tool_use")
            index = self.calls[key] = self.blocks - 1
            fragment = pending["arguments"]
        if fragment:
            self.out_chars += len(fragment)
            out += self._block_delta(index, {"type": "input_json_delta", "partial_json": fragment})
        return out

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self.open, self.open_kind = self.blocks, kind
        self.blocks += 1
        return out + sse_event(
            "content_block_start", {"type": "content_block_start", "index": self.open, "content_block": block}
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        index, self.open = self.open, None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

    async def end(self) -> bytes:
        out = self._start("")
        if not self.answered and self.reasoning:
            counted = self.out_chars
            out += self._delta("text", {"type": "text_delta", "text": "".join(self.reasoning)})
            if self.thinking:
                self.out_chars = counted  # already counted as the thinking it also went out as
        for key in list(self.pending):
            # A call that never named its tool: sent as "unknown" so the client answers that no such tool
            # exists (and the model can recover) rather than the call vanishing.
            out += self._feed(key, None, "unknown", "")
        out += self._close()
        output = self.output_tokens if self.output_tokens is not None else self.out_chars // 4
        usage = {"output_tokens": output}
        if self.input_tokens is not None:  # message_start had the estimate: the SDKs take this over it
            usage["input_tokens"] = self.input_tokens
        delta = {"stop_reason": stop_reason(self.finish, bool(self.calls)), "stop_sequence": None}
        out += sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + sse_event("message_stop", {"type": "message_stop"})

    def failure(self, failure: Failure) -> bytes:
        """Headers are out: the failure is an `error` event (the SDKs raise it); a stall says it stalled."""
        if failure.type == "stream_timeout" or failure.code == "stream_timeout":
            kind, message = "timeout_error", f"The answer stalled: {failure.message}"
        else:
            kind, message = error_type(failure.status), failure.message
        return sse_event("error", {"type": "error", "error": {"type": kind, "message": message}})
