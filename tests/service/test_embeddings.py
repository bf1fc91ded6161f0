"""The embeddings edge without a gateway: parsing and its 400s (each naming its field), resolving a name to
one family's models, the answer's encodings, and the error when no model of the family can answer."""

from __future__ import annotations

import base64
import dataclasses
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest

from events.attempts import Completion, Failure
from events.catalog import CatalogModel
from service.config import ConfigError, load_config
from service.edge import BadRequest
from service.embeddings import (
    MAX_INPUTS,
    family_failure,
    parse_embeddings_request,
    render,
    resolve_family,
)


def catalog_model(
    platform: str, id: str, task: str = "chat", family: str | None = None, rank: int = 5
) -> CatalogModel:
    return CatalogModel(platform, id, "balanced", False, True, None, rank, 5, task=task, family=family)


BGE_CF = catalog_model("cloudflare", "@cf/baai/bge-m3", "embedding", "BAAI/bge-m3", rank=2)
BGE_NV = catalog_model("nvidia", "baai/bge-m3", "embedding", "BAAI/bge-m3", rank=1)
SMALL = catalog_model("github", "openai/text-embedding-3-small", "embedding", None)
CHAT = catalog_model("groq", "llama")
MODELS = [CHAT, BGE_CF, BGE_NV, SMALL]


def parse(body: Any) -> Any:
    return parse_embeddings_request(msgspec.json.encode(body))


def refused(body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as raised:
        parse(body)
    return raised.value


def test_a_string_becomes_a_list_and_encoding_format_stays_with_the_edge() -> None:
    parsed = parse(
        {"model": "bge", "input": "hello world", "encoding_format": "base64", "input_type": "query"}
    )
    assert parsed.model == "bge" and parsed.encoding_format == "base64"
    # Unknown fields (NVIDIA's input_type) pass through; the upstream is asked for floats.
    assert parsed.body == {"model": "bge", "input": ["hello world"], "input_type": "query"}
    assert parsed.est_tokens == len("hello world") // 4 + 1


def test_defaults_float_and_a_null_dimensions_is_not_sent() -> None:
    parsed = parse({"model": "m", "input": ["a", "b"], "dimensions": None, "encoding_format": None})
    assert parsed.encoding_format == "float" and "dimensions" not in parsed.body
    assert parse({"model": "m", "input": "a", "dimensions": 256}).body["dimensions"] == 256


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": "x"}, "model", "'model' is required"),
        ({"model": 3, "input": "x"}, "model", "'model' must be"),
        ({"model": "x" * 300, "input": "x"}, "model", "at most 256"),
        ({"model": "m"}, "input", "'input' is required"),
        ({"model": "m", "input": []}, "input", "non-empty array"),
        ({"model": "m", "input": {"a": 1}}, "input", "a string or a non-empty array"),
        ({"model": "m", "input": [1, 2, 3]}, "input", "only text input is supported"),
        ({"model": "m", "input": [[1, 2], [3]]}, "input", "only text input is supported"),
        ({"model": "m", "input": ["a", None]}, "input[1]", "'input[1]' must be a string"),
        ({"model": "m", "input": ["a", ""]}, "input[1]", "is empty"),
        ({"model": "m", "input": ["a"] * (MAX_INPUTS + 1)}, "input", f"at most {MAX_INPUTS}"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions", "positive integer"),
        ({"model": "m", "input": "x", "dimensions": True}, "dimensions", "positive integer"),
        ({"model": "m", "input": "x", "user": 7}, "user", "'user' must be a string"),
    ],
)
def test_a_bad_field_is_named(body: Any, param: str, says: str) -> None:
    exc = refused(body)
    assert exc.param == param and says in str(exc)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"x"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_embeddings_request(raw)
    assert raised.value.code == "invalid_json"


def test_a_family_name_an_id_and_a_ref_all_give_the_family() -> None:
    # By rank when no model was named exactly; the named one first when one was.
    assert resolve_family("BAAI/bge-m3", MODELS) == ("BAAI/bge-m3", (BGE_NV.ref, BGE_CF.ref))
    assert resolve_family("@cf/baai/bge-m3", MODELS) == ("BAAI/bge-m3", (BGE_CF.ref, BGE_NV.ref))
    assert resolve_family(BGE_CF.ref, MODELS) == ("BAAI/bge-m3", (BGE_CF.ref, BGE_NV.ref))
    # No family: the model alone.
    assert resolve_family("openai/text-embedding-3-small", MODELS) == (SMALL.ref, (SMALL.ref,))


