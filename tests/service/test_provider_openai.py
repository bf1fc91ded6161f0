"""The OpenAI adapter (service/providers/openai.py) from fixtures in OpenAI's documented shapes
(tests/service/fixtures/openai, sources in its README): whole answers and streams judged as the runner
judges them, and each error answer's failure kind, status, retry time and message. (The request it builds
and frame edge cases are in test_providers.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from events.failures import FailureKind
from events.judge import StreamJudge, judge_completion
from events.outcomes import Answered, Failed
from service.providers.openai import OpenAIAdapter

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
NOW = 1_700_000_000.0
ADAPTER = OpenAIAdapter()


def fixture(name: str) -> Any:
    return msgspec.json.decode((FIXTURES / name).read_bytes())


def relay(name: str) -> tuple[list[Any], Answered | Failed]:
    """The fixture's frames through one stream's parser and the stream judge, as the attempt runs them."""
    parser, judge = ADAPTER.stream_frames(), StreamJudge(None, keep_reply=True)
    sent: list[Any] = []
    done = False
    for line in (FIXTURES / name).read_bytes().splitlines():
        payload = line.removeprefix(b"data: ")
        if not line.startswith(b"data: "):
            continue
        if payload == b"[DONE]":
            done = True
            break
        verdict = judge.feed(parser.frame(payload))
        if isinstance(verdict, Failed):
            return sent, verdict
        sent += [chunk.obj for chunk in verdict or ()]
    return sent, judge.end(done)


def test_a_whole_answer_is_an_answer_with_its_usage() -> None:
    out = judge_completion(ADAPTER.completion((FIXTURES / "completion.json").read_bytes()), None)
    assert isinstance(out, Answered)
    assert (out.usage.input_tokens, out.usage.output_reported) == (19, 10)


def test_a_whole_answer_with_two_tool_calls_keeps_both() -> None:
    payload = ADAPTER.completion((FIXTURES / "completion_tool_calls.json").read_bytes())
    calls = payload["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_current_weather", "get_current_time"]
    assert isinstance(judge_completion(payload, None), Answered)


def test_a_stream_is_relayed_with_its_usage_chunk() -> None:
    sent, end = relay("stream.sse")
    assert isinstance(end, Answered)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in sent if c["choices"]) == "Hello!"
    assert end.usage.input_tokens == 9 and end.usage.output_reported == 2


def test_streamed_tool_calls_keep_their_own_indexes() -> None:
    sent, end = relay("stream_tool_calls.sse")
    assert isinstance(end, Answered)
    deltas = [t for c in sent for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [t["index"] for t in deltas] == [0, 0, 0, 1]
    assert ADAPTER.stream_frames() is ADAPTER  # an OpenAI frame stands alone: one parser serves every stream


def test_an_error_frame_before_content_is_a_wrapped_failure_of_its_code() -> None:
    sent, end = relay("stream_error_frame.sse")
    assert sent == []  # the role chunk carries no content: nothing went out, so it may fall over
    assert isinstance(end, Failed)
    assert (end.kind, end.status, end.after_content) == (FailureKind.SERVER_ERROR, 503, False)
    assert end.message == "wrapped error: The server is overloaded or not ready yet."


@pytest.mark.parametrize(
    ("name", "kind", "status"),
    [
        ("ok_200_wrapped_429.json", FailureKind.RATE_LIMITED, 429),
        ("ok_200_wrapped_no_code.json", FailureKind.SERVER_ERROR, 502),  # no code: a bad gateway
    ],
)
def test_an_error_in_a_200_is_the_status_its_code_names(name: str, kind: FailureKind, status: int) -> None:
    body = fixture(name)["body"]
    out = judge_completion(ADAPTER.completion(msgspec.json.encode(body)), None)
    assert isinstance(out, Failed)
    assert (out.kind, out.status) == (kind, status)
    assert out.message == "wrapped error: " + body["error"]["message"]


@pytest.mark.parametrize(
    ("name", "kind", "retry"),
    [
        ("error_400_invalid_request.json", FailureKind.BAD_REQUEST, None),
        ("error_400_context_length.json", FailureKind.CONTEXT_EXCEEDED, None),
        ("error_401_invalid_api_key.json", FailureKind.AUTH, None),
        ("error_403_unsupported_region.json", FailureKind.AUTH, None),  # the runner's key check decides
        ("error_404_model_not_found.json", FailureKind.MODEL_MISSING, None),
        ("error_429_rate_limit_reset_headers.json", FailureKind.RATE_LIMITED, 90.0),  # x-ratelimit-reset-*
        ("error_429_retry_after.json", FailureKind.RATE_LIMITED, 7.0),  # Retry-After before the reset headers
        ("error_429_insufficient_quota.json", FailureKind.RATE_LIMITED, None),  # the default cooldown
        ("error_500_server.json", FailureKind.SERVER_ERROR, None),
        ("error_503_overloaded.json", FailureKind.SERVER_ERROR, None),
    ],
)
def test_an_error_answer_is_judged_from_its_status_body_and_headers(
    name: str, kind: FailureKind, retry: float | None
) -> None:
    case = fixture(name)
    out = ADAPTER.error(case["status"], case["headers"], msgspec.json.encode(case["body"]), NOW)
    assert (out.kind, out.status, out.retry_after_s) == (kind, case["status"], retry)
    message = case["body"]["error"]["message"]
    assert out.message == (message if len(message) <= 200 else message[:199] + "…")


def test_a_key_check_s_answer_is_its_status() -> None:
    raw = msgspec.json.encode(fixture("error_401_invalid_api_key.json")["body"])
    assert [ADAPTER.key_check_status(s, raw) for s in (200, 400, 401, 403, 500)] == [200, 400, 401, 403, 500]
