"""Across restarts and shutdowns: what the log remembers, what it must not contain, first-start tokens, and
a start that cannot serve (its data dir taken, its port in use) leaving no trace."""

from __future__ import annotations

import io
import os
import re
import socket
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
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
from service.config import load_config
from service.secrets import CredentialStore, key_id_for
from service.server import DB_NAME, ServeError, run_gateway

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


# ---- a start that cannot serve -------------------------------------------------------------------------


def occupied_port() -> socket.socket:
    """A socket listening on a free local port, as another program would."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def test_second_serve_on_same_data_dir_appends_nothing(tmp_path):
    """The bug: a second `serve` on a running gateway's data dir (its port in use) appended key_removed for
    keys its own config lacked before it failed to bind; the running gateway folded them and answered 503
    to everything until restarted. Now the second start refuses on the data dir's lock, naming the holder."""
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"], keys=("up-1", "up-2")) as gw:
            assert (await chat(gw.url, {"model": "ok", **HELLO})).status_code == 200
            await settled(gw)
            before = read_log(gw.data_dir)
            # The same data dir and port, a config without up-2 (the old code logged it as removed).
            second = tmp_path / "second.toml"
            second.write_text(config_text(gw.upstream_url, gw.data_dir, ["ok"], keys=("up-1",)))
            port = int(gw.url.rsplit(":", 1)[1])
            config = replace(load_config(second, env={}), port=port)
            output = io.StringIO()
            with pytest.raises(ServeError) as refused:
                await run_gateway(config, env=SECRET_ENV, out=output, handle_signals=False)
            await settled(gw)
            assert read_log(gw.data_dir) == before
            statuses = [(await chat(gw.url, {"model": "ok", **HELLO})).status_code for _ in range(4)]
            async with httpx.AsyncClient(base_url=gw.url) as client:
                health = (await client.get("/healthz")).json()
    message = str(refused.value)
    assert f"another gateway (pid {os.getpid()}) is serving the data dir {gw.data_dir}" in message
    assert "\n" not in message
    assert output.getvalue() == ""
    assert statuses == [200] * 4
    assert (health["status"], health["keys"], health["keys_ok"]) == ("ok", 2, 2)
    assert not any(isinstance(e, KeyRemoved) for e in read_log(gw.data_dir))


async def test_a_port_in_use_appends_nothing_and_the_data_dir_is_free_again(tmp_path):
    data_dir = tmp_path / "data"
    path = tmp_path / "switchboard.toml"
    path.write_text(config_text("http://127.0.0.1:9/v1", data_dir, ["ok"]))
    with occupied_port() as taken:
        config = replace(load_config(path, env={}), port=taken.getsockname()[1])
        output = io.StringIO()
        with (
            trio.fail_after(10),
            pytest.raises(ServeError, match=r"cannot listen on 127\.0\.0\.1:\d+: address already in use"),
        ):
            await run_gateway(config, env=SECRET_ENV, out=output, handle_signals=False)
    assert output.getvalue() == ""
    assert read_log(data_dir) == []  # not even service_started
    # The failed start released the lock: the next one starts.
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            assert (await chat(gw.url, {"model": "ok", **HELLO})).status_code == 200


async def test_generated_credentials_are_printed_only_once_listening(tmp_path):
    """The bug: the generated tokens were printed (and stored) before the port was bound, so a start that
    failed to bind had used up the one showing of a token that only its hash remembers."""
    data_dir = tmp_path / "data"
    path = tmp_path / "failing.toml"
    path.write_text(tokens_config("http://127.0.0.1:9/v1", data_dir))
    with occupied_port() as taken:
        config = replace(load_config(path, env={}), port=taken.getsockname()[1])
        output = io.StringIO()
        with pytest.raises(ServeError), trio.fail_after(10):
            await run_gateway(config, env=SECRET_ENV, out=output, handle_signals=False)
    assert "Generated" not in output.getvalue()
    credentials = CredentialStore(data_dir / DB_NAME)
    try:
        assert credentials.hashes("gateway") == credentials.hashes("admin") == []
    finally:
        credentials.close()

    with trio.fail_after(20):
        async with gateway_from(tmp_path, tokens_config) as gw:
            lines = gw.output.getvalue().splitlines()
            [token] = GENERATED.findall(gw.output.getvalue())
            assert (await chat(gw.url, {"model": "ok", **HELLO}, token=token)).status_code == 200
    # Shown once the server listens, just before it says so.
    listening = next(i for i, line in enumerate(lines) if line.startswith("switchboard listening on "))
    assert [i for i, line in enumerate(lines) if line.startswith("Generated")] == [
        listening - 2,
        listening - 1,
    ]


