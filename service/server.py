"""Wiring: from a Config to a running gateway (store, secrets, keys, adapter, actors, HTTP server)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from actors.key_checker import check_key
from actors.request import Deadlines
from actors.supervisor import Runtime, Settings, run_service
from events.catalog import CatalogModel
from events.key_health import KeyInfo
from events.sqlite_store import SqliteStore
from events.store import LogStore
from events.types import KeyChecked
from events.view import SessionPolicy, rebuild
from service import __version__
from service.app import create_app
from service.config import Config
from service.secrets import (
    CredentialStore,
    TokenCheck,
    Vault,
    key_id_for,
    key_label,
    load_master_key,
    normalise_token,
)
from service.upstream import HttpUpstream, PlatformEndpoint

DB_NAME = "switchboard.db"
GRACE_S = 10.0


@dataclass
class Keyring:
    """Key material by key id, in memory only. Vault keys are decrypted on first use."""

    secrets: dict[str, str]
    vault: Vault

    def secret_for(self, key_id: str) -> str:
        secret = self.secrets.get(key_id)
        if secret is None:
            secret = self.secrets[key_id] = self.vault.get(key_id)
        return secret


def catalog_models(config: Config) -> list[CatalogModel]:
    return [m.catalog_model() for m in config.models if m.platform in config.platforms]


def routing_settings(config: Config, keys: list[tuple[str, str, str, str]] | None = None) -> Settings:
    """Everything the runtime (and a replay) needs from the config."""
    t = config.timeouts
    deadlines = Deadlines(
        first_byte_s=t.first_byte_s,
        stall_s=t.stall_s,
        keepalive_s=t.keepalive_s,
        # A platform's timeout_s only ever raises its first-byte deadline (slow reasoning models).
        platform_first_byte_s={
            p.name: max(t.first_byte_s, p.timeout_s)
            for p in config.platforms.values()
            if p.timeout_s is not None
        },
    )
    return Settings(
        models=catalog_models(config),
        keys=keys or [],
        deadlines=deadlines,
        max_attempts=config.routing.max_attempts,
        policy=config.routing.policy,
        version=__version__,
        rolling_day_platforms=frozenset(
            p.name for p in config.platforms.values() if p.quota_day == "rolling"
        ),
        sessions=SessionPolicy(
            protection={p.name: p.protection for p in config.platforms.values()},
            single_flight=frozenset(
                p.name
                for p in config.platforms.values()
                if p.single_flight and p.protection == "provider-ban"
            ),
            pin_ttl_s=config.sessions.pin_ttl_s,
            max_sessions=config.sessions.max_sessions,
            provider_ban_window_s=config.sessions.provider_ban_window_s,
        ),
    )


def collect_keys(
    config: Config, master_key: bytes, vault: Vault
) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    """Every key the gateway knows at start: (key_id, platform, label, source) and the secrets by id."""
    known: list[tuple[str, str, str, str]] = []
    secrets: dict[str, str] = {}
    sources = [(p.name, k, "config") for p in config.platforms.values() for k in p.keys]
    sources += [(name, k, "env") for name, keys in config.env_keys.items() for k in keys]
    for platform, secret, source in sources:
        key_id = key_id_for(master_key, platform, secret)
        if key_id not in secrets:
            secrets[key_id] = secret
            known.append((key_id, platform, key_label(secret), source))
    for key_id, platform, label in vault.items():
        if key_id not in secrets and platform in config.platforms:
            known.append((key_id, platform, label, "vault"))
    return known, secrets


def gateway_tokens(
    config: Config, credentials: CredentialStore, out: TextIO
) -> tuple[TokenCheck, TokenCheck]:
    """Configured tokens win; with none configured, the gateway makes its own once and prints them once."""
    checks = []
    for kind, configured, prefix in (
        ("gateway", list(config.api_keys), "sk-sb-"),
        ("admin", [config.admin_token] if config.admin_token else [], "sb-admin-"),
    ):
        if configured:
            checks.append(TokenCheck(normalise_token(t) for t in configured))
            continue
        generated = credentials.ensure(kind, prefix)
        if generated is not None:
            what = "gateway API key" if kind == "gateway" else "admin token"
            print(f"Generated {what} (shown once, stored hashed): {generated}", file=out, flush=True)
        checks.append(TokenCheck(credentials.hashes(kind)))
    return checks[0], checks[1]


async def run_gateway(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO = sys.stdout,
    handle_signals: bool = True,
    store: LogStore | None = None,
    on_listening: Callable[[str, Runtime], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or `runtime.shutting_down`), then shut down gracefully."""
    env = os.environ if env is None else env
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    db_path = data_dir / DB_NAME
    master_key = load_master_key(data_dir, env)
    store = store or SqliteStore(db_path)
    vault = Vault(db_path, master_key)
    credentials = CredentialStore(db_path)
    try:
        gateway_check, _admin_check = gateway_tokens(config, credentials, out)
        keys, secrets = collect_keys(config, master_key, vault)
        keyring = Keyring(secrets, vault)
        upstream = HttpUpstream(_endpoints(config), keyring.secret_for)
        settings = routing_settings(config, keys)

        async def serve_http(runtime: Runtime) -> None:
            hc = HypercornConfig()
            hc.bind = [f"{config.host}:{config.port}"]
            hc.graceful_timeout = GRACE_S
            hc.accesslog = None
            hc.errorlog = "-"
            hc.keep_alive_timeout = 75
            app = create_app(runtime, gateway_check)
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status: serve(
                        app, hc, shutdown_trigger=runtime.shutting_down.wait, task_status=task_status
                    )
                )
                url = binds[0]
                print(f"switchboard listening on {url}", file=out, flush=True)
                if on_listening is not None:
                    on_listening(url, runtime)

        try:
            await run_service(store, upstream, settings, serve_http, handle_signals=handle_signals)
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()
    finally:
        credentials.close()
        vault.close()
        store.close()


async def check_keys(
    config: Config, env: Mapping[str, str] | None = None
) -> list[tuple[KeyInfo, KeyChecked]]:
    """Check every known key once against its provider and append the results to the log (a running
    gateway picks them up: a key that works again is usable at once)."""
    env = os.environ if env is None else env
    db_path = config.data_dir / DB_NAME
    master_key = load_master_key(config.data_dir, env)
    store, vault = SqliteStore(db_path), Vault(db_path, master_key)
    try:
        keys, secrets = collect_keys(config, master_key, vault)
        view = routing_settings(config, keys).new_view()
        rebuild(store, view)
        known = [info for info in view.health.keys.values() if info.platform in config.platforms]
        upstream = HttpUpstream(_endpoints(config), Keyring(secrets, vault).secret_for)
        results: list[tuple[KeyInfo, KeyChecked]] = []
        try:
            async with trio.open_nursery() as nursery:

                async def one(info: KeyInfo) -> None:
                    results.append((info, await check_key(upstream, info.platform, info.key_id, time.time)))

                for info in known:
                    nursery.start_soon(one, info)
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()
        store.append([checked for _, checked in results])
        return sorted(results, key=lambda r: r[0].key_id)
    finally:
        vault.close()
        store.close()


def _endpoints(config: Config) -> dict[str, PlatformEndpoint]:
    return {
        p.name: PlatformEndpoint(p.name, p.base_url, dict(p.headers), p.kind)
        for p in config.platforms.values()
    }
