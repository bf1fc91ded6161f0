"""The `switchboard` command line: serve, keys, models, sessions, replay, log.

The read-only commands (and `replay`) take the configuration the gateway last started with from the log
(`ConfigApplied`), so they tell the truth without the config file; a log written before the gateway
recorded its configuration falls back to the file (or the defaults). `replay --config F` is a what-if.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import trio

from actors.model_health import usable_keys
from events.config_applied import last_config, view_of
from events.explain import explain
from events.op_stats import OperationalStats
from events.replay import Replayed
from events.retention import REMOVABLE
from events.snapshot import resume
from events.sqlite_store import SchemaVersionError, SqliteStore, StoreDamaged
from events.store import PAGE, StoreUnwritable, iter_after
from events.types import (
    EVENT_TYPES,
    ConfigApplied,
    Event,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    LimitChanges,
    ModelUpdated,
    RouteDecided,
    encode_event,
    event_tag,
    event_type,
)
from events.view import RoutingView, folded_tags, rebuild
from service import __version__
from service.backup import BackupError, backup
from service.config import Config, ConfigError, env_var_for, load_config
from service.replay_runner import run_replay
from service.secrets import KEY_FILE, SecretsError, key_label, open_vault
from service.server import (
    DB_NAME,
    LOCK_NAME,
    ServeError,
    check_keys,
    data_dir_lock,
    routing_settings,
    run_gateway,
)

# Set by scripts/switchboard, which runs from the checkout: the directory the command was typed in, against
# which relative --config and --data-dir paths are resolved.
CALLER_DIR_ENV = "SWITCHBOARD_CALLER_DIR"
EVENT_TAGS = tuple(sorted(event_tag(t) for t in EVENT_TYPES))
snapshot_log = logging.getLogger("switchboard.snapshot")


def _given_path(value: str) -> Path:
    """A path from the command line, relative to where the command was typed."""
    path = Path(value).expanduser()
    caller = os.environ.get(CALLER_DIR_ENV, "").strip()
    return Path(caller) / path if caller and not path.is_absolute() else path


def _config(args: argparse.Namespace, *, serving: bool = False) -> Config:
    config = load_config(_given_path(args.config) if args.config else None, serving=serving)
    overrides = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = _given_path(args.data_dir)
    return replace(config, **overrides) if overrides else config


def _store(config: Config, *, read_only: bool = False) -> SqliteStore:
    """The log; `read_only` for commands that only read (they then work on a read-only copy too)."""
    return SqliteStore(config.data_dir / DB_NAME, read_only=read_only)


def _projections(store: SqliteStore, config: Config) -> tuple[RoutingView, OperationalStats]:
    """The projections under the configuration the gateway last started with (else the file's)."""
    recorded = last_config(store)
    if recorded is not None:
        view, config_hash = view_of(recorded), recorded.hash
    else:
        settings = routing_settings(config)
        view, config_hash = settings.new_view(), settings.config_record(0.0).hash
    stats = OperationalStats()
    # From the newest snapshot the gateway wrote under that configuration: only the log after it is folded.
    _, skipped = resume(store, view, config_hash, stats)
    for line in skipped:
        snapshot_log.warning("%s", line)
    rebuild(store, view, also=(stats.apply,), types=folded_tags(OperationalStats.FOLDS))
    return view, stats


def _recorded(config: Config) -> ConfigApplied | None:
    """The configuration the gateway last started with on this data dir, without creating a log."""
    if not (config.data_dir / DB_NAME).exists():
        return None
    store = _store(config, read_only=True)
    try:
        return last_config(store)
    finally:
        store.close()


def _read_view(config: Config) -> tuple[RoutingView, OperationalStats]:
    """The projections as of now, for commands that only read."""
    store = _store(config, read_only=True)
    try:
        return _projections(store, config)
    finally:
        store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args, serving=True)
    try:
        trio.run(run_gateway, config)
    except ServeError as exc:  # the data dir is taken, the port is in use: one line, nothing logged
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        done = backup(config.data_dir / DB_NAME, config.data_dir / KEY_FILE, _given_path(args.dest))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = f"{done.master_key} and " if done.master_key else "no master.key (SWITCHBOARD_SECRET_KEY?) and "
    print(
        f"backed up {key}{done.database} ({done.events} events, {done.bytes / 1e6:.1f} MB) in "
        f"{done.seconds:.1f}s; to restore, copy both into an empty data dir"
    )
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    config = _config(args)
    recorded = _recorded(config)
    platforms = set(config.platforms) | set(recorded.platforms if recorded is not None else ())
    if args.platform not in platforms:
        known = ", ".join(sorted(platforms))
        print(f"error: unknown platform '{args.platform}'. Known platforms: {known}", file=sys.stderr)
        return 2
    # Never from argv: it would end up in shell history and in `ps`.
    secret = getpass.getpass(f"{args.platform} API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        print("error: no key on standard input", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    _, vault = open_vault(config.data_dir, config.data_dir / DB_NAME, os.environ)
    store = _store(config)
    try:
        key_id, created = vault.put(args.platform, secret)
        view, _ = _projections(store, config)
        if key_id not in view.health.keys:
            store.append(
                [
                    KeyAdded(
                        ts=time.time(),
                        key_id=key_id,
                        platform=args.platform,
                        label=key_label(secret),
                        source="vault",
                    )
                ]
            )
        print(f"{'added' if created else 'already stored'}: {key_id} ({args.platform}, {key_label(secret)})")
    finally:
        vault.close()
        store.close()
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    config = _config(args)
    view, _ = _read_view(config)
    health = view.health
    now = time.time()
    models = view.catalog.models()
    rows = []
    for info in sorted(health.keys.values(), key=lambda k: (k.platform, k.key_id)):
        cooling = [
            f"{m.id} {until - now:.0f}s"
            for m in models
            if m.platform == info.platform
            if (until := health.cooling_until(info.key_id, m.id, now)) is not None
        ]
        status = info.status + (f" ({info.reason})" if info.reason else "")
        rows.append(
            (
                info.key_id,
                info.platform,
                info.label,
                info.source,
                status,
                "cooling: " + ", ".join(cooling) if cooling else "",
            )
        )
    if not rows:
        print(
            "no keys yet: set e.g. GROQ_API_KEY, add keys to the config, or run 'switchboard keys add groq'"
        )
        return 0
    _table(("KEY", "PLATFORM", "LABEL", "SOURCE", "STATUS", ""), rows)
    return 0


def cmd_keys_toggle(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        view, _ = _projections(store, config)
        if args.key_id not in view.health.keys:
            print(f"error: no key '{args.key_id}' (see 'switchboard keys list')", file=sys.stderr)
            return 2
        event = (
            KeyDisabled(ts=time.time(), key_id=args.key_id, reason=args.reason or "by operator")
            if args.action == "disable"
            else KeyEnabled(ts=time.time(), key_id=args.key_id)
        )
        store.append([event])
    finally:
        store.close()
    print(f"{args.action}d {args.key_id}")
    return 0


def cmd_keys_check(args: argparse.Namespace) -> int:
    config = _config(args)
    results = trio.run(check_keys, config)
    if not results:
        print("no keys to check")
        return 0
    rows = [
        (
            info.key_id,
            info.platform,
            info.label,
            "ok" if checked.ok else "FAILED",
            checked.message or (f"HTTP {checked.status}" if checked.status else ""),
        )
        for info, checked in results
    ]
    _table(("KEY", "PLATFORM", "LABEL", "CHECK", "DETAIL"), rows)
    return 0 if all(checked.ok for _, checked in results) else 1


def cmd_models(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config, read_only=args.action == "list")
    try:
        view, stats = _projections(store, config)
        if args.action in ("enable", "disable"):
            found = [m for m in view.catalog.models() if args.model in (m.ref, m.id)]
            if len(found) != 1:
                print(f"error: '{args.model}' matches {len(found)} models; use platform/id", file=sys.stderr)
                return 2
            store.append(
                [
                    ModelUpdated(
                        ts=time.time(),
                        platform=found[0].platform,
                        model=found[0].id,
                        enabled=args.action == "enable",
                    )
                ]
            )
            print(f"{args.action}d {found[0].ref}")
            return 0
    finally:
        store.close()
    now = time.time()
    rows = []
    for m in view.catalog.models():
        if not (args.all or m.enabled):
            continue
        keys = usable_keys(view, m, now)
        s = stats.models.get(m.ref)
        rows.append(
            (
                m.ref,
                m.task,
                m.pool if m.task == "chat" else "-",  # pools order chat routing only
                str(m.intelligence_rank),
                str(m.context_window or "-"),
                "yes" if m.enabled else "no",
                "yes" if m.fallback else "no",
                str(len(keys)),
                f"{s.successes}/{s.total}" if s else "-",
            )
        )
    _table(("MODEL", "TASK", "POOL", "RANK", "CONTEXT", "ENABLED", "CHAIN", "KEYS", "OK/TOTAL"), rows)
    # Where each platform's keys come from: the variable to set is the first thing a new user needs.
    keyed: dict[str, int] = {}
    for info in view.health.keys.values():
        if info.status == "ok":
            keyed[info.platform] = keyed.get(info.platform, 0) + 1
    # The platforms of the catalog shown (the recorded one when no config file is given).
    platforms = list(dict.fromkeys(m.platform for m in view.catalog.models()))
    print()
    _table(
        ("PLATFORM", "KIND", "KEY VARIABLE", "USABLE KEYS"),
        [
            (
                name,
                config.platforms[name].kind if name in config.platforms else "-",
                env_var_for(name),
                str(keyed.get(name, 0)),
            )
            for name in platforms
        ],
    )
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    config = _config(args)
    view, _ = _read_view(config)
    now = time.time()
    rows = []
    for key, state in reversed(view.sessions.live(now)):
        pin = f"{state.pin[0]}/{state.pin[1]} (key {state.pin[2]})" if state.pin else "-"
        bans = ", ".join(f"{p}: {why}" for p, why in state.bans.items()) or "-"
        rows.append((key[:14], pin, bans, f"{now - state.last_use:.0f}s ago"))
    if not rows:
        print("no live sessions (pins apply in auto-smart, or with an X-Session-Id header)")
        return 0
    _table(("SESSION", "PINNED", "BANNED PLATFORMS", "LAST USE"), rows)
    return 0


class UsageError(Exception):
    """A command line that cannot be carried out as given; the message says what to give instead."""


def _event_types(value: str | None) -> set[str] | None:
    """The event types named in a comma-separated list (None: every type)."""
    if not value:
        return None
    types = {t.strip() for t in value.split(",") if t.strip()}
    unknown = sorted(types - set(EVENT_TAGS))
    if unknown:
        raise UsageError(
            f"unknown event type {', '.join(repr(t) for t in unknown)}; known types: {', '.join(EVENT_TAGS)}"
        )
    return types


def cmd_log_tail(args: argparse.Namespace) -> int:
    types = _event_types(args.type)
    config = _config(args)
    store = _store(config, read_only=True)
    show = _print_json if args.json else _print_line
    try:
        upto = store.last_seq()
        # Where the last n begin, then a page at a time: however large n is, one page is held. A page of
        # some types comes from their index: the last few of a rare type may lie across the whole log.
        start = store.seq_before_last(args.n, upto, types)
        last = (
            store.read_between(start, upto, types, args.n)
            if types is not None and args.n <= PAGE
            else iter_after(store, start, types, upto)
        )
        for seq, event in last:
            show(seq, event)
        sys.stdout.flush()
        if not args.follow:
            return 0
        if store.immutable:
            # Opened as a file nothing writes (a read-only dir without a -shm): later writes are invisible.
            raise UsageError(
                f"log tail --follow cannot watch {store.path}: its directory is read-only to this user, so "
                "what a gateway writes later is invisible here; follow it as the gateway's user"
            )
        version = store.data_version()
        while True:
            time.sleep(0.2)
            if store.data_version() == version:
                continue
            version = store.data_version()
            seen, upto = upto, store.last_seq()
            # Only what was committed up to `upto`: a later event is read on the next round, exactly once.
            for seq, event in iter_after(store, seen, types, upto):
                show(seq, event)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()


def cmd_log_export(args: argparse.Namespace) -> int:
    """Every event (after --since, or from --after on, of --types) as JSON lines, a page at a time."""
    types = _event_types(args.types)
    config = _config(args)
    store = _store(config, read_only=True)
    out = sys.stdout.buffer
    try:
        seq = args.since or 0
        if args.after is not None:
            seq = max(seq, store.first_seq_at(_moment(args.after, "--after")) - 1)
        upto = store.last_seq()  # what a gateway appends meanwhile waits for the next export
        while rows := store.read_raw_after(seq, PAGE, types, upto):
            # The stored JSON is the event with its type first: the seq goes in front, nothing is decoded.
            out.write(b"".join(b'{"seq":%d,%s\n' % (s, data[1:]) for s, data in rows))
            seq = rows[-1][0]
        out.flush()
    finally:
        store.close()
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _moment(value: str, option: str) -> float:
    """A point in time from a duration ago (`30d`, `12h`, `90m`, `2w`) or an ISO date or time (UTC unless it
    names its zone)."""
    text = value.strip()
    if text[:-1].isdigit() and text[-1:] in _UNITS:
        return time.time() - int(text[:-1]) * _UNITS[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {value!r} is neither a duration (30d, 12h, 90m, 2w) nor a date (2026-11-01, "
            "2026-11-01T12:00)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def cmd_log_compact(args: argparse.Namespace) -> int:
    """Remove what no projection folds and replay does not need from before the cutoff (events/retention.py);
    then give the space back (VACUUM) when no gateway holds the data dir."""
    config = _config(args)
    path = config.data_dir / DB_NAME
    if not path.exists():
        raise UsageError(f"no log at {path}: nothing to compact (check --data-dir)")
    store = _store(config, read_only=args.dry_run)
    try:
        cutoff = args.before.strip()
        before = int(cutoff) if cutoff.isdigit() else store.first_seq_at(_moment(cutoff, "--before"))
        before = min(before, store.last_seq())  # the newest event always stays (delete_before says why)
        where = f"before seq {before:,}" + ("" if cutoff.isdigit() else f" (older than {cutoff})")
        if args.dry_run:
            removed = store.count_by_type(before, REMOVABLE)
            _removal_report(f"would remove {removed.total():,} events {where}", removed)
            return 0
        size = store.file_bytes()
        removed = Counter[str]()
        for batch in store.delete_before(before, REMOVABLE):
            removed += batch
        _removal_report(f"removed {removed.total():,} events {where}", removed)
        try:
            with data_dir_lock(config.data_dir):
                store.vacuum()
        except ServeError:
            # VACUUM rewrites the whole file under the write lock: a serving gateway's appends would wait for
            # it past their busy timeout. The deleted rows' pages stay in the file and new events reuse them.
            print(
                f"file: {size:,} bytes, {store.free_bytes():,} of them now free pages that new events "
                f"reuse; not shrunk, as a gateway holds {config.data_dir / LOCK_NAME}: stop it and run "
                "this again to give the space back (VACUUM)"
            )
            return 0
        print(f"file: {size:,} -> {store.file_bytes():,} bytes (VACUUM)")
    finally:
        store.close()
    return 0


def _removal_report(headline: str, removed: Counter[str]) -> None:
    print(headline + (":" if removed else ""))
    for tag, count in sorted(removed.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {tag:<20} {count:>12,}")
    print(
        "kept: every configuration, lifecycle, key, model and session event, and every event a "
        "projection folds"
    )


def _print_json(seq: int, event: Event) -> None:
    print(f'{{"seq":{seq},"event":{encode_event(event).decode()}}}')


def _print_line(seq: int, event: Event) -> None:
    print(event_line(seq, event))


def event_line(seq: int, event: Event) -> str:
    """One line per event: seq, local time, type, request id, the fields that say what happened."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.ts)) + f".{int(event.ts % 1 * 1000):03d}"
    line = f"{seq:>7}  {stamp}  {event_type(event):<19}  {event.request_id or '-':<28}  {_key_fields(event)}"
    return line.rstrip()


def _key_fields(event: Event) -> str:
    if isinstance(event, RouteDecided):
        chosen = f"chose {event.chosen_ref} key={event.chosen_key}" if event.chosen_ref else "chose nothing"
        parts = [
            f"attempt={event.attempt}",
            f"mode={event.input.mode}",
            chosen,
            f"candidates={event.candidates_total or len(event.candidates)}",
            f"excluded={len(event.excluded) + len(event.pool_excluded)}",
        ]
        if event.pin_used:
            parts.append("pin_used=true")
        if event.pin_cleared:
            parts.append(f"pin_cleared={_show(event.pin_cleared)}")
        return " ".join(parts)
    if isinstance(event, ConfigApplied):
        return (
            f"hash={event.hash[:12]} models={len(event.models)} platforms={len(event.platforms)} "
            f"max_attempts={event.max_attempts}"
        )
    parts = []
    skip = {"ts", "request_id"}
    platform, model = getattr(event, "platform", None), getattr(event, "model", None)
    if isinstance(platform, str) and isinstance(model, str):
        parts.append(f"{platform}/{model}")
        skip |= {"platform", "model"}
    for f in _fields(type(event)):
        value = getattr(event, f.name)
        if f.name in skip or value is None or value in ("", ()) or value == f.default:
            continue
        parts.append(f"{f.name}={_show(value)}")
    return " ".join(parts)


@functools.cache
def _fields(cls: type[Event]) -> tuple[msgspec.structs.FieldInfo, ...]:
    # Once per type: msgspec evaluates the annotations again on every call (90% of a long `log tail`).
    return msgspec.structs.fields(cls)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{round(value, 3):.10g}"
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, LimitChanges):  # only the limits it changes; "none" lifts one
        return ",".join(f"{name}:{'none' if v is None else v}" for name, v in value.given())
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' ="') else text


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay recorded decisions under the live config (or a what-if config) and compare."""
    config = _config(args)
    path = config.data_dir / DB_NAME
    store = _store(config, read_only=True)
    try:
        show_progress = sys.stderr.isatty() and store.last_seq() > 50_000
    finally:
        store.close()
    started = time.perf_counter()

    def show(r: Replayed) -> None:
        if show_progress:
            print("\r\033[K", end="", file=sys.stderr)  # the bar's line, drawn again after the next page
        print(explain(r) if args.explain else _change_line(r))

    run = run_replay(
        path,
        routing_settings(config).new_view,  # a what-if; without --config, for decisions the log has no
        # configuration for (logs older than ConfigApplied): the defaults
        request_id=args.request,
        from_seq=args.from_seq,
        to_seq=args.to_seq,
        keep_all=args.explain,
        progress=_progress_bar if show_progress else None,
        parallel=None if args.processes is None else args.processes == 2,
        config_from_log=not args.config,
        on_result=show,
    )
    elapsed = time.perf_counter() - started
    if show_progress:
        print(file=sys.stderr)
    if not run.total:
        print("no recorded decisions match" + (f" request {args.request}" if args.request else ""))
        return 1 if args.request else 0
    changed, total = run.changed, run.total
    if run.unrecorded:
        print(
            f"note: {run.unrecorded} of {total} decisions predate the configuration this log records (an "
            "older gateway wrote them): replayed under the default configuration; pass the --config they "
            "ran with to replay them under it (a what-if for the others)"
        )
    rate = f"{run.events / elapsed:,.0f} events/s" if elapsed > 0 else ""
    summary = (
        f"{total - changed} of {total} decisions reproduced "
        f"({100 * (total - changed) / total:.1f}%); {run.events} events folded, {rate}"
        + (f"; under {run.configs} recorded configurations" if run.configs > 1 and not args.config else "")
        + (f" ({run.processes} processes)" if run.processes > 1 else "")
    )
    if changed and args.config:
        # Under another config differences are the point: what its routing settings would have done.
        print(f"what-if under {args.config}: {changed} of {total} decisions would change; {summary}")
        return 0
    print(summary)
    return 0 if not changed else 1


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = int(width * done / max(total, 1))
    print(
        f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total} events",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _change_line(r: Replayed) -> str:
    rec = r.recorded
    was = f"{rec.chosen_ref} (key {rec.chosen_key})" if rec.chosen_ref else "nothing"
    now_ref, now_key = r.recomputed
    if r.unknown_model:
        now = "an error: the named model is unknown under this config"
    else:
        now = f"{now_ref} (key {now_key})" if now_ref else "nothing"
    return f"{rec.request_id} attempt {rec.attempt} (seq {r.seq}): {was} -> {now}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="OpenAI-compatible LLM gateway")
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML config file (default: none, built-in catalog)")
        p.add_argument("--data-dir", help="where the log, vault and master key live (default ./data)")
        return p

    serve = common(sub.add_parser("serve", help="run the gateway"))
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    bk = common(sub.add_parser("backup", help="copy master.key and the log to DEST, safely while serving"))
    bk.add_argument("dest", help="a new or empty directory")
    bk.set_defaults(func=cmd_backup)

    keys = sub.add_parser("keys", help="provider keys").add_subparsers(dest="action", required=True)
    add = common(keys.add_parser("add", help="store a key (read from stdin), encrypted"))
    add.add_argument("platform")
    add.set_defaults(func=cmd_keys_add)
    common(keys.add_parser("list", help="keys and their status")).set_defaults(func=cmd_keys_list)
    common(
        keys.add_parser("check", help="call each provider with each key (GET /models) and log the result")
    ).set_defaults(func=cmd_keys_check)
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

    common(sub.add_parser("sessions", help="live conversations: pins, bans, last use")).set_defaults(
        func=cmd_sessions
    )

    log = sub.add_parser("log", help="the event log").add_subparsers(dest="action", required=True)
    tail = common(log.add_parser("tail", help="print recent events, one line each (or JSON lines)"))
    tail.add_argument("-n", type=int, default=20, help="how many past events (default 20), after --type")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--type", help="only events of this type (or comma-separated types), e.g. attempt_failed"
    )
    tail.add_argument("--json", action="store_true", help='JSON lines: {"seq": N, "event": {...}}')
    tail.set_defaults(func=cmd_log_tail)
    export = common(log.add_parser("export", help="every event as JSON lines (seq, ts, type, fields)"))
    since = export.add_mutually_exclusive_group()
    since.add_argument("--since", type=int, metavar="SEQ", help="only events after this seq (to resume)")
    since.add_argument(
        "--after", metavar="WHEN", help="only events from then on: a duration ago (30d, 12h) or a date"
    )
    export.add_argument("--types", help="only events of these types, comma-separated")
    export.set_defaults(func=cmd_log_export)
    compact = common(
        log.add_parser(
            "compact",
            help="remove old per-request and decision records no projection needs, and shrink the file",
        )
    )
    compact.add_argument(
        "--before",
        required=True,
        metavar="WHEN",
        help="the cutoff: a duration ago (30d), a date (2026-11-01, UTC), or a log seq (events below it)",
    )
    compact.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    compact.set_defaults(func=cmd_log_compact)
    rp = sub.add_parser("replay", help="re-run recorded routing decisions and compare (or what-if)")
    rp.add_argument(
        "--config",
        help="what-if: re-decide every decision under this file's configuration (default: each under the "
        "configuration the log recorded when it was made)",
    )
    rp.add_argument("--data-dir", help="where the log lives (default ./data, or the --config file's)")
    rp.add_argument("--request", help="only the decisions of this request id (X-Request-Id)")
    rp.add_argument("--from", dest="from_seq", type=int, help="first log seq")
    rp.add_argument("--to", dest="to_seq", type=int, help="last log seq")
    rp.add_argument("--explain", action="store_true", help="print why each model was or was not chosen")
    rp.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        help="1: stay in one process; 2: split a log range across two (Linux); "
        "default: two for ranges of 20,000 events or more",
    )
    rp.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("enable", "disable") and args.command == "models" and not args.model:
        print(
            "error: name the model, e.g. 'switchboard models disable groq/llama-3.1-8b-instant'",
            file=sys.stderr,
        )
        return 2
    try:
        status: int = args.func(args)
        return status
    except (ConfigError, SecretsError, StoreDamaged, StoreUnwritable, SchemaVersionError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `switchboard log tail | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
