"""Wiring: from a Config to a running gateway (store, secrets, keys, adapter, actors, HTTP server).

Start order, so that a start which cannot serve leaves no trace: take the data dir's lock (one gateway per
data dir: a second one would append to the log the first is folding), bind the listening socket, and only
then touch the log (the supervisor rebuilds, records the config and keys, accepts traffic). Tokens the
gateway generates for itself are stored and printed once it is really listening.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

import apsw
import trio

from actors.key_checker import check_key
from actors.request import Deadlines
from actors.responses import ResponseRetention
from actors.supervisor import Runtime, Settings, run_service
from events.catalog import CatalogModel
from events.key_health import KeyInfo
from events.sqlite_store import SqliteStore, unwritable_reason
from events.store import LogStore, StoreUnwritable
from events.types import KeyChecked, KeySource
from events.view import SessionPolicy, rebuild
from service import __version__
from service.config import Config, env_var_for
from service.secrets import (
    CredentialStore,
    TokenCheck,
    Vault,
    check_key_text,
    generate_token,
    hash_token,
    key_id_for,
    key_label,
    normalise_token,
    open_vault,
)
from service.upstream import HttpUpstream, PlatformEndpoint

if TYPE_CHECKING:
    from service.http_server import HttpLimits

DB_NAME = "switchboard.db"
LOCK_NAME = "switchboard.lock"  # held by the serving gateway (flock), with its pid in it
BACKLOG = 1024


class ServeError(Exception):
    """The gateway cannot start; the message is one line for the operator."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir/switchboard.lock` exclusively for as long as the gateway runs (the kernel releases it
    when the process dies, however it dies). Raises ServeError naming the holder's pid if another has it."""
    path = data_dir / LOCK_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ServeError(
            f"the data dir {data_dir} cannot be written ({(exc.strerror or str(exc)).lower()}): make it "
            "writable by this user, or give the gateway another one; a read-only copy can still be read "
            "with the CLI's --data-dir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ServeError(
                f"another gateway (pid {holder}) is serving the data dir {data_dir} (it holds {path}); "
                "stop it first, or give this one another data dir"
            ) from None
        # The pid is for the message above; on a full disk it cannot be written, and the gateway must still
        # start (README: the disk), so only the lock itself is required.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for the next reader; the lock goes with the descriptor
    finally:
        os.close(fd)


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for hypercorn (listening starts once the log is open: a start waiting for disk
    space refuses connections rather than leaving them hanging in the backlog), or ServeError saying why
    not on one line."""
    bare = host.replace("[", "").replace("]", "")
    where = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = (
                "address already in use (another gateway? pick another port with [server] port or "
                "SWITCHBOARD_PORT)"
            )
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges; pick another port)"
        else:
            reason = (exc.strerror or str(exc)).lower()
        raise ServeError(f"cannot listen on {where}: {reason}") from None
    return sock


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


def http_limits(config: Config) -> HttpLimits:
    """The client connection limits, `max_connections` from the descriptor limit unless configured.
    Raises ServeError if the installed hypercorn is not one service/http_server.py was written against."""
    # The HTTP stack (hypercorn, Quart) is imported only to serve: the read-only commands, which share this
    # module, start half a second sooner without it.
    from service.http_server import HttpLimits, check_hypercorn, default_max_connections

    try:
        check_hypercorn()
    except RuntimeError as exc:
        raise ServeError(f"{exc} (install the hypercorn version in constraints.txt)") from None
    server = config.limits
    return HttpLimits(
        keep_alive_timeout_s=server.keep_alive_timeout_s,
        header_timeout_s=server.header_timeout_s,
        send_timeout_s=server.send_timeout_s,
        max_connections=server.max_connections or default_max_connections(),
        grace_s=server.grace_s,
    )


def catalog_models(config: Config) -> list[CatalogModel]:
    return [m.catalog_model() for m in config.models if m.platform in config.platforms]


def _count_or_none(value: int | str) -> int | None:
    """A config limit: a number, or None for "unlimited"."""
    return value if isinstance(value, int) else None


def routing_settings(config: Config, keys: list[tuple[str, str, str, KeySource]] | None = None) -> Settings:
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
        platforms=frozenset(config.platforms),
        rolling_day_platforms=frozenset(
            p.name for p in config.platforms.values() if p.quota_day == "rolling"
        ),
        snapshot_every_events=config.snapshots.every_events,
        snapshot_every_s=config.snapshots.every_s,
        claude_model=config.messages.claude_model,
        messages_max_tokens=_count_or_none(config.messages.max_tokens_cap),
        responses=ResponseRetention(
            retention_s=config.responses.retention_days * 86400,
            max_indexed=config.responses.max_indexed,
            cache_bytes=int(config.responses.cache_mb * 1024 * 1024),
            max_chain_bytes=config.limits.max_body_bytes,
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
) -> tuple[list[tuple[str, str, str, KeySource]], dict[str, str]]:
    """Every key the gateway knows at start: (key_id, platform, label, source) and the secrets by id."""
    known: list[tuple[str, str, str, KeySource]] = []
    secrets: dict[str, str] = {}
    sources: list[tuple[str, str, KeySource]] = [
        (p.name, k, "config") for p in config.platforms.values() for k in p.keys
    ]
    sources += [(name, k, "env") for name, keys in config.env_keys.items() for k in keys]
    for platform, secret, source in sources:
        where = (
            f"a key in {config.path or 'the config'}"
            if source == "config"
            else (f"a key in ${config.platforms[platform].env_var}")
        )
        check_key_text(platform, secret, where)
        key_id = key_id_for(master_key, platform, secret)
        if key_id not in secrets:
            secrets[key_id] = secret
            known.append((key_id, platform, key_label(secret), source))
    for key_id, platform, label in vault.items():
        if key_id not in secrets and platform in config.platforms:
            known.append((key_id, platform, label, "vault"))
    return known, secrets


@dataclass
class Tokens:
    gateway: TokenCheck
    admin: TokenCheck
    # Minted for this first start, (kind, token): stored and printed by `announce` once listening, so a
    # start that fails never keeps a token nobody was shown.
    minted: list[tuple[str, str]] = field(default_factory=list)

    def announce(self, credentials: CredentialStore, out: TextIO) -> None:
        for kind, token in self.minted:
            what = "gateway API key" if kind == "gateway" else "admin token"
            try:
                credentials.add(kind, hash_token(token))
            except (apsw.FullError, apsw.IOError):
                # A first start on a full disk: the token works for this run; the next start makes another.
                print(
                    f"Generated {what} for this run only (the disk is full, so it could not be stored): "
                    f"{token}",
                    file=out,
                    flush=True,
                )
                continue
            print(f"Generated {what} (shown once, stored hashed): {token}", file=out, flush=True)
        self.minted = []


def gateway_tokens(config: Config, credentials: CredentialStore) -> Tokens:
    """Configured tokens win; with none configured (or stored), the gateway makes its own (see Tokens)."""
    checks = []
    minted = []
    for kind, configured, prefix in (
        ("gateway", list(config.api_keys), "sk-sb-"),
        ("admin", [config.admin_token] if config.admin_token else [], "sb-admin-"),
    ):
        if configured:
            checks.append(TokenCheck(normalise_token(t) for t in configured))
            continue
        hashes = credentials.hashes(kind)
        if not hashes:  # one gateway per data dir (its lock): nobody else can be minting one now
            token = generate_token(prefix)
            minted.append((kind, token))
            hashes = [hash_token(token)]
        checks.append(TokenCheck(hashes))
    return Tokens(checks[0], checks[1], minted)


async def startup_summary(runtime: Runtime, config: Config, env: Mapping[str, str]) -> list[str]:
    """What an operator checks first: which platforms have keys, how many models can be used, and
    `*_API_KEY` variables that name no platform (a typo such as GROK_API_KEY is otherwise silent)."""
    lines = []
    outage = runtime.log.outage()
    if outage is not None:
        lines.append(
            f"warning: the event log cannot be written ({outage.reason}): new requests get 503 until it can "
            "(free space or fix permissions; writing resumes by itself, /healthz says when)"
        )
    if runtime.unclean_previous_start is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(runtime.unclean_previous_start))
        left = runtime.unfinished
        last = (
            time.strftime("%H:%M:%S", time.localtime(left.last_event_ts))
            if left is not None and left.last_event_ts is not None
            else "?"
        )
        lines.append(
            f"warning: the last run (started {when}) did not stop cleanly (killed or crashed); its last "
            f"event was written at {last}, and events of at most its last few milliseconds are missing; "
            + (left.summary() if left is not None else "")
        )
    keys: dict[str, list[str]] = {}
    for view in await runtime.health.keys():
        keys.setdefault(view.info.platform, []).append(view.info.status)
    availability = await runtime.health.models()
    enabled = [a for a in availability if a.model.enabled]
    usable = sum(1 for a in enabled if a.usable_keys)
    if keys:
        parts = []
        for platform in sorted(keys):
            statuses = keys[platform]
            unusable = len(statuses) - statuses.count("ok")
            parts.append(f"{platform} {len(statuses)}" + (f" ({unusable} not ok)" if unusable else ""))
        lines.append(f"provider keys: {', '.join(parts)}; {usable} of {len(enabled)} models usable")
        unkeyed = [p for p in config.platforms.values() if p.name not in keys]
        if unkeyed:
            lines.append(
                "no keys yet for: "
                + ", ".join(f"{p.name} ({p.env_var})" for p in unkeyed)
                + " ('switchboard models' lists each platform's variable)"
            )
    else:
        example = "groq" if "groq" in config.platforms else next(iter(sorted(config.platforms)), "groq")
        lines.append(
            f"no provider keys yet: every request gets 503 until one is added (set "
            f"{env_var_for(example)}, or run 'switchboard keys add {example}'); 0 of {len(enabled)} "
            "models usable"
        )
    known = {p.env_var for p in config.platforms.values()}
    for name in sorted(env):
        if name.endswith("_API_KEY") and name not in known and env[name].strip():
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f"did you mean {close[0]}?" if close else "platform keys are named like GROQ_API_KEY"
            lines.append(f"warning: {name} is set but matches no platform ({hint})")
    return lines


async def run_gateway(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO = sys.stdout,
    handle_signals: bool = True,
    store: LogStore | None = None,
    on_listening: Callable[[str, Runtime], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or `runtime.shutting_down`), then shut down gracefully. Raises ServeError
    (having appended nothing to the log) when the data dir is taken or the address cannot be listened on."""
    env = os.environ if env is None else env
    limits = http_limits(config)
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with data_dir_lock(data_dir), contextlib.closing(listen_socket(config.host, config.port)) as sock:
        await _run_locked(config, env, out, handle_signals, store, on_listening, sock, limits)


