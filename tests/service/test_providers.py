"""Provider adapters (service/providers): the OpenAI-compatible adapter's requests (URL, headers, where the
secret goes, body), its key check, and how it parses whole answers, stream frames and error answers into
the neutral forms."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.upstream import HttpRequest, ProviderAdapter, UpstreamCall
from events.failures import FailureKind
from events.frames import Chunk
from events.outcomes import Failed
from service.providers import ADAPTERS
from service.providers.openai import OpenAIAdapter

SECRET = "gsk_live_SECRET_0123456789abcdef"
NOW = 1_700_000_000.0

BODY = {
    "model": "llama-3.3-70b-versatile",
    "messages": [{"role": "user", "content": "héllo"}],
    "stream": True,
    "max_tokens": 64,
}


def call(body: dict[str, Any] | None = None, stream: bool = True) -> UpstreamCall:
    return UpstreamCall("groq", "llama-3.3-70b-versatile", "g1", dict(BODY if body is None else body), stream)


def test_the_openai_kind_is_registered() -> None:
    assert isinstance(ADAPTERS["openai"], OpenAIAdapter)
    assert ADAPTERS["openai"].kind == "openai"
    adapter: ProviderAdapter = OpenAIAdapter()  # it satisfies the protocol
    assert adapter.kind == "openai"


# ---- the request -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    ["https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1/", "https://api.groq.com/openai/v1//"],
)
def test_a_call_posts_to_chat_completions_under_the_base_url(base_url: str) -> None:
    built = OpenAIAdapter().request(call(), base_url, SECRET)
    assert isinstance(built, HttpRequest)
    assert (built.method, built.url) == ("POST", "https://api.groq.com/openai/v1/chat/completions")


def test_a_call_sends_the_secret_as_a_bearer_token_and_json() -> None:
    built = OpenAIAdapter().request(call(), "https://api.groq.com/openai/v1", SECRET)
    assert built.headers == {
        "authorization": f"Bearer {SECRET}",
        "accept-encoding": "gzip",
        "content-type": "application/json",
    }


def test_the_secret_is_only_in_the_authorization_header() -> None:
    built = OpenAIAdapter().request(call(), "https://api.groq.com/openai/v1", SECRET)
    assert SECRET not in built.url
    assert built.body is not None and SECRET.encode() not in built.body
    assert [name for name, value in built.headers.items() if SECRET in value] == ["authorization"]


def test_the_body_is_the_neutral_call_as_json() -> None:
    built = OpenAIAdapter().request(call(), "https://x/v1", SECRET)
    assert built.body is not None
    assert msgspec.json.decode(built.body) == BODY
    assert "héllo".encode() in built.body  # UTF-8, not escaped into something else


def test_the_body_is_sent_as_the_call_has_it() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "temperature": 0.0,
        "response_format": {"type": "json_object"},
    }
    built = OpenAIAdapter().request(call(body, stream=False), "https://x/v1", SECRET)
    assert built.body is not None and msgspec.json.decode(built.body) == body


def test_the_call_is_not_changed_by_building_its_request() -> None:
    c = call()
    OpenAIAdapter().request(c, "https://x/v1", SECRET)
    assert c.body == BODY


def test_the_key_check_lists_models_with_the_secret_in_its_header() -> None:
    built = OpenAIAdapter().key_check("https://api.cerebras.ai/v1/", SECRET)
    assert built == HttpRequest(
        "GET",
        "https://api.cerebras.ai/v1/models",
        {"authorization": f"Bearer {SECRET}", "accept-encoding": "gzip"},
    )
    assert built.body is None
    assert SECRET not in built.url


# ---- whole answers -----------------------------------------------------------------------------------------


def test_a_whole_answer_is_decoded() -> None:
    payload = {"id": "x", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    assert OpenAIAdapter().completion(msgspec.json.encode(payload)) == payload


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"choices": [', b"\xff\xfe", b"[" * 100_000])
def test_a_whole_answer_that_does_not_decode_is_none(raw: bytes) -> None:
    assert OpenAIAdapter().completion(raw) is None


@pytest.mark.parametrize(("raw", "value"), [(b"[]", []), (b'"text"', "text"), (b"null", None), (b"3", 3)])
def test_a_whole_answer_that_is_json_but_not_an_object_is_passed_on_for_judging(
    raw: bytes, value: Any
) -> None:
    assert OpenAIAdapter().completion(raw) == value


# ---- stream frames -----------------------------------------------------------------------------------------


def test_a_frame_is_decoded_and_keeps_its_bytes() -> None:
    payload = b'{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}'
    parsed = OpenAIAdapter().frame(payload)
    assert isinstance(parsed, Chunk)
    assert parsed.raw is payload  # forwarded to a chat-completions client without a re-encode
    assert parsed.obj["choices"][0]["delta"] == {"content": "Hi"}


def test_an_error_frame_is_decoded_for_the_judge() -> None:
    parsed = OpenAIAdapter().frame(b'{"error": {"message": "overloaded", "code": 503}}')
    assert parsed is not None and parsed.obj == {"error": {"message": "overloaded", "code": 503}}


@pytest.mark.parametrize("payload", [b"", b"{", b"keep-alive", b'{"a": 1', b"\xc3\x28", b"[" * 100_000])
def test_a_frame_that_does_not_decode_is_none(payload: bytes) -> None:
    assert OpenAIAdapter().frame(payload) is None


# ---- error answers -----------------------------------------------------------------------------------------


def test_an_error_answer_is_judged_with_its_retry_time() -> None:
    raw = b'{"error": {"message": "Rate limit reached for model", "code": "rate_limit_exceeded"}}'
    out = OpenAIAdapter().error(429, {"retry-after": "7"}, raw, NOW)
    assert out == Failed(FailureKind.RATE_LIMITED, "Rate limit reached for model", 429, retry_after_s=7.0)


@pytest.mark.parametrize(
    ("status", "raw", "kind", "message"),
    [
        (401, b'{"error": {"message": "Invalid API Key"}}', FailureKind.AUTH, "Invalid API Key"),
        (404, b'{"error": {"message": "model not found"}}', FailureKind.MODEL_MISSING, "model not found"),
        (
            400,
            b'{"error": {"message": "maximum context length is 8192 tokens"}}',
            FailureKind.CONTEXT_EXCEEDED,
            "maximum context length is 8192 tokens",
        ),
        (400, b'{"error": {"message": "bad role"}}', FailureKind.BAD_REQUEST, "bad role"),
        (503, b"Service Unavailable", FailureKind.SERVER_ERROR, "Service Unavailable"),
        (500, b"", FailureKind.SERVER_ERROR, "HTTP 500"),
    ],
)
def test_an_error_answer_is_judged_by_status_and_body(
    status: int, raw: bytes, kind: FailureKind, message: str
) -> None:
    assert OpenAIAdapter().error(status, {}, raw, NOW) == Failed(kind, message, status)


def test_running_out_of_descriptors_under_httpx_is_a_local_transport_failure() -> None:
    import errno

    import httpx

    from service.upstream import _failure

    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise httpx.ConnectError("[Errno 24] Too many open files") from exc
    except httpx.ConnectError as exc:
        failure = _failure(exc)
    assert failure.local and "out of file descriptors (EMFILE)" in str(failure)
    assert not _failure(httpx.ConnectError("[Errno 111] Connection refused")).local
