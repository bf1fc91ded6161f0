"""Across restarts and shutdowns: what the log remembers, what it must not contain, and first-start tokens."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import httpx
import trio
from custom_gateway import gateway_from, model_toml, platform_toml, read_log, server_toml, settled
from fault_upstream import UpstreamState
from harness import GATEWAY_KEY, SECRET_ENV, config_text, running_gateway

from events.sqlite_store import SqliteStore
from events.types import (
    KeyAdded,
    KeyInvalidated,
    KeyRemoved,
    RequestCompleted,
    ServiceStarted,
    ServiceStopped,
)
from service import cli
from service.secrets import key_id_for
from service.server import DB_NAME

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"messages": [{"role": "user", "content": "hi"}]}
MASTER = bytes.fromhex(SECRET_ENV["SWITCHBOARD_SECRET_KEY"])
GENERATED = re.compile(r"Generated gateway API key \(shown once, stored hashed\): (\S+)")


async def chat(url: str, body: dict, token: str = GATEWAY_KEY) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        return await c.post("/v1/chat/completions", json=body)


def raw_log_bytes(data_dir: Path) -> bytes:
    """The database file, its WAL and shared-memory files, byte for byte, as an attacker would read them."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob(DB_NAME + "*")))


async def test_an_invalidated_key_stays_invalid_after_a_restart(tmp_path):
    keys = ("up-bad", "up-good")
    bad = key_id_for(MASTER, "local", "up-bad")
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"], keys=keys) as gw:
            gw.upstream.key_behaviours["up-bad"] = "auth"
            # The router picks the least-used key (ties at random): two settled requests use both keys.
            for _ in range(2):
                assert (await chat(gw.url, {"model": "ok", **HELLO})).status_code == 200
                await settled(gw)
        assert "up-bad" in [r.api_key for r in gw.upstream.requests]
        assert [e.key_id for e in read_log(gw.data_dir) if isinstance(e, KeyInvalidated)] == [bad]

        # Run 2: same data dir, same config, an upstream that would accept the key again.
        async with running_gateway(tmp_path, ["ok"], keys=keys) as gw2:
            statuses = [await chat(gw2.url, {"model": "ok", **HELLO}) for _ in range(4)]
            used = [r.api_key for r in gw2.upstream.requests]
            async with httpx.AsyncClient(base_url=gw2.url) as client:
                health = (await client.get("/healthz")).json()
    assert [r.status_code for r in statuses] == [200] * 4
    assert used == ["up-good"] * 4
    assert (health["keys"], health["keys_ok"]) == (2, 1)

    events = read_log(tmp_path / "data")
    started = [(i, e) for i, e in enumerate(events) if isinstance(e, ServiceStarted)]
    assert len(started) == 2
    (_, run1), (index2, run2) = started
    assert run1.events_replayed == 0
    assert run2.events_replayed == index2 > 0  # everything before it was replayed into the projections
    # The config keys are announced once; a restart neither re-adds them nor resets the invalid one.
    assert sum(isinstance(e, KeyAdded) for e in events) == 2
    assert sum(isinstance(e, ServiceStopped) for e in events) == 2


async def test_graceful_shutdown_flushes_every_request(tmp_path):
    request_ids: list[str] = []
    bodies = [
        {"model": "ok", **HELLO},
        {"model": "echo", "stream": True, **HELLO},
        {"model": "fail:503", "fallback": False, **HELLO},
        {"model": "fail:503", "stream": True, "fallback": False, **HELLO},
        {"model": "auto", **HELLO},
        {"model": "no-such-model", **HELLO},
    ]

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        resp = await client.post("/v1/chat/completions", json=body)
        request_ids.append(resp.headers["x-request-id"])

    with trio.fail_after(20):
        async with (
            running_gateway(tmp_path, ["ok", "echo", "fail:503"], keys=("up-1", "up-2")) as gw,
            httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client,
            trio.open_nursery() as nursery,
        ):
            for _ in range(5):
                for body in bodies:
                    nursery.start_soon(one, client, body)
            # Leave at once: the last requests' telemetry is still in the writer's batch window.

    assert len(request_ids) == 30
    store = SqliteStore(tmp_path / "data" / DB_NAME)
    try:
        for request_id in request_ids:
            completed = [e for _, e in store.read_request(request_id) if isinstance(e, RequestCompleted)]
            assert len(completed) == 1, request_id
        last = store.read_after(store.last_seq() - 1)
    finally:
        store.close()
    assert isinstance(last[-1][1], ServiceStopped)


