"""Judging what an upstream sent (events/judge.py), with no I/O: error responses, whole completions and
streams frame by frame, against the verdicts of DESIGN.md section 5's error taxonomy."""

from __future__ import annotations

import email.utils
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.failures import FailureKind
from events.frames import Chunk, completion_as_chunk
from events.judge import StreamJudge, judge_completion, judge_error, truncated, wrapped_failure
from events.outcomes import MAX_TOKENS, Answered, Failed, Usage

NOW = 1_700_000_000.0
_encode = msgspec.json.encode


def completion(
    content: Any = "Hello",
    *,
    finish: Any = "stop",
    usage: Any = None,
    tool_calls: Any = None,
    **message: Any,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content, **message}
    if tool_calls is not None:
        msg["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chunk(obj: Any) -> Chunk:
    return Chunk(_encode(obj), obj)


def delta(finish: str | None = None, usage: Any = None, **fields: Any) -> Chunk:
    """A chat.completion.chunk with one choice whose delta has `fields`."""
    obj: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }
    if usage is not None:
        obj["usage"] = usage
    return chunk(obj)


ROLE = delta(role="assistant")  # a frame with no content
ERROR_FRAME = chunk({"error": {"code": 429, "message": "Rate limit reached for model"}})


# ---- judge_error: the status and the body of a non-200 answer ------------------------------------------


def error_body(message: str, **fields: Any) -> bytes:
    return _encode({"error": {"message": message, **fields}})


def test_a_429_is_rate_limited_with_its_retry_after_seconds() -> None:
    out = judge_error(429, {"retry-after": "17"}, error_body("Rate limit reached"), NOW)
    assert out == Failed(FailureKind.RATE_LIMITED, "Rate limit reached", 429, retry_after_s=17.0)


def test_a_429_with_an_http_date_retry_after_waits_until_then() -> None:
    when = email.utils.formatdate(NOW + 90, usegmt=True)
    out = judge_error(429, {"retry-after": when}, b"", NOW)
    assert out.kind == FailureKind.RATE_LIMITED
    assert out.retry_after_s == pytest.approx(90, abs=1)


def test_a_429_without_retry_after_reads_the_reset_headers() -> None:
    out = judge_error(429, {"x-ratelimit-reset-requests": "1m30s"}, error_body("slow down"), NOW)
    assert out.retry_after_s == 90.0


def test_a_429_without_any_timing_header_has_no_retry_time() -> None:
    out = judge_error(429, {}, error_body("slow down"), NOW)
    assert out.kind == FailureKind.RATE_LIMITED
    assert out.retry_after_s is None


def test_a_413_is_context_exceeded() -> None:
    out = judge_error(413, {}, b"Payload Too Large", NOW)
    assert out == Failed(FailureKind.CONTEXT_EXCEEDED, "Payload Too Large", 413)


@pytest.mark.parametrize(
    "error",
    [
        {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"},
        {"message": "Please reduce the length of the messages: context length exceeded"},
        {"message": "bad", "code": "context_length_exceeded"},
        {"message": "prompt is too long: 210000 tokens > 200000 maximum", "type": "invalid_request_error"},
    ],
)
def test_a_400_with_a_context_marker_is_context_exceeded(error: dict[str, str]) -> None:
    out = judge_error(400, {}, _encode({"error": error}), NOW)
    assert out.kind == FailureKind.CONTEXT_EXCEEDED
    assert out.status == 400


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, FailureKind.AUTH),
        (403, FailureKind.AUTH),  # the runner checks the key before it believes this
        (404, FailureKind.MODEL_MISSING),
        (400, FailureKind.BAD_REQUEST),
        (422, FailureKind.BAD_REQUEST),
        (500, FailureKind.SERVER_ERROR),
        (502, FailureKind.SERVER_ERROR),
        (503, FailureKind.SERVER_ERROR),
        (504, FailureKind.SERVER_ERROR),
    ],
)
def test_each_status_is_judged_by_the_taxonomy(status: int, kind: FailureKind) -> None:
    out = judge_error(status, {}, error_body("provider said no"), NOW)
    assert out == Failed(kind, "provider said no", status)


