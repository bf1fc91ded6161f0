"""The Cloudflare Workers AI adapter (service/providers/cloudflare.py) from fixtures in Cloudflare's
documented shapes (tests/service/fixtures/cloudflare): the `account_id:token` key split between the URL and
the Bearer header, `null` content sent as `""`, the key check, whole answers and frames (the `success: false`
envelope on a 200 too) judged as the runner judges them, and each error code's failure kind, never quoting
the account or the token."""

from __future__ import annotations

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
from service.providers.cloudflare import CloudflareAdapter, split_key

FIXTURES = Path(__file__).parent / "fixtures" / "cloudflare"
ACCOUNT = "0123456789abcdef0123456789abcdef"  # the account the fixtures' routing errors quote
TOKEN = "cfut_SECRET_token_0123456789abcdefghij"
SECRET = f"{ACCOUNT}:{TOKEN}"
BASE = "https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/v1"
FILLED = f"https://api.cloudflare.com/client/v4/accounts/{ACCOUNT}/ai/v1"
NOW = 1_700_000_000.0  # 22:13:20 UTC


def fixture(name: str) -> Any:
    return msgspec.json.decode((FIXTURES / name).read_bytes())


def call(body: dict[str, Any], stream: bool = False) -> UpstreamCall:
    return UpstreamCall("cloudflare", "@cf/meta/llama-3.1-8b-instruct", "cf1", body, stream)


def sent(built: HttpRequest) -> Any:
    assert built.body is not None
    return msgspec.json.decode(built.body)


def assert_secret_free(text: str) -> None:
    assert ACCOUNT not in text and TOKEN not in text
    assert ACCOUNT[:8] not in text and TOKEN[-8:] not in text


def test_the_cloudflare_kind_is_registered_and_configurable() -> None:
    assert isinstance(ADAPTERS["cloudflare"], CloudflareAdapter)
    assert ADAPTERS["cloudflare"].kind == "cloudflare"
    assert "cloudflare" in KINDS


# ---- the key and the request -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "parts"),
    [
        (SECRET, (ACCOUNT, TOKEN)),
        (f" {ACCOUNT} : {TOKEN} ", (ACCOUNT, TOKEN)),
        ("acc:tok:with:colons", ("acc", "tok:with:colons")),  # split on the first ':' only
        (TOKEN, ("", TOKEN)),
    ],
)
def test_a_key_is_split_into_account_and_token(secret: str, parts: tuple[str, str]) -> None:
    assert split_key(secret) == parts


def test_the_account_goes_into_the_url_and_the_token_into_the_bearer_header() -> None:
    body = {"model": "@cf/meta/llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "hi"}]}
    built = CloudflareAdapter().request(call(body), BASE, SECRET)
    assert (built.method, built.url) == ("POST", FILLED + "/chat/completions")
    assert built.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in built.url and built.body is not None and TOKEN.encode() not in built.body
    assert ACCOUNT.encode() not in built.body
    assert sent(built) == body


def test_a_base_url_with_the_account_written_in_is_used_as_it_stands() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    built = CloudflareAdapter().request(call(body), FILLED + "/", TOKEN)
    assert built.url == FILLED + "/chat/completions"
    assert built.headers["authorization"] == f"Bearer {TOKEN}"


def test_an_account_is_quoted_into_the_url_so_it_cannot_change_the_path() -> None:
    built = CloudflareAdapter().request(call({"messages": []}), BASE, f"a/../b?x:{TOKEN}")
    assert built.url == "https://api.cloudflare.com/client/v4/accounts/a%2F..%2Fb%3Fx/ai/v1/chat/completions"


def test_null_or_missing_content_is_sent_as_an_empty_string() -> None:
    tool_call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "assistant", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]
    c = call({"model": "m", "messages": messages})
    out = sent(CloudflareAdapter().request(c, BASE, SECRET))["messages"]
    assert [m.get("content") for m in out] == [
        "weather?",
        "",
        "",
        "sunny",
        [{"type": "text", "text": "thanks"}],
    ]
    assert out[1]["tool_calls"] == [tool_call]
    assert messages[1]["content"] is None and "content" not in messages[2]  # the call is left as it was


