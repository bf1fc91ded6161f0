"""The Messages protocol's translations, from fixtures written from Anthropic's documented shapes
(tests/service/fixtures/messages): a request with every block kind as the chat body it becomes, a chat
completion as a message, chat chunks as Messages events (and what the anthropic SDK accumulates from them),
and every error status as the exception class the SDK raises for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest
from anthropic._error_classes import make_status_error
from anthropic.lib.streaming._messages import accumulate_event

from actors.stream import Routed
from events.attempts import Failure
from events.frames import Chunk
from service.chat_completions import estimate_tokens
from service.config import ConfigError, load_config
from service.edge import BadRequest
from service.messages import (
    PING,
    MessagesRender,
    anthropic_error,
    credential,
    input_estimate,
    message_from_completion,
    message_id,
    parse_messages_request,
    session_header,
    translate,
)

FIXTURES = Path(__file__).parent / "fixtures" / "messages"
HELLO = [{"role": "user", "content": "hi"}]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def parse(body: dict[str, Any], claude_model: str = "auto-smart", session: str | None = None) -> Any:
    return parse_messages_request(msgspec.json.encode(body), "req_0123", claude_model, session).req


def finish(coroutine: Any) -> Any:
    """Run a coroutine that never waits (a renderer's `end`) to its result, without an event loop."""
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    return done.value.value


def sse(data: bytes) -> list[tuple[str, Any]]:
    """(event, decoded data) of each SSE event; every event must have both lines."""
    out = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        event, payload = block.split("\n")
        assert event.startswith("event: ") and payload.startswith("data: "), block
        out.append((event.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return out


def render(render: MessagesRender, chunks: list[Any], routed_via: str = "local/m") -> list[tuple[str, Any]]:
    out = render.routed(Routed(routed_via, 1), in_headers=True)
    for obj in chunks:
        out += render.chunk(Chunk(msgspec.json.encode(obj), obj))
    return sse(out + finish(render.end()))


def text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def call_chunk(index: int, arguments: str, name: str | None = None, call_id: str | None = None) -> Any:
    function: dict[str, Any] = {"arguments": arguments}
    call: dict[str, Any] = {"index": index, "function": function}
    if name is not None:
        function["name"] = name
    if call_id is not None:
        call["id"] = call_id
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


# ---- requests -----------------------------------------------------------------------------------------


def test_a_request_with_every_block_kind_becomes_its_chat_body() -> None:
    case = fixture("request_every_block.json")
    req = parse(case["request"])
    assert req.body == case["chat"]
    assert req.protocol == "messages"
    assert req.requested == ("auto-smart",)  # a Claude name routes as [messages] claude_model
    assert req.stream is False
    assert req.est_tokens == input_estimate(req.body)
    assert (
        req.est_tokens
        == estimate_tokens(req.body["messages"]) + len(msgspec.json.encode(req.body["tools"])) // 4
    )


@pytest.mark.parametrize(
    ("model", "claude_model", "requested"),
    [
        ("claude-3-5-haiku-20241022", "auto-fast", "auto-fast"),
        ("CLAUDE-opus-4", "local/big", "local/big"),
        ("local/ok", "auto-smart", "local/ok"),  # any other name routes as chat would
        ("auto", "auto-smart", "auto"),
        ("claudette", "auto-smart", "claudette"),
    ],
)
def test_claude_model_names_route_as_the_configured_mode(
    model: str, claude_model: str, requested: str
) -> None:
    req = parse({"model": model, "max_tokens": 5, "messages": HELLO}, claude_model)
    assert req.requested == (requested,) and req.body["model"] == requested


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 5, "messages": HELLO}, "model"),
        ({"model": "", "max_tokens": 5, "messages": HELLO}, "model"),
        ({"model": "m" * 300, "max_tokens": 5, "messages": HELLO}, "model"),
        ({"model": "m", "messages": HELLO}, "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": HELLO}, "max_tokens"),
        ({"model": "m", "max_tokens": True, "messages": HELLO}, "max_tokens"),
        ({"model": "m", "max_tokens": "5", "messages": HELLO}, "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "stream": "yes"}, "stream"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages[0].role",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{}]}]},
            "messages[0].content[0]",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}],
            },
            "messages[0].content[0].source.type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "base64", "data": "JVBER"}}],
                    }
                ],
            },
            "messages[0].content[0].source",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n"}]}],
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}],
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "name": "n", "input": {}}]}
                ],
            },
            "messages[0].content[0].id",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "n", "input": []}],
                    }
                ],
            },
            "messages[0].content[0].input",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "tool_result"}]}],
            },
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": ["video"]}],
                    }
                ],
            },
            "messages[0].content[0].content[0].type",
        ),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "system": 5}, "system"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "system": "only a system prompt",
                "messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "t"}]}],
            },
            "messages",
        ),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "system": [{"type": "image"}]}, "system[0].type"),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "tools": {}}, "tools"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": HELLO,
                "tools": [{"type": "web_search_20250305", "name": "w"}],
            },
            "tools[0].type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": HELLO,
                "tools": [{"type": "bash_20250124", "name": "bash"}],
            },
            "tools[0].type",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": HELLO, "tools": [{"input_schema": {}}]},
            "tools[0].name",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": HELLO, "tools": [{"name": "t"}]},
            "tools[0].input_schema",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": HELLO, "tool_choice": {"type": "some"}},
            "tool_choice.type",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": HELLO, "tool_choice": {"type": "tool"}},
            "tool_choice.name",
        ),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "stop_sequences": "x"}, "stop_sequences"),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "temperature": 2}, "temperature"),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "top_p": "high"}, "top_p"),
        ({"model": "m", "max_tokens": 5, "messages": HELLO, "top_k": -1}, "top_k"),
    ],
)
def test_bad_input_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse(body)
    assert refused.value.param == param
    assert str(refused.value).startswith(f"{param}: ")


