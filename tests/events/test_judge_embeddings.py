"""`judge_embeddings`: a 200 embeddings answer in the neutral form is an answer only with one vector of
numbers per input (and of the size asked for); anything else is a failure another key or platform of the
family may not have."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from events.failures import FailureKind
from events.judge import judge_embeddings
from events.outcomes import Answered, Failed


def answer(*vectors: Any, usage: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def test_one_vector_per_input_is_an_answer_with_the_providers_count() -> None:
    payload = answer([0.1, -2], [3.0, 4.5], usage={"prompt_tokens": 9, "total_tokens": 9})
    out = judge_embeddings(payload, 2, 2)
    assert isinstance(out, Answered)
    assert msgspec.json.decode(out.body or b"") == payload
    assert (out.usage.input_tokens, out.usage.output_tokens) == (9, 0)


@pytest.mark.parametrize(
    ("payload", "inputs", "kind", "says"),
    [
        (None, 1, FailureKind.SERVER_ERROR, "not an embeddings list"),
        ({"object": "list"}, 1, FailureKind.SERVER_ERROR, "not an embeddings list"),
        (answer(), 1, FailureKind.EMPTY, "no embeddings"),
        (answer([1.0]), 2, FailureKind.SERVER_ERROR, "1 embeddings for 2 inputs"),
        (answer([1.0], []), 2, FailureKind.SERVER_ERROR, "embedding 1 is not a list of numbers"),
        (answer(["x"]), 1, FailureKind.SERVER_ERROR, "embedding 0 is not a list of numbers"),
        (answer([True]), 1, FailureKind.SERVER_ERROR, "embedding 0 is not a list of numbers"),
        (answer("AAAA"), 1, FailureKind.SERVER_ERROR, "embedding 0 is not a list of numbers"),
        ({"data": ["x"]}, 1, FailureKind.SERVER_ERROR, "embedding 0 is not a list of numbers"),
    ],
)
def test_an_answer_without_usable_vectors_is_a_failure(
    payload: Any, inputs: int, kind: str, says: str
) -> None:
    out = judge_embeddings(payload, inputs)
    assert isinstance(out, Failed) and out.kind == kind and says in out.message


def test_a_wrapped_error_is_the_status_its_code_names() -> None:
    out = judge_embeddings({"error": {"code": 429, "message": "slow down"}}, 1)
    assert isinstance(out, Failed) and out.kind == FailureKind.RATE_LIMITED and out.status == 429
    assert "slow down" in out.message


def test_vectors_of_another_size_than_asked_are_a_rejected_request() -> None:
    out = judge_embeddings(answer([1.0, 2.0, 3.0]), 1, 2)
    assert isinstance(out, Failed) and out.kind == FailureKind.BAD_REQUEST and out.status == 400
    assert "3-dimensional vectors, not the 2 'dimensions' asks for" in out.message
    assert isinstance(judge_embeddings(answer([1.0, 2.0, 3.0]), 1, None), Answered)


@pytest.mark.parametrize(
    "indexes",
    [[0, 0], [1, 2], [None, 1], ["0", "1"], [0, True], [0.0, 1.0], [5, 5]],
    ids=repr,
)
def test_vectors_not_indexed_once_each_from_zero_are_a_server_error(indexes: list[Any]) -> None:
    payload = answer([1.0], [2.0])
    for item, index in zip(payload["data"], indexes, strict=True):
        item["index"] = index
    out = judge_embeddings(payload, 2)
    assert isinstance(out, Failed) and out.kind is FailureKind.SERVER_ERROR
    assert "not indexed 0 to 1, one each" in out.message


@pytest.mark.parametrize("indexes", [[1, 0], [None, None], "absent"], ids=repr)
def test_vectors_indexed_in_any_order_or_not_at_all_are_an_answer(indexes: Any) -> None:
    payload = answer([1.0], [2.0])
    for item, index in zip(payload["data"], [None, None] if indexes == "absent" else indexes, strict=True):
        if indexes == "absent":
            del item["index"]
        else:
            item["index"] = index
    assert isinstance(judge_embeddings(payload, 2), Answered)