def test_a_400_without_a_context_marker_is_a_bad_request_with_the_providers_message() -> None:
    out = judge_error(400, {}, error_body("messages[0].role must be one of system, user"), NOW)
    assert out == Failed(FailureKind.BAD_REQUEST, "messages[0].role must be one of system, user", 400)


def test_an_error_that_is_a_string_gives_its_message() -> None:
    out = judge_error(500, {}, _encode({"error": "upstream exploded"}), NOW)
    assert out.message == "upstream exploded"


def test_an_error_string_with_a_context_marker_is_context_exceeded() -> None:
    out = judge_error(400, {}, _encode({"error": "maximum context length exceeded"}), NOW)
    assert out.kind == FailureKind.CONTEXT_EXCEEDED


def test_a_non_json_body_is_its_own_message() -> None:
    out = judge_error(502, {}, b"<html><body>Bad Gateway</body></html>", NOW)
    assert out == Failed(FailureKind.SERVER_ERROR, "<html><body>Bad Gateway</body></html>", 502)


def test_a_long_non_json_body_is_cut_to_200_bytes() -> None:
    out = judge_error(503, {}, b"x" * 5000, NOW)
    assert out.message == "x" * 200


def test_a_non_utf8_body_does_not_break_the_judge() -> None:
    out = judge_error(500, {}, b"\xff\xfe oops", NOW)
    assert out.kind == FailureKind.SERVER_ERROR
    assert "oops" in out.message


@pytest.mark.parametrize(("status", "kind"), [(503, "server_error"), (401, "auth"), (429, "rate_limited")])
def test_an_empty_body_says_its_status(status: int, kind: str) -> None:
    out = judge_error(status, {}, b"", NOW)
    assert (out.kind, out.message, out.status) == (kind, f"HTTP {status}", status)


def test_a_json_body_without_an_error_field_falls_back_to_its_text() -> None:
    out = judge_error(500, {}, b'{"detail": "Internal"}', NOW)
    assert out.kind == FailureKind.SERVER_ERROR
    assert out.message == '{"detail": "Internal"}'


def test_a_json_body_that_is_not_an_object_falls_back_to_its_text() -> None:
    out = judge_error(500, {}, b'["a", "b"]', NOW)
    assert out.message == '["a", "b"]'


def test_a_deeply_nested_body_does_not_break_the_judge() -> None:
    out = judge_error(500, {}, b"[" * 100_000, NOW)
    assert out.kind == FailureKind.SERVER_ERROR


def test_a_multiline_provider_message_becomes_one_line() -> None:
    out = judge_error(400, {}, error_body("first line\n   second\tline"), NOW)
    assert out.message == "first line second line"


def test_an_error_response_is_never_after_content() -> None:
    out = judge_error(500, {}, b"", NOW)
    assert not out.after_content and not out.delivered and out.body is None


# ---- wrapped_failure: a 200 with a root `error` -----------------------------------------------------------


def test_a_wrapped_error_in_a_200_is_a_failure_of_its_code() -> None:
    out = wrapped_failure({"error": {"code": 429, "message": "quota"}}, "where")
    assert out == Failed(FailureKind.RATE_LIMITED, "wrapped error: quota", 429)


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        (401, FailureKind.AUTH, 401),
        ("404", FailureKind.MODEL_MISSING, 404),
        (413, FailureKind.CONTEXT_EXCEEDED, 413),
        (503, FailureKind.SERVER_ERROR, 503),
        ("rate_limit_exceeded", FailureKind.SERVER_ERROR, 502),  # not a status: 502
        (200, FailureKind.SERVER_ERROR, 502),
        (None, FailureKind.SERVER_ERROR, 502),
    ],
)
def test_a_wrapped_error_is_the_status_its_code_names_else_502(
    code: Any, kind: FailureKind, status: int
) -> None:
    error: dict[str, Any] = {"message": "nope"}
    if code is not None:
        error["code"] = code
    out = wrapped_failure({"error": error}, "where")
    assert out is not None
    assert (out.kind, out.status) == (kind, status)


def test_a_wrapped_error_without_a_message_says_where_it_was() -> None:
    out = wrapped_failure({"error": {"code": 500}}, "error frame in the stream")
    assert out is not None
    assert out.message == "wrapped error: error frame in the stream"


