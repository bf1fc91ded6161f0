"""`/v1/responses` end to end: the official openai SDK's `responses` client against a real gateway in front
of the fault upstream. What the upstream saw (`gw.upstream.requests`) shows the translation to the chat
form; the SDK's parsed objects and events show the translation back. Stalls run on the MockClock
(tests/e2e/conftest.py), read with httpx where the SDK would hide the keep-alive comments."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import trio
from harness import running_gateway
from test_openai_sdk import async_client
from test_streams import AUTH, FAST, events_of

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

MODELS = ["ok", "echo", "tool-once"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


def chat_messages(gw, n: int = -1) -> list[dict]:
    """The messages of the upstream's n-th chat request."""
    chats = [r for r in gw.upstream.requests if r.path == "/v1/chat/completions"]
    return chats[n].body["messages"]


async def test_a_plain_response_is_the_chat_answer_as_a_response_object(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                raw = await client.responses.with_raw_response.create(
                    model="ok", input="hi", instructions="Be brief.", max_output_tokens=50, temperature=0.5
                )
                resp = raw.parse()
            finally:
                await client.close()
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
    assert resp.output_text == "Hello from ok."
    assert resp.model == "local/ok" and raw.headers["x-routed-via"] == "local/ok"
    assert raw.headers["x-fallback-attempts"] == "0" and raw.headers["x-request-id"].startswith("req_")
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.instructions == "Be brief." and resp.max_output_tokens == 50 and resp.temperature == 0.5
    assert resp.store is True and resp.error is None and resp.previous_response_id is None
    sent = [r for r in gw.upstream.requests if r.path == "/v1/chat/completions"][-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5
    (received,) = events_of(gw.data_dir, "request_received")
    assert received.protocol == "responses"
    (stored,) = events_of(gw.data_dir, "response_stored")
    assert stored.response_id == resp.id and json.loads(stored.response)["output"][0]["id"] == message.id


async def test_a_streamed_response_is_numbered_events_ending_with_the_whole_response(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                stream = await client.responses.create(model="ok", input="hi", stream=True)
                events = [event async for event in stream]
                async with client.responses.stream(model="echo", input="say this back") as helper:
                    async for _ in helper:
                        pass
                    final = await helper.get_final_response()
            finally:
                await client.close()
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from ok."
    assert events[1].response.status == "in_progress" and events[1].response.model == "local/ok"
    done = events[-1].response
    assert done.status == "completed" and done.output_text == "Hello from ok." and done.usage is not None
    assert done.usage.input_tokens > 0 and done.usage.output_tokens == 3  # the upstream's own count
    assert final.output_text == "say this back" and final.status == "completed"


async def test_a_function_call_round_trip(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                first = await client.responses.create(
                    model="tool-once", input="Weather in Paris?", tools=[WEATHER], store=False
                )
                (call,) = first.output
                assert call.type == "function_call" and call.name == "get_weather"
                assert call.id.startswith("fc_") and call.status == "completed"
                assert json.loads(call.arguments) == {"city": "example"}
                history = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump()]
                output = {"type": "function_call_output", "call_id": call.call_id, "output": "22C and sunny"}
                stream = await client.responses.create(
                    model="tool-once", input=[*history, output], tools=[WEATHER], stream=True
                )
                events = [event async for event in stream]
                # The same turn continued from the stored call: only the output is sent this time.
                stored = await client.responses.create(
                    model="tool-once", input="Weather in Oslo?", tools=[WEATHER]
                )
                (stored_call,) = stored.output
                answer = await client.responses.create(
                    model="tool-once",
                    input=[{"type": "function_call_output", "call_id": stored_call.call_id, "output": "-3C"}],
                    tools=[WEATHER],
                    previous_response_id=stored.id,
                )
            finally:
                await client.close()
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "The tool said: 22C and sunny."
    assert answer.output_text == "The tool said: -3C."
    assert chat_messages(gw) == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": stored_call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": stored_call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": stored_call.call_id, "content": "-3C"},
    ]
    sent = chat_messages(gw, 1)
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "22C and sunny"}
    tools = [r for r in gw.upstream.requests if r.path == "/v1/chat/completions"][1].body["tools"]
    assert tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": False,
            },
        }
    ]


