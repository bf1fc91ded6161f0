"""A real gateway (hypercorn on port 0) in front of the real fault-injecting upstream, for e2e tests."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from fault_upstream import UpstreamState, serve_upstream

from actors.supervisor import Runtime
from events.store import LogStore
from service.config import load_config
from service.server import DB_NAME, run_gateway

GATEWAY_KEY = "sk-e2e-gateway-0123456789"
ADMIN_TOKEN = "admin-e2e-0123456789abc"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET_ENV = {"SWITCHBOARD_SECRET_KEY": "ab" * 32}


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT
    runtime: Runtime
    upstream: UpstreamState
    upstream_url: str
    output: io.StringIO
    data_dir: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def config_text(
    upstream_url: str,
    data_dir: Path,
    models: list[str],
    *,
    keys: tuple[str, ...] = ("up-1",),
    timeouts: str = "",
    extra: str = "",
) -> str:
    key_list = ", ".join(f'"{k}"' for k in keys)
    text = f"""
[server]
host = "127.0.0.1"
port = 0
data_dir = "{data_dir}"
[gateway]
api_keys = ["{GATEWAY_KEY}"]
[admin]
token = "{ADMIN_TOKEN}"
[catalog]
builtin = false
[timeouts]
{timeouts}
[[platforms]]
name = "local"
kind = "openai"
base_url = "{upstream_url}"
keys = [{key_list}]
{extra}
"""
    for rank, model in enumerate(models, start=1):
        text += f'\n[[models]]\nplatform = "local"\nid = "{model}"\nintelligence_rank = {rank}\n'
    return text


ConfigFor = Callable[[str, Path], str]  # (upstream base URL, data dir) -> TOML text


@asynccontextmanager
async def gateway_from(
    tmp_path: Path,
    config_for: ConfigFor,
    *,
    state: UpstreamState | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] = SECRET_ENV,
    store: Callable[[Path], LogStore] | None = None,
) -> AsyncIterator[Gateway]:
    """Like `harness.running_gateway`, with the config text from `config_for(upstream_url, data_dir)`;
    `store(db_path)` opens the log instead of the gateway's own SqliteStore."""
    state = state or UpstreamState()
    data_dir = data_dir or tmp_path / "data"
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, state)
        path = tmp_path / "switchboard.toml"
        path.write_text(config_for(upstream_url, data_dir))
        config = load_config(path, env={})
        output = io.StringIO()
        ready, ready_recv = trio.open_memory_channel[tuple[str, Runtime]](1)
        done = trio.Event()

        async def gateway() -> None:
            try:
                await run_gateway(
                    config,
                    env=env,
                    out=output,
                    handle_signals=False,
                    on_listening=lambda url, rt: ready.send_nowait((url, rt)),
                    store=store(data_dir / DB_NAME) if store is not None else None,
                )
            finally:
                done.set()

        nursery.start_soon(gateway)
        with trio.fail_after(10):
            url, runtime = await ready_recv.receive()
        try:
            yield Gateway(url, runtime, state, upstream_url, output, data_dir)
        finally:
            runtime.shutting_down.set()
            with trio.fail_after(15):
                await done.wait()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    models: list[str],
    *,
    state: UpstreamState | None = None,
    keys: tuple[str, ...] = ("up-1",),
    timeouts: str = "",
    extra: str = "",
    data_dir: Path | None = None,
) -> AsyncIterator[Gateway]:
    """Start upstream and gateway with one platform, `local`, serving `models`; on exit shut the gateway
    down gracefully (as SIGTERM would)."""

    def config_for(upstream_url: str, data_dir: Path) -> str:
        return config_text(upstream_url, data_dir, models, keys=keys, timeouts=timeouts, extra=extra)

    async with gateway_from(tmp_path, config_for, state=state, data_dir=data_dir) as gw:
        yield gw
