"""Every adapter's embeddings half from fixtures in the providers' documented shapes
(tests/service/fixtures/<kind>/embeddings_*.json): the request each kind sends, and its answers and errors
read into the neutral form (OpenAI's list) and judged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.upstream import UpstreamCall, request_for
from events.failures import FailureKind
from events.judge import judge_embeddings
from events.outcomes import Answered, Failed
from service.providers import ADAPTERS

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "sk-secret-0123456789"
NOW = 1_000_000.0


def fixture(kind: str, name: str) -> bytes:
    return (FIXTURES / kind / f"embeddings_{name}.json").read_bytes()


def call(model: str, body: dict[str, Any]) -> UpstreamCall:
    return UpstreamCall("p", model, "k1", {"model": model, **body}, False, "embeddings")


def test_the_operation_picks_the_request() -> None:
    adapter = ADAPTERS["openai"]
    chat = UpstreamCall("p", "m", "k1", {"model": "m", "messages": []}, False)
    assert request_for(adapter, chat, "https://x/v1", SECRET).url == "https://x/v1/chat/completions"
    assert (
        request_for(adapter, call("m", {"input": ["a"]}), "https://x/v1", SECRET).url
        == "https://x/v1/embeddings"
    )


def test_openai_sends_the_neutral_body_and_reads_its_list() -> None:
    adapter = ADAPTERS["openai"]
    body = {"input": ["a", "b"], "dimensions": 3, "user": "u1"}
    built = adapter.embeddings_request(
        call("text-embedding-3-small", body), "https://models.github.ai/inference/", SECRET
    )
    assert (built.method, built.url) == ("POST", "https://models.github.ai/inference/embeddings")
    assert built.headers["authorization"] == f"Bearer {SECRET}" and SECRET not in built.url
    assert msgspec.json.decode(built.body or b"") == {"model": "text-embedding-3-small", **body}
    out = judge_embeddings(adapter.embeddings(fixture("openai", "list")), 2, 3)
    assert isinstance(out, Answered) and out.usage.input_tokens == 8 and out.usage.output_tokens == 0
    assert [d["embedding"][0] for d in msgspec.json.decode(out.body or b"")["data"]] == [
        0.0023064255,
        -0.0028842222,
    ]
    failed = adapter.error(400, {}, fixture("openai", "error_invalid_input"), NOW)
    assert failed.kind == FailureKind.BAD_REQUEST and "'$.input' is invalid" in failed.message


def test_cohere_leaves_out_user_and_reads_its_errors() -> None:
    adapter = ADAPTERS["cohere"]
    built = adapter.embeddings_request(
        call("embed-v4.0", {"input": ["a"], "user": "u1", "dimensions": 1024}),
        "https://api.cohere.ai/compatibility/v1",
        SECRET,
    )
    assert built.url == "https://api.cohere.ai/compatibility/v1/embeddings"
    assert msgspec.json.decode(built.body or b"") == {
        "model": "embed-v4.0",
        "input": ["a"],
        "dimensions": 1024,
    }
    out = judge_embeddings(adapter.embeddings(fixture("cohere", "list")), 1)
    assert isinstance(out, Answered) and out.usage.input_tokens == 3
    failed = adapter.error(401, {}, fixture("cohere", "error_auth"), NOW)
    assert failed.kind == FailureKind.AUTH and failed.message == "invalid api token"


CF_BASE = "https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/v1"


def test_cloudflare_puts_the_account_in_the_url_and_the_token_in_the_header() -> None:
    adapter = ADAPTERS["cloudflare"]
    built = adapter.embeddings_request(call("@cf/baai/bge-m3", {"input": ["a"]}), CF_BASE, "acct123:tok-456")
    assert built.url == "https://api.cloudflare.com/client/v4/accounts/acct123/ai/v1/embeddings"
    assert built.headers["authorization"] == "Bearer tok-456"


@pytest.mark.parametrize("name", ["list", "native_result"])
def test_cloudflare_answers_in_either_shape_become_openais_list(name: str) -> None:
    parsed = ADAPTERS["cloudflare"].embeddings(fixture("cloudflare", name))
    out = judge_embeddings(parsed, 2)
    assert isinstance(out, Answered)
    data = msgspec.json.decode(out.body or b"")["data"]
    assert [(d["index"], d["embedding"][0]) for d in data] == [(0, -0.049972534), (1, -0.020309448)]


def test_cloudflares_failure_inside_a_200_is_judged_by_its_code() -> None:
    parsed = ADAPTERS["cloudflare"].embeddings(fixture("cloudflare", "200_envelope_daily_allocation"))
    out = judge_embeddings(parsed, 1)
    assert isinstance(out, Failed) and out.kind == FailureKind.RATE_LIMITED and out.status == 429
    assert "daily free allocation" in out.message


def test_gemini_batches_one_request_per_text_with_the_key_in_a_header() -> None:
    adapter = ADAPTERS["gemini"]
    base = "https://generativelanguage.googleapis.com/v1beta"
    built = adapter.embeddings_request(
        call("gemini-embedding-001", {"input": ["a", "b"], "dimensions": 4}), base, SECRET
    )
    assert built.url == f"{base}/models/gemini-embedding-001:batchEmbedContents"
    assert built.headers["x-goog-api-key"] == SECRET and SECRET not in built.url
    assert msgspec.json.decode(built.body or b"") == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": t}]},
                "outputDimensionality": 4,
            }
            for t in ("a", "b")
        ]
    }
    plain = adapter.embeddings_request(call("gemini-embedding-001", {"input": ["a"]}), base, SECRET)
    assert "outputDimensionality" not in msgspec.json.decode(plain.body or b"")["requests"][0]


def test_gemini_answers_become_openais_list_and_its_429_cools_for_its_retry_delay() -> None:
    adapter = ADAPTERS["gemini"]
    out = judge_embeddings(adapter.embeddings(fixture("gemini", "batch")), 2, 4)
    assert isinstance(out, Answered) and out.usage.input_tokens == 0  # Gemini counts nothing here
    data = msgspec.json.decode(out.body or b"")["data"]
    assert [(d["object"], d["index"], len(d["embedding"])) for d in data] == [
        ("embedding", 0, 4),
        ("embedding", 1, 4),
    ]
    # Vectors of another size than asked: the provider ignored `dimensions`.
    wrong = judge_embeddings(adapter.embeddings(fixture("gemini", "batch")), 2, 768)
    assert isinstance(wrong, Failed) and wrong.kind == FailureKind.BAD_REQUEST and "768" in wrong.message
    failed = adapter.error(429, {}, fixture("gemini", "error_quota"), NOW)
    assert failed.kind == FailureKind.RATE_LIMITED and failed.retry_after_s == 21.0
    assert judge_embeddings(adapter.embeddings(b"not json"), 1).kind == FailureKind.SERVER_ERROR  # type: ignore[union-attr]
