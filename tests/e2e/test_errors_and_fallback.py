"""Bad input gets an OpenAI-shaped 4xx (never a 500), and upstream failures are classified end to end:
which key or model is tried next, what is cooled or invalidated, and what the client finally sees."""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from custom_gateway import gateway_from, model_toml, platform_toml, read_log, server_toml, settled
from harness import GATEWAY_KEY, SECRET_ENV, running_gateway

from events.types import AttemptFailed, KeyInvalidated
from service.secrets import key_id_for

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"messages": [{"role": "user", "content": "hi"}]}
MASTER = bytes.fromhex(SECRET_ENV["SWITCHBOARD_SECRET_KEY"])


def key_id(secret: str, platform: str = "local") -> str:
    return key_id_for(MASTER, platform, secret)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["x-request-id"].startswith("req_")
    error = resp.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    if code is not None:
        assert error["code"] == code
    return error


async def chat(gw, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH if headers is None else headers,
                                 timeout=10) as client:
        return await client.post("/v1/chat/completions", json=body)


async def wait_until(predicate, timeout: float = 2.0) -> None:
    """Request telemetry is committed within one batch window (DESIGN.md 2): wait for it to be folded."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.002)


async def key_view(gw, kid: str):
    return next(v for v in await gw.runtime.health.keys() if v.info.key_id == kid)


# ---- bad input ----------------------------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"{not json", 400, "invalid_json", id="malformed-json"),
    pytest.param(b"", 400, "invalid_json", id="empty-body"),
    pytest.param(b"   \n", 400, "invalid_json", id="blank-body"),
    pytest.param(b"[1, 2]", 400, "invalid_json", id="array"),
    pytest.param(b'"text"', 400, "invalid_json", id="string"),
    pytest.param(b"null", 400, "invalid_json", id="null"),
    pytest.param(b'{"model": "ok"}', 400, "missing_required_parameter", id="missing-messages"),
    pytest.param(b'{"model": "ok", "messages": []}', 400, "invalid_type", id="empty-messages"),
    pytest.param(b'{"model": "ok", "messages": "hi"}', 400, "invalid_type", id="messages-not-a-list"),
    pytest.param(b'{"model": "ok", "messages": ["hi"]}', 400, "invalid_type", id="message-not-an-object"),
    pytest.param(b'{"model": "ok", "messages": [{"content": "hi"}]}', 400, "invalid_type", id="no-role"),
    pytest.param(b'{"model": "ok", "messages": [{"role": 1}]}', 400, "invalid_type", id="role-not-a-string"),
    pytest.param(b'{"model": "ok", "messages": [{"role": "user"}], "stream": "yes"}', 400, "invalid_type",
                 id="stream-not-bool"),
    pytest.param(b'{"model": "ok", "messages": [{"role": "user"}], "stream": 1}', 400, "invalid_type",
                 id="stream-int"),
    pytest.param(b'{"model": 5, "messages": [{"role": "user"}]}', 400, "invalid_type", id="model-not-str"),
    pytest.param(b'{"model": "ok", "models": "ok", "messages": [{"role": "user"}]}', 400, "invalid_type",
                 id="models-not-a-list"),
    pytest.param(b'{"model": "ok", "max_tokens": 0, "messages": [{"role": "user"}]}', 400, "invalid_type",
                 id="max-tokens-zero"),
    pytest.param(b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404,
                 "model_not_found", id="unknown-model"),
    pytest.param(b'{"models": ["ok", "nope"], "messages": [{"role": "user", "content": "x"}]}', 404,
                 "model_not_found", id="unknown-model-in-list"),
]


async def test_bad_requests_get_openai_shaped_errors(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                results = []
                for param in BAD_BODIES:
                    raw, status, code = param.values
                    resp = await client.post("/v1/chat/completions", content=raw,
                                             headers={"content-type": "application/json"})
                    results.append((param.id, resp, status, code))
            upstream_calls = len(gw.upstream.requests)
    for name, resp, status, code in results:
        assert resp.status_code == status, (name, resp.text)
        assert_openai_error(resp, status, code)
    assert upstream_calls == 0  # nothing invalid reaches a provider


async def test_missing_and_wrong_gateway_keys(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            missing = await chat(gw, {"model": "ok", **HELLO}, headers={})
            wrong = await chat(gw, {"model": "ok", **HELLO}, headers={"Authorization": "Bearer sk-nope"})
            not_bearer = await chat(gw, {"model": "ok", **HELLO}, headers={"Authorization": GATEWAY_KEY})
            empty = await chat(gw, {"model": "ok", **HELLO}, headers={"Authorization": "Bearer"})
            async with httpx.AsyncClient(base_url=gw.url) as client:
                models = await client.get("/v1/models")
            upstream_calls = len(gw.upstream.requests)
    for resp in (missing, wrong, not_bearer, empty, models):
        assert_openai_error(resp, 401, "invalid_api_key")
    assert upstream_calls == 0


BIG = b'{"model": "ok", "messages": [{"role": "user", "content": "' + b"x" * (32 * 1024 * 1024) + b'"}]}'


async def test_body_over_32_mb_is_413(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=15) as client:
                resp = await client.post("/v1/chat/completions", content=BIG,
                                         headers={"content-type": "application/json"})
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=15) as client:
                after = await client.post("/v1/chat/completions", json={"model": "ok", **HELLO})
            upstream_calls = len(gw.upstream.requests)
    assert_openai_error(resp, 413, "request_too_large")
    assert after.status_code == 200  # the gateway is fine afterwards
    assert upstream_calls == 1


@pytest.mark.xfail(strict=True, reason="BUG: an error answered before the request body was read (413, 401, "
                   "404) leaves the keep-alive connection stuck: the client's next request on it never gets "
                   "an answer (service/app.py error responses need `Connection: close`)")
@pytest.mark.parametrize(("path", "token", "body"), [
    pytest.param("/v1/chat/completions", GATEWAY_KEY, BIG, id="413"),
    pytest.param("/v1/chat/completions", "sk-wrong", BIG[:1_000_000], id="401-large-body"),
    pytest.param("/v1/no-such-path", GATEWAY_KEY, BIG[:1_000_000], id="404-large-body"),
])
async def test_connection_is_usable_after_an_early_error(tmp_path, monkeypatch, path, token, body):
    monkeypatch.setattr("service.server.GRACE_S", 0.5)  # the stuck connection holds shutdown for the grace
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
                first = await client.post(path, content=body, headers={
                    "content-type": "application/json", "Authorization": f"Bearer {token}"})
                # The same pooled connection, as any HTTP client (and the openai SDK) would reuse it.
                second = await client.post("/v1/chat/completions", json={"model": "ok", **HELLO},
                                           headers=AUTH, timeout=0.5)
    assert first.status_code in (401, 404, 413)
    assert second.status_code == 200


async def test_unknown_path_and_wrong_method(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                unknown_v1 = await client.get("/v1/nothing-here")
                unknown = await client.post("/nothing", json={})
                get_chat = await client.get("/v1/chat/completions")
                post_models = await client.post("/v1/models", json={})
                delete_model = await client.delete("/v1/models/local/ok")
                missing_model = await client.get("/v1/models/local/nope")
    assert_openai_error(unknown_v1, 404, "not_found")
    assert_openai_error(unknown, 404, "not_found")
    assert_openai_error(get_chat, 405, "method_not_allowed")
    assert_openai_error(post_models, 405, "method_not_allowed")
    assert_openai_error(delete_model, 405, "method_not_allowed")
    assert_openai_error(missing_model, 404, "model_not_found")


# ---- upstream outcomes, classified ---------------------------------------------------------------------


