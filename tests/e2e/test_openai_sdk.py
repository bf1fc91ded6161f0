"""The official `openai` SDK as the client: what real applications will point at the gateway.

Both SDK clients are exercised. The sync `openai.OpenAI` blocks, so it runs in a worker thread while the
gateway keeps serving on the trio thread. The async `openai.AsyncOpenAI` works under trio as it is: the SDK
talks through its vendored `httpx2` and sleeps through `anyio`, both of which run on trio. Two caveats,
both the SDK's own: its streams leave async generators (`openai._streaming`, `httpx2`, `httpcore2`) for
the garbage collector, which trio reports as a ResourceWarning (filtered below, as the project filters the
same warning from httpx), and its client `__del__` only knows asyncio, so clients are closed explicitly.
"""

from __future__ import annotations

from functools import partial

import openai
import pytest
import trio
from harness import GATEWAY_KEY, running_gateway
from openai.types.chat import ChatCompletion

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

HELLO = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MODELS = ["ok", "echo"]


def sync_client(base_url: str, api_key: str = GATEWAY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=10)


def async_client(base_url: str, api_key: str = GATEWAY_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=10)


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


# ---- sync client -------------------------------------------------------------------------------------


async def test_sync_client_non_streaming(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.base_url) as client:
                completion = await in_thread(client.chat.completions.create, model="ok", messages=HELLO)
                echoed = await in_thread(
                    client.chat.completions.create,
                    model="echo",
                    messages=[{"role": "user", "content": "say this back"}],
                )
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "Hello from ok."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "ok"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert echoed.choices[0].message.content == "say this back"


async def test_sync_client_streaming(tmp_path):
    def run(client: openai.OpenAI) -> tuple[list[str], list[str | None], object]:
        stream = client.chat.completions.create(
            model="ok", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        texts, finishes, usage = [], [], None
        with stream:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        texts.append(choice.delta.content)
                    finishes.append(choice.finish_reason)
                usage = chunk.usage or usage
        return texts, finishes, usage

    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.base_url) as client:
                texts, finishes, usage = await in_thread(run, client)
    assert "".join(texts) == "Hello from ok."
    assert len(texts) == 3  # one chunk per piece: the gateway relays frames, it does not re-chunk
    assert finishes[-1] == "stop"
    assert usage is not None and usage.completion_tokens == 3


async def test_sync_client_tool_calls(tmp_path):
    def run(client: openai.OpenAI):
        completion = client.chat.completions.create(model="ok", messages=HELLO, tools=[WEATHER_TOOL])
        with client.chat.completions.stream(model="ok", messages=HELLO, tools=[WEATHER_TOOL]) as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_completion()
        return completion, streamed

    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.base_url) as client:
                completion, streamed = await in_thread(run, client)
    for result in (completion, streamed):
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert calls is not None and len(calls) == 1
        assert calls[0].type == "function"
        assert calls[0].function.name == "get_weather"
        assert calls[0].function.arguments == "{}"
        assert calls[0].id.startswith("call_")


async def test_sync_client_models(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.base_url) as client:
                page = await in_thread(client.models.list)
                model = await in_thread(client.models.retrieve, "local/ok")
                bare = await in_thread(client.models.retrieve, "ok")
                virtual = await in_thread(client.models.retrieve, "auto")
    ids = [m.id for m in page.data]
    assert ids == ["auto", "auto-smart", "auto-fast", "local/ok", "local/echo"]
    assert all(m.object == "model" for m in page.data)
    assert (model.id, model.owned_by) == ("local/ok", "local")
    assert bare.id == "local/ok"
    assert (virtual.id, virtual.owned_by) == ("auto", "switchboard")


