"""Long-log benchmark: start-up and `switchboard keys list` on a log of millions of events, without a
snapshot of the projections and with one (events/snapshot.py), each in its own process for its peak RSS.

The log is written straight into SQLite with apsw (encoded events in bulk, one transaction per chunk), as
the gateway would have written it over days: per request `request_received`, `route_decided` (a few
scored candidates and exclusions), `attempt_started`, `attempt_succeeded` or `attempt_failed` (429s, 5xx,
stalls, with a second attempt after most failures), `request_completed`; some conversations pinned; key
checks, an invalidated and a disabled key, a few restarts. 40 models on 8 platforms, 3 keys each.

Reported: the time to write a snapshot at the log's end (copy, encode, write: the pause a background
snapshot costs the gateway) and its size; start-up (the supervisor's `load_projections`) and `keys list`
(the real command, a new process: interpreter and imports included) without a snapshot, with one at the
log's end, and with one `--tail` events before it (the most a background snapshot every that many events
leaves to fold).

    .venv/bin/python scripts/bench_log.py [--events N] [--tail N] [--dir D] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402

from actors.request import Deadlines  # noqa: E402
from actors.supervisor import Settings, load_projections  # noqa: E402
from events import snapshot  # noqa: E402
from events.catalog import CatalogModel  # noqa: E402
from events.op_stats import OperationalStats  # noqa: E402
from events.policy import RoutingPolicy  # noqa: E402
from events.quotas import Limits  # noqa: E402
from events.snapshot import LogNotes  # noqa: E402
from events.sqlite_store import SqliteStore  # noqa: E402
from events.types import (  # noqa: E402
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    Excluded,
    ExclusionCode,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyInvalidated,
    RequestCompleted,
    RequestReceived,
    RouteDecided,
    RouteInput,
    ScoredCandidate,
    ServiceStarted,
    ServiceStopped,
    SessionPinned,
    encode_event,
    event_type,
)
from events.view import folded_tags, rebuild  # noqa: E402
from service.server import DB_NAME  # noqa: E402

PLATFORMS = 8
MODELS = 40
KEYS_PER_PLATFORM = 3
POOLS = ("fast", "balanced", "smart")
MODES = ("auto", "auto-fast", "auto-smart")
T0 = 1_790_000_000.0
PER_DAY = 100_000  # requests a day (the figure): a 5M-event log is about ten days


def settings() -> Settings:
    models = [
        CatalogModel(
            platform=f"p{i % PLATFORMS}",
            id=f"model-{i}",
            pool=POOLS[i % 3],
            fallback=True,
            enabled=True,
            context_window=131072,
            intelligence_rank=1 + i % 30,
            speed_rank=1 + i % 10,
            limits=Limits(rpm=30, rpd=14_400, tpm=60_000) if i % 4 == 0 else Limits(),
        )
        for i in range(MODELS)
    ]
    return Settings(
        models=models,
        keys=[],
        deadlines=Deadlines(first_byte_s=30.0, stall_s=45.0, keepalive_s=10.0),
        max_attempts=3,
        policy=RoutingPolicy(),
        version="bench",
        rolling_day_platforms=frozenset({"p3"}),
        platforms=frozenset(f"p{p}" for p in range(PLATFORMS)),
    )


def generate(path: Path, events: int, seed: int = 11) -> tuple[int, float]:
    """Write about `events` events; returns how many and the seconds it took."""
    started = time.perf_counter()
    SqliteStore(path).close()  # the schema, as the gateway creates it
    db = apsw.Connection(str(path))
    db.execute("PRAGMA synchronous = OFF")
    s = settings()
    models = list(s.models)
    rng = random.Random(seed)
    keys = [(f"p{p}.k{k}", f"p{p}") for p in range(PLATFORMS) for k in range(KEYS_PER_PLATFORM)]
    rows: list[tuple[float, str, str | None, bytes]] = []
    written = 0

    def emit(event: Event) -> None:
        rows.append((event.ts, event_type(event), event.request_id, encode_event(event)))

    def flush() -> None:
        nonlocal written
        with db:
            db.executemany("INSERT INTO events (ts, type, request_id, data) VALUES (?, ?, ?, ?)", rows)
        written += len(rows)
        rows.clear()

    def start(ts: float) -> None:
        emit(s.config_record(ts))
        emit(ServiceStarted(ts=ts, version="bench", events_replayed=written))

    now = T0
    start(now)
    for key_id, platform in keys:
        emit(KeyAdded(ts=now, key_id=key_id, platform=platform, label="...abcd", source="env"))
    gap = 86400.0 / PER_DAY
    r = 0
    while written + len(rows) < events:
        r += 1
        now += rng.expovariate(1 / gap)
        rid = f"req_{r:010d}"
        mode = MODES[r % 3]
        session = f"c-{rng.randrange(5000):08x}" if r % 5 == 0 else None
        emit(
            RequestReceived(
                ts=now, request_id=rid, model=mode, stream=r % 2 == 0, messages=3, est_input_tokens=420
            )
        )
        tried: list[tuple[str, str]] = []
        outcome, attempts, chosen = "error", 0, None
        for attempt in range(1, 3):
            attempts = attempt
            picks = rng.sample(models, 6)
            m = picks[0]
            key_id = f"{m.platform}.k{rng.randrange(KEYS_PER_PLATFORM)}"
            route = RouteInput(
                mode=mode,
                requested=(mode,),
                est_tokens=420,
                reserve_tokens=1420,
                tried=tuple(tried),
                session=session,
                use_pin=mode == "auto-smart",
            )
            emit(
                RouteDecided(
                    ts=now,
                    request_id=rid,
                    attempt=attempt,
                    seed=rng.getrandbits(63),
                    view_seq=written + len(rows),
                    now=now,
                    input=route,
                    candidates=tuple(
                        ScoredCandidate(
                            ref=p.ref,
                            score=rng.random(),
                            theta=rng.random(),
                            speed=rng.random() * 0.3,
                            ttfb=0.1,
                            intelligence=0.05,
                            penalty=0.0,
                            pool=p.pool,
                        )
                        for p in picks[:5]
                    ),
                    excluded=(
                        Excluded(
                            ref=picks[5].ref,
                            reason="quota: 30/30 requests this minute",
                            until=now + 20,
                            code=ExclusionCode.QUOTA,
                        ),
                    ),
                    chosen_ref=m.ref,
                    chosen_key=key_id,
                    candidates_total=MODELS - 6,
                )
            )
            base = {
                "request_id": rid,
                "attempt": attempt,
                "platform": m.platform,
                "model": m.id,
                "key_id": key_id,
            }
            emit(AttemptStarted(ts=now, reserved_tokens=1420, session=session, **base))  # type: ignore[arg-type]
            now += rng.uniform(0.2, 3.0)
            roll = rng.random()
            if roll < 0.04:
                retry = rng.choice([None, 20.0])
                emit(AttemptFailed(ts=now, kind="rate_limited", status=429, retry_after_s=retry, **base))  # type: ignore[arg-type]
            elif roll < 0.07:
                emit(AttemptFailed(ts=now, kind="server_error", status=503, message="overloaded", **base))  # type: ignore[arg-type]
            elif roll < 0.08:
                emit(AttemptFailed(ts=now, kind="stall_pre", latency_ms=30000.0, **base))  # type: ignore[arg-type]
            else:
                ttfb = rng.uniform(150, 1500)
                emit(
                    AttemptSucceeded(
                        ts=now,
                        latency_ms=ttfb + rng.uniform(300, 4000),
                        ttfb_ms=ttfb,
                        input_tokens=420,
                        output_tokens=rng.randrange(20, 900),
                        streamed=r % 2 == 0,
                        exhausted_for_s=20.0 if roll > 0.998 else None,
                        **base,  # type: ignore[arg-type]
                    )
                )
                outcome, chosen = "ok", m
                if session is not None and mode == "auto-smart":
                    emit(
                        SessionPinned(ts=now, session=session, platform=m.platform, model=m.id, key_id=key_id)
                    )
                break
            tried.append((key_id, m.ref))
        emit(
            RequestCompleted(
                ts=now,
                request_id=rid,
                outcome=outcome,  # type: ignore[arg-type]
                status=200 if outcome == "ok" else 502,
                attempts=attempts,
                latency_ms=1500.0,
                platform=chosen.platform if chosen else None,
                model=chosen.id if chosen else None,
            )
        )
        if r % 1500 == 0:  # the key checker, every few minutes
            for key_id, _ in keys[::6]:
                emit(KeyChecked(ts=now, key_id=key_id, ok=True, status=200))
        if r == 50_000:
            emit(KeyInvalidated(ts=now, key_id="p5.k2", status=401, message="invalid api key"))
            emit(KeyDisabled(ts=now, key_id="p6.k1", reason="by operator"))
        if r % 300_000 == 0:  # a restart now and then
            emit(ServiceStopped(ts=now))
            start(now)
        if len(rows) >= 50_000:
            flush()
    emit(ServiceStopped(ts=now))
    flush()
    db.close()
    return written, time.perf_counter() - started


def child_start(data: Path) -> None:
    store = SqliteStore(data / DB_NAME)
    loaded = load_projections(store, settings())
    store.close()
    print(json.dumps({"seconds": loaded.seconds, "replayed": loaded.replayed, "from": loaded.snapshot_seq}))


def child_snapshot(data: Path, tail: int) -> None:
    """A snapshot `tail` events before the log's end, timed as the gateway pays for it."""
    store = SqliteStore(data / DB_NAME)
    s = settings()
    view, notes = s.new_view(), LogNotes()
    op_stats = OperationalStats()
    rebuild(
        store,
        view,
        upto=store.last_seq() - tail,
        also=(op_stats.apply, notes.apply),
        types=folded_tags(OperationalStats.FOLDS, LogNotes.FOLDS),
    )
    started = time.perf_counter()
    taken = snapshot.take(view, op_stats, notes, s.config_record(0.0).hash, time.time())
    copied = time.perf_counter()
    data_bytes = snapshot.encode(taken)
    encoded = time.perf_counter()
    store.save_snapshot(taken.seq, data_bytes, snapshot.KEEP)
    saved = time.perf_counter()
    store.close()
    print(
        json.dumps(
            {
                "seq": taken.seq,
                "bytes": len(data_bytes),
                "copy_ms": (copied - started) * 1000,
                "encode_ms": (encoded - copied) * 1000,
                "write_ms": (saved - encoded) * 1000,
            }
        )
    )


