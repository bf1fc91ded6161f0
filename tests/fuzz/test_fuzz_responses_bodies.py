"""Property tests on a client's Responses request (service/responses.py: `parse_responses_request`, then
the neutral `ChatRequest` it becomes): any bytes give a request or a `BadRequest` (a 400), never another
exception; its message is one line and bounded; a parsed request can be forwarded (its body encodes)."""

from __future__ import annotations

import pytest
from fuzz_strategies import FUZZ, any_bytes, assert_message, encodes, json_bytes, json_values, shaped
from hypothesis import given
from hypothesis import strategies as st

from service.edge import BadRequest
from service.responses import parse_responses_request

MESSAGE_LIMIT = 400  # the longest fixed wording, with a parameter path and a quoted type in it

parts = st.lists(
    shaped(
        {
            "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "input_file"]),
            "text": st.text(max_size=10),
            "refusal": st.text(max_size=10),
            "image_url": st.text(max_size=10),
        }
    ),
    max_size=3,
)
items = st.lists(
    shaped(
        {
            "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "x"]),
            "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
            "content": st.one_of(st.text(max_size=10), parts),
            "call_id": st.text(max_size=6),
            "name": st.text(max_size=6),
            "arguments": st.text(max_size=6),
            "output": st.one_of(st.text(max_size=6), parts),
        }
    ),
    max_size=4,
)
bodies = shaped(
    {
        "model": st.sampled_from(["auto", "local/ok", ""]),
        "input": st.one_of(st.text(max_size=10), items),
        "instructions": st.text(max_size=10),
        "tools": st.lists(shaped({"type": st.just("function"), "name": st.text(max_size=5)}), max_size=2),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "x"]), shaped({"type": st.just("function")})
        ),
        "max_output_tokens": st.integers(-1, 5),
        "temperature": st.floats(0, 2),
        "text": shaped({"format": shaped({"type": st.sampled_from(["text", "json_schema", "json_object"])})}),
        "stream": st.booleans(),
        "store": st.booleans(),
        "previous_response_id": st.text(max_size=8),
        "metadata": st.dictionaries(st.text(max_size=3), json_values, max_size=2),
    }
)


def check(raw: bytes) -> None:
    try:
        call = parse_responses_request(raw)
        req = call.chat_request([], "req_fuzz", None)
    except BadRequest as exc:
        assert_message(str(exc), MESSAGE_LIMIT)
        return
    encodes(req.body)
    assert req.protocol == "responses" and req.body["messages"]


@FUZZ
@given(json_bytes(bodies))
def test_any_responses_body_is_a_request_or_a_400(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(any_bytes)
def test_any_bytes_are_a_request_or_a_400(raw: bytes) -> None:
    check(raw)


def test_a_deeply_nested_body_is_a_400() -> None:
    with pytest.raises(BadRequest) as bad:
        parse_responses_request(b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert bad.value.code == "invalid_json"
