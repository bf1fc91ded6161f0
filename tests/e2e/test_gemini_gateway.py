"""The Gemini adapter behind a running gateway, with the openai SDK as the client and the fault upstream
answering in Google's native shapes at `/v1beta` (the key in `x-goog-api-key`, errors as
`{"error": {"code", "message", "status", "details"}}`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from custom_gateway import gateway_from, model_toml, read_log, server_toml, settled
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


async def test_a_gemini_stream_reaches_the_openai_sdk(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform("ok")) as gw:
            async with client(gw.base_url) as sdk:
                chunks = await sdk.chat.completions.create(model="ok", messages=HELLO, stream=True)
                got = [c async for c in chunks]
            (seen,) = gemini_calls(gw)
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    finishes = [c.choices[0].finish_reason for c in got if c.choices and c.choices[0].finish_reason]
    assert text == "Hello from ok."
    assert finishes == ["stop"]
    assert seen.path == "/v1beta/models/ok:streamGenerateContent" and seen.stream
    assert seen.api_key == KEY


async def test_a_gemini_429_cools_the_model_for_its_retry_delay(tmp_path: Path) -> None:
    models = ["rate-limit:30", "ok"]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform(*models)) as gw:
            async with client(gw.base_url) as sdk:
                for _ in range(2):
                    answer = await sdk.chat.completions.create(
                        model="rate-limit:30", messages=HELLO, extra_body={"models": models}
                    )
                    assert answer.choices[0].message.content == "Hello from ok."
            await settled(gw)
            (view,) = await gw.runtime.health.keys()
            tried = [r.model for r in gemini_calls(gw)]
    assert tried == ["rate-limit:30", "ok", "ok"]  # the second request skips the cooled model
    failed = [e for e in read_log(gw.data_dir) if isinstance(e, AttemptFailed)]
    assert [(e.model, e.status, e.retry_after_s) for e in failed] == [("rate-limit:30", 429, 30.0)]
    ((model, until),) = view.cooling
    assert model == "rate-limit:30"
    assert until - failed[0].ts == pytest.approx(30, abs=1)  # the retry delay, not the 60 s default


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


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_function_call_reaches_the_sdk_as_a_tool_call(tmp_path: Path, stream: bool) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform("ok")) as gw:
            async with client(gw.base_url) as sdk:
                if stream:
                    chunks = await sdk.chat.completions.create(
                        model="ok", messages=HELLO, tools=tools, stream=True
                    )
                    got = [c async for c in chunks if c.choices]
                    calls = [t for c in got for t in c.choices[0].delta.tool_calls or []]
                    names = [t.function.name for t in calls if t.function and t.function.name]
                    finish = [c.choices[0].finish_reason for c in got if c.choices[0].finish_reason]
                else:
                    answer = await sdk.chat.completions.create(model="ok", messages=HELLO, tools=tools)
                    names = [t.function.name for t in answer.choices[0].message.tool_calls or []]
                    finish = [answer.choices[0].finish_reason]
            (seen,) = gemini_calls(gw)
    assert names == ["get_weather"]
    assert finish == ["tool_calls"]
    assert seen.body is not None
    assert seen.body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