def test_a_chat_model_a_mode_and_an_unknown_name_are_refused_listing_the_embedding_models() -> None:
    for name, code in (
        ("llama", "model_not_supported"),
        ("auto", "model_not_supported"),
        ("nope", "model_not_found"),
    ):
        with pytest.raises(BadRequest) as raised:
            resolve_family(name, MODELS)
        assert raised.value.code == code and raised.value.param == "model"
        assert f"the embedding models are {BGE_CF.ref}, {BGE_NV.ref}, {SMALL.ref}" in str(raised.value)
    with pytest.raises(BadRequest, match="is a chat model, not an embedding model"):
        resolve_family("groq/llama", MODELS)


def test_an_id_of_two_families_must_be_named_by_ref() -> None:
    twin = dataclasses.replace(SMALL, platform="azure")
    twin = dataclasses.replace(twin, family="azure-vectors")
    with pytest.raises(BadRequest, match="2 embedding families") as raised:
        resolve_family(SMALL.id, [*MODELS, twin])
    assert raised.value.code == "ambiguous_model"


def answer(data: list[Any], usage: Any = None) -> Completion:
    body: dict[str, Any] = {"object": "list", "data": data, "model": None}
    if usage is not None:
        body["usage"] = usage
    return Completion(msgspec.json.encode(body), "nvidia/baai/bge-m3", 1)


def test_render_orders_by_index_names_the_routed_model_and_encodes_base64_as_float32() -> None:
    result = answer(
        [{"index": 1, "embedding": [0.5, -1.0]}, {"index": 0, "embedding": [0.1, 0.2]}],
        {"prompt_tokens": 7, "total_tokens": 7},
    )
    floats = msgspec.json.decode(render(result, "float", 3))
    assert floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.5, -1.0]},
        ],
        "model": "nvidia/baai/bge-m3",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    encoded = msgspec.json.decode(render(result, "base64", 3))["data"]
    assert base64.b64decode(encoded[1]["embedding"]) == struct.pack("<2f", 0.5, -1.0)
    assert struct.unpack("<2f", base64.b64decode(encoded[0]["embedding"])) == pytest.approx((0.1, 0.2))


def test_render_estimates_usage_the_provider_did_not_report() -> None:
    out = msgspec.json.decode(render(answer([{"index": 0, "embedding": [1.0]}]), "float", 12))
    assert out["usage"] == {"prompt_tokens": 12, "total_tokens": 12}


def test_the_familys_failure_says_why_no_other_model_was_tried() -> None:
    failure = Failure(
        503, "No model can take this request right now: a; b.", "service_unavailable", "x", 5.0, 2
    )
    said = family_failure(failure, "BAAI/bge-m3")
    assert said.message == (
        "No key of an embedding model 'BAAI/bge-m3' is usable: No model can take this request right now: "
        "a; b; other embedding models are not tried because their vectors differ."
    )
    assert (said.status, said.code, said.retry_after_s, said.attempts) == (503, "x", 5.0, 2)
    rejected = Failure(400, "nvidia/baai/bge-m3: bad", "invalid_request_error", "upstream_bad_request")
    assert family_failure(rejected, "BAAI/bge-m3") is rejected


def test_a_config_file_makes_embedding_models_and_refuses_an_unknown_task(tmp_path: Path) -> None:
    text = (
        '[catalog]\nbuiltin = false\n[[platforms]]\nname = "local"\nbase_url = "http://127.0.0.1:1/v1"\n'
        '[[models]]\nplatform = "local"\nid = "e1"\ntask = "embedding"\nfamily = "fam"\n'
        '[[models]]\nplatform = "local"\nid = "e2"\ntask = "embedding"\n'
        '[[models]]\nplatform = "local"\nid = "c"\n'
    )
    path = tmp_path / "switchboard.toml"
    path.write_text(text)
    models = {m.id: m.catalog_model() for m in load_config(path, {}).models}
    assert (models["e1"].task, models["e1"].family, models["e1"].vectors) == ("embedding", "fam", "fam")
    assert (models["e2"].task, models["e2"].family, models["e2"].vectors) == ("embedding", None, "local/e2")
    assert (models["c"].task, models["c"].family) == ("chat", None)
    path.write_text(text.replace('task = "embedding"\nfamily', 'task = "vision"\nfamily'))
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert str(raised.value).endswith(
        'switchboard.toml:9: [[models]][1].task: expected a model task ("chat", "embedding"), '
        'found a string ("vision")'
    )


def test_vectors_with_null_indexes_keep_the_providers_order() -> None:
    items = [{"index": None, "embedding": [1.0]}, {"index": None, "embedding": [2.0]}]
    out = msgspec.json.decode(render(answer(items), "float", 3))
    assert [d["embedding"] for d in out["data"]] == [[1.0], [2.0]]
    assert [d["index"] for d in out["data"]] == [0, 1]
