"""The `switchboard` command line: serve, keys, models, log."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import trio

from events.projections import KeyHealth, ModelOverrides, Stats
from events.routing import Catalog
from events.sqlite_store import SqliteStore
from events.types import KeyAdded, KeyDisabled, KeyEnabled, ModelUpdated, encode_event, event_type
from service.config import Config, ConfigError, load_config
from service.secrets import SecretsError, Vault, key_label, load_master_key
from service.server import DB_NAME, catalog_models, run_gateway


def _config(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config) if args.config else None)
    overrides = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return replace(config, **overrides) if overrides else config


def _store(config: Config) -> SqliteStore:
    return SqliteStore(config.data_dir / DB_NAME)


def _projections(store: SqliteStore, config: Config) -> tuple[KeyHealth, ModelOverrides, Stats]:
    from actors.supervisor import rebuild

    health, overrides, stats = KeyHealth(config.routing.rate_limit_cooldown_s), ModelOverrides(), Stats()
    rebuild(store, health, overrides, stats)
    return health, overrides, stats


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    trio.run(run_gateway, config)
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.platform not in config.platforms:
        known = ", ".join(sorted(config.platforms))
        print(f"error: unknown platform '{args.platform}'. Known platforms: {known}", file=sys.stderr)
        return 2
    # Never from argv: it would end up in shell history and in `ps`.
    secret = getpass.getpass(f"{args.platform} API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        print("error: no key on standard input", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    master = load_master_key(config.data_dir, os.environ)
    vault = Vault(config.data_dir / DB_NAME, master)
    store = _store(config)
    try:
        key_id, created = vault.put(args.platform, secret)
        health, _, _ = _projections(store, config)
        if key_id not in health.keys:
            store.append([KeyAdded(ts=time.time(), key_id=key_id, platform=args.platform,
                                   label=key_label(secret), source="vault")])
        print(f"{'added' if created else 'already stored'}: {key_id} ({args.platform}, {key_label(secret)})")
    finally:
        vault.close()
        store.close()
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        health, _, _ = _projections(store, config)
    finally:
        store.close()
    now = time.time()
    models = catalog_models(config)
    rows = []
    for info in sorted(health.keys.values(), key=lambda k: (k.platform, k.key_id)):
        cooling = [f"{m.id} {until - now:.0f}s" for m in models if m.platform == info.platform
                   if (until := health.cooling_until(info.key_id, m.id, now)) is not None]
        status = info.status + (f" ({info.reason})" if info.reason else "")
        rows.append((info.key_id, info.platform, info.label, info.source, status,
                     "cooling: " + ", ".join(cooling) if cooling else ""))
    if not rows:
        print("no keys yet: set e.g. GROQ_API_KEY, add keys to the config, or run 'switchboard keys add groq'")
        return 0
    _table(("KEY", "PLATFORM", "LABEL", "SOURCE", "STATUS", ""), rows)
    return 0


def cmd_keys_toggle(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        health, _, _ = _projections(store, config)
        if args.key_id not in health.keys:
            print(f"error: no key '{args.key_id}' (see 'switchboard keys list')", file=sys.stderr)
            return 2
        event = (KeyDisabled(ts=time.time(), key_id=args.key_id, reason=args.reason or "by operator")
                 if args.action == "disable" else KeyEnabled(ts=time.time(), key_id=args.key_id))
        store.append([event])
    finally:
        store.close()
    print(f"{args.action}d {args.key_id}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        health, overrides, stats = _projections(store, config)
        if args.action in ("enable", "disable"):
            matches = Catalog(catalog_models(config), overrides).models()
            found = [m for m in matches if args.model in (m.ref, m.id)]
            if len(found) != 1:
                print(f"error: '{args.model}' matches {len(found)} models; use platform/id", file=sys.stderr)
                return 2
            store.append([ModelUpdated(ts=time.time(), platform=found[0].platform, model=found[0].id,
                                       enabled=args.action == "enable")])
            print(f"{args.action}d {found[0].ref}")
            return 0
    finally:
        store.close()
    now = time.time()
    rows = []
    for m in Catalog(catalog_models(config), overrides).models():
        if not (args.all or m.enabled):
            continue
        keys = [k for k in health.keys_of(m.platform)
                if k.status == "ok" and health.cooling_until(k.key_id, m.id, now) is None]
        s = stats.models.get(m.ref)
        rows.append((m.ref, m.pool, str(m.intelligence_rank), str(m.context_window or "-"),
                     "yes" if m.enabled else "no", "yes" if m.fallback else "no", str(len(keys)),
                     f"{s.successes}/{s.total}" if s else "-"))
    _table(("MODEL", "POOL", "RANK", "CONTEXT", "ENABLED", "CHAIN", "KEYS", "OK/TOTAL"), rows)
    return 0


def cmd_log_tail(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        last = store.last_seq()
        start = max(0, last - args.n)
        seq = start
        for seq, event in store.read_after(start):
            _print_event(seq, event, args.type)
        if not args.follow:
            return 0
        version = store.data_version()
        while True:
            time.sleep(0.2)
            if store.data_version() == version:
                continue
            version = store.data_version()
            for seq, event in store.read_after(seq):
                _print_event(seq, event, args.type)
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()


def _print_event(seq: int, event: object, only: str | None) -> None:
    if only and event_type(event) != only:  # type: ignore[arg-type]
        return
    print(f'{{"seq":{seq},"event":{encode_event(event).decode()}}}', flush=True)  # type: ignore[arg-type]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="OpenAI-compatible LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML config file (default: none, built-in catalog)")
        p.add_argument("--data-dir", help="where the log, vault and master key live (default ./data)")
        return p

    serve = common(sub.add_parser("serve", help="run the gateway"))
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="provider keys").add_subparsers(dest="action", required=True)
    add = common(keys.add_parser("add", help="store a key (read from stdin), encrypted"))
    add.add_argument("platform")
    add.set_defaults(func=cmd_keys_add)
    common(keys.add_parser("list", help="keys and their status")).set_defaults(func=cmd_keys_list)
    for action in ("disable", "enable"):
        p = common(keys.add_parser(action, help=f"{action} a key"))
        p.add_argument("key_id")
        if action == "disable":
            p.add_argument("--reason")
        else:
            p.set_defaults(reason=None)
        p.set_defaults(func=cmd_keys_toggle, action=action)

    models = common(sub.add_parser("models", help="the catalog and which models are usable"))
    models.add_argument("action", nargs="?", choices=("list", "enable", "disable"), default="list")
    models.add_argument("model", nargs="?")
    models.add_argument("--all", action="store_true", help="include disabled models")
    models.set_defaults(func=cmd_models)

    log = sub.add_parser("log", help="the event log").add_subparsers(dest="action", required=True)
    tail = common(log.add_parser("tail", help="print recent events as JSON lines"))
    tail.add_argument("-n", type=int, default=20, help="how many past events (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument("--type", help="only events of this type, e.g. attempt_failed")
    tail.set_defaults(func=cmd_log_tail)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("enable", "disable") and args.command == "models" and not args.model:
        print("error: name the model, e.g. 'switchboard models disable groq/llama-3.1-8b-instant'", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, SecretsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
