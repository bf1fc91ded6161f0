"""Property tests on what a provider sends back whole: a 200 body (the adapter's `completion`, then
`judge_completion`), an error response (`judge_error`: status, headers, body) and the taxonomy's header
and error-object readers. Whatever the bytes, the verdict is an `Answered` or a `Failed`, never an
exception; a failure's message is one bounded line; a wait is finite and at most a day."""

from __future__ import annotations

import math
from typing import Any

from fuzz_strategies import (
    FUZZ,
    any_bytes,
    assert_message,
    either,
    encodes,
    json_bytes,
    json_scalars,
    json_values,
    shaped,
)
from hypothesis import example, given
from hypothesis import strategies as st

from events import taxonomy
from events.failures import FailureKind
from events.frames import completion_as_chunk
from events.judge import judge_completion, judge_error
from events.outcomes import Answered, Failed
from service.providers import ADAPTERS

ADAPTER = ADAPTERS["openai"]
NOW = 1_700_000_000.0
MESSAGE_LIMIT = 250  # taxonomy.error_message's 200, plus the prefixes the judge puts before it

tool_calls = st.lists(
    shaped(
        {
            "id": st.text(max_size=5),
            "type": st.just("function"),
            "function": shaped({"name": st.text(max_size=5), "arguments": st.text(max_size=10)}),
        }
    ),
    max_size=2,
)
content = st.one_of(
    st.text(max_size=20),
    st.none(),
    st.lists(
        shaped({"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=5)}), max_size=3
    ),
)
message = shaped(
    {
        "role": st.just("assistant"),
        "content": content,
        "reasoning_content": st.text(max_size=5),
        "reasoning": st.text(max_size=5),
        "tool_calls": tool_calls,
    }
)
usage = shaped({"prompt_tokens": st.integers(-5, 10**6), "completion_tokens": st.integers(-5, 10**6)})
error_object = shaped(
    {
        "message": st.one_of(st.text(max_size=300), json_values),
        "code": st.one_of(st.integers(100, 700), st.text(max_size=5), json_scalars),
        "status": st.one_of(st.integers(100, 700), st.text(max_size=5)),
        "type": st.text(max_size=20),
    }
)
completions = shaped(
    {
        "id": st.text(max_size=8),
        "object": st.just("chat.completion"),
        "model": st.text(max_size=8),
        "choices": st.lists(
            shaped({"index": st.integers(0, 3), "message": message, "finish_reason": json_scalars}),
            max_size=2,
        ),
        "usage": usage,
        "error": either(error_object),
    }
)
header_values = st.one_of(
    st.text(max_size=30),
    st.floats(allow_nan=True).map(str),
    st.integers().map(str),
    st.sampled_from(
        [
            "1m30s",
            "250ms",
            "1.5s",
            "2h",
            "ms",
            "1e400",
            "nan",
            "-inf",
            "١٢",
            "²",
            "1..2s",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Mon, 01 Jan 99999 00:00:00 GMT",
            "Thu, 01 Jan 1970 00:00:00 +9999",
        ]
    ),
)
HEADER_NAMES = [
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-reset",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
]
headers = st.dictionaries(
    st.sampled_from(HEADER_NAMES), st.one_of(header_values, st.sampled_from(["0", "0.0", " 0 "])), max_size=4
)
max_tokens = st.one_of(st.none(), st.integers(1, 10**6))


def check_failed(out: Failed) -> None:
    assert_message(out.message, MESSAGE_LIMIT)
    if out.retry_after_s is not None:
        assert math.isfinite(out.retry_after_s) and 0 <= out.retry_after_s <= taxonomy.MAX_WAIT_S


def check_verdict(out: Answered | Failed) -> None:
    assert isinstance(out, Answered | Failed)
    if isinstance(out, Failed):
        check_failed(out)
    else:
        assert out.body is not None
        # What the attempt does next with a whole answer on a stream: render it as one chunk.
        completion_as_chunk(ADAPTER.completion(out.body))
    assert out.usage.output_tokens >= 0 if isinstance(out, Answered) else True


@FUZZ
@given(raw=st.one_of(completions.map(encodes), json_bytes(completions), any_bytes), limit=max_tokens)
@example(raw=b'{"choices":[{"message":{"content":"\xff"}}]}', limit=None)  # not UTF-8 inside a string
@example(raw=b'{"choices":[{"message":{"content":5}}]}', limit=None)  # content that is not text
def test_any_200_body_is_an_answer_or_a_failure(raw: bytes, limit: int | None) -> None:
    check_verdict(judge_completion(ADAPTER.completion(raw), limit))


@FUZZ
@given(payload=st.one_of(completions, json_values), limit=max_tokens)
def test_any_decoded_completion_is_an_answer_or_a_failure(payload: Any, limit: int | None) -> None:
    check_verdict(judge_completion(payload, limit))


@FUZZ
@given(
    status=st.one_of(st.integers(400, 599), st.integers(100, 999)),
    headers=headers,
    raw=st.one_of(
        st.builds(lambda e: {"error": e}, either(error_object)).map(encodes),
        json_bytes(st.builds(lambda e: {"error": e}, either(error_object))),
        any_bytes,
    ),
)
@example(status=500, headers={}, raw=b"line one\nline two")  # a plain-text body with a line break
@example(status=502, headers={}, raw=b"   \r\n ")  # a body of blanks
@example(status=429, headers={}, raw=b'{"error": "\xff"}')  # not UTF-8 inside a string
def test_any_error_response_is_a_failure_with_a_one_line_message(
    status: int, headers: dict[str, str], raw: bytes
) -> None:
    out = judge_error(status, headers, raw, NOW)
    assert isinstance(out, Failed)
    check_failed(out)
    assert out.status == status


@FUZZ
@given(headers=headers, now=st.floats(0, 4e9))
def test_retry_after_and_reset_headers_give_a_finite_wait_of_at_most_a_day(
    headers: dict[str, str], now: float
) -> None:
    for wait in (taxonomy.retry_after_s(headers, now), taxonomy.exhausted_for_s(headers, now)):
        assert wait is None or (math.isfinite(wait) and 0 <= wait <= taxonomy.MAX_WAIT_S)


@FUZZ
@given(payload=st.one_of(st.builds(lambda e: {"error": e}, either(error_object)), completions, json_values))
def test_a_wrapped_error_names_an_error_status(payload: Any) -> None:
    wrapped = taxonomy.wrapped_error(payload)
    if wrapped is not None:
        status, error = wrapped
        assert 400 <= status <= 599
        assert_message(taxonomy.error_message(error, "fallback"), 200)


@FUZZ
@given(error=st.one_of(st.none(), error_object), fallback=st.text(max_size=400))
def test_an_error_message_is_one_bounded_line(error: dict[str, Any] | None, fallback: str) -> None:
    message = taxonomy.error_message(error, fallback)
    if message:
        assert_message(message, 200)
    else:  # nothing to say: only when the provider said nothing and the fallback is blank
        assert not fallback.split()


# ---- regressions: what the properties above found -------------------------------------------------------


def test_a_body_that_is_not_utf8_inside_a_string_is_unreadable_not_a_crash() -> None:
    # It raised UnicodeDecodeError through the attempt: a 500 for the client instead of a fallover.
    raw = b'{"choices":[{"message":{"content":"\xff"}}]}'
    assert ADAPTER.completion(raw) is None
    assert ADAPTER.frame(b'{"choices":[{"delta":{"content":"\xff"}}]}') is None
    out = judge_error(503, {}, b'{"error":{"message":"\xff"}}', NOW)
    assert (out.status, out.message) == (503, '{"error":{"message":"\ufffd"}}')


def test_an_answer_whose_content_is_not_text_is_a_server_error_not_a_crash() -> None:
    # len() of a number raised TypeError.
    for content in (5, True, {"text": "hi"}):
        out = judge_completion({"choices": [{"message": {"role": "assistant", "content": content}}]}, None)
        assert isinstance(out, Failed)
        assert (out.kind, out.status) == (FailureKind.SERVER_ERROR, 502)


def test_a_plain_text_error_body_with_line_breaks_gives_a_one_line_message() -> None:
    out = judge_error(502, {}, b"<html>\r\n<h1>Bad gateway</h1>\n</html>", NOW)
    assert out.message == "<html> <h1>Bad gateway</h1> </html>"
    assert judge_error(502, {}, b" \r\n ", NOW).message == "HTTP 502"
    assert taxonomy.error_message(None, "a\nb") == "a b"