def test_a_wrapped_error_with_a_context_marker_in_a_400_is_context_exceeded() -> None:
    out = wrapped_failure({"error": {"code": 400, "message": "maximum context length is 4096"}}, "w")
    assert out is not None and out.kind == FailureKind.CONTEXT_EXCEEDED


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "error",
        {},
        {"error": None},
        {"choices": [{"message": {"content": "x"}}]},
        {"error": {"code": 500}, "choices": [{"message": {"content": "x"}}]},  # it answered all the same
    ],
)
def test_a_body_without_a_root_error_is_not_wrapped(payload: Any) -> None:
    assert wrapped_failure(payload, "where") is None


def test_a_wrapped_failure_remembers_whether_content_was_sent() -> None:
    out = wrapped_failure({"error": {"code": 500}}, "w", after_content=True)
    assert out is not None and out.after_content


# ---- truncated -------------------------------------------------------------------------------------------


def test_length_without_a_client_limit_is_truncated() -> None:
    assert truncated("length", None, None)
    assert truncated("length", None, {"completion_tokens": 10})


@pytest.mark.parametrize("finish", ["stop", "tool_calls", "content_filter", None, ""])
def test_only_length_is_truncation(finish: Any) -> None:
    assert not truncated(finish, None, None)


def test_length_below_the_client_limit_is_truncated() -> None:
    assert truncated("length", 100, {"completion_tokens": 99})


@pytest.mark.parametrize("got", [100, 101])
def test_length_at_the_client_limit_is_what_the_client_asked_for(got: int) -> None:
    assert not truncated("length", 100, {"completion_tokens": got})


@pytest.mark.parametrize("usage", [None, {}, {"completion_tokens": "50"}, {"completion_tokens": 5.0}, [50]])
def test_length_with_a_client_limit_and_no_count_is_not_truncated(usage: Any) -> None:
    assert not truncated("length", 100, usage)


@pytest.mark.parametrize("got", [True, -5])
def test_length_with_a_completion_count_that_is_not_a_count_is_not_truncated(got: Any) -> None:
    assert not truncated("length", 100, {"completion_tokens": got})


# ---- judge_completion: a whole 200 answer ----------------------------------------------------------------


def test_a_completion_is_answered_with_its_body() -> None:
    payload = completion("Hello there", usage={"prompt_tokens": 12, "completion_tokens": 3})
    out = judge_completion(payload, None)
    assert isinstance(out, Answered)
    assert out.body is not None and msgspec.json.decode(out.body) == payload
    assert (out.usage.input_tokens, out.usage.output_tokens) == (12, 3)


def test_a_wrapped_error_in_a_200_body_is_a_failure() -> None:
    out = judge_completion({"error": {"code": 503, "message": "overloaded"}}, None)
    assert out == Failed(FailureKind.SERVER_ERROR, "wrapped error: overloaded", 503)


def test_a_wrapped_error_without_a_message_says_it_was_in_a_200() -> None:
    out = judge_completion({"error": {"code": 401}}, None)
    assert isinstance(out, Failed)
    assert (out.kind, out.message) == (FailureKind.AUTH, "wrapped error: error in a 200 response")


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "hi",
        3,
        [],
        {},
        {"choices": []},
        {"choices": {}},
        {"choices": "x"},
        {"object": "list", "data": []},
    ],
)
def test_an_answer_that_is_not_a_completion_is_a_server_error(payload: Any) -> None:
    out = judge_completion(payload, None)
    assert out == Failed(FailureKind.SERVER_ERROR, "the provider's answer is not a chat completion", 502)


@pytest.mark.parametrize(
    "choice", [{}, {"message": None}, {"message": "Hello"}, {"message": ["Hello"]}, None, "x", 0]
)
def test_a_completion_without_a_message_is_a_server_error(choice: Any) -> None:
    out = judge_completion({"choices": [choice]}, None)
    assert out == Failed(FailureKind.SERVER_ERROR, "the provider's answer has no message", 502)


@pytest.mark.parametrize("content", [None, "", []])
def test_a_completion_with_no_content_and_no_tool_calls_is_empty(content: Any) -> None:
    out = judge_completion(completion(content), None)
    assert out == Failed(FailureKind.EMPTY, "the answer has no content and no tool calls", 200)


