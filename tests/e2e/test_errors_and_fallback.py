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
    async with httpx.AsyncClient(
        base_url=gw.url, headers=AUTH if headers is None else headers, timeout=10
    ) as client:
        return await client.post("/v1/chat/completions", json=body)


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
    pytest.param(
        b'{"model": "ok", "messages": [{"role": "user"}], "stream": "yes"}',
        400,
        "invalid_type",
        id="stream-not-bool",
    ),
    pytest.param(
        b'{"model": "ok", "messages": [{"role": "user"}], "stream": 1}', 400, "invalid_type", id="stream-int"
    ),
    pytest.param(b'{"model": 5, "messages": [{"role": "user"}]}', 400, "invalid_type", id="model-not-str"),
    pytest.param(
        b'{"model": "ok", "models": "ok", "messages": [{"role": "user"}]}',
        400,
        "invalid_type",
        id="models-not-a-list",
    ),
    pytest.param(
        b'{"model": "ok", "max_tokens": 0, "messages": [{"role": "user"}]}',
        400,
        "invalid_type",
        id="max-tokens-zero",
    ),
    pytest.param(
        b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
        404,
        "model_not_found",
        id="unknown-model",
    ),
    pytest.param(
        b'{"models": ["ok", "nope"], "messages": [{"role": "user", "content": "x"}]}',
        404,
        "model_not_found",
        id="unknown-model-in-list",
    ),
]


async def test_bad_requests_get_openai_shaped_errors(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                results = []
                for param in BAD_BODIES:
                    raw, status, code = param.values
                    resp = await client.post(
                        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
                    )
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
                resp = await client.post(
                    "/v1/chat/completions", content=BIG, headers={"content-type": "application/json"}
                )
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=15) as client:
                after = await client.post("/v1/chat/completions", json={"model": "ok", **HELLO})
            upstream_calls = len(gw.upstream.requests)
    assert_openai_error(resp, 413, "request_too_large")
    assert after.status_code == 200  # the gateway is fine afterwards
    assert upstream_calls == 1


EARLY_ERRORS = [  # (path, gateway key, body): each answered before the gateway reads the body
    ("/v1/chat/completions", GATEWAY_KEY, BIG),  # 413
    ("/v1/chat/completions", "sk-wrong", BIG[:16_000_000]),  # 401
    ("/v1/no-such-path", GATEWAY_KEY, BIG[:16_000_000]),  # 404
]


async def test_connection_is_usable_after_an_early_error(tmp_path):
    """Each case runs twice: the connection used to stick in one run in ~5 (hypercorn's reader blocked
    handing body chunks to an app that had already answered; service/http_server.py, 2)."""
    statuses = []
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            for path, token, body in EARLY_ERRORS * 2:
                async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
                    first = await client.post(
                        path,
                        content=body,
                        headers={"content-type": "application/json", "Authorization": f"Bearer {token}"},
                    )
                    # The same pooled connection, as any HTTP client (and the openai SDK) would reuse it.
                    second = await client.post(
                        "/v1/chat/completions", json={"model": "ok", **HELLO}, headers=AUTH, timeout=0.5
                    )
                statuses.append((first.status_code, second.status_code))
    assert statuses == [(413, 200), (401, 200), (404, 200)] * 2


async def test_deeply_nested_json_is_a_400_not_a_500(tmp_path):
    deep = b'{"model": "ok", "messages": [{"role": "user", "content": "x"}], "x": ' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}"
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            resp = await chat_raw(gw, deep)
    assert_openai_error(resp, 400, "invalid_json")


async def chat_raw(gw, raw: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
        return await client.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )


# Messages whose parts have the wrong inner types: the gateway checks only each message's `role`.
ODD_MESSAGES = [
    pytest.param(
        {"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}, id="text-part-not-a-string"
    ),
    pytest.param(
        {"role": "assistant", "content": None, "tool_calls": [{"function": "x"}]},
        id="tool-call-function-not-an-object",
    ),
]


@pytest.mark.parametrize("message", ODD_MESSAGES)
async def test_odd_message_parts_are_not_a_500(tmp_path, message):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["fail:500"]) as gw:  # an upstream that never reads the body
            resp = await chat(gw, {"model": "auto-smart", "messages": [message]})
            async with httpx.AsyncClient(base_url=gw.url) as client:
                health = await client.get("/healthz")
    # Rejected as a bad request, or passed on to the provider (which fails here): either, but not a crash.
    assert resp.status_code in (400, 502), resp.text
    assert_openai_error(resp, resp.status_code)
    assert health.status_code == 200


