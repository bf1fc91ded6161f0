"""The embeddings protocol (`POST /v1/embeddings`, OpenAI's shape): parse the client's body, resolve the
model it names to one family of embedding models, and answer OpenAI's embeddings list.

Vectors of two embedding models are not comparable (a search index built with one cannot be queried with
the other), so fallback stays inside the family the requested model belongs to: its other keys, and the
same weights on other platforms (BAAI bge-m3 on Cloudflare and on NVIDIA). The family's models go to the
runner as the request's named models with the chain off, so `decide` picks among them and every exclusion
is recorded and replayable like a chat request's. When none of them can answer, the error says so and why
no other model was tried.

The upstream is always asked for floats; `encoding_format: "base64"` (what the openai SDK sends unless told
otherwise) is encoded here, as OpenAI does: the vector's float32 values, little-endian, in base64.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec

from actors.request import ChatRequest
from actors.supervisor import Runtime
from events.attempts import Completion, Failure
from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from service.edge import (
    Answer,
    BadRequest,
    Headers,
    error_answer,
    failure_answer,
    json_body,
    quoted,
    routing_headers,
)
from service.protocol import ClientProtocol

EMBEDDINGS_PATH = "/v1/embeddings"
MAX_MODEL_NAME = 256  # characters of a model name a client may send (as for chat)
MAX_INPUTS = 2048  # texts in one request (OpenAI's limit)
ENCODINGS = ("float", "base64")
MAX_LISTED = 20  # embedding models named in an error
_encode = msgspec.json.encode
_decode = msgspec.json.decode


async def handle(runtime: Runtime, raw: bytes, request_id: str, headers: Headers) -> Answer:
    try:
        parsed = parse_embeddings_request(raw)
    except BadRequest as exc:
        return error_answer(400, str(exc), "invalid_request_error", exc.code, param=exc.param)
    models = [a.model for a in await runtime.health.models() if a.model.enabled]
    try:
        family, refs = resolve_family(parsed.model, models)
    except BadRequest as exc:
        status = 404 if exc.code == "model_not_found" else 400
        return error_answer(status, str(exc), "invalid_request_error", exc.code, param=exc.param)
    req = ChatRequest(
        request_id=request_id,
        body=parsed.body,
        requested=refs,
        stream=False,
        est_tokens=parsed.est_tokens,
        use_chain=False,  # never another family: its vectors would not be comparable
        protocol="embeddings",
    )
    result = await runtime.requests.complete(req)
    if isinstance(result, Failure):
        return failure_answer(family_failure(result, family))
    return Answer(200, render(result, parsed.encoding_format, parsed.est_tokens), routing_headers(result))


PROTOCOL = ClientProtocol(EMBEDDINGS_PATH, handle)


class EmbeddingsBody(msgspec.Struct, frozen=True):
    """A parsed request: the neutral body (OpenAI's, `input` a list of strings, `encoding_format` left to
    the edge), the model the client named and how it wants the vectors."""

    model: str
    body: dict[str, Any]
    encoding_format: str
    est_tokens: int


def parse_embeddings_request(raw: bytes) -> EmbeddingsBody:
    """Validate what the gateway reads; other fields pass through to the provider untouched."""
    body = json_body(raw, "'model' and 'input'")
    model = body.get("model")
    if model is None:
        raise BadRequest(
            "'model' is required: the embedding model to use (GET /v1/models lists them).",
            "model",
            "missing_required_parameter",
        )
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be an embedding model's name.", "model", "invalid_type")
    if len(model) > MAX_MODEL_NAME:
        raise BadRequest(
            f"'model' is {len(model)} characters long; model names are at most {MAX_MODEL_NAME}.",
            "model",
            "invalid_value",
        )
    texts = _inputs(body.get("input"))
    encoding = body.pop("encoding_format", None)
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format", "invalid_value")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise BadRequest("'dimensions' must be a positive integer.", "dimensions", "invalid_type")
    if dimensions is None:
        body.pop("dimensions", None)  # null: as if not given (providers differ on a null)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string.", "user", "invalid_type")
    body["input"] = texts
    return EmbeddingsBody(model, body, encoding, sum(len(t) for t in texts) // 4 + len(texts))


def _inputs(value: Any) -> list[str]:
    if value is None:
        raise BadRequest(
            "'input' is required: a string or an array of strings.", "input", "missing_required_parameter"
        )
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a string or a non-empty array of strings.", "input", "invalid_type")
    if len(value) > MAX_INPUTS:
        raise BadRequest(
            f"'input' has {len(value)} items; at most {MAX_INPUTS} texts go in one request.",
            "input",
            "invalid_value",
        )
    for i, item in enumerate(value):
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise BadRequest(
                "'input' holds token ids; only text input is supported (send the texts as strings): "
                "token ids belong to one tokenizer, and the gateway may route to a model with another.",
                "input",
                "unsupported_value",
            )
        if not isinstance(item, str):
            raise BadRequest(f"'input[{i}]' must be a string.", f"input[{i}]", "invalid_type")
        if not item:
            raise BadRequest(
                f"'input[{i}]' is empty; every text must have content.", f"input[{i}]", "invalid_value"
            )
    return value


def resolve_family(name: str, models: list[CatalogModel]) -> tuple[str, tuple[str, ...]]:
    """(family, the refs of its models) for the name a client gave: `platform/id`, an `id`, or a family
    name. A model named exactly comes first; the rest of the family follows by intelligence rank."""
    if ALIASES.get(name, name) in VIRTUAL_MODELS:
        raise BadRequest(
            f"'{name}' routes chat requests; embeddings need one embedding model named, since models' "
            f"vectors differ: {_listing(models)}.",
            "model",
            "model_not_supported",
        )
    found = [m for m in models if m.ref == name] or [m for m in models if m.id == name]
    embedding = [m for m in found if m.task == "embedding"]
    if found and not embedding:
        raise BadRequest(
            f"'{quoted(name)}' is a chat model, not an embedding model; {_listing(models)}.",
            "model",
            "model_not_supported",
        )
    if not embedding:
        embedding = [m for m in models if m.task == "embedding" and m.vectors == name]
    if not embedding:
        raise BadRequest(
            f"The embedding model '{quoted(name)}' does not exist or is disabled; {_listing(models)}.",
            "model",
            "model_not_found",
        )
    families = sorted({m.vectors for m in embedding})
    if len(families) > 1:
        raise BadRequest(
            f"'{quoted(name)}' names models of {len(families)} embedding families whose vectors differ "
            f"({', '.join(families)}); name one as platform/id.",
            "model",
            "ambiguous_model",
        )
    family = families[0]
    members = sorted(
        (m for m in models if m.task == "embedding" and m.vectors == family),
        key=lambda m: (m not in embedding, m.intelligence_rank, m.ref),
    )
    return family, tuple(m.ref for m in members)


def _listing(models: list[CatalogModel]) -> str:
    refs = [m.ref for m in models if m.task == "embedding"]
    if not refs:
        return "no embedding model is configured"
    shown = ", ".join(refs[:MAX_LISTED]) + (
        f" and {len(refs) - MAX_LISTED} more" if len(refs) > MAX_LISTED else ""
    )
    return f"the embedding models are {shown}"


def family_failure(failure: Failure, family: str) -> Failure:
    """No model of the family answered: the message says so, and why no other model was tried. A request
    a provider rejected as the client's fault keeps the provider's word."""
    if failure.code == "upstream_bad_request":
        return failure
    message = (
        f"No key of an embedding model '{family}' is usable: {failure.message.rstrip('.')}; other embedding "
        "models are not tried because their vectors differ."
    )
    return Failure(
        failure.status,
        message,
        failure.type,
        failure.code,
        retry_after_s=failure.retry_after_s,
        attempts=failure.attempts,
    )


def render(result: Completion, encoding_format: str, est_tokens: int) -> bytes:
    """The client's answer from the neutral list (which the judge checked): vectors by input order, in
    the encoding asked for, `model` the routed `platform/id`, usage the provider's (else our estimate)."""
    payload = _decode(result.body)
    # The judge let through indexes 0..n-1 once each, or none at all (null or absent: the list's order).
    items = sorted(payload["data"], key=lambda item: item.get("index") or 0)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _base64(item["embedding"]) if encoding_format == "base64" else item["embedding"],
        }
        for i, item in enumerate(items)
    ]
    usage = payload.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(prompt, int) or isinstance(prompt, bool) or prompt < 0:
        prompt = est_tokens  # Gemini reports no counts for embeddings
    return _encode(
        {
            "object": "list",
            "data": data,
            "model": result.routed_via,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
    )


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