def tokens_config(url: str, data_dir: Path) -> str:
    return (
        server_toml(data_dir, gateway_key=None)
        + platform_toml("local", url, ("up-1",))
        + model_toml("local", "ok", 1)
    )


async def test_generated_gateway_key_is_printed_once_and_works(tmp_path):
    with trio.fail_after(20):
        async with gateway_from(tmp_path, tokens_config) as gw:
            printed = GENERATED.findall(gw.output.getvalue())
            assert len(printed) == 1
            token = printed[0]
            assert token.startswith("sk-sb-")
            assert gw.output.getvalue().count("Generated admin token") == 1
            ok = await chat(gw.url, {"model": "ok", **HELLO}, token=token)
            wrong = await chat(gw.url, {"model": "ok", **HELLO}, token=token + "x")
        assert ok.status_code == 200
        assert wrong.status_code == 401
        assert token.encode() not in raw_log_bytes(gw.data_dir)  # stored hashed

        async with gateway_from(tmp_path, tokens_config) as gw2:
            again = await chat(gw2.url, {"model": "ok", **HELLO}, token=token)
            output = gw2.output.getvalue()
    assert "Generated" not in output
    assert token not in output
    assert "switchboard listening on http://127.0.0.1:" in output
    assert again.status_code == 200


async def test_provider_keys_never_reach_the_log_file(tmp_path):
    secrets = ("sk-live-PROVIDER-SECRET-0001", "sk-live-PROVIDER-SECRET-0002", "sk-live-PROVIDER-SECRET-0003")
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok", "rate-limit:30", "fail:500"], keys=secrets) as gw:
            gw.upstream.key_behaviours[secrets[0]] = "auth"
            for body in (
                {"model": "ok", **HELLO},
                {"model": "ok", "stream": True, **HELLO},
                {"model": "rate-limit:30", **HELLO},
                {"model": "fail:500", **HELLO},
            ) * 2:
                await chat(gw.url, body)
                await settled(gw)
            while_running = raw_log_bytes(gw.data_dir)
            upstream_saw = {r.api_key for r in gw.upstream.requests}
    after = raw_log_bytes(gw.data_dir)
    assert upstream_saw == set(secrets)  # every key was really used
    for secret in (*secrets, GATEWAY_KEY):
        assert secret.encode() not in while_running
        assert secret.encode() not in after
    # What the log does carry: ids and the last four characters, enough to match a dashboard.
    assert b"\xe2\x80\xa60001" in after  # "…0001"


async def test_a_key_added_with_the_cli_is_used_by_the_gateway(tmp_path, monkeypatch):
    secret = "sk-vault-stored-key-9876"
    data_dir = tmp_path / "data"
    cli_config = tmp_path / "cli.toml"
    cli_config.write_text(config_text("http://127.0.0.1:9/v1", data_dir, ["ok"], keys=()))
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", SECRET_ENV["SWITCHBOARD_SECRET_KEY"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(secret + "\n"))
    assert cli.main(["keys", "add", "local", "--config", str(cli_config)]) == 0
    assert secret.encode() not in raw_log_bytes(data_dir)

    state = UpstreamState()
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"], keys=(), state=state) as gw:
            resp = await chat(gw.url, {"model": "ok", **HELLO})
    assert resp.status_code == 200
    assert [r.api_key for r in state.requests] == [secret]  # decrypted from the vault for the call


async def test_a_key_removed_from_the_config_is_removed_from_routing(tmp_path):
    gone = key_id_for(MASTER, "local", "up-2")
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"], keys=("up-1", "up-2")) as gw:
            assert (await chat(gw.url, {"model": "ok", **HELLO})).status_code == 200
        # Run 2 without up-2: the log still knows it, but there is no secret to call with any more.
        async with running_gateway(tmp_path, ["ok"], keys=("up-1",)) as gw2:
            statuses = [(await chat(gw2.url, {"model": "ok", **HELLO})).status_code for _ in range(4)]
            used = {r.api_key for r in gw2.upstream.requests}
            async with httpx.AsyncClient(base_url=gw2.url) as client:
                health = (await client.get("/healthz")).json()
    assert statuses == [200] * 4
    assert used == {"up-1"}
    assert health["keys"] == 1
    removed = [e for e in read_log(tmp_path / "data") if isinstance(e, KeyRemoved)]
    assert [e.key_id for e in removed] == [gone]
