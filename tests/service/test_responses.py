"""The Responses API translation both ways (service/responses.py), from fixtures written from the documented
shapes (tests/service/fixtures/responses/): a request with every item kind -> the chat body; a chat
completion -> the Response object; chat chunks -> the Responses event stream. What we render is also
validated by the openai SDK's own (pydantic) types, the shapes its users parse."""

from __future__ import annotations

import json
import typing
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from actors.responses import ResponseRetention, TooLong
from actors.stream import Routed
from events.attempts import Failure
from events.frames import Chunk
from service.config import ConfigError, load_config
from service.edge import BadRequest
from service.responses import (
    ResponseShell,
    ResponsesRender,
    Turn,
    parse_responses_request,
    response_of,
    stored_turn,
    too_long_chain,
)
from service.server import routing_settings

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
# The SDK's event classes by their `type` (validating against the whole union reports every member's errors).
EVENT_TYPES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


def validated(event: dict[str, Any]) -> None:
    """The SDK's strict type takes the event. A failure's `error.code` is ours (`stall_mid`, ...), which the
    SDK's Literal does not list (its parser is lenient at run time, so clients read it as it is)."""
    if event["type"] == "response.failed":
        event = {
            **event,
            "response": {
                **event["response"],
                "error": {**event["response"]["error"], "code": "server_error"},
            },
        }
    EVENT_TYPES[event["type"]].model_validate(event)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """An async method that awaits nothing that suspends (no trio needed)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("it suspended")


def masked(node: Any) -> Any:
    """Generated ids as their prefix (`resp_X`, `msg_X`, `fc_X`): the rest is random."""
    if isinstance(node, dict):
        return {
            k: (v.split("_")[0] + "_X" if k == "id" and isinstance(v, str) and "_" in v else masked(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [masked(v) for v in node]
    return node


def shell(**echo: Any) -> ResponseShell:
    call = parse_responses_request(msgspec.json.encode({"model": "ok", "input": "hi", **echo}))
    return ResponseShell("resp_abc", 1700000001, call.echo, "ok")


# ---- requests --------------------------------------------------------------------------------------------


def test_every_input_item_kind_becomes_its_chat_message() -> None:
    case = fixture("request_items.json")
    call = parse_responses_request(msgspec.json.encode(case["request"]))
    req = call.chat_request([], "req_1", "s-1")
    assert req.body == case["chat"]
    assert req.requested == tuple(case["requested"])
    assert req.protocol == "responses" and req.stream is False and req.session_header == "s-1"
    assert req.est_tokens > 1000  # the image's allowance: estimated as chat does
    assert call.store is False and call.previous_response_id is None
    assert call.echo["metadata"] == {"ticket": "42"} and call.echo["truncation"] == "auto"
    # This turn's messages, as a stored response keeps them: no instructions.
    assert call.messages == case["chat"]["messages"][1:]


def test_a_string_input_with_history_and_instructions() -> None:
    call = parse_responses_request(b'{"input": "again", "instructions": "Be kind.", "stream": true}')
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    req = call.chat_request(history, "req_2", None)
    assert req.body["messages"] == [
        {"role": "system", "content": "Be kind."},
        *history,
        {"role": "user", "content": "again"},
    ]
    assert req.requested == ("auto",) and req.stream
    assert req.body["stream_options"] == {"include_usage": True}


def test_tool_settings_go_to_the_provider_only_with_tools() -> None:
    call = parse_responses_request(b'{"input": "hi", "tool_choice": "none", "parallel_tool_calls": false}')
    assert "tool_choice" not in call.chat and "parallel_tool_calls" not in call.chat
    assert call.echo["tool_choice"] == "none" and call.echo["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": [{"type": "message", "role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]},
            "input[0].content[0].text",
        ),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
        ({"input": [{"type": "web_search_call", "id": "w"}]}, "input[0].type"),
        ({"input": [7]}, "input[0]"),
        ({"input": "hi", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "hi", "tools": {"type": "function"}}, "tools"),
        ({"input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "hi", "temperature": "hot"}, "temperature"),
        ({"input": "hi", "temperature": True}, "temperature"),
        ({"input": "hi", "stream": "yes"}, "stream"),
        ({"input": "hi", "store": 1}, "store"),
        ({"input": "hi", "instructions": ["x"]}, "instructions"),
        ({"input": "hi", "previous_response_id": 5}, "previous_response_id"),
        ({"input": "hi", "metadata": {"a": 1}}, "metadata"),
        ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"input": "hi", "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"input": "hi", "conversation": "conv_123"}, "conversation"),
        ({"input": "hi", "conversation": {"id": "conv_123"}}, "conversation"),
        ({"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
def test_wrong_types_are_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as bad:
        parse_responses_request(msgspec.json.encode(body))
    assert bad.value.param == param
    assert param.split("[", maxsplit=1)[0].split(".", maxsplit=1)[0] in str(bad.value)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"model": 3, "input": "hi"}, "model"), ({"models": [], "input": "hi"}, "models"), ({}, "input")],
)
def test_chat_fields_are_checked_by_chat_s_parser(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as bad:
        parse_responses_request(msgspec.json.encode(body)).chat_request([], "req_3", None)
    assert bad.value.param == param


def test_a_body_that_is_not_json_is_a_400() -> None:
    for raw in (b"", b"{", b"[1]"):
        with pytest.raises(BadRequest) as bad:
            parse_responses_request(raw)
        assert bad.value.code == "invalid_json"


# ---- whole responses -------------------------------------------------------------------------------------


def test_a_completion_becomes_the_response_object() -> None:
    case = fixture("completion.json")
    turn = Turn.of_completion(case["completion"])
    s = shell()
    s.model = "local/ok"
    response = response_of(s, turn, est_input=99)
    assert masked(response) == case["response"]
    Response.model_validate(response)  # the SDK's own type takes it as it is
    stored = stored_turn(s, parse_responses_request(b'{"input": "hi"}'), turn, response, 5.0)
    assert json.loads(stored.messages) == case["stored_messages"]
    assert json.loads(stored.response) == response and stored.response_id == "resp_abc"


def test_a_truncated_completion_is_incomplete_and_usage_is_estimated_without_a_count() -> None:
    completion = {
        "choices": [{"message": {"role": "assistant", "content": "abcdefgh"}, "finish_reason": "length"}]
    }
    response = response_of(shell(), Turn.of_completion(completion), est_input=40)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["usage"]["input_tokens"] == 40 and response["usage"]["output_tokens"] == 2
    Response.model_validate(response)


def test_the_response_echoes_the_request_settings() -> None:
    s = shell(
        instructions="Be brief.",
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        tool_choice="required",
        temperature=0.3,
        top_p=0.5,
        max_output_tokens=9,
        parallel_tool_calls=False,
        metadata={"k": "v"},
        store=False,
        previous_response_id="resp_prev",
        text={"format": {"type": "json_object"}},
    )
    response = response_of(s, Turn("ok"), est_input=1)
    parsed = Response.model_validate(response)
    assert parsed.instructions == "Be brief." and parsed.tool_choice == "required"
    assert parsed.temperature == 0.3 and parsed.top_p == 0.5 and parsed.max_output_tokens == 9
    assert parsed.parallel_tool_calls is False and parsed.metadata == {"k": "v"} and parsed.store is False
    assert parsed.previous_response_id == "resp_prev" and parsed.tools[0].name == "f"
    assert parsed.text is not None and parsed.text.format.type == "json_object"


# ---- streams ---------------------------------------------------------------------------------------------


def parse_sse(data: bytes) -> list[dict[str, Any]]:
    events = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        kind, payload = block.split("\n")
        assert kind.startswith("event: ") and payload.startswith("data: ")
        event = json.loads(payload[6:])
        assert event["type"] == kind[7:]
        events.append(event)
    return events


def subset(event: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    out = {k: event.get(k) for k in expected if k != "item"}
    if "item" in expected:
        out["item"] = {k: event["item"].get(k) for k in expected["item"]}
    return out


def test_chunks_become_the_event_stream_with_interleaved_items() -> None:
    case = fixture("stream_events.json")
    finished: list[tuple[dict[str, Any], Turn]] = []

    async def keep(response: dict[str, Any], turn: Turn) -> None:
        finished.append((response, turn))

    render = ResponsesRender(shell(), est_input=5, finished=keep)
    out = render.routed(Routed(case["routed_via"], 1), in_headers=True)
    for obj in case["chunks"]:
        out += render.chunk(Chunk(msgspec.json.encode(obj), obj))
    out += run(render.end())
    events = parse_sse(out)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [subset(e, x) for e, x in zip(events, case["events"], strict=True)] == case["events"]
    for event in events:
        validated(event)
    final = events[-1]["response"]
    assert final["model"] == "local/ok" and final["status"] == "completed"
    assert final["usage"] == case["final_usage"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call", "function_call"]
    assert [item["id"] for item in final["output"]] == [events[i]["item"]["id"] for i in (2, 5, 7)]
    ((response, turn),) = finished
    assert response == final
    assert turn.assistant_message()["tool_calls"][1]["function"]["arguments"] == '{"q":1}'


def test_a_failure_after_content_is_response_failed_with_what_was_sent() -> None:
    render = ResponsesRender(shell(), est_input=5)
    out = render.routed(Routed("local/ok", 1), in_headers=True)
    obj = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    out += render.chunk(Chunk(msgspec.json.encode(obj), obj))
    out += render.failure(Failure(502, "local/ok stopped sending within 5s", "stream_timeout", "stall_mid"))
    events = parse_sse(out)
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["sequence_number"] == len(events) - 1
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "stall_mid",
        "message": "local/ok stopped sending within 5s",
    }
    assert failed["response"]["output"][0]["content"][0]["text"] == "Hel"
    validated(failed)


def test_a_failure_before_any_content_still_opens_the_response() -> None:
    render = ResponsesRender(shell(), est_input=5)
    assert render.keepalive() == b": keep-alive\n\n"
    events = parse_sse(
        render.failure(Failure(504, "Every attempt timed out", "timeout_error", "stream_timeout"))
    )
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "stream_timeout"


def test_a_whole_answer_sent_as_one_chunk_renders_and_a_truncation_is_incomplete() -> None:
    render = ResponsesRender(shell(), est_input=5)
    out = render.routed(Routed("local/ok", 2), in_headers=False)
    obj = {
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "abcd"}, "finish_reason": "length"}
        ]
    }
    out += render.chunk(Chunk(msgspec.json.encode(obj), obj))
    events = parse_sse(out + run(render.end()))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["usage"]["output_tokens"] == 1  # estimated: no usage chunk
    validated(events[-1])


# ---- configuration ---------------------------------------------------------------------------------------


def test_the_responses_table_sets_the_store_s_retention(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(
        "[server]\nmax_body_mb = 4\n[catalog]\nbuiltin = false\n"
        "[responses]\nretention_days = 7\nmax_indexed = 50\ncache_mb = 2\n"
    )
    settings = routing_settings(load_config(path, {}))
    # A chain may hold as much as one request body may: the conversation sent whole would be refused.
    assert settings.responses == ResponseRetention(7 * 86400, 50, 2 * 1024 * 1024, 4 * 1024 * 1024)
    path.write_text("[catalog]\nbuiltin = false\n")
    assert routing_settings(load_config(path, {})).responses == ResponseRetention()  # 30 days, 100k, 64 MB
    path.write_text("[catalog]\nbuiltin = false\n[responses]\nretention_days = 0\n")
    with pytest.raises(ConfigError) as bad:
        load_config(path, {})
    assert bad.value.key == "responses.retention_days"


# ---- provider shapes the stream must not merge or trip on ------------------------------------------------


def rendered(chunks: list[dict[str, Any]], render: ResponsesRender | None = None) -> list[dict[str, Any]]:
    """The events of a whole stream of chat chunks, every one validated by the SDK's type."""
    render = render or ResponsesRender(shell(), est_input=5)
    out = render.routed(Routed("local/ok", 1), in_headers=True)
    for obj in chunks:
        out += render.chunk(Chunk(msgspec.json.encode(obj), obj))
    events = parse_sse(out + run(render.end()))
    for event in events:
        validated(event)
    return events


def delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def tool_delta(args: str, *, index: int | None = None, **fields: Any) -> dict[str, Any]:
    call: dict[str, Any] = {**fields, "function": {"arguments": args}}
    if "name" in fields:
        call["function"]["name"] = call.pop("name")
    if index is not None:
        call["index"] = index
    return delta({"tool_calls": [call]})


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(  # Google's OpenAI-compatible endpoint: whole calls, no index
            [tool_delta('{"x":1}', id="c1", name="a"), tool_delta('{"y":2}', id="c2", name="b")],
            id="no-index",
        ),
        pytest.param(  # every call numbered 0, told apart by its id
            [
                tool_delta('{"x":', index=0, id="c1", name="a"),
                tool_delta("1}", index=0),
                tool_delta('{"y":2}', index=0, id="c2", name="b"),
            ],
            id="index-0-new-id",
        ),
        pytest.param(  # no index: a fragment with neither id nor name continues the last call
            [
                tool_delta('{"x":', id="c1", name="a"),
                tool_delta("1}"),
                tool_delta('{"y":2}', name="b"),
            ],
            id="no-index-fragments",
        ),
    ],
)
def test_tool_calls_are_told_apart_by_id_and_name_not_only_by_index(chunks: list[dict[str, Any]]) -> None:
    final = rendered(chunks)[-1]["response"]
    calls = [(item["name"], item["arguments"]) for item in final["output"]]
    assert calls == [("a", '{"x":1}'), ("b", '{"y":2}')]
    assert final["output"][0]["call_id"] == "c1"


