"""The gateway as a real process: SIGTERM and SIGINT drain in-flight requests, flush the log, exit 0; an
actor crash takes the process down with its traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import apsw
import httpx
import pytest
import trio
from fault_upstream import UpstreamState, serve_upstream
from harness import GATEWAY_KEY, SECRET_ENV, config_text

from events.sqlite_store import SqliteStore
from events.types import RequestCompleted, ServiceStopped

ROOT = Path(__file__).resolve().parents[2]
SWITCHBOARD = [sys.executable, "-m", "service.cli"]


async def start_gateway(tmp_path: Path, upstream_url: str, models: list[str]) -> tuple[trio.Process, str]:
    config = tmp_path / "switchboard.toml"
    config.write_text(config_text(upstream_url, tmp_path / "data", models))
    env = {**os.environ, **SECRET_ENV, "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        [*SWITCHBOARD, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(20):
        while b"switchboard listening on " not in buffer:
            chunk = await process.stdout.receive_some()
            assert chunk, "the gateway exited before listening"
            buffer += chunk
    url = buffer.split(b"switchboard listening on ", 1)[1].split()[0].decode()
    return process, url


def log_events(tmp_path: Path) -> list:
    store = SqliteStore(tmp_path / "data" / "switchboard.db")
    try:
        return [e for _, e in store.read_after(0)]
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_lets_in_flight_requests_finish_flushes_the_log_and_exits_0(tmp_path, sig):
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, UpstreamState())
        process, url = await start_gateway(tmp_path, upstream_url, ["slow:1"])
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=20
        ) as client:
            answers: list[httpx.Response] = []

            async def ask() -> None:
                answers.append(
                    await client.post(
                        "/v1/chat/completions",
                        json={"model": "local/slow:1", "messages": [{"role": "user", "content": "hi"}]},
                    )
                )

            async with trio.open_nursery() as requests:
                requests.start_soon(ask)
                await trio.sleep(0.3)  # the request is in flight upstream
                process.send_signal(sig)
        with trio.fail_after(15):
            code = await process.wait()
        nursery.cancel_scope.cancel()
    assert code == 0
    assert [a.status_code for a in answers] == [200]  # the in-flight request ended normally
    events = log_events(tmp_path)
    assert isinstance(events[-1], ServiceStopped)
    assert [e.outcome for e in events if isinstance(e, RequestCompleted)] == ["ok"]


async def test_an_actor_crash_takes_the_process_down_with_its_traceback(tmp_path):
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, UpstreamState())
        process, url = await start_gateway(tmp_path, upstream_url, ["ok"])
        # Break the log under the running gateway: its writer's next commit fails.
        db = tmp_path / "data" / "switchboard.db"
        connection = apsw.Connection(str(db))
        connection.execute("DROP TABLE events")
        connection.close()
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=10
        ) as client:
            with trio.move_on_after(5):
                with contextlib.suppress(httpx.TransportError):  # the process goes down under the request
                    await client.post(
                        "/v1/chat/completions",
                        json={"model": "local/ok", "messages": [{"role": "user", "content": "hi"}]},
                    )
        with trio.fail_after(15):
            code = await process.wait()
        assert process.stderr is not None
        stderr = b""
        while chunk := await process.stderr.receive_some():
            stderr += chunk
        nursery.cancel_scope.cancel()
    assert code != 0
    assert b"Traceback" in stderr and b"no such table: events" in stderr


async def test_a_second_serve_on_the_data_dir_refuses_naming_the_first_and_appends_nothing(tmp_path):
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, UpstreamState())
        process, url = await start_gateway(tmp_path, upstream_url, ["ok"])
        try:
            before = log_events(tmp_path)
            # Its own config says port 0: only the data dir's lock can stop it (else it would serve on).
            with trio.fail_after(20):
                second = await trio.run_process(
                    [*SWITCHBOARD, "serve", "--config", str(tmp_path / "switchboard.toml")],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    cwd=ROOT,
                    env={**os.environ, **SECRET_ENV},
                )
            after = log_events(tmp_path)
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=10
            ) as client:
                resp = await client.post(
                    "/v1/chat/completions",
                    json={"model": "local/ok", "messages": [{"role": "user", "content": "hi"}]},
                )
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:  # the test failed: leave no gateway behind
                process.kill()
                await process.wait()
        nursery.cancel_scope.cancel()
    assert second.returncode == 1
    assert second.stdout == b""
    [line] = second.stderr.decode().splitlines()
    assert line.startswith(f"switchboard: another gateway (pid {process.pid}) is serving the data dir ")
    assert after == before
    assert resp.status_code == 200