def run(argv: list[str]) -> tuple[dict[str, object], float, int]:
    """Run a child process; returns what it printed (JSON, if any), its wall time and peak RSS (KB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {proc.returncode}")
    last = out.decode().strip().splitlines()[-1] if out.strip() else ""
    return (json.loads(last) if last.startswith("{") else {}), wall, usage.ru_maxrss


def clear_snapshots(data: Path) -> None:
    db = apsw.Connection(str(data / DB_NAME))
    db.execute("DELETE FROM snapshots")
    db.close()


def measure(data: Path, label: str) -> None:
    me = [sys.executable, str(Path(__file__).resolve())]
    result, wall, rss = run([*me, "--child-start", str(data)])
    print(
        f"  {label:<26} start-up {result['seconds']:6.2f}s (process {wall:5.2f}s, "
        f"peak RSS {rss / 1024:5.0f} MB), {result['replayed']:,} events folded"
    )
    cli = [sys.executable, "-m", "service.cli", "keys", "list", "--data-dir", str(data)]
    _, wall, rss = run(cli)
    print(f"  {'':<26} keys list {wall:5.2f}s (the whole command, peak RSS {rss / 1024:5.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--tail", type=int, default=100_000, help="events after the older snapshot")
    parser.add_argument("--dir", help="data dir to use (kept); a log already there is reused")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument("--child-start", help=argparse.SUPPRESS)
    parser.add_argument("--child-snapshot", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_start:
        return child_start(Path(args.child_start))
    if args.child_snapshot:
        return child_snapshot(Path(args.child_snapshot), args.tail)

    data = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_log_"))
    data.mkdir(parents=True, exist_ok=True)
    db = data / DB_NAME
    try:
        if db.exists():
            print(f"reusing {db}")
        else:
            count, seconds = generate(db, args.events)
            print(f"generated {count:,} events in {seconds:.1f}s ({db.stat().st_size / 2**20:,.0f} MB)")
        clear_snapshots(data)
        measure(data, "no snapshot")

        me = [sys.executable, str(Path(__file__).resolve())]
        for tail, label in ((args.tail, f"snapshot {args.tail:,} back"), (0, "snapshot at the end")):
            taken, _, _ = run([*me, "--child-snapshot", str(data), "--tail", str(tail)])
            print(
                f"snapshot at seq {taken['seq']:,}: {int(taken['bytes']) / 2**20:.1f} MB; "  # type: ignore[call-overload]
                f"copy {taken['copy_ms']:.0f} ms, encode {taken['encode_ms']:.0f} ms, "
                f"write {taken['write_ms']:.0f} ms"
            )
            measure(data, label)
            clear_snapshots(data)
    finally:
        if not (args.dir or args.keep):
            shutil.rmtree(data, ignore_errors=True)
        elif not args.dir:
            print(f"kept {data}")


if __name__ == "__main__":
    main()
