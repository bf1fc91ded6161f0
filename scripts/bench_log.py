"""Long-log benchmark: start-up and `switchboard keys list` on a log of millions of events, without a
snapshot of the projections and with one (events/snapshot.py), each in its own process for its peak RSS.

The log is the one `scripts/gen_log.py` writes (the real decisions of a gateway in miniature, as days of
traffic), and the projections are those of its configuration.

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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402
import gen_log  # noqa: E402  (beside this script)

from actors.request import Deadlines  # noqa: E402
from actors.supervisor import Settings, load_projections  # noqa: E402
from events import snapshot  # noqa: E402
from events.config_applied import last_config  # noqa: E402
from events.op_stats import OperationalStats  # noqa: E402
from events.policy import RoutingPolicy  # noqa: E402
from events.snapshot import LogNotes  # noqa: E402
from events.sqlite_store import SqliteStore  # noqa: E402
from events.view import folded_tags, rebuild  # noqa: E402
from service.server import DB_NAME  # noqa: E402


def settings() -> Settings:
    """The settings the generated log was written under (gen_log's catalog and platforms)."""
    return Settings(
        models=gen_log.MODELS,
        keys=[],
        deadlines=Deadlines(first_byte_s=30.0, stall_s=45.0, keepalive_s=10.0),
        max_attempts=3,
        policy=RoutingPolicy(),
        version="bench",
        platforms=frozenset(gen_log.PLATFORMS),
    )


def record_settings(db: Path) -> None:
    """What a gateway starting on this log with `settings()` records first: its configuration, which the
    read-only commands then read (and whose hash a snapshot must carry to fit)."""
    store = SqliteStore(db)
    try:
        record = settings().config_record(time.time())
        recorded = last_config(store)
        if recorded is None or recorded.hash != record.hash:
            store.append([record])
    finally:
        store.close()


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
            started = time.perf_counter()
            count = gen_log.generate(db, args.events)
            seconds = time.perf_counter() - started
            print(f"generated {count:,} events in {seconds:.1f}s ({db.stat().st_size / 2**20:,.0f} MB)")
        record_settings(db)
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
