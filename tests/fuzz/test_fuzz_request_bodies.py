"""Property tests on a client's chat request (service/chat_completions.py: `parse_chat_request`, which both
the raw chat route and Quart's parse with): any bytes and any `X-Session-Id` give a parsed request or a
`BadRequest` (a 400), never another exception; its message is one line and quotes at most a bounded part
of the input; a parsed request can be forwarded (its body encodes) and keeps only bounded model ids."""

from __future__ import annotations

from typing import Any

from fuzz_strategies import (
    FUZZ,
    any_bytes,
    assert_message,
    either,
    encodes,
    json_bytes,
    json_scalars,
    json_values,
    shaped,
)
from hypothesis import example, given
from hypothesis import strategies as st

from actors.request import ChatRequest
from service.chat_completions import GATEWAY_FIELDS, MAX_MODEL_NAME, MAX_MODELS, parse_chat_request
from service.edge import BadRequest

MESSAGE_LIMIT = 300  # the longest fixed wording with a parameter path or a byte offset in it

model_ids = st.one_of(
    st.sampled_from(["auto", "auto-fast", "local/ok", ""]),
    st.text(max_size=12),
    st.integers(MAX_MODEL_NAME - 1, MAX_MODEL_NAME + 2).map(lambda n: "m" * n),
)
parts = st.lists(
    shaped(
        {
            "type": st.sampled_from(["text", "image_url"]),
            "text": st.text(max_size=10),
            "image_url": json_values,
        }
    ),
    max_size=3,
)
messages = st.lists(
    shaped(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool"]),
            "content": st.one_of(st.text(max_size=30), st.none(), parts),
            "tool_calls": st.lists(
                shaped({"id": st.text(max_size=4), "function": shaped({"name": st.text(max_size=4)})}),
                max_size=2,
            ),
        }
    ),
    max_size=4,
)
bodies = shaped(
    {
        "model": model_ids,
        "messages": messages,
        "models": st.lists(model_ids, max_size=MAX_MODELS + 2),
        "stream": st.booleans(),
        "fallback": st.booleans(),
        "max_tokens": st.one_of(st.integers(-2, 10**6), json_scalars),
        "max_completion_tokens": st.integers(-2, 10**6),
        "temperature": st.floats(0, 2),
        "stream_options": shaped({"include_usage": st.booleans()}),
    }
)
raw_bodies = st.one_of(bodies.map(encodes), json_bytes(bodies), any_bytes, either(json_values).map(encodes))
# Header values as the edge hands them over (bytes read as latin-1).
session_headers = st.one_of(st.none(), st.binary(max_size=20).map(lambda b: b.decode("latin-1")))


@FUZZ
@given(raw=raw_bodies, session=session_headers)
@example(raw=b'{"model": "\xff\xfe", "messages": []}', session=None)  # not UTF-8
@example(raw=b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'\xc3"}]}', session=None)
@example(raw=b"[" * 100_000, session=None)  # nested too deeply
@example(raw=b'{"model": "' + b"m" * 100_000 + b'", "messages": [{"role": "user"}]}', session=None)
@example(raw=b'{"messages": [{"role": "user"}], "max_tokens": 1e999}', session=None)
@example(raw=b'{"messages": [{"role": "user"}], "max_tokens": ' + b"9" * 5000 + b"}", session=None)
def test_any_body_is_a_request_or_a_400_with_a_bounded_one_line_message(
    raw: bytes, session: str | None
) -> None:
    try:
        req = parse_chat_request(raw, "req_fuzz", session)
    except BadRequest as exc:
        assert_message(str(exc), MESSAGE_LIMIT)
        assert exc.code is None or (isinstance(exc.code, str) and exc.code)
        assert exc.param is None or len(exc.param) <= 60
        return
    check_request(req)


def check_request(req: ChatRequest) -> None:
    assert isinstance(req, ChatRequest)
    encodes(req.body)  # it is forwarded upstream as JSON
    assert not any(name in req.body for name in GATEWAY_FIELDS)
    assert 1 <= len(req.requested) <= MAX_MODELS + 1
    assert all(isinstance(m, str) and 0 < len(m) <= MAX_MODEL_NAME for m in req.requested)
    assert isinstance(req.stream, bool) and isinstance(req.use_chain, bool)
    assert req.est_tokens >= 0


@FUZZ
@given(body=bodies)
def test_a_request_the_parser_accepts_keeps_its_fields_as_sent(body: dict[str, Any]) -> None:
    try:
        req = parse_chat_request(encodes(body), "req_fuzz")
    except BadRequest:
        return
    assert req.body == {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    assert req.stream is body.get("stream", False)