@pytest.mark.parametrize(
    "raw",
    [b"", b"  ", b"{", b"[1]", b'"text"', b'{"model": "\xff"}', b"[" * 10_000],
)
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_messages_request(raw, "req_1", "auto-smart")


PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}  # 9 bytes


def test_a_pdf_in_a_tool_result_is_a_placeholder_not_a_400(caplog: pytest.LogCaptureFixture) -> None:
    # Claude Code's Read tool on a PDF: refusing it would refuse every later turn, as the history is resent.
    body = {
        "model": "claude-sonnet-4",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "read a.pdf"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "document", "source": PDF}],
                    }
                ],
            },
        ],
    }
    with caplog.at_level("WARNING", logger="switchboard.messages"):
        req = parse(body)
    placeholder = "[document: application/pdf, 9 bytes, not supported by this gateway]"
    assert req.body["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": placeholder}
    assert "messages[2].content[0].content[0]" in caplog.text and "application/pdf" in caplog.text
    assert PDF["data"] not in caplog.text


@pytest.mark.parametrize(
    ("source", "text"),
    [
        (PDF, "a.pdf\n\n[document: application/pdf, 9 bytes, not supported by this gateway]"),
        (
            {"type": "url", "url": "https://x.test/a.pdf?sig=SECRET"},
            "a.pdf\n\n[document: a URL, not supported by this gateway]",
        ),
        (
            {"type": "file", "file_id": "file_1"},
            "a.pdf\n\n[document: a Files API file, not supported by this gateway]",
        ),
        (
            {"type": "content", "content": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]},
            "a.pdf\n\np1\n\np2",
        ),
        ({"type": "content", "content": "all"}, "a.pdf\n\nall"),
    ],
)
def test_documents_without_a_text_source_are_placeholders_or_their_text(
    source: dict[str, Any], text: str, caplog: pytest.LogCaptureFixture
) -> None:
    block = {"type": "document", "title": "a.pdf", "source": source}
    with caplog.at_level("WARNING", logger="switchboard.messages"):
        req = parse({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [block]}]})
    assert req.body["messages"] == [{"role": "user", "content": text}]
    assert "SECRET" not in caplog.text


