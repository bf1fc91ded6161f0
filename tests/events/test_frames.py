"""The neutral call and frame forms (events/frames.py): the client's limit and the per-model body of a
`Call`, message normalisation, a whole answer as one stream chunk, and the reply text a session key is
derived from."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from events.frames import Call, Chunk, completion_as_chunk, normalise_message, reply_text
from events.sessions import message_text

# ---- Call ------------------------------------------------------------------------------------------------


def test_a_call_without_a_limit_has_no_client_max_tokens() -> None:
    assert Call({"messages": []}, stream=False).client_max_tokens is None


def test_max_tokens_is_the_client_limit() -> None:
    assert Call({"max_tokens": 300}, stream=False).client_max_tokens == 300


def test_a_null_max_completion_tokens_leaves_max_tokens_in_force() -> None:
    assert Call({"max_tokens": 300, "max_completion_tokens": None}, stream=False).client_max_tokens == 300


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert Call({"max_tokens": 300, "max_completion_tokens": 50}, stream=True).client_max_tokens == 50


@pytest.mark.parametrize("value", ["300", 300.0, None, [300], {"n": 1}])
def test_a_limit_that_is_not_an_integer_is_no_limit(value: Any) -> None:
    assert Call({"max_tokens": value}, stream=False).client_max_tokens is None
    assert Call({"max_completion_tokens": value}, stream=False).client_max_tokens is None


def test_for_model_sets_the_upstream_model_id_on_a_copy() -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
    call = Call(body, stream=False)
    upstream = call.for_model("llama-3.3-70b")
    assert upstream == {**body, "model": "llama-3.3-70b"}
    assert body["model"] == "auto"  # the client's body is left as it was
    assert upstream is not body


def test_for_model_adds_the_model_when_the_body_has_none() -> None:
    assert Call({"messages": []}, stream=True).for_model("m") == {"messages": [], "model": "m"}


def test_a_call_is_frozen() -> None:
    call = Call({}, stream=False)
    with pytest.raises(AttributeError):
        call.stream = True  # type: ignore[misc]


# ---- normalise_message -----------------------------------------------------------------------------------


def test_array_content_becomes_its_text_parts_joined() -> None:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Hello"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": ", world"},
            {"type": "text", "text": 7},  # not a string: left out
            "stray",
            {"text": "no type"},
        ],
    }
    normalise_message(message)
    assert message["content"] == "Hello, world"


def test_string_content_is_left_alone() -> None:
    message = {"role": "assistant", "content": "Hi", "reasoning_content": "thinking"}
    normalise_message(message)
    assert message == {"role": "assistant", "content": "Hi", "reasoning_content": "thinking"}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("content", [None, "", []])
def test_a_reasoning_only_answer_becomes_the_content(field: str, content: Any) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": content, field: "The answer is 4."}
    normalise_message(message)
    assert message["content"] == "The answer is 4."
    assert message[field] == "The answer is 4."  # kept as well


def test_reasoning_content_is_preferred_over_reasoning() -> None:
    message = {"content": None, "reasoning_content": "first", "reasoning": "second"}
    normalise_message(message)
    assert message["content"] == "first"


def test_reasoning_does_not_replace_tool_calls() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    message = {"content": None, "reasoning_content": "I will call f", "tool_calls": calls}
    normalise_message(message)
    assert message["content"] is None
    assert message["tool_calls"] == calls


@pytest.mark.parametrize("reasoning", [None, "", 42, ["x"]])
def test_reasoning_that_is_not_text_is_not_taken(reasoning: Any) -> None:
    message = {"content": None, "reasoning_content": reasoning}
    normalise_message(message)
    assert message["content"] is None


def test_array_content_with_no_text_falls_back_to_reasoning() -> None:
    message = {"content": [{"type": "image_url", "image_url": {}}], "reasoning": "described"}
    normalise_message(message)
    assert message["content"] == "described"


# ---- completion_as_chunk ---------------------------------------------------------------------------------


def _completion(message: dict[str, Any], finish: str | None = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "llama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_a_whole_answer_becomes_one_chunk_with_the_message_as_its_delta() -> None:
    chunk = completion_as_chunk(_completion({"role": "assistant", "content": "Hi there"}))
    assert chunk.obj == {
        "id": "chatcmpl-1",
        "created": 1700000000,
        "model": "llama",
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}
        ],
    }


def test_the_chunk_bytes_are_its_object_encoded() -> None:
    chunk = completion_as_chunk(_completion({"role": "assistant", "content": "Hi"}, finish="length"))
    assert isinstance(chunk, Chunk)
    assert msgspec.json.decode(chunk.raw) == chunk.obj
    assert chunk.obj["choices"][0]["finish_reason"] == "length"


def test_none_fields_of_the_message_are_left_out_of_the_delta() -> None:
    chunk = completion_as_chunk(
        _completion({"role": "assistant", "content": "x", "refusal": None, "tool_calls": None})
    )
    assert chunk.obj["choices"][0]["delta"] == {"role": "assistant", "content": "x"}


def test_a_choice_without_a_message_has_an_empty_delta() -> None:
    completion = _completion({})
    completion["choices"][0]["message"] = None
    assert completion_as_chunk(completion).obj["choices"][0]["delta"] == {}


def test_missing_identity_fields_are_null() -> None:
    chunk = completion_as_chunk({"choices": [{"message": {"content": "x"}}]})
    assert (chunk.obj["id"], chunk.obj["created"], chunk.obj["model"]) == (None, None, None)
    assert chunk.obj["choices"][0]["finish_reason"] is None


def test_a_tool_call_gets_an_index_for_streaming_clients() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chunk = completion_as_chunk(_completion({"role": "assistant", "content": None, "tool_calls": [call]}))
    (delta_call,) = chunk.obj["choices"][0]["delta"]["tool_calls"]
    assert delta_call["index"] == 0
    assert delta_call["function"] == {"name": "f", "arguments": "{}"}
    assert "content" not in chunk.obj["choices"][0]["delta"]


def test_a_tool_call_keeps_the_index_it_has() -> None:
    call = {"index": 3, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chunk = completion_as_chunk(_completion({"tool_calls": [call]}))
    assert chunk.obj["choices"][0]["delta"]["tool_calls"][0]["index"] == 3


def test_two_tool_calls_of_a_whole_answer_keep_distinct_indexes() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
    ]
    chunk = completion_as_chunk(_completion({"role": "assistant", "content": None, "tool_calls": calls}))
    indexes = [c["index"] for c in chunk.obj["choices"][0]["delta"]["tool_calls"]]
    assert indexes == [0, 1]


def test_completion_as_chunk_leaves_the_completion_as_it_was() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    completion = _completion({"role": "assistant", "content": None, "tool_calls": calls})
    before = copy.deepcopy(completion)
    completion_as_chunk(completion)
    assert completion == before


def test_the_delta_does_not_share_the_message_dict() -> None:
    completion = _completion({"role": "assistant", "content": "x"})
    chunk = completion_as_chunk(completion)
    chunk.obj["choices"][0]["delta"]["content"] = "changed"
    assert completion["choices"][0]["message"]["content"] == "x"


# ---- reply_text ------------------------------------------------------------------------------------------


def test_reply_text_is_the_message_text() -> None:
    assert reply_text(_completion({"role": "assistant", "content": "  Hello  "})) == "Hello"


def test_reply_text_of_array_content_joins_its_text_parts() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert reply_text(_completion({"content": content})) == "ab"


def test_reply_text_of_a_tool_call_answer_names_the_calls() -> None:
    calls = [
        {"function": {"name": "f", "arguments": '{"x":1}'}},
        {"function": {"name": "g", "arguments": ""}},
    ]
    text = reply_text(_completion({"content": None, "tool_calls": calls}))
    assert text == 'tools:f:{"x":1}|g:'
    assert text == message_text({"content": None, "tool_calls": calls})


@pytest.mark.parametrize(
    "completion",
    [
        None,
        "text",
        42,
        [],
        {},
        {"choices": []},
        {"choices": {}},
        {"choices": "abc"},
        {"choices": [{}]},
        {"choices": [{"message": None}]},
        {"choices": [{"message": "hello"}]},
        {"choices": [None]},
    ],
)
def test_reply_text_of_something_that_is_not_a_completion_is_none(completion: Any) -> None:
    assert reply_text(completion) is None