def summary_config(url: str, data_dir: Path) -> str:
    return (
        server_toml(data_dir, gateway_key=GATEWAY_KEY)
        + platform_toml("local", url, ("up-1", "up-2"))
        + platform_toml("spare", url, ())
        + model_toml("local", "ok", 1)
        + model_toml("local", "echo", 2)
        + model_toml("spare", "ok", 3)
    )


async def test_the_start_summary_names_keyed_platforms_usable_models_and_mistyped_key_variables(tmp_path):
    env = {**SECRET_ENV, "LOCL_API_KEY": "sk-typo-1234", "OTHER_API_KEY": "x", "EMPTY_API_KEY": ""}
    with trio.fail_after(20):
        async with gateway_from(tmp_path, summary_config, env=env) as gw:
            lines = gw.output.getvalue().splitlines()
    after = lines[next(i for i, line in enumerate(lines) if "listening on" in line) + 1 :]
    assert after == [
        f"console: {gw.url}/admin/ (log in with the admin token)",
        "provider keys: local 2; 2 of 3 models usable",
        "no keys yet for: spare (SPARE_API_KEY) ('switchboard models' lists each platform's variable)",
        "warning: LOCL_API_KEY is set but matches no platform (did you mean LOCAL_API_KEY?)",
        "warning: OTHER_API_KEY is set but matches no platform (platform keys are named like GROQ_API_KEY)",
    ]
    assert "sk-typo-1234" not in gw.output.getvalue()


async def test_healthz_is_degraded_while_no_key_is_usable(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"], keys=()) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                resp = await client.get("/healthz")
            assert "no provider keys yet" in gw.output.getvalue()
        async with running_gateway(tmp_path, ["ok"], keys=("up-1",)) as gw2:
            gw2.upstream.key_behaviours["up-1"] = "auth"
            assert (await chat(gw2.url, {"model": "ok", **HELLO})).status_code != 200
            await settled(gw2)
            async with httpx.AsyncClient(base_url=gw2.url) as client:
                invalid = (await client.get("/healthz")).json()
    assert resp.status_code == 200
    body = resp.json()
    assert (body["status"], body["keys"], body["keys_ok"]) == ("degraded", 0, 0)
    assert "no provider keys" in body["reason"]
    assert (invalid["status"], invalid["keys"], invalid["keys_ok"]) == ("degraded", 1, 0)
    assert "1 invalid" in invalid["reason"]


async def test_a_run_that_did_not_stop_cleanly_is_said_at_the_next_start(tmp_path) -> None:
    # From issue 10's list: a kill -9 left no trace that the last run crashed.
    from events.sqlite_store import SqliteStore
    from events.types import AttemptStarted, RequestReceived, ServiceStarted

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = SqliteStore(data_dir / DB_NAME)
    t = 1_700_000_000.0
    store.append(  # and never a service_stopped: killed with one request and its attempt in flight
        [
            ServiceStarted(ts=t, version="0.0.1"),
            RequestReceived(
                ts=t + 1, request_id="req_done", model="ok", stream=False, messages=1, est_input_tokens=1
            ),
            RequestCompleted(
                ts=t + 2, request_id="req_done", outcome="ok", status=200, attempts=1, latency_ms=1.0
            ),
            RequestReceived(
                ts=t + 3, request_id="req_cut", model="ok", stream=True, messages=1, est_input_tokens=1
            ),
            AttemptStarted(
                ts=t + 4, request_id="req_cut", attempt=1, platform="local", model="ok", key_id="k"
            ),
        ]
    )
    store.close()
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"], data_dir=data_dir) as gw:
            output = gw.output.getvalue()
    assert "did not stop cleanly (killed or crashed)" in output
    assert "1 requests never completed (req_cut); 1 upstream attempts never ended (on local/ok)" in output
    starts = [e for e in read_log(data_dir) if isinstance(e, ServiceStarted)]
    assert starts[-1].unclean_previous_start == t
    assert (starts[-1].unfinished_requests, starts[-1].unfinished_attempts) == (1, 1)
    with trio.fail_after(20):  # that run stopped cleanly: the next start says nothing
        async with running_gateway(tmp_path, ["ok"], data_dir=data_dir) as gw:
            assert "did not stop cleanly" not in gw.output.getvalue()
