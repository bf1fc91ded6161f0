"""The official `anthropic` SDK as the client of `/v1/messages`: the same routing, fallback, deadlines,
commit contract and sessions as chat, in Anthropic's shapes.

The sync `anthropic.Anthropic` runs in a worker thread while the gateway serves on the trio thread (as the
openai tests do). Tests on trio's MockClock (stalls) use the async client, which runs on trio itself
(anyio), so its waits follow the virtual clock too; its streams leave async generators for the garbage
collector, which trio reports as a ResourceWarning (filtered, as the openai tests filter theirs).
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import pytest
import trio
from custom_gateway import read_log, settled
from harness import GATEWAY_KEY, gateway_from, running_gateway
from test_fast_route import with_server
from test_gemini_gateway import gemini_platform

import service.app
from events.types import RequestReceived, RouteDecided, SessionPinned, StreamStalled

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(anthropic\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
FAST = "first_byte_s = 5\nstall_s = 5\nkeepalive_s = 2"
MODELS = ["ok", "echo"]


def sync_client(url: str, **auth: str) -> anthropic.Anthropic:
    auth = auth or {"api_key": GATEWAY_KEY}
    return anthropic.Anthropic(base_url=url, max_retries=0, timeout=10, **auth)


def async_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=GATEWAY_KEY, max_retries=0, timeout=60)


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def events(data_dir: Any, kind: type) -> list[Any]:
    return [e for e in read_log(data_dir) if isinstance(e, kind)]


# ---- answers ------------------------------------------------------------------------------------------


async def test_create_answers_a_message_routed_like_chat(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.url) as client:
                raw = await in_thread(
                    client.messages.with_raw_response.create,
                    model="local/ok",
                    max_tokens=100,
                    system="Be brief.",
                    messages=HELLO,
                )
                message = raw.parse()
                # Claude Code calls the beta resource: the same routes, with `?beta=true`.
                beta = await in_thread(
                    client.beta.messages.create,
                    model="local/ok",
                    max_tokens=100,
                    messages=HELLO,
                    betas=["interleaved-thinking-2025-05-14"],
                )
                counted = await in_thread(client.beta.messages.count_tokens, model="local/ok", messages=HELLO)
    assert beta.content[0].text == "Hello from ok." and counted.input_tokens > 0
    assert gw.upstream.requests[-1].path.endswith("/chat/completions")
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from ok."
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.model == "local/ok"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-routed-via"] == "local/ok"
    received, _ = events(gw.data_dir, RequestReceived)
    assert received.protocol == "messages"
    assert message.id.removeprefix("msg_") == received.request_id.removeprefix("req_")
    sent = gw.upstream.requests[0].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert sent["max_tokens"] == 100


async def test_claude_codes_large_max_tokens_is_capped_unless_configured_otherwise(tmp_path):
    for extra, sent in (("", 8192), ('[messages]\nmax_tokens_cap = "unlimited"\n', 32000)):
        (tmp_path / str(sent)).mkdir()
        with trio.fail_after(20):
            async with running_gateway(tmp_path / str(sent), MODELS, extra=extra) as gw:
                with sync_client(gw.url) as client:
                    message = await in_thread(
                        client.messages.create, model="local/ok", max_tokens=32000, messages=HELLO
                    )
        assert message.content[0].text == "Hello from ok."
        assert gw.upstream.requests[-1].body["max_tokens"] == sent


async def test_stream_gives_text_and_the_final_message(tmp_path):
    def run(client: anthropic.Anthropic) -> tuple[list[str], Any]:
        with client.messages.stream(model="local/ok", max_tokens=100, messages=HELLO) as stream:
            texts = list(stream.text_stream)
            return texts, stream.get_final_message()

    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.url) as client:
                texts, final = await in_thread(run, client)
    assert "".join(texts) == "Hello from ok."
    assert len(texts) == 3  # one text_delta per upstream chunk: streamed, not buffered
    assert final.content[0].text == "Hello from ok."
    assert final.stop_reason == "end_turn"
    assert final.model == "local/ok"
    assert final.usage.output_tokens > 0


async def test_a_tool_round_trip(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.url) as client:
                first = await in_thread(
                    client.messages.create,
                    model="local/ok",
                    max_tokens=100,
                    tools=[WEATHER],
                    tool_choice={"type": "any", "disable_parallel_tool_use": True},
                    messages=[{"role": "user", "content": "weather in Paris?"}],
                )
                [call] = first.content
                second = await in_thread(
                    client.messages.create,
                    model="local/echo",
                    max_tokens=100,
                    tools=[WEATHER],
                    messages=[
                        {"role": "user", "content": "weather in Paris?"},
                        {"role": "assistant", "content": first.content},
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                                {"type": "text", "text": "thanks, and tomorrow"},
                            ],
                        },
                    ],
                )
                streamed = await in_thread(
                    lambda: (
                        client.messages.stream(
                            model="local/ok", max_tokens=100, tools=[WEATHER], messages=HELLO
                        )
                        .__enter__()
                        .get_final_message()
                    )
                )
    assert first.stop_reason == "tool_use"
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {}
    first_sent = gw.upstream.requests[0].body
    assert first_sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "Weather in a city",
            },
        }
    ]
    assert first_sent["tool_choice"] == "required" and first_sent["parallel_tool_calls"] is False
    # The second turn reaches the provider as chat's tool-call history: the call, its result, the text.
    sent = gw.upstream.requests[1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    assert sent[3] == {"role": "user", "content": "thanks, and tomorrow"}
    assert second.content[0].text == "thanks, and tomorrow"
    assert second.stop_reason == "end_turn"
    [block] = streamed.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {}
    assert streamed.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_3_tool_loop_works_though_the_sdk_drops_the_thought_signature(tmp_path, stream):
    # The anthropic SDK's tool_use block has no place for Gemini's thoughtSignature, so the call comes back
    # unsigned; `signed-tool-once` refuses that as Gemini 3 does, unless the adapter sends Google's dummy.
    def turn(client: anthropic.Anthropic, messages: list[Any]) -> Any:
        ask = {"model": "signed-tool-once", "max_tokens": 100, "tools": [WEATHER], "messages": messages}
        if not stream:
            return client.messages.create(**ask)
        with client.messages.stream(**ask) as answer:
            return answer.get_final_message()

    question = {"role": "user", "content": "weather in Paris?"}
    with trio.fail_after(20):
        async with gateway_from(tmp_path, gemini_platform("signed-tool-once")) as gw:
            with sync_client(gw.url) as client:
                first = await in_thread(turn, client, [question])
                [call] = first.content
                result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
                history = [question, {"role": "assistant", "content": first.content}]
                second = await in_thread(turn, client, [*history, {"role": "user", "content": [result]}])
                history += [
                    {"role": "user", "content": [result]},
                    {"role": "assistant", "content": second.content},
                ]
                third = await in_thread(
                    turn, client, [*history, {"role": "user", "content": "and tomorrow?"}]
                )
            sent = [r.body for r in gw.upstream.requests if r.path.startswith("/v1beta/models/")]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "example"}
    assert second.stop_reason == "end_turn" and second.content[0].text == "The tool said: sunny."
    [model_step] = [c for c in sent[1]["contents"] if c["role"] == "model"]
    assert model_step["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    # Each answer names its calls afresh: the history holds no two calls with one id.
    [again] = third.content
    assert again.type == "tool_use" and again.id != call.id


async def test_count_tokens_estimates_without_calling_a_provider(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.url) as client:
                small = await in_thread(client.messages.count_tokens, model="claude-x", messages=HELLO)
                large = await in_thread(
                    client.messages.count_tokens,
                    model="claude-x",
                    system="s" * 400,
                    tools=[WEATHER],
                    messages=[{"role": "user", "content": "x" * 4000}],
                )
    assert small.input_tokens > 0
    assert large.input_tokens > small.input_tokens + 1000  # 4,400 characters: about 1,100 tokens more
    assert gw.upstream.requests == []


# ---- auth and errors ----------------------------------------------------------------------------------


async def test_auth_by_x_api_key_or_bearer_and_a_wrong_key_is_an_authentication_error(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with (
                sync_client(gw.url, api_key=GATEWAY_KEY) as by_key,
                sync_client(gw.url, auth_token=GATEWAY_KEY) as by_bearer,
                sync_client(gw.url, api_key="sk-wrong-0123456789") as wrong,
            ):
                ok = [
                    await in_thread(c.messages.create, model="local/ok", max_tokens=10, messages=HELLO)
                    for c in (by_key, by_bearer)
                ]
                with pytest.raises(anthropic.AuthenticationError) as refused:
                    await in_thread(wrong.messages.create, model="local/ok", max_tokens=10, messages=HELLO)
                with pytest.raises(anthropic.AuthenticationError):
                    await in_thread(wrong.messages.count_tokens, model="local/ok", messages=HELLO)
    assert [m.content[0].text for m in ok] == ["Hello from ok."] * 2
    assert refused.value.status_code == 401
    assert refused.value.type == "authentication_error"
    assert "x-api-key" in refused.value.message and GATEWAY_KEY not in refused.value.message


async def test_bad_input_is_a_bad_request_naming_the_field(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.url) as client:
                create = partial(in_thread, client.messages.create, model="local/ok")
                with pytest.raises(anthropic.BadRequestError) as zero_max:
                    await in_thread(
                        client.messages.with_raw_response.create,
                        model="local/ok",
                        messages=HELLO,
                        max_tokens=0,
                    )
                with pytest.raises(anthropic.BadRequestError) as server_tool:
                    await create(
                        max_tokens=10,
                        messages=HELLO,
                        tools=[{"type": "web_search_20250305", "name": "web_search"}],
                    )
                with pytest.raises(anthropic.BadRequestError) as block:
                    await create(
                        max_tokens=10,
                        messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}],
                    )
    assert zero_max.value.type == "invalid_request_error" and "max_tokens" in zero_max.value.message
    assert "tools[0].type" in server_tool.value.message
    assert "messages[0].content[0].type" in block.value.message
    assert gw.upstream.requests == []


@pytest.mark.parametrize(
    ("served", "model", "error", "status", "kind"),
    [
        ("ok", "no-such-model", anthropic.NotFoundError, 404, "not_found_error"),
        ("rate-limit:30", "local/rate-limit:30", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("fail:503", "local/fail:503", anthropic.InternalServerError, 502, "api_error"),
    ],
)
async def test_no_usable_model_raises_the_sdk_class_of_its_status(
    tmp_path, served, model, error, status, kind
):
    with trio.fail_after(20):
        # The gateway's only model: no other answers in its place.
        async with running_gateway(tmp_path, [served]) as gw:
            with sync_client(gw.url) as client:
                with pytest.raises(error) as raised:
                    await in_thread(client.messages.create, model=model, max_tokens=10, messages=HELLO)
    assert raised.value.status_code == status and raised.value.type == kind
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "30"


# ---- fallback, stalls and failures after content -------------------------------------------------------


async def test_a_failing_first_model_falls_back_to_the_second(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["fail:500", "ok"]) as gw:
            with sync_client(gw.url) as client:
                raw = await in_thread(
                    client.messages.with_raw_response.create,
                    model="local/fail:500",
                    max_tokens=10,
                    messages=HELLO,
                )
    message = raw.parse()
    assert message.content[0].text == "Hello from ok." and message.model == "local/ok"
    assert raw.headers["x-fallback-attempts"] == "1"


async def test_a_stall_before_the_first_token_pings_then_the_fallback_answers(tmp_path, clock):
    body = {"model": "local/stall-pre:30", "max_tokens": 10, "messages": HELLO}
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
    # Two gateways: a stalled model cools down, so a second request to the same one would not stall.
    (tmp_path / "wire").mkdir()
    (tmp_path / "sdk").mkdir()
    async with running_gateway(tmp_path / "wire", ["stall-pre:30", "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60) as http:
            async with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as resp:
                wire = [line async for line in resp.aiter_lines() if line]
    wire_stalls = events(gw.data_dir, StreamStalled)
    async with running_gateway(tmp_path / "sdk", ["stall-pre:30", "ok"], timeouts=FAST) as gw:
        client = async_client(gw.url)
        try:
            async with client.messages.stream(**body) as stream:
                texts = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
        finally:
            await client.close()
    sdk_stalls = events(gw.data_dir, StreamStalled)
    assert resp.status_code == 200
    kinds = [line.removeprefix("event: ") for line in wire if line.startswith("event: ")]
    # Pings every 2 s until the 5 s first-byte deadline, then the fallback's whole message.
    assert kinds == [
        "ping",
        "ping",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert wire[1] == 'data: {"type": "ping"}'
    start = json.loads(wire[wire.index("event: message_start") + 1].removeprefix("data: "))
    assert start["message"]["model"] == "local/ok"
    assert "".join(texts) == "Hello from ok." and final.model == "local/ok"
    assert [s.phase for s in wire_stalls] == [s.phase for s in sdk_stalls] == ["pre"]


async def test_an_error_after_content_reaches_the_sdk_as_an_error_event(tmp_path, clock):
    async with running_gateway(tmp_path, ["stall-mid:30", "fail-mid", "ok"], timeouts=FAST) as gw:
        client = async_client(gw.url)
        seen: dict[str, list[str]] = {}
        raised: dict[str, anthropic.APIStatusError] = {}
        try:
            for model in ("local/stall-mid:30", "local/fail-mid"):
                seen[model] = []
                with pytest.raises(anthropic.APIStatusError) as caught:
                    async with client.messages.stream(model=model, max_tokens=10, messages=HELLO) as stream:
                        async for text in stream.text_stream:
                            seen[model].append(text)
                raised[model] = caught.value
        finally:
            await client.close()
    stalled, failed = raised["local/stall-mid:30"], raised["local/fail-mid"]
    assert seen["local/stall-mid:30"] and seen["local/fail-mid"]  # content came before the error
    assert stalled.type == "timeout_error" and "stalled" in (stalled.api_message or "")
    assert failed.type == "api_error"
    assert [s.phase for s in events(gw.data_dir, StreamStalled)] == ["mid"]


# ---- Claude model names and sessions ------------------------------------------------------------------


async def test_a_claude_model_name_routes_by_the_configured_mode(tmp_path):
    extra = '[messages]\nclaude_model = "local/echo"'
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS, extra=extra) as gw:
            with sync_client(gw.url) as client:
                raw = await in_thread(
                    client.messages.with_raw_response.create,
                    model="claude-Sonnet-4-5-20250929",
                    max_tokens=10,
                    messages=[{"role": "user", "content": "routed by the mode"}],
                )
                other = await in_thread(
                    client.messages.create, model="local/ok", max_tokens=10, messages=HELLO
                )
    assert raw.headers["x-routed-via"] == "local/echo"
    assert raw.parse().content[0].text == "routed by the mode"
    assert other.model == "local/ok"  # any other name routes as chat would
    first, second = events(gw.data_dir, RouteDecided)
    assert first.input.requested == ("local/echo",) and first.chosen_ref == "local/echo"
    assert second.input.requested == ("local/ok",)


async def test_the_claude_code_session_header_pins_the_conversation(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["a", "b", "c"]) as gw:
            with sync_client(gw.url) as client:
                history: list[dict[str, Any]] = []
                request_ids, routed = [], []
                for n in range(3):
                    history.append({"role": "user", "content": f"question {n}"})
                    raw = await in_thread(
                        client.messages.with_raw_response.create,
                        model="auto",  # balanced mode pins only when the client names its session
                        max_tokens=10,
                        messages=history,
                        extra_headers={"X-Claude-Code-Session-Id": "claude-code-session-1"},
                    )
                    history.append({"role": "assistant", "content": raw.parse().content})
                    request_ids.append(raw.headers["x-request-id"])
                    routed.append(raw.headers["x-routed-via"])
                    await settled(gw)
    assert len(set(routed)) == 1
    flags = [d.pin_used for d in events(gw.data_dir, RouteDecided)]
    assert flags == [False, True, True]
    pins = events(gw.data_dir, SessionPinned)
    assert len(pins) == 3 and len({p.session for p in pins}) == 1
    assert [d.request_id for d in events(gw.data_dir, RouteDecided)] == request_ids


# ---- the fast route's own answers, in Anthropic's shape -----------------------------------------------


def anthropic_shaped(resp: httpx.Response, kind: str) -> str:
    body = resp.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    return str(body["error"]["message"])


async def test_the_edges_refusals_are_anthropic_errors(tmp_path, clock):
    headers = {"x-api-key": GATEWAY_KEY}
    body = {"model": "local/ok", "max_tokens": 5, "messages": HELLO}
    async with gateway_from(tmp_path, with_server("max_body_mb = 0.001")) as gw:  # 1,048 bytes
        async with httpx.AsyncClient(base_url=gw.url, timeout=100) as http:
            too_large = await http.post("/v1/messages", headers=headers, json={**body, "system": "x" * 2000})
            not_allowed = await http.get("/v1/messages/count_tokens", headers=headers)
            where = urlsplit(gw.url)
            stream = await trio.open_tcp_stream(where.hostname or "127.0.0.1", where.port or 80)
            async with stream:
                await stream.send_all(
                    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                    + f"x-api-key: {GATEWAY_KEY}\r\n".encode()
                    + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
                )
                late = b""
                while b"timeout_error" not in late:  # the whole answer, before hanging up
                    late += await stream.receive_some(4096)
            guesses = [
                (await http.post("/v1/messages", json=body, headers={"x-api-key": "sk-guess"})).status_code
                for _ in range(21)
            ]
            throttled = await http.post("/v1/messages", json=body, headers=headers)
    assert too_large.status_code == 413
    assert "max_body_mb" in anthropic_shaped(too_large, "request_too_large")
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    assert "POST" in anthropic_shaped(not_allowed, "invalid_request_error")
    assert late.startswith(b"HTTP/1.1 408") and b'"type":"error"' in late
    assert guesses == [401] * 21
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
    anthropic_shaped(throttled, "rate_limit_error")


async def test_a_bug_on_the_messages_route_is_an_sdk_internal_server_error(tmp_path, monkeypatch):
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    protocols = tuple(
        dataclasses.replace(p, handle=broken) if p.path == "/v1/messages" else p
        for p in service.app.PROTOCOLS
    )
    monkeypatch.setattr(service.app, "PROTOCOLS", protocols)
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            with sync_client(gw.url) as client:
                with pytest.raises(anthropic.InternalServerError) as failed:
                    await in_thread(client.messages.create, model="local/ok", max_tokens=5, messages=HELLO)
    assert failed.value.status_code == 500 and failed.value.type == "api_error"
    assert failed.value.response.headers["x-request-id"] in (failed.value.api_message or "")