async def test_sync_client_errors_are_the_sdk_exceptions(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.base_url, api_key="sk-wrong") as wrong, sync_client(gw.base_url) as client:
                with pytest.raises(openai.AuthenticationError) as auth:
                    await in_thread(wrong.chat.completions.create, model="ok", messages=HELLO)
                with pytest.raises(openai.NotFoundError) as missing:
                    await in_thread(client.chat.completions.create, model="no-such-model", messages=HELLO)
                with pytest.raises(openai.NotFoundError) as missing_model:
                    await in_thread(client.models.retrieve, "local/no-such-model")
                with pytest.raises(openai.BadRequestError) as no_messages:
                    await in_thread(
                        client.post, "/chat/completions", cast_to=ChatCompletion, body={"model": "ok"}
                    )
                with pytest.raises(openai.BadRequestError) as empty_messages:
                    await in_thread(client.chat.completions.create, model="ok", messages=[])
    assert auth.value.status_code == 401
    assert auth.value.code == "invalid_api_key"
    assert missing.value.code == "model_not_found"
    assert "no-such-model" in missing.value.message
    assert missing_model.value.code == "model_not_found"
    assert (no_messages.value.code, no_messages.value.param) == ("missing_required_parameter", "messages")
    assert empty_messages.value.param == "messages"
    for exc in (auth, missing, no_messages, empty_messages):
        assert exc.value.response.headers["x-request-id"].startswith("req_")
        assert exc.value.request_id is None or exc.value.request_id.startswith("req_")


# ---- async client (under trio) ------------------------------------------------------------------------


async def test_async_client_non_streaming_and_streaming(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw, async_client(gw.base_url) as client:
            completion = await client.chat.completions.create(model="ok", messages=HELLO)
            stream = await client.chat.completions.create(
                model="echo", stream=True, messages=[{"role": "user", "content": "one two three"}]
            )
            texts = []
            async with stream:
                async for chunk in stream:
                    texts.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert completion.choices[0].message.content == "Hello from ok."
    assert "".join(texts) == "one two three"


async def test_async_client_tool_calls(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw, async_client(gw.base_url) as client:
            completion = await client.chat.completions.create(
                model="ok", messages=HELLO, tools=[WEATHER_TOOL], tool_choice="auto"
            )
            stream = await client.chat.completions.create(
                model="ok", messages=HELLO, tools=[WEATHER_TOOL], stream=True
            )
            deltas = []
            finish = None
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        deltas.extend(choice.delta.tool_calls or ())
                        finish = choice.finish_reason or finish
    call = completion.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", "{}")
    assert finish == "tool_calls"
    assert deltas[0].index == 0 and deltas[0].id.startswith("call_")
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == "{}"


async def test_async_client_models_and_errors(tmp_path):
    with trio.fail_after(20):
        async with (
            running_gateway(tmp_path, MODELS) as gw,
            async_client(gw.base_url) as client,
            async_client(gw.base_url, "sk-wrong") as wrong,
        ):
            page = await client.models.list()
            model = await client.models.retrieve("local/ok")
            with pytest.raises(openai.AuthenticationError):
                await wrong.chat.completions.create(model="ok", messages=HELLO)
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="no-such-model", messages=HELLO)
            with pytest.raises(openai.BadRequestError) as bad:
                await client.post("/chat/completions", cast_to=ChatCompletion, body={"model": "ok"})
    assert "local/echo" in [m.id for m in page.data]
    assert model.id == "local/ok"
    assert bad.value.param == "messages"


async def test_async_client_upstream_failure_is_an_sdk_error_not_a_hang(tmp_path):
    """Every candidate failing (before any content) reaches the SDK as an HTTP error, streaming or not."""
    with trio.fail_after(20):
        # Two models: a model whose every key failed cools down, and the second request would not try it.
        async with (
            running_gateway(tmp_path, ["fail:503", "fail:500"]) as gw,
            async_client(gw.base_url) as client,
        ):
            with pytest.raises(openai.APIStatusError) as plain:
                await client.chat.completions.create(
                    model="fail:503", messages=HELLO, extra_body={"fallback": False}
                )
            with pytest.raises(openai.APIStatusError) as streamed:
                await client.chat.completions.create(
                    model="fail:500", messages=HELLO, stream=True, extra_body={"fallback": False}
                )
    assert plain.value.status_code == streamed.value.status_code == 502
    assert plain.value.code == "all_attempts_failed"
    assert "local/fail:503" in plain.value.message
    assert "local/fail:500" in streamed.value.message