async def test_a_streamed_function_call_has_its_own_item_and_argument_events(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                stream = await client.responses.create(
                    model="ok", input="Weather in Paris?", tools=[WEATHER], stream=True
                )
                events = [event async for event in stream]
            finally:
                await client.close()
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (item,) = events[-1].response.output
    assert item.type == "function_call" and item.name == "get_weather" and item.arguments == "{}"
    assert events[2].item.id == item.id and events[3].output_index == 0


async def test_previous_response_id_sends_the_whole_conversation(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                one = await client.responses.create(model="echo", input="first", instructions="Old rules.")
                two = await client.responses.create(model="echo", input="second", previous_response_id=one.id)
                three = await client.responses.create(
                    model="echo",
                    input=[{"role": "user", "content": [{"type": "input_text", "text": "third"}]}],
                    previous_response_id=two.id,
                    instructions="New rules.",
                    stream=True,
                )
                final = [e async for e in three][-1].response
            finally:
                await client.close()
    assert two.previous_response_id == one.id and final.output_text == "third"
    # Instructions belong to their own turn (OpenAI's rule): turn one's are not carried over.
    assert chat_messages(gw, 1) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "second"},
    ]
    assert chat_messages(gw, 2) == [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "second"},
        {"role": "user", "content": "third"},
    ]


