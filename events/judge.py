"""Judging what an upstream sent, with no I/O: an error response, a whole completion, or a stream frame by
frame (in the manner of a sans-IO protocol class: frames in, what to do out).

Everything here works on the neutral forms of events/frames.py; provider adapters parse into them first.
The verdicts follow DESIGN.md section 5: wrapped errors, answers that are not completions, empty answers,
truncation, a stream that ends mid-answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from events import taxonomy
from events.failures import FailureKind
from events.frames import Chunk, normalise_message
from events.outcomes import Answered, Failed, Usage, count
from events.sessions import message_text

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def judge_error(status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Failed:
    """A non-200 answer with an OpenAI-shaped error body (or none): its kind, message and retry time."""
    try:
        payload = _decode(raw) if raw else None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # (a string that is not UTF-8)
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else ({"message": error} if error else None)
    fallback = " ".join(raw[:200].decode("utf-8", "replace").split()) or f"HTTP {status}"
    return Failed(
        taxonomy.kind_for_status(status, error),
        taxonomy.error_message(error, fallback),
        status,
        retry_after_s=taxonomy.retry_after_s(headers, now),
    )


def wrapped_failure(payload: Any, where: str, *, after_content: bool = False) -> Failed | None:
    """A 200 body or frame with a root `error` is a failure of the kind its code names."""
    wrapped = taxonomy.wrapped_error(payload)
    if wrapped is None:
        return None
    code, error = wrapped
    return Failed(
        taxonomy.kind_for_status(code, error),
        "wrapped error: " + taxonomy.error_message(error, where),
        code,
        after_content=after_content,
    )


def truncated(finish_reason: Any, client_max_tokens: int | None, usage: Any) -> bool:
    """`length` is a failure when the client set no limit, or got fewer tokens than it asked for."""
    if finish_reason != "length":
        return False
    if client_max_tokens is None:
        return True
    got = count(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    return got is not None and got < client_max_tokens


def judge_completion(payload: Any, client_max_tokens: int | None) -> Answered | Failed:
    """A whole 200 answer (neutral form, decoded; None when it did not decode)."""
    wrapped = wrapped_failure(payload, "error in a 200 response")
    if wrapped is not None:
        return wrapped
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices:
        return Failed(FailureKind.SERVER_ERROR, "the provider's answer is not a chat completion", 502)
    choice = payload["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return Failed(FailureKind.SERVER_ERROR, "the provider's answer has no message", 502)
    normalise_message(message)
    if not isinstance(message.get("content"), str | None):
        # A number or an object where the text should be: no client could read it as an answer.
        return Failed(FailureKind.SERVER_ERROR, "the provider's answer has content that is not text", 502)
    usage = Usage()
    usage.take(payload.get("usage"))
    if not usage.output_reported:
        usage.output_chars = len(message.get("content") or "")
    if not message.get("content") and not message.get("tool_calls"):
        return Failed(FailureKind.EMPTY, "the answer has no content and no tool calls", 200)
    body = _encode(payload)
    if truncated(choice.get("finish_reason"), client_max_tokens, payload.get("usage")):
        return Failed(FailureKind.TRUNCATED, "the answer was cut off (finish_reason length)", 200, body=body)
    return Answered(usage, body)


class StreamJudge:
    """A stream's frames, judged one by one. Frames before the first content are held back (a failure then
    can still fall over silently); `feed` hands out what may go to the client now.

    It also keeps the token counts and, when `keep_reply`, the reply's text and tool calls (a first turn's
    session key is derived from the reply the client got)."""

    __slots__ = ("_finish", "_held", "_keep_reply", "_max_tokens", "_parts", "_tool_calls", "sent", "usage")

    def __init__(self, client_max_tokens: int | None, keep_reply: bool) -> None:
        self._max_tokens = client_max_tokens
        self._keep_reply = keep_reply
        self._held: list[Chunk] = []
        self._finish: str | None = None
        self._parts: list[str] = []
        self._tool_calls: dict[int, list[str]] = {}  # index -> [name, argument pieces...]
        self.sent = False  # content has been handed out: no silent fallover any more
        self.usage = Usage()

    def feed(self, chunk: Chunk | None) -> list[Chunk] | Failed | None:
        """One frame (not `[DONE]`), parsed by the adapter: the chunks to send now, a failure, or None
        (held back, or a frame that carries nothing)."""
        if chunk is None:
            return None
        obj = chunk.obj
        failed = wrapped_failure(obj, "error frame in the stream", after_content=self.sent)
        if failed is not None:
            return failed
        if not isinstance(obj, dict):
            return None
        has_content = self._inspect(obj)
        if self.sent:
            return [chunk]
        if not has_content:
            self._held.append(chunk)
            return None
        self.sent = True
        out, self._held = [*self._held, chunk], []
        return out

    def whole(self, answer: Answered, chunk: Chunk) -> None:
        """A whole answer sent as one chunk (a provider that answered a stream request with JSON)."""
        self.usage = answer.usage
        self._inspect(chunk.obj, count=False)
        self.sent = True

    def end(self, done: bool) -> Answered | Failed:
        """The body ended (`done`: with `[DONE]`)."""
        if not self.sent:
            return Failed(FailureKind.EMPTY, "the stream ended with no content and no tool calls", 200)
        if not done and self._finish is None:
            # The body ended mid-answer: an honest error, never a normal-looking ending.
            return Failed(
                FailureKind.CONNECT, "the stream ended before the answer finished", after_content=True
            )
        reported = {"completion_tokens": self.usage.output_reported} if self.usage.output_reported else None
        if truncated(self._finish, self._max_tokens, reported):
            # Delivered as the provider sent it (finish_reason says so); a model fault all the same.
            return Failed(
                FailureKind.TRUNCATED,
                "the answer was cut off (finish_reason length)",
                200,
                after_content=True,
                delivered=True,
            )
        return Answered(self.usage)

    @property
    def reply_text(self) -> str | None:
        calls = [
            {"function": {"name": parts[0], "arguments": "".join(parts[1:])}}
            for _, parts in sorted(self._tool_calls.items())
        ]
        return message_text({"content": "".join(self._parts), "tool_calls": calls})

    def _inspect(self, obj: dict[str, Any], count: bool = True) -> bool:
        """Whether the chunk has content (text, reasoning or a tool call); notes finish, usage, reply."""
        if count and isinstance(obj.get("usage"), dict):
            self.usage.take(obj["usage"])
        has_content = False
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            self._finish = choice.get("finish_reason") or self._finish
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            text = content or delta.get("reasoning_content") or delta.get("reasoning")
            if text:
                has_content = True
                if count:
                    self.usage.output_chars += len(text) if isinstance(text, str) else 1
            if isinstance(content, str) and self._keep_reply:
                self._parts.append(content)
            calls = delta.get("tool_calls")
            if calls:
                has_content = True
                if self._keep_reply and isinstance(calls, list):
                    self._keep_calls(calls)
        return has_content

    def _keep_calls(self, calls: list[Any]) -> None:
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            index = call.get("index", 0) if isinstance(call, dict) else 0
            if not isinstance(fn, dict) or not isinstance(index, int):
                continue
            parts = self._tool_calls.setdefault(index, [""])
            name, arguments = fn.get("name"), fn.get("arguments")
            parts[0] += name if isinstance(name, str) else ""
            parts.append(arguments if isinstance(arguments, str) else "")


FLOAT32_MAX = 3.4028234663852886e38  # a vector's values must fit float32: base64 encodings are float32


def judge_embeddings(payload: Any, inputs: int, dimensions: int | None = None) -> Answered | Failed:
    """A whole 200 embeddings answer (neutral form, decoded; None when it did not decode), for a request of
    `inputs` texts: one vector of numbers per input, or a failure the next key or platform may not have.
    `dimensions` (the client's): vectors of another length mean the provider ignored it, which the client
    must hear as a rejected request rather than get vectors of a size it did not ask for."""
    wrapped = wrapped_failure(payload, "error in a 200 response")
    if wrapped is not None:
        return wrapped
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return Failed(FailureKind.SERVER_ERROR, "the provider's answer is not an embeddings list", 502)
    if not data:
        return Failed(FailureKind.EMPTY, "the answer has no embeddings", 200)
    if len(data) != inputs:
        return Failed(
            FailureKind.SERVER_ERROR,
            f"the provider's answer has {len(data)} embeddings for {inputs} inputs",
            502,
        )
    indexes = [item.get("index") if isinstance(item, dict) else None for item in data]
    if any(index is not None for index in indexes) and sorted(
        (index if isinstance(index, int) and not isinstance(index, bool) else -1) for index in indexes
    ) != list(range(inputs)):
        # Vectors are put in input order by `index`: one missing, repeated or not a number, and which vector
        # belongs to which text is unknown.
        return Failed(
            FailureKind.SERVER_ERROR,
            f"the provider's embeddings are not indexed 0 to {inputs - 1}, one each",
            502,
        )
    for i, item in enumerate(data):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if (
            not isinstance(vector, list)
            or not vector
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and -FLOAT32_MAX <= x <= FLOAT32_MAX
                for x in vector
            )
        ):
            return Failed(
                FailureKind.SERVER_ERROR, f"the provider's embedding {i} is not a list of numbers", 502
            )
        if dimensions is not None and len(vector) != dimensions:
            return Failed(
                FailureKind.BAD_REQUEST,
                f"the model gives {len(vector)}-dimensional vectors, not the {dimensions} "
                "'dimensions' asks for",
                400,
            )
    usage = Usage()
    usage.take(payload.get("usage"))
    return Answered(usage, _encode(payload))
