"""`POST /v1/embeddings` through a running gateway, with the openai SDK as the client and the fault upstream
answering OpenAI's `/embeddings` and Gemini's `:batchEmbedContents`.

The platforms: `cf` and `nv` both serve the family `bge` (as Cloudflare and NVIDIA both serve BAAI
bge-m3), `cf` also serves `other-embed` of another family, and a chat model `ok`. Fallback stays inside
the family: another key, another platform of it, never another family."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from custom_gateway import gateway_from, model_toml, platform_toml, read_log, server_toml, settled
from fault_upstream import embedding_vector
from harness import ADMIN_HEADERS, ADMIN_TOKEN, GATEWAY_KEY

from events.config_applied import view_of
from events.types import AttemptStarted, ConfigApplied, RequestReceived, RouteDecided
from service.replay_runner import run_replay
from service.server import DB_NAME

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

GEMINI_KEY = "AIza-e2e-gemini-0123456789"


def platforms(cf_keys: tuple[str, ...] = ("up-1",)) -> Any:
    def config_for(upstream_url: str, data_dir: Path) -> str:
        text = server_toml(data_dir, gateway_key=GATEWAY_KEY)
        text += platform_toml("cf", upstream_url, cf_keys) + platform_toml("nv", upstream_url, ("up-nv",))
        base = upstream_url.removesuffix("/v1") + "/v1beta"
        text += (
            f'\n[[platforms]]\nname = "gm"\nkind = "gemini"\nbase_url = "{base}"\nkeys = ["{GEMINI_KEY}"]\n'
        )
        text += model_toml("cf", "bge-cf", 1, task="embedding", family="bge")
        text += model_toml("nv", "bge-nv", 2, task="embedding", family="bge")
        text += model_toml("cf", "other-embed", 3, task="embedding", family="other")
        text += model_toml("gm", "g-embed", 4, task="embedding")
        return text + model_toml("cf", "ok", 5)

    return config_for


def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)


def embedding_calls(gw: Any) -> list[Any]:
    return [r for r in gw.upstream.requests if r.path == "/v1/embeddings"]


def as_float32(vector: list[float]) -> list[float]:
    """What a vector is after the float32 round trip base64 takes."""
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


async def test_the_sdk_gets_vectors_as_floats_and_as_base64(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw, client(gw.base_url) as sdk:
            floats = await sdk.embeddings.create(model="bge", input=["a b", "c"], encoding_format="float")
            # Without encoding_format the SDK asks for base64 and decodes it itself.
            decoded = await sdk.embeddings.create(model="cf/bge-cf", input="a b")
            raw = await sdk.embeddings.with_raw_response.create(
                model="bge-cf", input=["c"], encoding_format="base64"
            )
            calls = embedding_calls(gw)
    assert floats.model == "cf/bge-cf" and floats.object == "list"
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == embedding_vector("bge-cf", "a b", 8)
    assert floats.data[1].embedding == embedding_vector("bge-cf", "c", 8)
    assert floats.usage.prompt_tokens == 3  # the provider's count
    assert decoded.data[0].embedding == as_float32(embedding_vector("bge-cf", "a b", 8))
    assert raw.headers["x-routed-via"] == "cf/bge-cf" and raw.headers["x-fallback-attempts"] == "0"
    encoded = raw.parse().data[0].embedding
    assert isinstance(encoded, str)
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == as_float32(
        embedding_vector("bge-cf", "c", 8)
    )
    # The upstream is always asked for floats, with its own model id and the texts as a list.
    assert all(c.body is not None and "encoding_format" not in c.body for c in calls)
    assert calls[0].body is not None and calls[0].body["input"] == ["a b", "c"]
    assert calls[0].body["model"] == "bge-cf" and calls[0].api_key == "up-1"


async def test_a_failing_key_falls_over_to_another_key_of_the_same_model(tmp_path: Path) -> None:
    state_keys = ("up-1", "up-2")
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms(state_keys)) as gw, client(gw.base_url) as sdk:
            gw.upstream.key_behaviours["up-1"] = "rate-limit:30"
            answers = [
                await sdk.embeddings.with_raw_response.create(model="bge", input="x", encoding_format="float")
                for _ in range(2)
            ]
            calls = embedding_calls(gw)
    # Least-used keys first: one of the two requests met up-1 (429) and went on to up-2, on the same model.
    assert [a.headers["x-routed-via"] for a in answers] == ["cf/bge-cf", "cf/bge-cf"]
    assert sorted(a.headers["x-fallback-attempts"] for a in answers) == ["0", "1"]
    assert [c.api_key for c in calls].count("up-1") == 1
    assert {c.model for c in calls} == {"bge-cf"}


async def test_a_failing_platform_falls_over_to_the_same_family_elsewhere(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw, client(gw.base_url) as sdk:
            gw.upstream.behaviours["bge-cf"] = "fail:500"
            raw = await sdk.embeddings.with_raw_response.create(
                model="bge", input="x", encoding_format="float"
            )
            calls = embedding_calls(gw)
    answer = raw.parse()
    assert raw.headers["x-routed-via"] == "nv/bge-nv" and raw.headers["x-fallback-attempts"] == "1"
    assert answer.model == "nv/bge-nv"
    assert answer.data[0].embedding == embedding_vector("bge-nv", "x", 8)
    assert [(c.model, c.api_key) for c in calls] == [("bge-cf", "up-1"), ("bge-nv", "up-nv")]


async def test_no_other_family_is_tried_and_the_error_says_why(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw, client(gw.base_url) as sdk:
            gw.upstream.behaviours["bge-cf"] = "fail:500"
            gw.upstream.behaviours["bge-nv"] = "rate-limit:30"
            with pytest.raises(openai.APIStatusError) as failed:
                await sdk.embeddings.create(model="nv/bge-nv", input="x")
            calls = embedding_calls(gw)
    # The named platform first, then the rest of its family; `other-embed` never.
    assert [c.model for c in calls] == ["bge-nv", "bge-cf"]
    message = failed.value.message
    assert failed.value.status_code == 502
    assert "No key of an embedding model 'bge' is usable" in message
    assert "other embedding models are not tried because their vectors differ" in message
    assert "nv/bge-nv" in message and "cf/bge-cf" in message


async def test_chat_and_embedding_models_do_not_stand_in_for_each_other(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw, client(gw.base_url) as sdk:
            with pytest.raises(openai.BadRequestError) as chat_with_embedding:
                await sdk.chat.completions.create(
                    model="bge-cf", messages=[{"role": "user", "content": "hi"}]
                )
            with pytest.raises(openai.BadRequestError) as embedding_with_chat:
                await sdk.embeddings.create(model="ok", input="x")
            with pytest.raises(openai.BadRequestError) as auto:
                await sdk.embeddings.create(model="auto", input="x")
            # The chat chain never reaches an embedding model, even when the chat model fails.
            gw.upstream.behaviours["ok"] = "fail:500"
            with pytest.raises(openai.APIStatusError) as chat_fails:
                await sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
            calls = embedding_calls(gw)
    assert "'bge-cf' is an embedding model; use /v1/embeddings" in chat_with_embedding.value.message
    body: Any = embedding_with_chat.value.body
    assert "'ok' is a chat model, not an embedding model" in body["message"] and body["param"] == "model"
    assert "cf/bge-cf" in body["message"]  # the embedding models are listed
    assert auto.value.status_code == 400
    assert chat_fails.value.status_code == 502 and "bge" not in chat_fails.value.message
    assert calls == []


async def test_token_arrays_are_refused_naming_the_field(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw, client(gw.base_url) as sdk:
            with pytest.raises(openai.BadRequestError) as tokens:
                await sdk.embeddings.create(model="bge", input=[[1, 2, 3]])
            calls = embedding_calls(gw)
    body: Any = tokens.value.body
    assert body["param"] == "input" and "only text input is supported" in body["message"]
    assert calls == []


async def test_gemini_embeds_in_a_batch_with_the_key_in_a_header(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw, client(gw.base_url) as sdk:
            answer = await sdk.embeddings.create(
                model="g-embed", input=["one", "two"], dimensions=4, encoding_format="float"
            )
            (seen,) = [r for r in gw.upstream.requests if r.path.startswith("/v1beta/")]
    assert seen.path == "/v1beta/models/g-embed:batchEmbedContents"
    assert seen.api_key == GEMINI_KEY and "authorization" not in seen.headers
    assert seen.body is not None
    assert [r["outputDimensionality"] for r in seen.body["requests"]] == [4, 4]
    assert [r["content"]["parts"][0]["text"] for r in seen.body["requests"]] == ["one", "two"]
    assert answer.model == "gm/g-embed"
    assert [d.embedding for d in answer.data] == [embedding_vector("g-embed", t, 4) for t in ("one", "two")]
    assert answer.usage.prompt_tokens > 0  # Gemini counts nothing: the gateway's estimate


async def test_models_lists_embedding_models(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platforms()) as gw:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {GATEWAY_KEY}"}) as http:
                listed = (await http.get(gw.base_url + "/models")).json()["data"]
    tasks = {m["id"]: m.get("task") for m in listed}
    assert tasks["cf/bge-cf"] == tasks["nv/bge-nv"] == tasks["gm/g-embed"] == "embedding"
    assert tasks["cf/ok"] == "chat"


async def test_the_admin_api_says_each_models_task_and_family_and_chains_chat_models_only(
    tmp_path: Path,
) -> None:
    def with_admin(upstream_url: str, data_dir: Path) -> str:
        return platforms()(upstream_url, data_dir) + f'\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'

    with trio.fail_after(20):
        async with gateway_from(tmp_path, with_admin) as gw:
            async with httpx.AsyncClient(headers=ADMIN_HEADERS) as http:
                listed = (await http.get(gw.url + "/admin/api/models")).json()["data"]
    by_ref = {m["ref"]: m for m in listed}
    assert (by_ref["cf/bge-cf"]["task"], by_ref["cf/bge-cf"]["family"]) == ("embedding", "bge")
    assert by_ref["gm/g-embed"]["family"] == "gm/g-embed"  # no family given: its own
    assert by_ref["cf/ok"]["task"] == "chat" and by_ref["cf/ok"]["chain_position"] == 1
    assert all(m["chain_position"] is None for m in listed if m["task"] == "embedding")


async def test_a_log_with_embeddings_replays_every_decision(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with gateway_from(tmp_path, platforms(("up-1", "up-2"))) as gw, client(gw.base_url) as sdk:
            gw.upstream.key_behaviours["up-1"] = "rate-limit:30"
            for _ in range(3):
                await sdk.embeddings.create(model="bge", input="x")
            gw.upstream.behaviours["bge-cf"] = "fail:503"
            await sdk.embeddings.create(model="bge", input="y")
            await sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
            await settled(gw)
    log = read_log(gw.data_dir)
    embeddings = {e.request_id for e in log if isinstance(e, RequestReceived) and e.protocol == "embeddings"}
    assert len(embeddings) == 4
    decisions = [e for e in log if isinstance(e, RouteDecided) and e.request_id in embeddings]
    assert len(decisions) >= 6  # a key's 429, a platform's 503: each a decision of its own
    assert all(d.input.task == "embedding" and not d.input.use_chain for d in decisions)
    assert all(d.input.session is None and not d.input.use_pin for d in decisions)
    assert all(e.session is None for e in log if isinstance(e, AttemptStarted) and e.request_id in embeddings)
    # Every exclusion is recorded: the cooling key, then the failed platform, by the family's decisions.
    assert any(x.ref == "cf/bge-cf" for d in decisions for x in d.excluded)
    [recorded] = [e for e in log if isinstance(e, ConfigApplied)]
    assert {m["task"] for m in recorded.models} == {"chat", "embedding"}
    run = run_replay(gw.data_dir / DB_NAME, lambda: view_of(recorded), config_from_log=True, parallel=False)
    assert run.total == len([e for e in log if isinstance(e, RouteDecided)]) and run.changed == 0