async def _run_locked(
    config: Config,
    env: Mapping[str, str],
    out: TextIO,
    handle_signals: bool,
    store: LogStore | None,
    on_listening: Callable[[str, Runtime], None] | None,
    sock: socket.socket,
    limits: HttpLimits,
) -> None:
    data_dir = config.data_dir
    db_path = data_dir / DB_NAME
    # First: a damaged log file stops the start before anything opens it.
    if store is None:
        store = await _when_there_is_room(f"the event log {db_path}", lambda: SqliteStore(db_path), out)
    try:
        # Its first start after an upgrade records the master key's check value: a write, too.
        master_key, vault = await _when_there_is_room(
            f"the vault in {db_path}", lambda: open_vault(data_dir, db_path, env), out
        )
    except BaseException:
        store.close()
        raise
    sock.listen(BACKLOG)
    credentials = CredentialStore(db_path)
    try:
        tokens = gateway_tokens(config, credentials)
        keys, secrets = collect_keys(config, master_key, vault)
        keyring = Keyring(secrets, vault)
        upstream = HttpUpstream(_endpoints(config), keyring.secret_for)
        settings = routing_settings(config, keys)

        async def serve_http(runtime: Runtime) -> None:
            from service.admin_auth import AdminAuth
            from service.admin_context import AdminContext
            from service.app import create_app
            from service.http_server import serve

            admin = AdminContext(
                runtime=runtime,
                admin_tokens=tokens.admin,
                auth=AdminAuth(
                    tokens.admin,
                    ttl_s=config.console.session_ttl_s,
                    secure_cookie=config.console.secure_cookie,
                    allowed_origins=config.console.allowed_origins,
                ),
                config=config,
                vault=vault,
                master_key=master_key,
                secrets=keyring.secrets,
                open_reader=lambda: SqliteStore(db_path, read_only=True),
            )
            app = create_app(
                runtime,
                tokens.gateway,
                admin,
                max_body_bytes=config.limits.max_body_bytes,
                body_timeout_s=config.limits.body_timeout_s,
            )
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    partial(
                        serve,
                        app,
                        sock,
                        limits,
                        shutdown_trigger=runtime.shutting_down.wait,
                        on_cut_off=runtime.requests.cut_off_by_shutdown,
                    )
                )
                tokens.announce(credentials, out)
                print(f"switchboard listening on {url}", file=out, flush=True)
                print(f"console: {url}/admin/ (log in with the admin token)", file=out, flush=True)
                for line in await startup_summary(runtime, config, env):
                    print(line, file=out, flush=True)
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