def test_a_completion_with_empty_tool_calls_is_empty() -> None:
    out = judge_completion(completion(None, tool_calls=[]), None)
    assert isinstance(out, Failed) and out.kind == FailureKind.EMPTY


def test_a_completion_with_only_tool_calls_is_answered() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    out = judge_completion(completion(None, finish="tool_calls", tool_calls=calls), None)
    assert isinstance(out, Answered)


def test_a_truncated_answer_without_a_client_limit_is_truncated_and_keeps_its_body() -> None:
    payload = completion("Once upon a", finish="length", usage={"completion_tokens": 4096})
    out = judge_completion(payload, None)
    assert isinstance(out, Failed)
    assert (out.kind, out.status) == (FailureKind.TRUNCATED, 200)
    assert out.body is not None and msgspec.json.decode(out.body) == payload
    assert not out.after_content and not out.delivered  # nothing went to the client yet


def test_a_truncated_answer_below_the_client_limit_is_truncated() -> None:
    out = judge_completion(completion("x", finish="length", usage={"completion_tokens": 10}), 100)
    assert isinstance(out, Failed) and out.kind == FailureKind.TRUNCATED


def test_an_answer_cut_at_the_client_limit_is_answered() -> None:
    out = judge_completion(completion("x", finish="length", usage={"completion_tokens": 100}), 100)
    assert isinstance(out, Answered)


def test_an_answer_cut_with_a_client_limit_and_no_usage_is_answered() -> None:
    assert isinstance(judge_completion(completion("x", finish="length"), 100), Answered)


def test_an_empty_truncated_answer_is_empty_not_truncated() -> None:
    out = judge_completion(completion("", finish="length"), None)
    assert isinstance(out, Failed) and out.kind == FailureKind.EMPTY


def test_array_content_is_normalised_in_the_answer_body() -> None:
    content = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    out = judge_completion(completion(content), None)
    assert isinstance(out, Answered) and out.body is not None
    assert msgspec.json.decode(out.body)["choices"][0]["message"]["content"] == "Hello"
    assert out.usage.output_chars == 5


def test_array_content_without_text_is_empty() -> None:
    out = judge_completion(completion([{"type": "image_url", "image_url": {"url": "x"}}]), None)
    assert isinstance(out, Failed) and out.kind == FailureKind.EMPTY


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_reasoning_only_answer_is_answered_with_the_reasoning_as_content(field: str) -> None:
    out = judge_completion(completion(None, **{field: "It is 4."}), None)
    assert isinstance(out, Answered) and out.body is not None
    assert msgspec.json.decode(out.body)["choices"][0]["message"]["content"] == "It is 4."


def test_without_reported_usage_the_output_is_estimated_from_the_text() -> None:
    out = judge_completion(completion("x" * 40), None)
    assert isinstance(out, Answered)
    assert out.usage == Usage(input_tokens=0, output_reported=0, output_chars=40)
    assert out.usage.output_tokens == 10


@pytest.mark.parametrize(
    "value", ["12", 12.5, -1, True, False, None, [12], {"n": 12}, float("nan"), 2**70, 10**9 + 1], ids=repr
)
def test_usage_values_that_are_not_counts_are_never_taken(value: Any) -> None:
    payload = completion("abcd" * 5, usage={"prompt_tokens": value, "completion_tokens": value})
    out = judge_completion(payload, None)
    assert isinstance(out, Answered)
    assert out.usage.input_tokens == 0
    assert out.usage.output_reported == 0
    assert out.usage.output_tokens == 5  # estimated from 20 characters


@pytest.mark.parametrize("usage", ["12 tokens", [1, 2], 7])
def test_a_usage_that_is_not_an_object_is_ignored(usage: Any) -> None:
    out = judge_completion(completion("abcd", usage=usage), None)
    assert isinstance(out, Answered)
    assert (out.usage.input_tokens, out.usage.output_reported) == (0, 0)


