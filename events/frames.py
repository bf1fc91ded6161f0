"""The neutral call and frame forms the request core works on, whatever the client protocol or provider.

A completion is an OpenAI `chat.completion` object and a stream frame a `chat.completion.chunk` (decoded,
plus its JSON bytes so a chat-completions client gets them without a re-encode). Provider adapters parse
into these forms; client protocols render from them. OpenAI's shapes are the lingua franca because most
providers and clients speak them already: for them both translations are the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from events.sessions import message_text

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Call:
    """What a client asked for, in the neutral form: the chat-completions body without gateway fields."""

    body: dict[str, Any]
    stream: bool

    @property
    def client_max_tokens(self) -> int | None:
        value = self.body.get("max_completion_tokens")
        if value is None:  # absent or null: the older name may still be set
            value = self.body.get("max_tokens")
        return value if isinstance(value, int) else None

    def for_model(self, model_id: str) -> dict[str, Any]:
        body = dict(self.body)
        body["model"] = model_id
        return body


class Chunk(NamedTuple):
    """One stream frame: the decoded chunk (any JSON value, as the provider sent it) and its JSON bytes."""

    raw: bytes
    obj: Any


def normalise_message(message: dict[str, Any]) -> None:
    """Array content becomes text; a reasoning-only answer without tool calls becomes the content."""
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    if not message.get("content") and not message.get("tool_calls"):
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            message["content"] = reasoning


def completion_as_chunk(completion: dict[str, Any]) -> Chunk:
    """A whole answer where a stream was asked for: one chunk carrying the whole message and its finish."""
    choice = completion["choices"][0]
    message = {k: v for k, v in (choice.get("message") or {}).items() if v is not None}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        # A delta's tool calls are told apart by `index` (clients accumulate by it); copies, so the
        # completion stays as it was.
        message["tool_calls"] = [
            {"index": i, **call} if isinstance(call, dict) else call for i, call in enumerate(calls)
        ]
    obj = {
        **{k: completion.get(k) for k in ("id", "created", "model")},
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": message, "finish_reason": choice.get("finish_reason")}],
    }
    return Chunk(_encode(obj), obj)


def reply_text(completion: Any) -> str | None:
    """What identifies a whole answer's message (for the session key of the next turn)."""
    try:
        message = completion["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None
    return message_text(message) if isinstance(message, dict) else None