OPEN_RETRY_S = 2.0
T = TypeVar("T")


async def _when_there_is_room(what: str, open_: Callable[[], T], out: TextIO) -> T:
    """`open_()`, once it works: on a full disk (SQLite cannot make the WAL's -shm index, or a first write
    fails) the start waits and retries instead of exiting, which under a supervisor would be a crash loop
    (README: the disk)."""
    waiting_since: float | None = None
    while True:
        try:
            opened = open_()
        except (StoreUnwritable, apsw.FullError, apsw.IOError) as exc:
            if waiting_since is None:
                waiting_since = time.monotonic()
                reason = exc.reason if isinstance(exc, StoreUnwritable) else unwritable_reason(exc)
                print(
                    f"warning: {what} cannot be opened ({reason}): waiting for space (free some on its "
                    f"file system), retrying every {OPEN_RETRY_S:g}s",
                    file=out,
                    flush=True,
                )
            await trio.sleep(OPEN_RETRY_S)
            continue
        if waiting_since is not None:
            print(
                f"{what} opened after {time.monotonic() - waiting_since:.0f}s of waiting",
                file=out,
                flush=True,
            )
        return opened


async def check_keys(
    config: Config, env: Mapping[str, str] | None = None
) -> list[tuple[KeyInfo, KeyChecked]]:
    """Check every known key once against its provider and append the results to the log (a running
    gateway picks them up: a key that works again is usable at once)."""
    env = os.environ if env is None else env
    db_path = config.data_dir / DB_NAME
    master_key, vault = open_vault(config.data_dir, db_path, env)
    store = SqliteStore(db_path)
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