@given(
    prompt=st.one_of(st.integers(), st.floats(), st.text(), st.booleans(), st.none()),
    completion_tokens=st.one_of(st.integers(), st.floats(), st.text(), st.booleans(), st.none()),
)
def test_usage_takes_exactly_the_integers_that_can_be_counts(prompt: Any, completion_tokens: Any) -> None:
    usage = Usage()
    usage.take({"prompt_tokens": prompt, "completion_tokens": completion_tokens})

    def count(v: Any) -> int:
        return v if type(v) is int and 0 < v <= MAX_TOKENS else 0

    assert usage.input_tokens == count(prompt)
    assert usage.output_reported == count(completion_tokens)


# ---- StreamJudge: frames before content are held, released with the first content ------------------------


def test_frames_before_content_are_held_and_released_with_the_first_content_in_order() -> None:
    judge = StreamJudge(None, keep_reply=False)
    role, empty, first = ROLE, delta(content=""), delta(content="Hel")
    assert judge.feed(role) is None
    assert judge.feed(empty) is None
    assert not judge.sent
    assert judge.feed(first) == [role, empty, first]
    assert judge.sent


def test_a_frame_after_content_is_forwarded_at_once() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Hel"))
    nothing = delta()
    assert judge.feed(nothing) == [nothing]  # even one that carries nothing
    more = delta(content="lo")
    assert judge.feed(more) == [more]
    last = delta(finish="stop")
    assert judge.feed(last) == [last]


def test_held_frames_are_released_only_once() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(ROLE)
    first = delta(content="a")
    assert judge.feed(first) == [ROLE, first]
    second = delta(content="b")
    assert judge.feed(second) == [second]


@pytest.mark.parametrize(
    "first",
    [
        delta(reasoning_content="thinking"),
        delta(reasoning="thinking"),
        delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": ""}}]),
    ],
)
def test_reasoning_or_a_tool_call_is_content(first: Chunk) -> None:
    judge = StreamJudge(None, keep_reply=False)
    assert judge.feed(first) == [first]
    assert judge.sent


def test_a_frame_the_adapter_could_not_parse_is_nothing() -> None:
    judge = StreamJudge(None, keep_reply=False)
    assert judge.feed(None) is None
    judge.feed(delta(content="x"))
    assert judge.feed(None) is None


@pytest.mark.parametrize("obj", [[1, 2], "text", 3, None])
def test_a_frame_that_is_not_an_object_is_dropped(obj: Any) -> None:
    judge = StreamJudge(None, keep_reply=False)
    assert judge.feed(chunk(obj)) is None
    first = delta(content="x")
    assert judge.feed(first) == [first]  # it was not held
    assert judge.feed(chunk(obj)) is None


@pytest.mark.parametrize(
    "obj",
    [
        {"choices": None},
        {"choices": "x"},
        {"choices": [None, "x", {"delta": None}, {"delta": "x"}]},
        {"object": "chat.completion.chunk"},
    ],
)
def test_odd_choices_carry_no_content_and_do_not_break_the_judge(obj: Any) -> None:
    judge = StreamJudge(None, keep_reply=True)
    assert judge.feed(chunk(obj)) is None
    assert not judge.sent


def test_a_wrapped_error_frame_before_content_is_a_silent_failure() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(ROLE)
    out = judge.feed(ERROR_FRAME)
    assert out == Failed(FailureKind.RATE_LIMITED, "wrapped error: Rate limit reached for model", 429)
    assert not out.after_content


def test_a_wrapped_error_frame_after_content_is_a_failure_after_content() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Hel"))
    out = judge.feed(chunk({"error": {"message": "internal error"}}))
    assert isinstance(out, Failed)
    assert (out.kind, out.status, out.after_content) == (FailureKind.SERVER_ERROR, 502, True)
    assert out.message == "wrapped error: internal error"
    assert not out.delivered


def test_an_error_frame_without_a_message_says_it_was_in_the_stream() -> None:
    out = StreamJudge(None, keep_reply=False).feed(chunk({"error": {"code": 500}}))
    assert isinstance(out, Failed) and out.message == "wrapped error: error frame in the stream"


def test_a_stream_that_ends_with_done_after_content_is_answered() -> None:
    judge = StreamJudge(None, keep_reply=False)
    for c in (ROLE, delta(content="Hello"), delta(finish="stop")):
        judge.feed(c)
    out = judge.end(done=True)
    assert isinstance(out, Answered)
    assert out.body is None  # streamed: the client has it already


