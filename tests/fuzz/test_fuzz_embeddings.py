"""Property tests on the embeddings edge and the providers' embeddings answers: any client bytes give a
parsed request or a `BadRequest` (a 400) with a one-line message; any provider bytes, read by any adapter
and judged, give an `Answered` or a `Failed`, never an exception, and an answer renders in both encodings."""

from __future__ import annotations

from typing import Any

import msgspec
from fuzz_strategies import FUZZ, any_bytes, assert_message, either, encodes, json_bytes, json_values, shaped
from hypothesis import given
from hypothesis import strategies as st

from events.attempts import Completion
from events.judge import judge_embeddings
from events.outcomes import Answered, Failed
from service.edge import BadRequest
from service.embeddings import parse_embeddings_request, render
from service.providers import ADAPTERS

MESSAGE_LIMIT = 300

inputs = st.one_of(
    st.text(max_size=10),
    st.lists(st.one_of(st.text(max_size=10), st.integers(), st.lists(st.integers(), max_size=3)), max_size=4),
)
requests = shaped(
    {
        "model": st.one_of(st.sampled_from(["bge", "auto", ""]), st.text(max_size=12)),
        "input": inputs,
        "encoding_format": st.sampled_from(["float", "base64", "int8", None]),
        "dimensions": st.one_of(st.integers(), st.none(), st.booleans()),
        "user": st.one_of(st.text(max_size=5), st.integers()),
    }
)


@FUZZ
@given(st.one_of(json_bytes(requests), any_bytes))
def test_a_client_body_parses_or_is_a_400_with_one_line(raw: bytes) -> None:
    try:
        parsed = parse_embeddings_request(raw)
    except BadRequest as exc:
        assert_message(str(exc), MESSAGE_LIMIT)
        return
    assert all(isinstance(t, str) and t for t in parsed.body["input"])
    assert "encoding_format" not in parsed.body and parsed.encoding_format in ("float", "base64")
    encodes(parsed.body)  # forwarded as JSON


numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.booleans())
vectors = st.lists(either(numbers), max_size=4)
openai_lists = shaped(
    {
        "object": st.just("list"),
        "data": st.lists(shaped({"index": st.integers(0, 3), "embedding": either(vectors)}), max_size=3),
        "usage": shaped({"prompt_tokens": st.integers(), "total_tokens": st.integers()}),
        "error": json_values,
        "success": st.booleans(),
        "result": shaped({"data": st.lists(vectors, max_size=3)}),
    }
)
gemini_lists = shaped({"embeddings": st.lists(shaped({"values": either(vectors)}), max_size=3)})


@FUZZ
@given(
    st.sampled_from(sorted(ADAPTERS)),
    st.one_of(json_bytes(openai_lists), json_bytes(gemini_lists), any_bytes),
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(1, 4)),
)
def test_a_provider_answer_is_judged_and_an_answer_renders(
    kind: str, raw: bytes, inputs: int, dims: Any
) -> None:
    out = judge_embeddings(ADAPTERS[kind].embeddings(raw), inputs, dims)
    assert isinstance(out, Answered | Failed)
    if isinstance(out, Failed):
        assert_message(out.message, MESSAGE_LIMIT)
        return
    assert out.body is not None
    for encoding in ("float", "base64"):
        rendered = msgspec.json.decode(render(Completion(out.body, "p/m", 1), encoding, 1))
        assert len(rendered["data"]) == inputs
