"""The Gemini adapter behind a running gateway, with the openai SDK as the client and the fault upstream
answering in Google's native shapes at `/v1beta` (the key in `x-goog-api-key`, errors as
`{"error": {"code", "message", "status", "details"}}`): what the request looks like and the route's own
rules. What every kind shares (answers and tool calls, stream and not; retry delays; wrapped errors) and
Gemini's mid-stream faults, limit-0 quotas and bad-key check are in test_adapters_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from custom_gateway import gateway_from, model_toml, read_log, server_toml
from harness import GATEWAY_KEY

from events.types import AttemptFailed

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

KEY = "AIza-e2e-gemini-0123456789"
HELLO: Any = [{"role": "user", "content": "hi"}]


def gemini_platform(*models: str) -> Any:
    def config_for(upstream_url: str, data_dir: Path) -> str:
        base_url = upstream_url.removesuffix("/v1") + "/v1beta"
        platform = f'\n[[platforms]]\nname = "gemini"\nkind = "gemini"\nbase_url = "{base_url}"\n'
        text = server_toml(data_dir, gateway_key=GATEWAY_KEY) + platform + f'keys = ["{KEY}"]\n'
        return text + "".join(model_toml("gemini", m, rank) for rank, m in enumerate(models, start=1))

    return config_for


def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)


def gemini_calls(gw: Any) -> list[Any]:
    return [r for r in gw.upstream.requests if r.path.startswith("/v1beta/models/")]


async def test_a_gemini_answer_reaches_the_openai_sdk(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform("ok")) as gw:
            async with client(gw.base_url) as sdk:
                answer = await sdk.chat.completions.create(model="ok", messages=HELLO)
            (seen,) = gemini_calls(gw)
    assert answer.choices[0].message.content == "Hello from ok."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens > 0
    assert seen.path == "/v1beta/models/ok:generateContent"
    assert seen.api_key == KEY and "authorization" not in seen.headers
    assert seen.body is not None and seen.body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_503_falls_back_to_the_next_model(tmp_path: Path, stream: bool) -> None:
    models = ["fail:503", "ok"]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform(*models)) as gw:
            async with client(gw.base_url) as sdk:
                raw = await sdk.chat.completions.with_raw_response.create(
                    model="fail:503", messages=HELLO, stream=stream, extra_body={"models": models}
                )
                if stream:
                    chunks = raw.parse()
                    text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                else:
                    text = raw.parse().choices[0].message.content or ""
            tried = [r.model for r in gemini_calls(gw)]
    assert text == "Hello from ok."
    assert raw.headers["x-routed-via"] == "gemini/ok"
    assert tried == ["fail:503", "ok"]
    failed = [(e.model, e.kind, e.status) for e in read_log(gw.data_dir) if isinstance(e, AttemptFailed)]
    assert failed == [("fail:503", "server_error", 503)]


async def test_the_fault_upstream_takes_the_gemini_key_only_from_its_header(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform("ok")) as gw:
            url = gw.upstream_url.removesuffix("/v1") + "/v1beta/models/ok:generateContent"
            body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
            async with httpx.AsyncClient() as http:
                in_url = await http.post(url, params={"key": KEY}, json=body)
                missing = await http.post(url, json=body)
                good = await http.post(url, headers={"x-goog-api-key": KEY}, json=body)
    assert (in_url.status_code, in_url.json()["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert (missing.status_code, missing.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert good.json()["candidates"][0]["content"]["parts"] == [{"text": "Hello from ok."}]
