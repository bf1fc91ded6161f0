"""The routing brain end to end: key cooldowns after a 429, quotas, restarts, pools on a fresh install,
`switchboard replay` over a real run (and a what-if), and keys that come back after a health check.

Time-dependent tests use trio's MockClock with a small autojump threshold (as in test_streams.py): virtual
time jumps only when every task has been idle for a couple of real milliseconds, so a 30 s Retry-After
takes milliseconds and loopback I/O is never overtaken. The gateway's wall clock follows the trio clock.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from custom_gateway import gateway_from, model_toml, platform_toml, read_log, server_toml, settled
from fault_upstream import UpstreamState, serve_upstream
from harness import GATEWAY_KEY, SECRET_ENV, config_text, running_gateway

from events.types import KeyChecked, KeyInvalidated, RouteDecided
from service import cli
from service.secrets import key_id_for

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
MASTER = bytes.fromhex(SECRET_ENV["SWITCHBOARD_SECRET_KEY"])
HI = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.usefixtures("clean_env")


def key_id(secret: str, platform: str = "local") -> str:
    return key_id_for(MASTER, platform, secret)


@asynccontextmanager
async def client_for(gw) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
        yield client


def chat_body(*models: str, mode: str = "auto", stream: bool = False) -> dict:
    body: dict = {"model": mode, "messages": HI, "stream": stream}
    if models:
        body["models"] = [f"local/{m}" for m in models]
    return body


def chat_keys(state: UpstreamState, since: int) -> list[str | None]:
    """The API keys of the chat requests the upstream received after index `since`."""
    return [r.api_key for r in state.requests[since:] if r.path == "/v1/chat/completions"]


async def post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    with trio.fail_after(30):
        return await client.post("/v1/chat/completions", json=body)


async def key_view(gw, kid: str):
    return next(v for v in await gw.runtime.health.keys() if v.info.key_id == kid)


# ---- 429: the key cools, the request moves on at once ----------------------------------------------------


async def hit_cooling_key(gw, client: httpx.AsyncClient, body: dict) -> httpx.Response:
    """Send requests until one lands on up-1 first (the key picker takes the least-used key, so this is the
    first or the second request); that request must move on to up-2 at once."""
    state = gw.upstream
    for _ in range(2):
        before = len(state.requests)
        start = trio.current_time()
        resp = await post(client, body)
        elapsed = trio.current_time() - start
        assert resp.status_code == 200, resp.text
        keys = chat_keys(state, before)
        if keys[0] == "up-1":
            assert keys == ["up-1", "up-2"]
            assert resp.headers["x-fallback-attempts"] == "1"
            assert elapsed < 1.0  # no wait for the Retry-After: the other key was tried at once
            return resp
        assert keys == ["up-2"]
        await settled(gw)
    raise AssertionError("up-1 was never chosen")


async def test_a_429_moves_the_request_to_the_other_key_and_the_key_returns_after_retry_after(
    tmp_path, clock
):
    state = UpstreamState()
    state.key_behaviours["up-1"] = "rate-limit:30"
    with trio.fail_after(120):
        async with (
            running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2")) as gw,
            client_for(gw) as client,
        ):
            await hit_cooling_key(gw, client, chat_body())
            await settled(gw)
            view = await key_view(gw, key_id("up-1"))
            [(model, until)] = view.cooling
            assert model == "ok"
            assert 29 <= until - gw.runtime.clock.now() <= 30.5  # Retry-After: 30, not the 60 s default
            for _ in range(3):
                before = len(state.requests)
                assert (await post(client, chat_body())).status_code == 200
                assert chat_keys(state, before) == ["up-2"]  # the cooled key is avoided
                await settled(gw)
            # Still cooling two seconds before the Retry-After runs out.
            await trio.sleep(until - gw.runtime.clock.now() - 2)
            before = len(state.requests)
            assert (await post(client, chat_body())).status_code == 200
            assert chat_keys(state, before) == ["up-2"]
            await settled(gw)
            # The provider's limit resets with the Retry-After; the key is used again right after it.
            del state.key_behaviours["up-1"]
            await trio.sleep(until - gw.runtime.clock.now() + 1)
            before = len(state.requests)
            resp = await post(client, chat_body())
            assert resp.status_code == 200
            assert chat_keys(state, before) == ["up-1"]  # the least-used key again
            assert resp.headers["x-fallback-attempts"] == "0"
            assert not (await key_view(gw, key_id("up-1"))).cooling


# ---- quotas -----------------------------------------------------------------------------------------------


def quota_config(*models: tuple[str, dict]):
    def make(url: str, data_dir: Path) -> str:
        text = server_toml(data_dir, gateway_key=GATEWAY_KEY) + platform_toml("local", url, ("up-1",))
        for rank, (model, fields) in enumerate(models, start=1):
            text += model_toml("local", model, rank, **fields)
        return text

    return make


async def test_rpm_quota_refuses_the_third_request_with_retry_after_until_the_minute_passes(tmp_path, clock):
    with trio.fail_after(180):
        async with gateway_from(tmp_path, quota_config(("ok", {"rpm": 2}))) as gw, client_for(gw) as client:
            started = trio.current_time()
            for _ in range(2):
                assert (await post(client, chat_body())).status_code == 200
                await settled(gw)
            upstream_calls = len(gw.upstream.requests)
            refused = await post(client, chat_body())
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert "quota" in refused.json()["error"]["message"]
            retry_after = int(refused.headers["retry-after"])
            assert 55 <= retry_after <= 60
            assert len(gw.upstream.requests) == upstream_calls  # refused without calling the provider
            # Still refused a little before the minute is over ...
            await trio.sleep(started + 55 - trio.current_time())
            assert (await post(client, chat_body())).status_code == 429
            # ... and served once it is.
            await trio.sleep(started + 61 - trio.current_time())
            served = await post(client, chat_body())
            assert served.status_code == 200, served.text
            assert served.headers["x-routed-via"] == "local/ok"


async def test_rpm_quota_sends_the_third_request_to_the_next_model(tmp_path, clock):
    with trio.fail_after(180):
        async with (
            gateway_from(tmp_path, quota_config(("a", {"rpm": 2}), ("b", {}))) as gw,
            client_for(gw) as client,
        ):
            routed = []
            for _ in range(3):
                resp = await post(client, chat_body("a", "b"))
                assert resp.status_code == 200
                routed.append((resp.headers["x-routed-via"], resp.headers["x-fallback-attempts"]))
                await settled(gw)
            assert routed == [("local/a", "0"), ("local/a", "0"), ("local/b", "0")]  # no failed attempt on a
            await trio.sleep(61)
            resp = await post(client, chat_body("a", "b"))
            assert resp.headers["x-routed-via"] == "local/a"
    third = [e for e in read_log(gw.data_dir) if isinstance(e, RouteDecided)][2]
    assert any(e.ref == "local/a" and "quota" in e.reason for e in third.excluded)


# ---- restarts ---------------------------------------------------------------------------------------------


async def test_a_restart_mid_cooldown_keeps_the_cooldown(tmp_path, clock):
    state = UpstreamState()
    state.key_behaviours["up-1"] = "rate-limit:30"
    data_dir = tmp_path / "data"
    with trio.fail_after(120):
        async with (
            running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2"), data_dir=data_dir) as gw,
            client_for(gw) as client,
        ):
            await hit_cooling_key(gw, client, chat_body())
        del state.key_behaviours["up-1"]  # the provider would answer now, but the cooldown is not over
        async with (
            running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2"), data_dir=data_dir) as gw,
            client_for(gw) as client,
        ):
            [(_, until)] = (await key_view(gw, key_id("up-1"))).cooling
            assert until > gw.runtime.clock.now()
            for _ in range(3):
                before = len(state.requests)
                assert (await post(client, chat_body())).status_code == 200
                assert chat_keys(state, before) == ["up-2"]
                await settled(gw)
            await trio.sleep(until - gw.runtime.clock.now() + 1)
            before = len(state.requests)
            assert (await post(client, chat_body())).status_code == 200
            assert chat_keys(state, before) == ["up-1"]


# ---- a fresh install routes in every mode ---------------------------------------------------------------


async def test_a_fresh_install_with_one_key_answers_every_mode(tmp_path):
    def config(url: str, data_dir: Path) -> str:
        return (
            server_toml(data_dir, gateway_key=GATEWAY_KEY)
            + platform_toml("local", url, ("up-1",))
            + model_toml("local", "fast-one", 3, pool="fast", speed_rank=1)
            + model_toml("local", "middle-one", 2, pool="balanced")
            + model_toml("local", "smart-one", 1, pool="smart")
        )

    routed = {}
    with trio.fail_after(30):
        async with gateway_from(tmp_path, config) as gw, client_for(gw) as client:
            for model in (
                "auto",
                "auto-fast",
                "auto-smart",
                "local/middle-one",
                "smart-one",
                "freellmapi/auto-smart",
            ):
                resp = await post(client, {"model": model, "messages": HI})
                assert resp.status_code == 200, (model, resp.text)
                assert resp.json()["choices"][0]["message"]["content"].startswith("Hello from")
                routed[model] = resp.headers["x-routed-via"]
                assert resp.headers["x-fallback-attempts"] == "0"
            # Streaming too.
            async with client.stream(
                "POST", "/v1/chat/completions", json={"model": "auto-fast", "messages": HI, "stream": True}
            ) as resp:
                assert resp.status_code == 200
                assert resp.headers["x-routed-via"] == "local/fast-one"
                text = "".join([line async for line in resp.aiter_lines()])
            assert "data: [DONE]" in text
    assert routed["auto"] in ("local/fast-one", "local/middle-one")  # smart models serve auto-smart
    assert routed["auto-fast"] == "local/fast-one"
    assert routed["auto-smart"] == "local/smart-one"
    assert routed["freellmapi/auto-smart"] == "local/smart-one"
    assert routed["local/middle-one"] == "local/middle-one"
    assert routed["smart-one"] == "local/smart-one"  # a named model is never dropped by a pool filter


async def test_x_ratelimit_remaining_zero_cools_the_key_until_its_reset(tmp_path, clock):
    state = UpstreamState()
    state.key_behaviours["up-1"] = "spent:20"  # answers, and says that was its last request for 20 s
    with trio.fail_after(120):
        async with (
            running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2")) as gw,
            client_for(gw) as client,
        ):
            for _ in range(2):  # the least-used key first: up-1 is hit by one of the first two requests
                assert (await post(client, chat_body())).status_code == 200
                await settled(gw)
            assert "up-1" in chat_keys(state, 0)
            [(model, until)] = (await key_view(gw, key_id("up-1"))).cooling
            assert model == "ok"
            assert 19 <= until - gw.runtime.clock.now() <= 20.5
            before = len(state.requests)
            for _ in range(3):
                assert (await post(client, chat_body())).status_code == 200
                await settled(gw)
            assert chat_keys(state, before) == ["up-2"] * 3  # no request wasted on the spent key
            del state.key_behaviours["up-1"]
            await trio.sleep(until - gw.runtime.clock.now() + 1)
            before = len(state.requests)
            for _ in range(2):
                assert (await post(client, chat_body())).status_code == 200
                await settled(gw)
            assert "up-1" in chat_keys(state, before)  # back after its reset


# ---- replay over a real run -------------------------------------------------------------------------------

REPLAY_KEYS = ("up-1", "up-2", "up-3")
REPLAY_MODELS = ["ok", "echo", "fail:503"]


async def drive_mixed_run(gw, client: httpx.AsyncClient) -> int:
    """About forty requests two virtual seconds apart: successes, a key answering 429 (no Retry-After, so
    the default cooldown applies), a model answering 503, a key answering 401, streams and model lists.
    Returns how many chat requests failed (early ones may run out of attempts while keys are failing)."""
    state = gw.upstream
    failures = 0
    state.key_behaviours["up-3"] = "auth"
    state.key_behaviours["up-2"] = "rate-limit"
    for i in range(40):
        if i == 8:
            del state.key_behaviours["up-2"]  # its limit has reset, but the gateway waits out its cooldown
        kind = i % 5
        if kind == 4:
            resp = await client.get("/v1/models")
            assert resp.status_code == 200
        else:
            body = [
                chat_body(),
                chat_body("fail:503", "ok"),
                chat_body("echo", stream=True),
                chat_body(mode="auto", stream=True),
            ][kind]
            if body["stream"]:
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    async for _ in resp.aiter_lines():
                        pass
            else:
                resp = await post(client, body)
            assert resp.status_code in (200, 502), resp.text
            failures += resp.status_code != 200
        await trio.sleep(2)
    return failures


async def test_replay_reproduces_a_real_run_and_a_what_if_changes_decisions(tmp_path, clock, capsys):
    with trio.fail_after(300):
        async with running_gateway(tmp_path, REPLAY_MODELS, keys=REPLAY_KEYS) as gw, client_for(gw) as client:
            failures = await drive_mixed_run(gw, client)
    assert failures <= 3
    events = read_log(gw.data_dir)
    decisions = [e for e in events if isinstance(e, RouteDecided)]
    assert len(decisions) >= 30
    assert any(isinstance(e, KeyInvalidated) and e.key_id == key_id("up-3") for e in events)
    kinds = {getattr(e, "kind", None) for e in events}
    assert {"rate_limited", "server_error", "auth"} <= kinds
    cooled = [d for d in decisions if any("rate-limited" in e.reason for e in d.excluded)]
    assert cooled  # later decisions avoided the cooling key
    config_path = tmp_path / "switchboard.toml"

    capsys.readouterr()
    assert cli.main(["replay", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "100.0%" in out, out
    assert f"{len(decisions)} of {len(decisions)} decisions reproduced" in out

    request_id = cooled[-1].request_id
    assert cli.main(["replay", "--config", str(config_path), "--explain", "--request", request_id]) == 0
    out = capsys.readouterr().out
    assert request_id in out and "[reproduced]" in out
    assert "candidates (" in out and "<- chosen" in out
    assert "not chosen because:" in out and "rate-limited" in out

    # What-if: a 1 s default rate-limit cooldown instead of 60 s. Only the routing setting differs.
    what_if = tmp_path / "what-if.toml"
    what_if.write_text(config_path.read_text() + "\n[routing]\nrate_limit_cooldown_s = 1\n")
    assert cli.main(["replay", "--config", str(what_if)]) == 0
    out = capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.startswith("what-if under"))
    changed = int(summary.split(": ", 1)[1].split(" of ")[0])
    assert 0 < changed < len(decisions), summary
    assert f"{changed} of {len(decisions)} decisions would change" in summary
    assert "->" in out  # each change is listed: was -> would be

    # The same replays split across two processes (the CLI does so by itself on long logs; a real process:
    # it forks): the same verdicts and the same change lines, in the same order.
    async def replay_in_two(config: Path) -> list[str]:
        done = await trio.run_process(
            [sys.executable, "-m", "service.cli", "replay", "--config", str(config), "--processes", "2"],
            capture_stdout=True,
        )
        return done.stdout.decode().splitlines()

    lines = await replay_in_two(config_path)
    assert lines[-1].startswith(f"{len(decisions)} of {len(decisions)} decisions reproduced (100.0%)")
    assert lines[-1].endswith("(2 processes)")
    lines = await replay_in_two(what_if)
    assert lines[:-1] == out.splitlines()[:-1]  # every change line
    assert lines[-1].startswith(f"what-if under {what_if}: {changed} of {len(decisions)} decisions")


# ---- key health -------------------------------------------------------------------------------------------


async def invalidate_up_1(gw, client: httpx.AsyncClient) -> None:
    """up-1 answers 401 until a request has tried it; the request still succeeds on up-2."""
    gw.upstream.key_behaviours["up-1"] = "auth"
    for _ in range(2):
        before = len(gw.upstream.requests)
        assert (await post(client, chat_body())).status_code == 200
        await settled(gw)
        if chat_keys(gw.upstream, before)[0] == "up-1":
            break
    view = await key_view(gw, key_id("up-1"))
    assert view.info.status == "invalid"


async def test_an_invalid_key_comes_back_after_a_passing_health_check(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["ok"], keys=("up-1", "up-2")) as gw, client_for(gw) as client:
            await invalidate_up_1(gw, client)
            for _ in range(3):
                before = len(gw.upstream.requests)
                assert (await post(client, chat_body())).status_code == 200
                assert chat_keys(gw.upstream, before) == ["up-2"]  # an invalid key is not tried
                await settled(gw)
            gw.upstream.key_behaviours["up-1"] = "ok"  # e.g. the provider re-enabled the account
            results = await gw.runtime.key_checker.check_round()
            assert [(r.key_id, r.ok, r.status) for r in results] == [(key_id("up-1"), True, 200)]
            await settled(gw)
            assert (await key_view(gw, key_id("up-1"))).info.status == "ok"
            before = len(gw.upstream.requests)
            assert (await post(client, chat_body())).status_code == 200
            assert chat_keys(gw.upstream, before) == ["up-1"]  # least used: it serves again
    checked = [e for e in read_log(gw.data_dir) if isinstance(e, KeyChecked)]
    assert [(e.key_id, e.ok) for e in checked] == [(key_id("up-1"), True)]


async def test_switchboard_keys_check_restores_an_invalid_key_while_the_gateway_is_down(tmp_path, capsys):
    state = UpstreamState()
    data_dir = tmp_path / "data"
    config_path = tmp_path / "switchboard.toml"
    with trio.fail_after(60):
        async with (
            running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2"), data_dir=data_dir) as gw,
            client_for(gw) as client,
        ):
            await invalidate_up_1(gw, client)
        state.key_behaviours["up-1"] = "ok"
        async with trio.open_nursery() as nursery:
            # The gateway is stopped; the provider is still there (on a new port: point the config at it).
            upstream_url = await nursery.start(serve_upstream, state)
            config_path.write_text(config_text(upstream_url, data_dir, ["ok"], keys=("up-1", "up-2")))
            capsys.readouterr()
            status = await trio.to_thread.run_sync(cli.main, ["keys", "check", "--config", str(config_path)])
            nursery.cancel_scope.cancel()
        out = capsys.readouterr().out
        assert status == 0, out
        assert key_id("up-1") in out and "FAILED" not in out
        checked = [e for e in read_log(data_dir) if isinstance(e, KeyChecked)]
        assert {(e.key_id, e.ok) for e in checked} == {(key_id("up-1"), True), (key_id("up-2"), True)}
        async with (
            running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2"), data_dir=data_dir) as gw,
            client_for(gw) as client,
        ):
            assert (await key_view(gw, key_id("up-1"))).info.status == "ok"
            used = set()
            for _ in range(2):
                before = len(state.requests)
                assert (await post(client, chat_body())).status_code == 200
                used.update(chat_keys(state, before))
                await settled(gw)
            assert "up-1" in used  # fewest requests this minute: within two requests it serves again


async def test_a_key_that_answered_401_is_not_tried_again_in_the_same_request(tmp_path):
    state = UpstreamState()
    state.key_behaviours["up-1"] = "auth"
    with trio.fail_after(30):
        async with (
            running_gateway(tmp_path, ["a", "b"], state=state, keys=("up-1",)) as gw,
            client_for(gw) as client,
        ):
            resp = await post(client, chat_body("a", "b"))
    assert resp.status_code != 200
    # The provider said the key itself is invalid: asking it again for model b cannot help.
    assert [(r.api_key, r.model) for r in state.requests] == [("up-1", "a")]