def test_the_key_check_lists_one_model_of_the_account() -> None:
    built = CloudflareAdapter().key_check(BASE, SECRET)
    assert built == HttpRequest(
        "GET",
        f"https://api.cloudflare.com/client/v4/accounts/{ACCOUNT}/ai/models/search?per_page=1",
        {"authorization": f"Bearer {TOKEN}", "accept-encoding": "gzip"},
    )


def test_the_key_check_of_another_base_url_lists_its_models() -> None:
    built = CloudflareAdapter().key_check("http://127.0.0.1:8080/v1", SECRET)
    assert built.url == "http://127.0.0.1:8080/v1/models"
    assert built.headers["authorization"] == f"Bearer {TOKEN}"


# ---- answers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["completion.json", "completion_tool_calls.json"])
def test_a_whole_answer_is_an_answer_with_its_usage(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    out = judge_completion(CloudflareAdapter().completion(raw), None)
    assert isinstance(out, Answered) and out.usage.input_tokens > 0


def test_the_native_success_envelope_is_unwrapped() -> None:
    completion = fixture("completion.json")
    raw = msgspec.json.encode({"result": completion, "success": True, "errors": [], "messages": []})
    assert CloudflareAdapter().completion(raw) == completion


def test_a_stream_is_judged_frame_by_frame() -> None:
    adapter = CloudflareAdapter()
    judge = StreamJudge(None, keep_reply=True)
    count, done = 0, False
    for line in (FIXTURES / "stream.sse").read_bytes().splitlines():
        payload = line.removeprefix(b"data: ")
        if not line.startswith(b"data: "):
            continue
        if payload == b"[DONE]":
            done = True
            break
        out = judge.feed(adapter.frame(payload))
        assert not isinstance(out, Failed)
        count += len(out or [])
    assert count == 3
    end = judge.end(done)
    assert isinstance(end, Answered) and end.usage.output_reported == 2
    assert judge.reply_text is not None and "Beep boop" in judge.reply_text


@pytest.mark.parametrize(
    ("name", "kind", "status"),
    [
        ("ok_200_envelope_capacity.json", FailureKind.RATE_LIMITED, 429),
        ("ok_200_envelope_route.json", FailureKind.AUTH, 401),
    ],
)
def test_a_failure_envelope_on_a_200_is_a_wrapped_failure(name: str, kind: FailureKind, status: int) -> None:
    raw = (FIXTURES / name).read_bytes()
    out = judge_completion(CloudflareAdapter().completion(raw), None)
    assert isinstance(out, Failed) and (out.kind, out.status) == (kind, status)
    assert out.message.startswith("wrapped error: ")
    assert_secret_free(out.message)


def test_a_failure_envelope_as_a_stream_frame_fails_the_stream() -> None:
    judge = StreamJudge(None, keep_reply=False)
    chunk = CloudflareAdapter().frame((FIXTURES / "ok_200_envelope_route.json").read_bytes())
    assert chunk is not None and msgspec.json.decode(chunk.raw) == chunk.obj
    assert_secret_free(chunk.raw.decode())
    out = judge.feed(chunk)
    assert isinstance(out, Failed) and (out.kind, out.after_content) == (FailureKind.AUTH, False)


def test_an_unknown_code_on_a_200_is_a_server_error() -> None:
    raw = b'{"success": false, "errors": [{"code": 9999, "message": "odd"}], "result": null}'
    out = judge_completion(CloudflareAdapter().completion(raw), None)
    assert isinstance(out, Failed) and (out.kind, out.status) == (FailureKind.SERVER_ERROR, 502)
    assert out.message == "wrapped error: odd (code 9999)"


# ---- errors ------------------------------------------------------------------------------------------------

SECONDS_TO_UTC_MIDNIGHT = 86400 - (22 * 3600 + 13 * 60 + 20)


@pytest.mark.parametrize(
    ("name", "kind", "status", "retry"),
    [
        ("auth_10000", FailureKind.AUTH, 401, None),
        ("auth_10000_403", FailureKind.AUTH, 401, None),  # a bad token: no key check needed to believe it
        ("route_7003", FailureKind.AUTH, 401, None),
        ("route_7000", FailureKind.AUTH, 401, None),
        ("no_model_5007", FailureKind.MODEL_MISSING, 404, None),
        ("invalid_model_3042", FailureKind.MODEL_MISSING, 404, None),
        ("daily_allocation_3036", FailureKind.RATE_LIMITED, 429, SECONDS_TO_UTC_MIDNIGHT),
        ("daily_allocation_3036_retry_after", FailureKind.RATE_LIMITED, 429, 120.0),
        ("capacity_3040", FailureKind.RATE_LIMITED, 429, None),
        ("too_large_3006", FailureKind.CONTEXT_EXCEEDED, 413, None),
        ("context_5021", FailureKind.CONTEXT_EXCEEDED, 400, None),  # said in words: "context window"
        ("timeout_3007", FailureKind.SERVER_ERROR, 504, None),
        (
            "blocked_3023",
            FailureKind.AUTH,
            403,
            None,
        ),  # a 403: the runner's key check tells auth from forbidden
        ("bad_request_3003", FailureKind.BAD_REQUEST, 400, None),
        ("server_500", FailureKind.SERVER_ERROR, 500, None),
    ],
)
def test_an_error_answer_is_judged_by_its_code(
    name: str, kind: FailureKind, status: int, retry: float | None
) -> None:
    case = fixture(f"error_{name}.json")
    out = CloudflareAdapter().error(case["status"], case["headers"], msgspec.json.encode(case["body"]), NOW)
    assert (out.kind, out.status, out.retry_after_s) == (kind, status, retry)
    assert f"(code {case['body']['errors'][0]['code']})" in out.message
    assert_secret_free(out.message)


def test_a_routing_error_says_how_the_key_is_written() -> None:
    case = fixture("error_route_7003.json")
    out = CloudflareAdapter().error(400, {}, msgspec.json.encode(case["body"]), NOW)
    assert "account_id:token" in out.message
    assert "/accounts/" not in out.message


def test_an_account_quoted_in_any_error_is_hidden() -> None:
    raw = f'{{"success": false, "errors": [{{"code": 1234, "message": "bad /accounts/{ACCOUNT}/ai/x"}}]}}'
    out = CloudflareAdapter().error(400, {}, raw.encode(), NOW)
    assert out.message == "bad /accounts/[account]/ai/x (code 1234)"
    openai_shaped = f'{{"error": {{"message": "no route for /accounts/{ACCOUNT}/ai/v1"}}}}'
    out = CloudflareAdapter().error(404, {}, openai_shaped.encode(), NOW)
    assert (out.kind, out.message) == (FailureKind.MODEL_MISSING, "no route for /accounts/[account]/ai/v1")


@pytest.mark.parametrize(
    ("status", "raw", "kind"),
    [
        (502, b"<html>Bad Gateway</html>", FailureKind.SERVER_ERROR),
        (429, b"", FailureKind.RATE_LIMITED),
        (401, b'{"success": false, "errors": []}', FailureKind.AUTH),
        (400, b'{"success": false, "errors": [{"code": "x", "message": 3}]}', FailureKind.BAD_REQUEST),
    ],
)
def test_an_error_without_a_readable_envelope_follows_its_status(
    status: int, raw: bytes, kind: FailureKind
) -> None:
    out = CloudflareAdapter().error(status, {"retry-after": "5"}, raw, NOW)
    assert (out.kind, out.status, out.retry_after_s) == (kind, status, 5.0)


def test_a_key_check_s_answer_is_its_status() -> None:
    raw = msgspec.json.encode(fixture("error_auth_10000.json")["body"])
    assert [CloudflareAdapter().key_check_status(s, raw) for s in (200, 400, 401, 403)] == [
        200,
        400,
        401,
        403,
    ]