@pytest.mark.parametrize("message", ODD_MESSAGES)
async def test_odd_message_parts_in_a_stream_do_not_crash_the_gateway(tmp_path, message):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["fail:500"]) as gw:
            resp = await chat(gw, {"model": "auto-smart", "stream": True, "messages": [message]})
            after = await chat(gw, {"model": "fail:500", **HELLO})
    assert resp.status_code in (400, 502), resp.text
    assert_openai_error(after, 502, "all_attempts_failed")  # still serving


async def test_unknown_path_and_wrong_method(tmp_path):
    with trio.fail_after(10):
        async with (
            running_gateway(tmp_path, ["ok"]) as gw,
            httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client,
        ):
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


async def hit_key(gw, secret: str, body: dict, tries: int = 4) -> tuple[httpx.Response, list[str | None]]:
    """Send `body` until one request reaches the key `secret`; its response and the keys it went through.

    The router picks the least-used usable key (ties at random), so with telemetry settled between
    requests a key is reached within as many requests as the platform has keys.
    """
    for _ in range(tries):
        gw.upstream.requests.clear()
        resp = await chat(gw, body)
        used = [r.api_key for r in gw.upstream.requests]
        await settled(gw)
        if secret in used:
            return resp, used
    raise AssertionError(f"no request reached {secret}")