def test_images_in_function_call_outputs_follow_the_tool_messages_and_files_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
    pdf = {"type": "input_file", "filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBE"}
    body = {
        "model": "auto",
        "input": [
            {"role": "user", "content": "screenshot it and read the report"},
            {"type": "function_call", "call_id": "c1", "name": "screenshot", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "read", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_text", "text": "caption"}, image],
            },
            {"type": "function_call_output", "call_id": "c2", "output": [pdf]},
            {"role": "user", "content": "well?"},
        ],
    }
    with caplog.at_level("WARNING", "switchboard.responses"):
        messages = parse_responses_request(msgspec.json.encode(body)).messages
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "caption"},
        {
            "role": "tool",
            "tool_call_id": "c2",
            "content": "[file 'report.pdf' omitted: not supported by this gateway]",
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The images function call c1 returned:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {"role": "user", "content": "well?"},
    ]
    assert "input[4].output[0]" in caplog.text and "JVBE" not in caplog.text
    # The last item may be the output: its images still follow it.
    last = parse_responses_request(msgspec.json.encode({**body, "input": body["input"][:4]})).messages
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "user"]


def test_a_reasoning_only_stream_answers_with_its_reasoning_as_the_whole_answer_does() -> None:
    chunks = [delta({"reasoning_content": "The answer "}), delta({"reasoning": "is 4."}, "stop")]
    events = rendered(chunks)
    assert [e["type"] for e in events[2:]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "The answer is 4."
    whole = {"choices": [{"index": 0, "message": {"reasoning_content": "The answer is 4."}}]}
    assert Turn.of_completion(whole).text == "The answer is 4."
    # Beside text, reasoning is not the answer.
    text = rendered([delta({"reasoning_content": "hmm"}), delta({"content": "4"}, "stop")])
    assert text[-1]["response"]["output"][0]["content"][0]["text"] == "4"


def test_tool_arguments_sent_as_an_object_become_json_text_in_both_paths() -> None:
    fn = {"name": "weather", "arguments": {"city": "Paris", "days": [1, 2]}}
    whole = {"choices": [{"index": 0, "message": {"tool_calls": [{"id": "c1", "function": fn}]}}]}
    (call,) = Turn.of_completion(whole).calls
    assert json.loads(call["function"]["arguments"]) == fn["arguments"]
    events = rendered([delta({"tool_calls": [{"index": 0, "id": "c1", "function": fn}]}, "tool_calls")])
    (item,) = events[-1]["response"]["output"]
    assert json.loads(item["arguments"]) == fn["arguments"]


def test_a_content_filter_finish_is_incomplete_for_that_reason_in_both_paths() -> None:
    whole = {"choices": [{"index": 0, "message": {"content": "I can"}, "finish_reason": "content_filter"}]}
    response = response_of(shell(), Turn.of_completion(whole), 5)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "content_filter"}
    Response.model_validate(response)
    final = rendered([delta({"content": "I can"}, "content_filter")])[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "content_filter"}