def test_an_unknown_block_in_a_tool_result_is_a_placeholder() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "text", "text": "a"}, {"type": "video"}],
    }
    req = parse({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [result]}]})
    assert req.body["messages"] == [
        {"role": "tool", "tool_call_id": "t", "content": "a\n\n[video block: not supported by this gateway]"}
    ]


def test_accepted_fields_that_are_not_forwarded() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": HELLO,
        "top_k": 5,
        "metadata": {"user_id": "u"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "service_tier": "auto",
        "context_management": {"edits": []},
        "tool_choice": {"type": "auto"},  # no tools: nothing to choose
        "stop_sequences": [],
    }
    assert parse(body).body == {"model": "m", "max_tokens": 5, "stream": False, "messages": HELLO}


@pytest.mark.parametrize(
    ("choice", "chat"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "tool", "name": "t"}, {"tool_choice": {"type": "function", "function": {"name": "t"}}}),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
    ],
)
def test_tool_choice(choice: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    body = parse(
        {"model": "m", "max_tokens": 5, "messages": HELLO, "tools": tools, "tool_choice": choice}
    ).body
    assert {k: v for k, v in body.items() if k in ("tool_choice", "parallel_tool_calls")} == chat


def test_an_assistant_turn_of_only_thinking_is_dropped_and_strings_stay_strings() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "b"}, {"type": "thinking", "thinking": "y"}],
            },
        ],
    }
    assert parse(body).body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]


def test_the_session_header_and_the_key_headers() -> None:
    assert session_header({"x-claude-code-session-id": "cc", "x-session-id": "other"}) == "cc"
    assert session_header({"x-session-id": "other"}) == "other"
    assert session_header({}) is None
    assert parse({"model": "m", "max_tokens": 5, "messages": HELLO}, session="cc").session_header == "cc"
    with pytest.raises(BadRequest):
        parse({"model": "m", "max_tokens": 5, "messages": HELLO}, session="  ")
    assert credential({"x-api-key": "k1", "authorization": "Bearer k2"}) == "k1"
    assert credential({"authorization": "Bearer k2"}) == "k2"
    assert credential({"authorization": "Basic k2"}) == ""
    assert credential({}) == ""


def test_count_tokens_takes_the_body_without_max_tokens_and_grows_with_tools_and_system() -> None:
    base = {"model": "claude-x", "messages": HELLO}
    plain = input_estimate(translate(base, count_only=True))
    more = input_estimate(
        translate(
            {**base, "system": "s" * 4000, "tools": [{"name": "t", "input_schema": {"type": "object"}}]},
            count_only=True,
        )
    )
    assert 0 < plain < more and more - plain >= 1000
    with pytest.raises(BadRequest):
        translate({"model": "m"}, count_only=True)


# ---- answers ------------------------------------------------------------------------------------------


def test_a_completion_with_tool_calls_becomes_a_message() -> None:
    case = fixture("completion_tool_calls.json")
    message = message_from_completion(case["completion"], "msg_0123456789abcdef01234567", 999)
    assert message == case["message"]
    anthropic.types.Message.model_validate({**message, "model": "local/m"})  # the SDK's own type takes it


