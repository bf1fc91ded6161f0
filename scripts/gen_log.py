"""Write a long, realistic event log for measuring the log tools (replay, log tail / export, compact).

    .venv/bin/python scripts/gen_log.py --events 5000000 --data-dir /tmp/big   # -> /tmp/big/switchboard.db

A gateway in miniature: the configuration record, keys and a start, then requests on five platforms (two
keys each, twelve models): received, decided on a live view that lags the log by a batch (the real `decide`,
recorded as the gateway records it, so `switchboard replay` reproduces every decision), attempted, answered
or failed (429s with Retry-After, 5xx, connect errors, stalls; then decided again), completed; sessions
pinned, a client now and then gone, a restart now and then. Rows go in by bulk inserts in large
transactions, not through the store's per-batch appends: a 5M-event log takes minutes, not an hour.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import apsw
import msgspec

from events.catalog import CatalogModel
from events.config_applied import record_config
from events.decide import UnknownModel, decide
from events.policy import RoutingPolicy
from events.quotas import Limits
from events.sqlite_store import SqliteStore
from events.store import Entry
from events.types import (
    AnyEvent,
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ClientDisconnected,
    KeyAdded,
    RequestCompleted,
    RequestReceived,
    RouteInput,
    ServiceStarted,
    ServiceStopped,
    SessionPinned,
    StreamStalled,
    encode_event,
    event_type,
)
from events.view import RoutingView, SessionPolicy

DB_NAME = "switchboard.db"  # as service/server.py names it (not imported: this script needs no service)
PLATFORMS = ("groq", "cerebras", "gemini", "openrouter", "mistral")
KEYS = [(f"{p}.k{i}", p) for p in PLATFORMS for i in (1, 2)]
MODELS = (
    CatalogModel("groq", "llama-3.3-70b", "balanced", True, True, 128_000, 3, 2, Limits(rpm=30, tpd=100_000)),
    CatalogModel("groq", "llama-3.1-8b", "fast", True, True, 128_000, 9, 1, Limits(rpm=30)),
    CatalogModel("cerebras", "qwen-3-235b", "smart", True, True, 64_000, 1, 3, Limits(rpm=30, rpd=1_000)),
    CatalogModel("cerebras", "llama-8b", "fast", True, True, 8_000, 10, 1),
    CatalogModel("gemini", "flash", "balanced", True, True, 1_000_000, 4, 4, Limits(rpd=250)),
    CatalogModel("gemini", "flash-lite", "fast", True, True, 1_000_000, 7, 2, Limits(rpd=1_000)),
    CatalogModel("gemini", "pro", "smart", True, True, 1_000_000, 2, 8, Limits(rpd=50)),
    CatalogModel("openrouter", "owl-alpha", "smart", True, True, 256_000, 2, 6),
    CatalogModel("openrouter", "deepseek-v3", "balanced", True, True, 64_000, 3, 7),
    CatalogModel("mistral", "small", "balanced", True, True, 32_000, 6, 3, Limits(rpm=60)),
    CatalogModel("mistral", "large", "smart", True, True, 128_000, 3, 6, Limits(rpm=10)),
    CatalogModel("mistral", "codestral", "balanced", True, True, 256_000, 5, 4),
)
ROUTES: list[tuple[str, ...]] = [*[("auto",)] * 6, ("auto-smart",), ("auto-fast",), ("gemini/flash",)]
FAILURES = [("server_error", 503), ("connect", None), ("rate_limited", 429), ("stall_pre", None)]
T0 = 1_760_000_000.0
INSERT = "INSERT INTO events (seq, ts, type, request_id, data) VALUES (?, ?, ?, ?, ?)"


def generate(path: Path, events: int, seed: int = 1) -> int:
    """Write about `events` events (a request is never cut short) to a new log at `path`; returns how many."""
    if path.exists():
        raise SystemExit(f"{path} exists: give a new --data-dir")
    SqliteStore(path).close()  # the schema, by the store's own migrations
    db = apsw.Connection(str(path))
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")  # a scratch file: a crash means generating it again
    rng = random.Random(seed)
    policy = RoutingPolicy()
    live = RoutingView(MODELS, policy, frozenset(), SessionPolicy())
    rows: list[tuple[int, float, str, str | None, bytes]] = []
    unpublished: list[Entry] = []
    seq = 0

    def append(event: AnyEvent) -> None:
        nonlocal seq
        seq += 1
        rows.append((seq, event.ts, event_type(event), event.request_id, encode_event(event)))
        unpublished.append((seq, event))

    def publish() -> None:  # the log writer's committed batch reaching the routing view
        live.apply_all(unpublished)
        unpublished.clear()

    def flush() -> None:
        with db:
            db.executemany(INSERT, rows)
        rows.clear()

    now = T0
    append(
        record_config(
            ts=now,
            models=MODELS,
            policy=policy,
            sessions=SessionPolicy(),
            platforms=PLATFORMS,
            max_attempts=3,
        )
    )
    for key, platform in KEYS:
        append(KeyAdded(ts=now, key_id=key, platform=platform, label="…" + key[-4:], source="config"))
    append(ServiceStarted(ts=now, version="gen"))
    publish()
    started = time.perf_counter()
    r = 0
    while seq < events:
        r += 1
        now += rng.expovariate(1.0)  # about a request a second: a 5M-event log spans about twelve days
        if rng.random() < 0.5:
            publish()
        if r % 200_000 == 0:  # a restart now and then
            append(ServiceStopped(ts=now))
            append(ServiceStarted(ts=now + 1, version="gen", events_replayed=seq))
            publish()
        now = _request(rng, live, append, publish, f"req_{r:024x}", now)
        if len(rows) >= 50_000:
            flush()
            print(f"\r{seq:,} events", end="", file=sys.stderr, flush=True)
    flush()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"\r{seq:,} events in {time.perf_counter() - started:.0f} s: {path}", file=sys.stderr)
    return seq


class _Attempt(TypedDict):  # the fields every event of one attempt carries
    request_id: str
    attempt: int
    platform: str
    model: str
    key_id: str


def _request(
    rng: random.Random,
    live: RoutingView,
    append: Callable[[AnyEvent], None],
    publish: Callable[[], None],
    rid: str,
    now: float,
) -> float:
    """One request's events; returns when it ended (requests follow one another: time never runs back)."""
    requested = rng.choice(ROUTES)
    session = rng.choice([None, None, f"s{rng.randrange(500)}"])
    mode = requested[0] if requested[0].startswith("auto") else "auto"
    est = rng.choice([30, 400, 2_000, 12_000])
    route = RouteInput(
        mode=mode,
        requested=requested,
        est_tokens=est,
        reserve_tokens=1_000,
        session=session,
        use_pin=mode == "auto-smart",
    )
    append(
        RequestReceived(
            ts=now,
            request_id=rid,
            model=requested[0],
            stream=rng.random() < 0.7,
            messages=3,
            est_input_tokens=est,
        )
    )
    tried: list[tuple[str, str]] = []
    for attempt in range(1, 4):
        route_now = msgspec.structs.replace(route, tried=tuple(tried))
        decision_seed = rng.getrandbits(63)
        try:
            d = decide(live, route_now, now, random.Random(decision_seed))
        except UnknownModel:
            break
        append(
            d.record(
                ts=now,
                request_id=rid,
                attempt=attempt,
                seed=decision_seed,
                view_seq=live.seq,
                now=now,
                route=route_now,
                max_excluded=20,
            )
        )
        if d.chosen is None or d.chosen_key is None:
            append(
                RequestCompleted(
                    ts=now,
                    request_id=rid,
                    outcome="error",
                    status=503,
                    attempts=attempt - 1,
                    latency_ms=1.0,
                    error="no model available",
                )
            )
            return now
        m, key = d.chosen, d.chosen_key
        base = _Attempt(request_id=rid, attempt=attempt, platform=m.platform, model=m.id, key_id=key)
        append(AttemptStarted(ts=now, reserved_tokens=est + 1_000, session=session, **base))
        if rng.random() < 0.3:
            publish()
        now += rng.uniform(0.2, 4.0)
        roll = rng.random()
        if roll < 0.85:
            ttfb = rng.uniform(80, 1500)
            append(
                AttemptSucceeded(
                    ts=now,
                    latency_ms=ttfb + rng.uniform(100, 6000),
                    ttfb_ms=ttfb,
                    input_tokens=est,
                    output_tokens=rng.randrange(1, 1200),
                    streamed=True,
                    **base,
                )
            )
            if session is not None:
                append(
                    SessionPinned(
                        ts=now, request_id=rid, session=session, platform=m.platform, model=m.id, key_id=key
                    )
                )
            append(
                RequestCompleted(
                    ts=now,
                    request_id=rid,
                    outcome="ok",
                    status=200,
                    attempts=attempt,
                    latency_ms=rng.uniform(300, 7000),
                    platform=m.platform,
                    model=m.id,
                )
            )
            return now
        if roll < 0.87:
            append(ClientDisconnected(ts=now, request_id=rid, platform=m.platform, model=m.id))
            append(AttemptFailed(ts=now, kind="client_abort", **base))
            append(
                RequestCompleted(
                    ts=now,
                    request_id=rid,
                    outcome="client_abort",
                    status=499,
                    attempts=attempt,
                    latency_ms=900.0,
                )
            )
            return now
        kind, status = rng.choice(FAILURES)
        if kind == "stall_pre":
            append(
                StreamStalled(
                    ts=now,
                    request_id=rid,
                    platform=m.platform,
                    model=m.id,
                    key_id=key,
                    phase="pre",
                    silent_s=30.0,
                )
            )
        append(
            AttemptFailed(
                ts=now,
                kind=kind,
                status=status,
                message=f"upstream said {status}" if status else "",
                retry_after_s=rng.choice([None, 20.0, 60.0]) if kind == "rate_limited" else None,
                latency_ms=rng.uniform(50, 3000),
                **base,
            )
        )
        tried.append((key, m.ref))
    append(
        RequestCompleted(
            ts=now,
            request_id=rid,
            outcome="error",
            status=502,
            attempts=len(tried),
            latency_ms=5000.0,
            error="every attempt failed",
        )
    )
    return now


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--data-dir", type=Path, required=True, help="a new directory for the log")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    generate(args.data_dir / DB_NAME, args.events, args.seed)


if __name__ == "__main__":
    main()