async def test_store_false_and_deleted_responses_are_not_found(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                unstored = await client.responses.create(model="ok", input="hi", store=False)
                with pytest.raises(openai.BadRequestError) as refused:
                    await client.responses.create(model="ok", input="on", previous_response_id=unstored.id)
                kept = await client.responses.create(model="ok", input="hi")
                got = await client.responses.retrieve(kept.id)
                deleted = await client.responses.delete(kept.id)
                with pytest.raises(openai.NotFoundError) as gone:
                    await client.responses.retrieve(kept.id)
                with pytest.raises(openai.BadRequestError) as after_delete:
                    await client.responses.create(model="ok", input="on", previous_response_id=kept.id)
                with pytest.raises(openai.NotFoundError):
                    await client.responses.delete(kept.id)
            finally:
                await client.close()
    assert unstored.store is False
    for error in (refused.value, after_delete.value):
        assert error.code == "previous_response_not_found" and error.param == "previous_response_id"
    assert got.id == kept.id and got.output_text == "Hello from ok." and got.model_dump() == kept.model_dump()
    assert deleted is None or getattr(deleted, "deleted", True)
    assert gone.value.status_code == 404
    assert [e.response_id for e in events_of(gw.data_dir, "response_deleted")] == [kept.id]
    assert [e.response_id for e in events_of(gw.data_dir, "response_stored")] == [kept.id]


async def test_delete_answers_the_deleted_object(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                kept = await client.responses.create(model="ok", input="hi")
            finally:
                await client.close()
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as http:
                answer = await http.delete(f"/v1/responses/{kept.id}")
                unauthorized = await http.get(
                    f"/v1/responses/{kept.id}", headers={"Authorization": "Bearer x"}
                )
    assert answer.status_code == 200
    assert answer.json() == {"id": kept.id, "object": "response.deleted", "deleted": True}
    assert unauthorized.status_code == 401


async def test_bad_input_is_a_400_naming_the_field(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                with pytest.raises(openai.BadRequestError) as tool:
                    await client.responses.create(model="ok", input="hi", tools=[{"type": "web_search"}])
                with pytest.raises(openai.BadRequestError) as item:
                    await client.responses.create(model="ok", input=[{"type": "item_reference", "id": "x"}])
                with pytest.raises(openai.BadRequestError) as tokens:
                    await client.responses.create(model="ok", input="hi", max_output_tokens=0)
            finally:
                await client.close()
    assert tool.value.param == "tools[0].type" and "function tools only" in tool.value.message
    assert item.value.param == "input[0].type"
    assert tokens.value.param == "max_output_tokens"
    assert not [r for r in gw.upstream.requests if r.path == "/v1/chat/completions"]


async def test_a_fallback_before_content_is_seamless(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["fail:503", "ok"]) as gw:
            client = async_client(gw.base_url)
            try:
                stream = await client.responses.create(
                    model="auto",
                    input="hi",
                    stream=True,
                    extra_body={"models": ["local/fail:503", "local/ok"]},
                )
                events = [e async for e in stream]
            finally:
                await client.close()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events].count("response.created") == 1
    assert events[-1].type == "response.completed"
    assert events[-1].response.model == "local/ok" and events[-1].response.output_text == "Hello from ok."
    assert [r.model for r in gw.upstream.requests if r.path == "/v1/chat/completions"] == ["fail:503", "ok"]


async def _raw_stream(gw, payload: dict) -> tuple[httpx.Response, list[tuple[float, str]]]:
    """The SSE lines with the virtual time each arrived (the SDK hides comments)."""
    start = trio.current_time()
    lines: list[tuple[float, str]] = []
    async with (
        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=120) as http,
        http.stream("POST", "/v1/responses", json=payload) as resp,
    ):
        async for line in resp.aiter_lines():
            if line:
                lines.append((trio.current_time() - start, line))
    return resp, lines


def _events(lines: list[tuple[float, str]]) -> list[dict]:
    return [json.loads(line[6:]) for _, line in lines if line.startswith("data: ")]


async def test_a_stall_before_the_first_token_hears_keepalives_then_the_fallback(tmp_path, clock):
    async with running_gateway(tmp_path, ["stall-pre:30", "ok"], timeouts=FAST) as gw:
        payload = {
            "model": "auto",
            "models": ["local/stall-pre:30", "local/ok"],
            "input": "hi",
            "stream": True,
        }
        resp, lines = await _raw_stream(gw, payload)
    assert resp.status_code == 200
    first_event = next(i for i, (_, line) in enumerate(lines) if line.startswith("event: "))
    keepalives = [t for t, line in lines[:first_event] if line == ": keep-alive"]
    assert len(keepalives) >= 2 and keepalives[0] >= 2  # every keepalive_s while the first model stalls
    events = _events(lines)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["model"] == "local/ok"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Hello from ok."
    assert [s.phase for s in events_of(gw.data_dir, "stream_stalled")] == ["pre"]


async def test_a_failure_after_content_ends_with_response_failed(tmp_path, clock):
    async with running_gateway(tmp_path, ["stall-mid:30", "ok"], timeouts=FAST) as gw:
        client = async_client(gw.base_url)
        try:
            stream = await client.responses.create(
                model="auto",
                input="hi",
                stream=True,
                extra_body={"models": ["local/stall-mid:30", "local/ok"]},
            )
            events = [e async for e in stream]
        finally:
            await client.close()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "stall_mid"
    assert "within 5s" in failed.response.error.message
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and "Hello from ok." not in text  # no silent switch once content went out
    assert failed.response.output[0].content[0].text == text
    assert not events_of(gw.data_dir, "response_stored")  # a failed response is not kept


async def test_a_truncated_answer_is_an_incomplete_response(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["truncated"]) as gw:
            client = async_client(gw.base_url)
            try:
                whole = await client.responses.create(model="truncated", input="hi", max_output_tokens=3)
                stream = await client.responses.create(
                    model="truncated", input="hi", max_output_tokens=3, stream=True
                )
                events = [e async for e in stream]
            finally:
                await client.close()
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


async def test_a_restart_keeps_previous_response_id_working(tmp_path):
    data_dir = tmp_path / "data"
    with trio.fail_after(30):
        async with running_gateway(tmp_path, MODELS, data_dir=data_dir) as gw:
            client = async_client(gw.base_url)
            try:
                one = await client.responses.create(model="echo", input="remember me")
                unstored = await client.responses.create(model="echo", input="forget me", store=False)
            finally:
                await client.close()
        async with running_gateway(tmp_path, MODELS, data_dir=data_dir) as gw:
            client = async_client(gw.base_url)
            try:
                two = await client.responses.create(model="echo", input="again", previous_response_id=one.id)
                got = await client.responses.retrieve(one.id)
                with pytest.raises(openai.BadRequestError):
                    await client.responses.create(model="echo", input="x", previous_response_id=unstored.id)
            finally:
                await client.close()
    assert two.output_text == "again" and got.output_text == "remember me"
    assert chat_messages(gw) == [
        {"role": "user", "content": "remember me"},
        {"role": "assistant", "content": "remember me"},
        {"role": "user", "content": "again"},
    ]
    assert gw.runtime.responses.statistics().indexed == 2


async def test_a_chain_with_a_turn_deleted_in_the_middle_names_that_turn(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, MODELS) as gw:
            client = async_client(gw.base_url)
            try:
                first = await client.responses.create(model="echo", input="one")
                second = await client.responses.create(
                    model="echo", input="two", previous_response_id=first.id
                )
                third = await client.responses.create(
                    model="echo", input="three", previous_response_id=second.id
                )
                await client.responses.delete(second.id)
                with pytest.raises(openai.BadRequestError) as refused:
                    await client.responses.create(model="echo", input="four", previous_response_id=third.id)
            finally:
                await client.close()
    error = refused.value
    assert error.code == "previous_response_not_found" and error.param == "previous_response_id"
    assert f"'{third.id}' continues response '{second.id}', which is not found" in error.message