@pytest.mark.parametrize(
    ("finish_reason", "calls", "stop"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("content_filter", False, "refusal"),
        ("stop", True, "tool_use"),
        (None, False, "end_turn"),
    ],
)
def test_stop_reasons(finish_reason: str | None, calls: bool, stop: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if calls:
        message["tool_calls"] = [{"type": "function", "function": {"name": "t", "arguments": "{}"}}]
    completion = {"choices": [{"message": message, "finish_reason": finish_reason}]}
    assert message_from_completion(completion, "msg_1", 5)["stop_reason"] == stop


def test_a_call_without_an_id_gets_one_and_usage_falls_back_to_the_estimate() -> None:
    completion = {
        "choices": [
            {
                "message": {"content": None, "tool_calls": [{"function": {"name": "t", "arguments": ""}}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    message = message_from_completion(completion, "msg_1", 42)
    [block] = message["content"]
    assert block["id"].startswith("toolu_") and len(block["id"]) > 10 and block["input"] == {}
    assert message["usage"]["input_tokens"] == 42


def test_a_reasoning_only_answer_is_its_text() -> None:
    completion = {
        "choices": [{"message": {"content": "", "reasoning_content": "thought"}, "finish_reason": "stop"}]
    }
    assert message_from_completion(completion, "msg_1", 1)["content"] == [{"type": "text", "text": "thought"}]


def test_the_message_id_carries_the_request_id() -> None:
    assert message_id("req_abc123") == "msg_abc123"


# ---- streams ------------------------------------------------------------------------------------------


def test_chunks_become_the_documented_event_sequence_and_the_sdk_accumulates_the_message() -> None:
    case = fixture("stream.json")
    events = render(MessagesRender("msg_stream", case["est_input"]), case["chunks"], case["routed_via"])
    assert [{"event": kind, "data": data} for kind, data in events] == case["events"]
    assert all(kind == data["type"] for kind, data in events)
    json_bufs: dict[int, bytes] = {}
    snapshot = None
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert [block.model_dump(exclude_none=True) for block in snapshot.content] == case["final_content"]
    assert snapshot.stop_reason == "tool_use" and snapshot.usage.output_tokens == 12
    assert snapshot.usage.input_tokens == 30  # the provider's count replaces message_start's estimate


def test_a_call_named_late_and_fragments_of_an_earlier_call_keep_their_block() -> None:
    chunks = [
        call_chunk(0, '{"a":', call_id="c0"),  # no name yet: held
        call_chunk(0, "", name="first"),
        call_chunk(1, "{}", name="second", call_id="c1"),
        call_chunk(0, " 1}"),  # a late fragment of the first call
    ]
    events = render(MessagesRender("msg_1", 1), chunks)
    starts = [(d["index"], d["content_block"]["name"]) for k, d in events if k == "content_block_start"]
    assert starts == [(0, "first"), (1, "second")]
    deltas = [(d["index"], d["delta"]["partial_json"]) for k, d in events if k == "content_block_delta"]
    assert deltas == [(0, '{"a":'), (1, "{}"), (0, " 1}")]
    json_bufs: dict[int, bytes] = {}
    snapshot = None
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert [block.input for block in snapshot.content] == [{"a": 1}, {}]  # type: ignore[union-attr]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def whole_call(call_id: str | None, name: str | None, arguments: str, index: int | None = None) -> Any:
    chunk = call_chunk(0, arguments, name, call_id)
    call = chunk["choices"][0]["delta"]["tool_calls"][0]
    if index is None:
        del call["index"]
    else:
        call["index"] = index
    return chunk


def accumulated(events: list[tuple[str, Any]]) -> list[tuple[str, str, Any]]:
    """The tool_use blocks as the anthropic SDK accumulates them: (id, name, input)."""
    json_bufs: dict[int, bytes] = {}
    snapshot = None
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return [(b.id, b.name, b.input) for b in snapshot.content if b.type == "tool_use"]


@pytest.mark.parametrize(
    "chunks",
    [
        # Whole calls with no index (Google's OpenAI-compatible endpoint): each new id is a new block.
        [whole_call("c1", "a", '{"x":1}'), whole_call("c2", "b", '{"y":2}')],
        # Both on index 0 with different ids: the new id is a new call, not more arguments for the first.
        [whole_call("c1", "a", '{"x":1}', 0), whole_call("c2", "b", '{"y":2}', 0)],
        # No index and no ids: a name starts a call, a bare fragment continues the last one.
        [whole_call(None, "a", '{"x":'), whole_call(None, None, "1}"), whole_call(None, "b", '{"y":2}')],
    ],
)
def test_several_calls_without_distinct_indexes_are_separate_blocks(chunks: list[Any]) -> None:
    events = render(MessagesRender("msg_1", 1), chunks)
    calls = [(name, arguments) for _, name, arguments in accumulated(events)]
    assert calls == [("a", {"x": 1}), ("b", {"y": 2})]
    starts = [d["index"] for k, d in events if k == "content_block_start"]
    assert starts == [0, 1]


def test_an_index_continues_its_call_after_a_new_id_took_it_over() -> None:
    chunks = [
        whole_call("c1", "a", '{"x":1}', 0),
        whole_call("c2", "b", '{"y":', 0),
        call_chunk(0, "2}"),  # index 0 alone: the call that has it now, c2
    ]
    assert accumulated(render(MessagesRender("msg_1", 1), chunks)) == [
        ("c1", "a", {"x": 1}),
        ("c2", "b", {"y": 2}),
    ]


def reasoning_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]}


def blocks(events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    json_bufs: dict[int, bytes] = {}
    snapshot = None
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return [b.model_dump(include={"type", "text", "thinking"}) for b in snapshot.content]


@pytest.mark.parametrize("thinking", [False, True])
def test_a_reasoning_only_stream_ends_with_its_reasoning_as_the_text(thinking: bool) -> None:
    # As the whole answer does (test_a_reasoning_only_answer_is_its_text): not an empty message.
    events = render(
        MessagesRender("msg_1", 1, thinking=thinking),
        [reasoning_chunk("The answer"), reasoning_chunk(" is 4.")],
    )
    text = {"type": "text", "text": "The answer is 4."}
    shown = [{"type": "thinking", "thinking": "The answer is 4."}] if thinking else []
    assert blocks(events) == [*shown, text]
    assert events[-2][1]["usage"]["output_tokens"] == len("The answer is 4.") // 4
    assert [k for k, _ in events][-2:] == ["message_delta", "message_stop"]


def test_reasoning_beside_an_answer_is_not_repeated_as_text() -> None:
    events = render(
        MessagesRender("msg_1", 1), [reasoning_chunk("hmm"), text_chunk("4"), reasoning_chunk("ok")]
    )
    assert blocks(events) == [{"type": "text", "text": "4"}]
    called = render(MessagesRender("msg_1", 1), [reasoning_chunk("hmm"), call_chunk(0, "{}", "f", "c1")])
    assert [b["type"] for b in blocks(called)] == ["tool_use"]


def test_a_call_that_never_names_its_tool_still_goes_out() -> None:
    events = render(MessagesRender("msg_1", 1), [call_chunk(0, "{}", call_id="c0")])
    starts = [d["content_block"] for k, d in events if k == "content_block_start"]
    assert starts == [{"type": "tool_use", "id": "c0", "name": "unknown", "input": {}}]
    assert [k for k, _ in events][-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_output_tokens_are_estimated_without_usage_and_the_stream_starts_once() -> None:
    renderer = MessagesRender("msg_1", 7)
    start = renderer.routed(Routed("local/m", 1), in_headers=False)
    assert renderer.routed(Routed("local/m", 1), in_headers=False) == b""
    body = start + renderer.chunk(Chunk(b"", text_chunk("x" * 40))) + finish(renderer.end())
    events = sse(body)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 7
    assert events[-2][1]["usage"] == {"output_tokens": 10}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_keepalives_are_pings() -> None:
    assert sse(MessagesRender("msg_1", 1).keepalive()) == [("ping", {"type": "ping"})] and PING.endswith(
        b"\n\n"
    )


@pytest.mark.parametrize(
    ("failure", "kind", "says"),
    [
        (
            Failure(502, "local/m sent nothing within 5s", "stream_timeout", "stall_mid", after_content=True),
            "timeout_error",
            "stalled",
        ),
        (
            Failure(504, "Every attempt timed out", "timeout_error", "stream_timeout"),
            "timeout_error",
            "stalled",
        ),
        (Failure(502, "broke", "upstream_error", "server_error", after_content=True), "api_error", "broke"),
        (Failure(429, "limited", "rate_limit_error", "rate_limit_exceeded"), "rate_limit_error", "limited"),
        (Failure(503, "none", "service_unavailable", "no_available_model"), "overloaded_error", "none"),
    ],
)
def test_a_failure_after_the_headers_is_an_error_event(failure: Failure, kind: str, says: str) -> None:
    renderer = MessagesRender("msg_1", 1)
    renderer.routed(Routed("local/m", 1), in_headers=True)
    renderer.chunk(Chunk(b"", text_chunk("partial")))
    [(event, data)] = sse(renderer.failure(failure))
    assert event == "error" and data["type"] == "error"
    assert data["error"]["type"] == kind and says in data["error"]["message"]


# ---- errors -------------------------------------------------------------------------------------------


def test_every_status_has_anthropics_error_shape_and_the_sdk_raises_its_class() -> None:
    case = fixture("errors.json")
    assert set(case["documented"]) == {"type", "error"} and set(case["documented"]["error"]) == {
        "type",
        "message",
    }
    request = httpx2.Request("POST", "http://gateway/v1/messages")
    for row in case["statuses"]:
        answer = anthropic_error(row["status"], "what went wrong", "openai_type", "openai_code")
        assert answer.status == row["status"]
        assert isinstance(answer.body, bytes)
        body = json.loads(answer.body)
        assert body == {"type": "error", "error": {"type": row["type"], "message": "what went wrong"}}
        response = httpx2.Response(row["status"], content=answer.body, request=request)
        raised = make_status_error("x", body=body, response=response)
        assert type(raised).__name__ == row["sdk"], row
        assert raised.type == row["type"] and raised.api_message == "what went wrong"


def test_an_error_names_its_param_and_keeps_its_headers() -> None:
    answer = anthropic_error(
        429, "slow down", "rate_limit_error", headers={"Retry-After": "3"}, param="model"
    )
    assert answer.headers == {"Retry-After": "3"}
    assert isinstance(answer.body, bytes)
    assert json.loads(answer.body)["error"]["message"] == "model: slow down"


# ---- configuration ------------------------------------------------------------------------------------


def test_messages_claude_model_is_configured_and_checked(tmp_path: Path) -> None:
    assert load_config(None, {}).messages.claude_model == "auto-smart"
    path = tmp_path / "switchboard.toml"
    path.write_text('[messages]\nclaude_model = "auto-fast"\n')
    assert load_config(path, {}).messages.claude_model == "auto-fast"
    path.write_text('[catalog]\nbuiltin = false\n[messages]\nclaude_model = "no-such-model"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, {})
    assert "claude_model" in str(refused.value) and ":4:" in str(refused.value)
    path.write_text('[messages]\nclaude = "auto"\n')
    with pytest.raises(ConfigError):
        load_config(path, {})


def test_max_tokens_past_the_cap_is_asked_of_the_provider_as_the_cap() -> None:
    body = {"model": "auto", "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}]}
    raw = msgspec.json.encode(body)
    assert parse_messages_request(raw, "req_1", "auto-smart", None, 8192).req.body["max_tokens"] == 8192
    small = msgspec.json.encode({**body, "max_tokens": 512})
    assert parse_messages_request(small, "req_1", "auto-smart", None, 8192).req.body["max_tokens"] == 512
    assert parse_messages_request(raw, "req_1", "auto-smart", None, None).req.body["max_tokens"] == 32000
