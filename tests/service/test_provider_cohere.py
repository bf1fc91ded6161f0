"""The Cohere adapter (service/providers/cohere.py) from fixtures in Cohere's documented shapes
(tests/service/fixtures/cohere): the request it builds (tool schemas without `additionalProperties`, no
`parallel_tool_calls`, the key only in its header), its key check, whole answers and stream frames judged as
the runner judges them, and each error answer's failure kind, message and retry time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.upstream import HttpRequest, UpstreamCall
from events.failures import FailureKind
from events.judge import StreamJudge, judge_completion
from events.outcomes import Answered, Failed
from service.config import KINDS
from service.providers import ADAPTERS
from service.providers.cohere import CohereAdapter, without_additional_properties

FIXTURES = Path(__file__).parent / "fixtures" / "cohere"
BASE = "https://api.cohere.ai/compatibility/v1"
SECRET = "co_SECRET_0123456789abcdefghijklmnop"
NOW = 1_700_000_000.0

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "location": {"type": "string"},
        "additionalProperties": {"type": "string", "description": "a property of that name stays"},
        "options": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "properties": {
                "units": {"type": "array", "items": {"type": "object", "additionalProperties": False}}
            },
        },
        "either": {"anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}]},
    },
    "$defs": {"Place": {"type": "object", "additionalProperties": False}},
    "required": ["location"],
}


def fixture(name: str) -> Any:
    return msgspec.json.decode((FIXTURES / name).read_bytes())


def call(body: dict[str, Any], stream: bool = False) -> UpstreamCall:
    return UpstreamCall("cohere", "command-a-03-2025", "c1", body, stream)


def sent(built: HttpRequest) -> Any:
    assert built.body is not None
    return msgspec.json.decode(built.body)


def test_the_cohere_kind_is_registered_and_configurable() -> None:
    assert isinstance(ADAPTERS["cohere"], CohereAdapter)
    assert ADAPTERS["cohere"].kind == "cohere"
    assert "cohere" in KINDS


# ---- the request -------------------------------------------------------------------------------------------


def test_a_call_posts_to_chat_completions_with_the_key_only_as_a_bearer_token() -> None:
    body = {"model": "command-a-03-2025", "messages": [{"role": "user", "content": "hi"}]}
    built = CohereAdapter().request(call(body), BASE + "/", SECRET)
    assert (built.method, built.url) == ("POST", BASE + "/chat/completions")
    assert built.headers["authorization"] == f"Bearer {SECRET}"
    assert [name for name, value in built.headers.items() if SECRET in value] == ["authorization"]
    assert SECRET not in built.url and built.body is not None and SECRET.encode() not in built.body
    assert sent(built) == body


def test_additional_properties_go_from_tool_schemas_at_every_depth() -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA, "strict": True}},
        {"type": "function", "function": {"name": "no_parameters"}},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools}
    out = sent(CohereAdapter().request(call(body), BASE, SECRET))
    params = out["tools"][0]["function"]["parameters"]
    assert params == {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "additionalProperties": {"type": "string", "description": "a property of that name stays"},
            "options": {
                "type": "object",
                "properties": {"units": {"type": "array", "items": {"type": "object"}}},
            },
            "either": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "$defs": {"Place": {"type": "object"}},
        "required": ["location"],
    }
    assert out["tools"][0]["function"]["strict"] is True  # the rest of the tool is as sent
    assert out["tools"][1] == tools[1]


def test_the_clients_tool_schemas_are_not_changed_by_the_request() -> None:
    before = msgspec.json.encode(SCHEMA)
    body = {"model": "m", "messages": [], "tools": [{"type": "function", "function": {"parameters": SCHEMA}}]}
    CohereAdapter().request(call(body), BASE, SECRET)
    assert msgspec.json.encode(SCHEMA) == before
    assert body["tools"][0]["function"]["parameters"] is SCHEMA


def test_a_schema_without_the_keyword_is_unchanged() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "enum": ["a", "b"]}}}
    assert without_additional_properties(schema) == schema


def test_parallel_tool_calls_is_not_forwarded() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": False}
    c = call(body)
    out = sent(CohereAdapter().request(c, BASE, SECRET))
    assert "parallel_tool_calls" not in out
    assert out == {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert c.body["parallel_tool_calls"] is False  # the call itself is left as it was (a fallback reuses it)


def test_the_key_check_lists_one_model_through_cohere_s_own_api() -> None:
    # The compatibility endpoint has no /models: its list would be a 404 for every key.
    built = CohereAdapter().key_check(BASE + "/", SECRET)
    headers = {"authorization": f"Bearer {SECRET}", "accept-encoding": "gzip"}
    assert built == HttpRequest("GET", "https://api.cohere.ai/v1/models?page_size=1", headers)


def test_a_base_url_that_is_not_the_compatibility_endpoint_is_checked_with_its_models() -> None:
    built = CohereAdapter().key_check("https://proxy.example/openai/v1", SECRET)
    assert (built.method, built.url) == ("GET", "https://proxy.example/openai/v1/models")


# ---- answers -----------------------------------------------------------------------------------------------


def test_a_whole_answer_is_an_answer_with_its_usage() -> None:
    raw = (FIXTURES / "completion.json").read_bytes()
    out = judge_completion(CohereAdapter().completion(raw), None)
    assert isinstance(out, Answered)
    assert (out.usage.input_tokens, out.usage.output_reported) == (9, 17)


def test_a_whole_answer_with_tool_calls_is_an_answer() -> None:
    raw = (FIXTURES / "completion_tool_calls.json").read_bytes()
    payload = CohereAdapter().completion(raw)
    assert payload["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert isinstance(judge_completion(payload, None), Answered)


def test_a_stream_is_judged_frame_by_frame() -> None:
    adapter = CohereAdapter()
    judge = StreamJudge(None, keep_reply=True)
    sent_frames = []
    done = False
    for line in (FIXTURES / "stream.sse").read_bytes().splitlines():
        if not line.startswith(b"data: "):
            continue
        payload = line.removeprefix(b"data: ")
        if payload == b"[DONE]":
            done = True
            break
        out = judge.feed(adapter.frame(payload))
        assert not isinstance(out, Failed)
        sent_frames += out or []
    assert len(sent_frames) == 4  # the role-only frame is held back, then sent with the first text
    end = judge.end(done)
    assert isinstance(end, Answered) and end.usage.output_reported == 2
    assert judge.reply_text is not None and "Recursive loops" in judge.reply_text


def test_streamed_tool_calls_keep_their_indexes_through_one_stream_parser() -> None:
    adapter = CohereAdapter()
    parser, judge = adapter.stream_frames(), StreamJudge(None, keep_reply=False)
    assert parser is adapter  # OpenAI-shaped frames stand alone
    deltas, done = [], False
    for line in (FIXTURES / "stream_tool_calls.sse").read_bytes().splitlines():
        payload = line.removeprefix(b"data: ")
        if not line.startswith(b"data: "):
            continue
        if payload == b"[DONE]":
            done = True
            break
        out = judge.feed(parser.frame(payload))
        assert not isinstance(out, Failed)
        deltas += [t for c in out or [] for t in c.obj["choices"][0]["delta"].get("tool_calls", [])]
    assert [(t["index"], t.get("id")) for t in deltas] == [
        (0, "get_weather_8x2kq7fz1m3n"),
        (0, None),
        (1, "get_weather_4p9wd2hs6t0v"),
    ]
    end = judge.end(done)
    assert isinstance(end, Answered) and end.usage.output_reported == 29


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "retry"),
    [
        ("auth_401", FailureKind.AUTH, None),
        ("expired_401", FailureKind.AUTH, None),
        ("rate_limited_429", FailureKind.RATE_LIMITED, 27.0),
        ("bad_request_400", FailureKind.BAD_REQUEST, None),
        ("context_400", FailureKind.CONTEXT_EXCEEDED, None),  # "too many tokens"
        ("not_found_404", FailureKind.MODEL_MISSING, None),
        ("server_500", FailureKind.SERVER_ERROR, None),
        ("unavailable_503", FailureKind.SERVER_ERROR, None),
    ],
)
def test_an_error_answer_is_judged_from_its_message(
    name: str, kind: FailureKind, retry: float | None
) -> None:
    case = fixture(f"error_{name}.json")
    raw = msgspec.json.encode(case["body"])
    out = CohereAdapter().error(case["status"], case["headers"], raw, NOW)
    assert (out.kind, out.status, out.retry_after_s) == (kind, case["status"], retry)
    expected = " ".join(case["body"]["message"].split())
    assert out.message == (expected if len(expected) <= 200 else expected[:199] + "…")


def test_a_429_waits_as_long_as_the_rate_limit_headers_say() -> None:
    raw = msgspec.json.encode(fixture("error_rate_limited_429.json")["body"])
    out = CohereAdapter().error(429, {"x-ratelimit-reset": "1m30s"}, raw, NOW)
    assert (out.kind, out.retry_after_s) == (FailureKind.RATE_LIMITED, 90.0)
    assert CohereAdapter().error(429, {}, raw, NOW).retry_after_s is None  # none said: the default applies


@pytest.mark.parametrize(
    ("status", "raw", "kind", "message"),
    [
        (401, b'{"error": {"message": "Invalid API key", "type": "invalid_request_error"}}', FailureKind.AUTH,
         "Invalid API key"),
        (502, b"<html>Bad Gateway</html>", FailureKind.SERVER_ERROR, "<html>Bad Gateway</html>"),
        (500, b"", FailureKind.SERVER_ERROR, "HTTP 500"),
        (400, b'{"message": 12}', FailureKind.BAD_REQUEST, '{"message": 12}'),
    ],
)  # fmt: skip
def test_an_error_not_in_cohere_shape_is_judged_as_openai_shaped(
    status: int, raw: bytes, kind: FailureKind, message: str
) -> None:
    out = CohereAdapter().error(status, {}, raw, NOW)
    assert (out.kind, out.status, out.message) == (kind, status, message)


def test_a_key_check_s_answer_is_its_status() -> None:
    raw = msgspec.json.encode(fixture("error_auth_401.json")["body"])
    assert [CohereAdapter().key_check_status(s, raw) for s in (200, 400, 401, 404)] == [200, 400, 401, 404]


def test_a_402_is_the_key_s_billing_limit_spent_until_the_month_turns() -> None:
    case = fixture("error_payment_402.json")
    raw = msgspec.json.encode(case["body"])
    out = CohereAdapter().error(402, {}, raw, NOW)  # mid-November: the month turns in 16 days
    assert (out.kind, out.status, out.retry_after_s) == (FailureKind.RATE_LIMITED, 402, 86400.0)
    assert out.message.startswith("this key reached its Cohere billing limit: Please add or update")
    late_december = datetime(2025, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    assert CohereAdapter().error(402, {}, raw, late_december).retry_after_s == 3600.0
    assert CohereAdapter().error(402, {"retry-after": "30"}, raw, NOW).retry_after_s == 30.0