@pytest.mark.parametrize(
    "message",
    [
        {"content": "ok", "tool_calls": 5},
        {"content": "ok", "tool_calls": [1, "x", None]},
        {"content": [{"text": 5}, {"type": "text", "text": "ok"}, 3]},
        {"content": "ok", "tool_calls": [{"id": 7, "function": {"name": ["f"], "arguments": None}}]},
    ],
)
def test_odd_provider_shapes_are_skipped_not_raised_on(message: dict[str, Any]) -> None:
    whole = {"choices": [{"index": 0, "message": message, "finish_reason": {"odd": 1}}]}
    turn = Turn.of_completion(whole)
    assert turn.text == "ok" and turn.finish is None
    assert all(isinstance(c["id"], str) and c["function"]["name"] == "" for c in turn.calls)
    Response.model_validate(response_of(shell(), turn, 5))
    chunk = {"choices": [{"index": 0, "delta": message, "finish_reason": {"odd": 1}}]}
    events = rendered([chunk])
    assert events[-1]["type"] == "response.completed"
    for odd in ({"choices": 5}, {"choices": [5, None]}, {"choices": None}, {"choices": [{"delta": 3}]}):
        assert Turn.of_completion(odd) == Turn()
        assert rendered([odd])[-1]["type"] == "response.completed"


def test_a_chain_past_its_budget_is_a_400_saying_to_start_anew() -> None:
    answer = too_long_chain(
        "resp_9", TooLong(7, 5_000_000), ResponseRetention(max_chain_bytes=4 * 1024 * 1024)
    )
    assert answer.status == 400 and isinstance(answer.body, bytes)
    error = json.loads(answer.body)["error"]
    assert error["code"] == "conversation_too_long" and error["param"] == "previous_response_id"
    assert "'resp_9' is too long to continue by reference" in error["message"]
    assert "7 stored turns hold more than 4 MB" in error["message"] and "'input'" in error["message"]