def test_a_stream_with_a_finish_reason_but_no_done_is_answered() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Hello", finish="stop"))
    assert isinstance(judge.end(done=False), Answered)


def test_a_stream_ending_without_done_or_finish_reason_is_a_connect_failure_after_content() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Hel"))
    out = judge.end(done=False)
    assert out == Failed(
        FailureKind.CONNECT, "the stream ended before the answer finished", after_content=True
    )
    assert not out.delivered


@pytest.mark.parametrize("done", [True, False])
def test_a_stream_with_no_content_is_empty(done: bool) -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(ROLE)
    judge.feed(delta(finish="stop"))
    out = judge.end(done=done)
    assert out == Failed(FailureKind.EMPTY, "the stream ended with no content and no tool calls", 200)
    assert not out.after_content


def test_a_truncated_stream_is_delivered() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Once upon"))
    judge.feed(delta(finish="length"))
    out = judge.end(done=True)
    assert out == Failed(
        FailureKind.TRUNCATED,
        "the answer was cut off (finish_reason length)",
        200,
        after_content=True,
        delivered=True,
    )


def test_a_truncated_stream_without_done_is_still_delivered() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Once upon", finish="length"))
    out = judge.end(done=False)
    assert isinstance(out, Failed) and out.delivered and out.kind == FailureKind.TRUNCATED


def test_a_finish_reason_is_not_forgotten_by_later_frames() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="x", finish="length"))
    judge.feed(chunk({"choices": [], "usage": {"completion_tokens": 3}}))  # a usage-only last frame
    out = judge.end(done=True)
    assert isinstance(out, Failed) and out.kind == FailureKind.TRUNCATED


def test_a_stream_cut_with_a_client_limit_and_no_usage_is_answered() -> None:
    judge = StreamJudge(100, keep_reply=False)
    judge.feed(delta(content="x", finish="length"))
    assert isinstance(judge.end(done=True), Answered)


def test_a_stream_cut_below_the_client_limit_is_truncated_like_a_whole_answer() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 10}
    assert isinstance(judge_completion(completion("x", finish="length", usage=usage), 100), Failed)
    judge = StreamJudge(100, keep_reply=False)
    judge.feed(delta(content="x", finish="length"))
    judge.feed(chunk({"choices": [], "usage": usage}))
    out = judge.end(done=True)
    assert isinstance(out, Failed) and out.kind == FailureKind.TRUNCATED


def test_stream_usage_is_taken_from_usage_frames() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Hello"))
    judge.feed(chunk({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 2}}))
    out = judge.end(done=True)
    assert isinstance(out, Answered)
    assert (out.usage.input_tokens, out.usage.output_tokens) == (21, 2)


def test_stream_output_is_estimated_from_the_text_without_usage() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(reasoning_content="abcd"))  # reasoning counts as output
    judge.feed(delta(content="efgh" * 2))
    out = judge.end(done=True)
    assert isinstance(out, Answered)
    assert out.usage.output_chars == 12
    assert out.usage.output_tokens == 3


@pytest.mark.parametrize("value", ["9", -9, True, 9.5, None])
def test_stream_usage_values_that_are_not_counts_are_never_taken(value: Any) -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="abcd", usage={"prompt_tokens": value, "completion_tokens": value}))
    out = judge.end(done=True)
    assert isinstance(out, Answered)
    assert (out.usage.input_tokens, out.usage.output_reported, out.usage.output_tokens) == (0, 0, 1)


# ---- the reply a first turn's session key is derived from --------------------------------------------------


def test_the_reply_text_is_collected_when_keep_reply() -> None:
    judge = StreamJudge(None, keep_reply=True)
    for c in (
        ROLE,
        delta(content="Hello"),
        delta(content=", "),
        delta(content="world  "),
        delta(finish="stop"),
    ):
        judge.feed(c)
    assert judge.reply_text == "Hello, world"


def test_the_reply_text_is_not_collected_without_keep_reply() -> None:
    judge = StreamJudge(None, keep_reply=False)
    judge.feed(delta(content="Hello"))
    judge.feed(delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}]))
    assert judge.reply_text == "tools:"  # what an empty reply identifies as: nothing was kept


