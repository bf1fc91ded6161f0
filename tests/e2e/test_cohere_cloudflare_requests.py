"""The Cohere and Cloudflare adapters behind a running gateway, with the openai SDK as the client: what the
provider receives (Cloudflare: the token alone as the Bearer credential, `null` content as `""`; Cohere: tool
schemas without `additionalProperties`, no `parallel_tool_calls`), streaming and not.

The fault upstream answers in OpenAI's shapes at `/v1`, which both providers' answers are. Their errors in
their own shapes, on their own routes, are in test_adapters_e2e.py (and from fixtures in
tests/service/test_provider_cohere.py and test_provider_cloudflare.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import trio
from custom_gateway import gateway_from, model_toml, server_toml
from harness import GATEWAY_KEY

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

ACCOUNT = "0123456789abcdef0123456789abcdef"
TOKEN = "cf-token-e2e-0123456789"
TOOL_CALL = {
    "id": "t1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
}
TOOL_TURNS: list[Any] = [
    {"role": "user", "content": "weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
]
STRICT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "city": {"type": "string"},
                "when": {"type": "object", "additionalProperties": False},
            },
            "required": ["city"],
        },
    },
}


def one_platform(kind: str, key: str) -> Any:
    def config_for(upstream_url: str, data_dir: Path) -> str:
        platform = f'\n[[platforms]]\nname = "{kind}"\nkind = "{kind}"\nbase_url = "{upstream_url}"\n'
        return (
            server_toml(data_dir, gateway_key=GATEWAY_KEY)
            + platform
            + f'keys = ["{key}"]\n'
            + (model_toml(kind, "ok", 1))
        )

    return config_for


def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)


@pytest.mark.parametrize("stream", [False, True])
async def test_cloudflare_gets_the_token_alone_and_empty_content_for_null(
    tmp_path: Path, stream: bool
) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, one_platform("cloudflare", f"{ACCOUNT}:{TOKEN}")) as gw:
            async with client(gw.base_url) as sdk:
                if stream:
                    chunks = await sdk.chat.completions.create(model="ok", messages=TOOL_TURNS, stream=True)
                    text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                else:
                    answer = await sdk.chat.completions.create(model="ok", messages=TOOL_TURNS)
                    text = answer.choices[0].message.content or ""
            assert text
            (seen,) = [r for r in gw.upstream.requests if r.path == "/v1/chat/completions"]
            assert seen.api_key == TOKEN  # the account stays out of the credential
            assert seen.body is not None
            assert [m.get("content") for m in seen.body["messages"]] == ["weather in Oslo?", "", "sunny"]
            assert seen.body["messages"][1]["tool_calls"][0]["id"] == "t1"


@pytest.mark.parametrize("stream", [False, True])
async def test_cohere_gets_tool_schemas_it_accepts(tmp_path: Path, stream: bool) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, one_platform("cohere", "co-key-e2e-0123456789")) as gw:
            async with client(gw.base_url) as sdk:
                messages: Any = [{"role": "user", "content": "hi"}]
                tools: Any = [STRICT_TOOL]
                if stream:
                    chunks = await sdk.chat.completions.create(
                        model="ok", messages=messages, tools=tools, parallel_tool_calls=False, stream=True
                    )
                    async for _ in chunks:
                        pass
                else:
                    await sdk.chat.completions.create(
                        model="ok", messages=messages, tools=tools, parallel_tool_calls=False
                    )
            (seen,) = [r for r in gw.upstream.requests if r.path == "/v1/chat/completions"]
            assert seen.api_key == "co-key-e2e-0123456789" and seen.body is not None
            assert "parallel_tool_calls" not in seen.body
            assert seen.body["tools"][0]["function"]["parameters"] == {
                "type": "object",
                "properties": {"city": {"type": "string"}, "when": {"type": "object"}},
                "required": ["city"],
            }
            assert seen.body["tools"][0]["function"]["strict"] is True