async def test_429_moves_to_the_other_key_at_once_and_cools_that_key_for_that_model(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok", "echo"], keys=("up-1", "up-2")) as gw:
            gw.upstream.key_behaviours["up-1"] = "rate-limit:30"
            first, first_keys = await hit_key(gw, "up-1", {"model": "ok", **HELLO})
            limited = key_id("up-1")
            view = await key_view(gw, limited)

            gw.upstream.reset()  # up-1 would answer normally now: only the cooldown keeps it away from ok
            for _ in range(3):
                assert (await chat(gw, {"model": "ok", **HELLO})).status_code == 200
                await settled(gw)
            ok_keys = [r.api_key for r in gw.upstream.requests]
            gw.upstream.requests.clear()
            for _ in range(2):  # the cooldown is per key x model: echo still uses up-1
                assert (await chat(gw, {"model": "echo", **HELLO})).status_code == 200
                await settled(gw)
            echo_keys = [r.api_key for r in gw.upstream.requests]
    assert first.status_code == 200
    assert first.headers["x-fallback-attempts"] == "1"
    assert first_keys == ["up-1", "up-2"]  # the next key at once, same model
    assert view.info.status == "ok"  # rate-limited is not invalid
    assert [m for m, _ in view.cooling] == ["ok"]
    assert ok_keys == ["up-2"] * 3
    assert sorted(echo_keys) == ["up-1", "up-2"]


async def _cooling(gw, kid: str, model: str) -> bool:
    return any(m == model for m, _ in (await key_view(gw, kid)).cooling)


async def test_401_invalidates_the_key_for_good(tmp_path):
    bad = key_id("up-1")
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok", "echo"], keys=("up-1", "up-2")) as gw:
            gw.upstream.key_behaviours["up-1"] = "auth"
            first, first_keys = await hit_key(gw, "up-1", {"model": "ok", **HELLO})
            status = (await key_view(gw, bad)).info.status
            gw.upstream.reset()
            for model in ("ok", "echo", "ok", "echo"):
                assert (await chat(gw, {"model": model, **HELLO})).status_code == 200
                await settled(gw)
            later_keys = [r.api_key for r in gw.upstream.requests]
    assert first.status_code == 200
    assert first_keys == ["up-1", "up-2"]
    assert status == "invalid"
    assert later_keys == ["up-2"] * 4
    events = read_log(gw.data_dir)
    invalidated = [e for e in events if isinstance(e, KeyInvalidated)]
    assert [(e.key_id, e.status) for e in invalidated] == [(bad, 401)]
    failed = [e for e in events if isinstance(e, AttemptFailed)]
    assert [(e.key_id, e.kind, e.status) for e in failed] == [(bad, "auth", 401)]


async def test_server_errors_and_resets_move_on_to_the_next_key_then_model(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["fail:503", "reset", "ok"], keys=("up-1", "up-2")) as gw:
            resp = await chat(gw, {"models": ["fail:503", "reset", "ok"], **HELLO})
            tried = [(r.model, r.api_key) for r in gw.upstream.requests]
    assert resp.status_code == 200
    assert resp.headers["x-routed-via"] == "local/ok"
    assert resp.headers["x-fallback-attempts"] == "4"
    assert [m for m, _ in tried] == ["fail:503", "fail:503", "reset", "reset", "ok"]
    assert {k for m, k in tried if m == "fail:503"} == {"up-1", "up-2"}  # every key before the next model
    assert {k for m, k in tried if m == "reset"} == {"up-1", "up-2"}
    kinds = [(e.model, e.kind) for e in read_log(gw.data_dir) if isinstance(e, AttemptFailed)]
    assert kinds == [("fail:503", "server_error")] * 2 + [("reset", "connect")] * 2


async def test_wrapped_error_in_a_200_is_a_failure(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["wrapped-body:503", "ok"]) as gw:
            resp = await chat(gw, {"models": ["wrapped-body:503", "ok"], **HELLO})
            stream = await chat(gw, {"models": ["wrapped-body:503", "ok"], "stream": True, **HELLO})
            tried = [r.model for r in gw.upstream.requests]
    assert resp.status_code == 200
    assert resp.headers["x-routed-via"] == "local/ok"
    assert resp.json()["choices"][0]["message"]["content"] == "Hello from ok."
    assert stream.status_code == 200
    assert stream.headers["x-routed-via"] == "local/ok"
    assert "wrapped error" not in stream.text
    assert tried[:2] == ["wrapped-body:503", "ok"]
    failed = [(e.model, e.kind, e.status) for e in read_log(gw.data_dir) if isinstance(e, AttemptFailed)]
    assert failed[0] == ("wrapped-body:503", "server_error", 503)


async def test_a_model_whose_every_key_failed_cools_down(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(
            tmp_path, ["fail:503", "ok"], keys=("up-1", "up-2"), timeouts="transient_cooldown_s = 60"
        ) as gw:
            first = await chat(gw, {"models": ["fail:503", "ok"], **HELLO})
            first_tried = [r.model for r in gw.upstream.requests]
            await settled(gw)
            gw.upstream.requests.clear()
            # Named first, yet skipped: the model is cooling, and the chain answers.
            second = await chat(gw, {"models": ["fail:503", "ok"], **HELLO})
            second_tried = [r.model for r in gw.upstream.requests]
            only = await chat(gw, {"model": "fail:503", "fallback": False, **HELLO})
    assert first.status_code == 200
    assert first_tried == ["fail:503", "fail:503", "ok"]
    assert second.status_code == 200
    assert second_tried == ["ok"]
    error = assert_openai_error(only, 503, "no_available_model")
    assert "local/fail:503: skipped, cooling" in error["message"]


def two_platforms(models: str, *, keys: tuple[str, ...] = ("up-1",)):
    def config_for(url: str, data_dir) -> str:
        return (
            server_toml(data_dir, gateway_key=GATEWAY_KEY)
            + platform_toml("local", url, keys)
            + platform_toml("second", url, ("up-second",))
            + platform_toml("third", url, ("up-third",))
            + models
        )

    return config_for


async def test_upstream_400_is_tried_on_one_other_platform_then_returned(tmp_path):
    models = (
        model_toml("local", "fail:400", 1)
        + model_toml("second", "fail:400", 2)
        + model_toml("third", "fail:400", 3)
        + model_toml("local", "ok", 4)
        + model_toml("third", "ok", 5)
    )
    named = ["local/fail:400", "second/fail:400", "third/fail:400", "local/ok", "third/ok"]
    with trio.fail_after(10):
        async with gateway_from(tmp_path, two_platforms(models, keys=("up-1", "up-2"))) as gw:
            resp = await chat(gw, {"models": named, **HELLO})
            tried = [(r.model, r.api_key) for r in gw.upstream.requests]
    error = assert_openai_error(resp, 400, "upstream_bad_request")
    assert error["type"] == "invalid_request_error"
    assert "fail:400" in error["message"]
    assert resp.headers["x-fallback-attempts"] == "1"
    # One key on the first platform (a 400 is not the key's fault), one try elsewhere, then the client.
    assert len(tried) == 2
    assert tried[0][0] == "fail:400" and tried[0][1] in ("up-1", "up-2")
    assert tried[1] == ("fail:400", "up-second")


async def test_upstream_400_then_success_on_another_platform(tmp_path):
    models = (
        model_toml("local", "fail:400", 1) + model_toml("second", "ok", 2) + model_toml("local", "echo", 3)
    )
    with trio.fail_after(10):
        async with gateway_from(tmp_path, two_platforms(models)) as gw:
            resp = await chat(gw, {"models": ["local/fail:400", "local/echo", "second/ok"], **HELLO})
            tried = [(r.model, r.api_key) for r in gw.upstream.requests]
    assert resp.status_code == 200
    assert resp.headers["x-routed-via"] == "second/ok"
    # local/echo is skipped: the platform that rejected the request is not asked again.
    assert tried == [("fail:400", "up-1"), ("ok", "up-second")]


async def test_context_error_moves_to_a_model_with_a_larger_window(tmp_path):
    models = (
        model_toml("local", "context", 1, context_window=8192)
        + model_toml("local", "small-ok", 2, context_window=4096)
        + model_toml("local", "same-ok", 3, context_window=8192)
        + model_toml("local", "big-ok", 4, context_window=128000)
    )
    with trio.fail_after(10):
        async with gateway_from(tmp_path, two_platforms(models)) as gw:
            resp = await chat(gw, {"models": ["context", "small-ok", "same-ok", "big-ok"], **HELLO})
            tried = [r.model for r in gw.upstream.requests]
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routed-via"] == "local/big-ok"
    assert tried == ["context", "big-ok"]
    kinds = [e.kind for e in read_log(gw.data_dir) if isinstance(e, AttemptFailed)]
    assert kinds == ["context_exceeded"]


async def test_context_error_everywhere_is_a_400(tmp_path):
    models = model_toml("local", "context", 1, context_window=8192)
    with trio.fail_after(10):
        async with gateway_from(tmp_path, two_platforms(models)) as gw:
            resp = await chat(gw, {"model": "auto", **HELLO})
    assert_openai_error(resp, 400, "context_length_exceeded")


async def test_all_keys_rate_limited_gives_429_with_retry_after(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["rate-limit:7"], keys=("up-1", "up-2")) as gw:
            first = await chat(gw, {"model": "auto", **HELLO})
            await settled(gw)
            cooling = [await _cooling(gw, key_id(k), "rate-limit:7") for k in ("up-1", "up-2")]
            second = await chat(gw, {"model": "auto", **HELLO})
            stream = await chat(gw, {"model": "auto", "stream": True, **HELLO})
            calls = len(gw.upstream.requests)
    error = assert_openai_error(first, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert first.headers["retry-after"] == "7"
    assert first.headers["x-fallback-attempts"] == "1"
    assert cooling == [True, True]
    # Both keys are now cooling: the next requests are answered without calling the provider.
    for resp in (second, stream):
        assert_openai_error(resp, 429, "rate_limit_exceeded")
        assert 1 <= int(resp.headers["retry-after"]) <= 7
    assert calls == 2


async def test_everything_failing_gives_502_listing_each_attempt(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["fail:500", "fail:503"], keys=("up-1", "up-2")) as gw:
            resp = await chat(gw, {"model": "auto", **HELLO})
            calls = len(gw.upstream.requests)
    error = assert_openai_error(resp, 502, "all_attempts_failed")
    message = error["message"]
    assert message.startswith("All 4 attempts failed")
    for model, status in (("fail:500", 500), ("fail:503", 503)):
        for secret in ("up-1", "up-2"):
            assert f"local/{model} (key {key_id(secret)}): server_error {status}" in message
    assert "up-1" not in re.sub(r"key local\.[0-9a-f]+", "", message)  # ids, never the key itself
    assert resp.headers["x-fallback-attempts"] == "3"
    assert calls == 4


async def test_max_attempts_bounds_the_upstream_calls(tmp_path):
    models = ["fail:500", "fail:502", "fail:503", "fail:504"]
    with trio.fail_after(10):
        async with running_gateway(
            tmp_path, models, keys=("up-1", "up-2"), timeouts="[routing]\nmax_attempts = 3"
        ) as gw:
            resp = await chat(gw, {"model": "auto", **HELLO})
            calls = len(gw.upstream.requests)
            gw.upstream.requests.clear()
            stream = await chat(gw, {"model": "auto", "stream": True, **HELLO})
            stream_calls = len(gw.upstream.requests)
    error = assert_openai_error(resp, 502, "all_attempts_failed")
    assert error["message"].startswith("All 3 attempts failed")
    assert calls == 3
    assert_openai_error(stream, 502, "all_attempts_failed")
    assert stream_calls == 3