def test_reasoning_is_not_part_of_the_reply_text() -> None:
    judge = StreamJudge(None, keep_reply=True)
    judge.feed(delta(reasoning_content="let me think"))
    judge.feed(delta(content="4"))
    assert judge.reply_text == "4"


def test_tool_call_pieces_are_joined_per_index_in_index_order() -> None:
    judge = StreamJudge(None, keep_reply=True)
    frames = [
        delta(tool_calls=[{"index": 1, "id": "b", "function": {"name": "get_time", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "get_weather", "arguments": '{"ci'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": "{}"}}]),
        delta(finish="tool_calls"),
    ]
    for f in frames:
        judge.feed(f)
    assert judge.reply_text == 'tools:get_weather:{"city":"Oslo"}|get_time:{}'
    assert isinstance(judge.end(done=True), Answered)


def test_the_streamed_reply_text_is_what_the_client_sends_back_next_turn() -> None:
    """The session key of turn two is derived from the assistant message the client sends back, which the
    client assembled from the frames: both must identify the same text."""
    from events.sessions import message_text

    judge = StreamJudge(None, keep_reply=True)
    judge.feed(delta(content="Sure. "))
    judge.feed(delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]))
    judge.feed(delta(tool_calls=[{"index": 0, "function": {"arguments": "}"}}]))
    client_message = {
        "role": "assistant",
        "content": "Sure. ",
        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert judge.reply_text == message_text(client_message)


@pytest.mark.parametrize(
    "calls",
    [
        [None, "x", {"index": 0}, {"index": "0", "function": {"name": "f"}}, {"function": "f"}],
        "not a list",
    ],
)
def test_odd_tool_call_pieces_are_skipped(calls: Any) -> None:
    judge = StreamJudge(None, keep_reply=True)
    judge.feed(delta(content="x", tool_calls=calls))
    assert judge.reply_text == "x"


def test_a_tool_call_piece_without_an_index_is_index_0() -> None:
    judge = StreamJudge(None, keep_reply=True)
    judge.feed(delta(tool_calls=[{"function": {"name": "f", "arguments": "{}"}}]))
    assert judge.reply_text == "tools:f:{}"


# ---- whole(): a JSON answer to a stream request ------------------------------------------------------------


def test_a_whole_answer_to_a_stream_request_is_sent_content() -> None:
    payload = completion("Hello in one go", usage={"prompt_tokens": 4, "completion_tokens": 4})
    answer = judge_completion(payload, None)
    assert isinstance(answer, Answered) and answer.body is not None
    judge = StreamJudge(None, keep_reply=True)
    judge.whole(answer, completion_as_chunk(msgspec.json.decode(answer.body)))
    assert judge.sent
    assert judge.usage is answer.usage  # counted once, by judge_completion
    assert (judge.usage.input_tokens, judge.usage.output_tokens) == (4, 4)
    assert judge.reply_text == "Hello in one go"
    assert isinstance(judge.end(done=True), Answered)


def test_a_whole_tool_call_answer_gives_the_reply_text_of_its_call() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    answer = judge_completion(completion(None, finish="tool_calls", tool_calls=calls), None)
    assert isinstance(answer, Answered) and answer.body is not None
    judge = StreamJudge(None, keep_reply=True)
    judge.whole(answer, completion_as_chunk(msgspec.json.decode(answer.body)))
    assert judge.reply_text == 'tools:f:{"a":1}'


def test_a_whole_reasoning_only_answer_gives_the_normalised_content_as_reply() -> None:
    answer = judge_completion(completion(None, reasoning_content="It is 4."), None)
    assert isinstance(answer, Answered) and answer.body is not None
    judge = StreamJudge(None, keep_reply=True)
    judge.whole(answer, completion_as_chunk(msgspec.json.decode(answer.body)))
    assert judge.reply_text == "It is 4."


def test_whole_keeps_no_reply_without_keep_reply() -> None:
    answer = judge_completion(completion("Hello"), None)
    assert isinstance(answer, Answered) and answer.body is not None
    judge = StreamJudge(None, keep_reply=False)
    judge.whole(answer, completion_as_chunk(msgspec.json.decode(answer.body)))
    assert judge.sent
    assert judge.reply_text == "tools:"
