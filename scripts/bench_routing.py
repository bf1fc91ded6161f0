"""Routing benchmark: the cost of one `decide` at 100 models x 3 keys, and replay speed over a log.

A synthetic but realistic history: 100 models on 10 platforms with 3 keys each, requests decided by the
real `decide`, outcomes (successes with latency/TTFB/tokens, 5xx, 429s, an invalid key) appended as the
live gateway would, including `route_decided` events. Then:
- decide: microseconds per call per mode, on the view at the end of that history;
- replay: every recorded decision replayed from the SQLite log; events folded per second, and that 100%
  reproduce.

    .venv/bin/python scripts/bench_routing.py [--requests N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from events.catalog import CatalogModel  # noqa: E402
from events.decide import decide  # noqa: E402
from events.policy import RoutingPolicy  # noqa: E402
from events.quotas import Limits  # noqa: E402
from events.sqlite_store import SqliteStore  # noqa: E402
from events.types import (  # noqa: E402
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    KeyAdded,
    KeyInvalidated,
    RequestCompleted,
    RequestReceived,
    RouteInput,
)
from events.view import RoutingView  # noqa: E402
from service.replay_runner import run_replay  # noqa: E402

POOLS = ("fast", "balanced", "smart")
MODES = ("auto", "auto-fast", "auto-smart")


def catalog(models: int = 100, platforms: int = 10) -> list[CatalogModel]:
    return [
        CatalogModel(
            platform=f"p{i % platforms}",
            id=f"model-{i}",
            pool=POOLS[i % 3],
            fallback=True,
            enabled=True,
            context_window=131072,
            intelligence_rank=1 + i % 30,
            speed_rank=1 + i % 10,
            limits=Limits(rpm=1000, rpd=100000, tpm=10_000_000, tpd=None),
        )
        for i in range(models)
    ]


def simulate(store: SqliteStore, requests: int, seed: int = 7) -> tuple[RoutingView, float]:
    """Run `requests` decisions with outcomes through a live-like fold; return the view and the final time."""
    models = catalog()
    view = RoutingView(models, RoutingPolicy())
    rng = random.Random(seed)
    now = 1_800_000_000.0
    batch: list[Event] = []

    def emit(event: Event) -> None:
        batch.append(event)

    def flush() -> None:
        if batch:
            seqs = store.append(batch)
            for seq, event in zip(seqs, batch, strict=True):
                view.apply(seq, event)
            batch.clear()

    for p in range(10):
        for k in range(3):
            emit(KeyAdded(ts=now, key_id=f"p{p}.k{k}", platform=f"p{p}", label="…abcd", source="env"))
    flush()
    bad_model = {m.ref for m in models[::17]}
    for r in range(requests):
        rid = f"req_{r:08d}"
        mode = MODES[r % 3]
        route = RouteInput(mode=mode, requested=(mode,), est_tokens=200, reserve_tokens=1000)
        emit(
            RequestReceived(
                ts=now, request_id=rid, model=mode, stream=False, messages=1, est_input_tokens=200
            )
        )
        for attempt in range(1, 4):
            flush()  # a decision sees what was committed before it
            seed = rng.getrandbits(63)
            d = decide(view, route, now, random.Random(seed))
            emit(
                d.record(
                    ts=now,
                    request_id=rid,
                    attempt=attempt,
                    seed=seed,
                    view_seq=view.seq,
                    now=now,
                    route=route,
                )
            )
            if d.chosen is None or d.chosen_key is None:
                break
            m, key = d.chosen, d.chosen_key
            base = {
                "request_id": rid,
                "attempt": attempt,
                "platform": m.platform,
                "model": m.id,
                "key_id": key,
            }
            emit(AttemptStarted(ts=now, reserved_tokens=1200, **base))
            now += rng.uniform(0.05, 0.4)
            roll = rng.random()
            if m.ref in bad_model and roll < 0.5:
                emit(AttemptFailed(ts=now, kind="server_error", status=503, message="overloaded", **base))
            elif roll < 0.03:
                emit(AttemptFailed(ts=now, kind="rate_limited", status=429, retry_after_s=20, **base))
            elif roll < 0.031 and r > requests // 2:
                emit(AttemptFailed(ts=now, kind="auth", status=401, **base))
                emit(KeyInvalidated(ts=now, key_id=key, status=401))
            else:
                ttfb = rng.uniform(150, 1500)
                emit(
                    AttemptSucceeded(
                        ts=now,
                        latency_ms=ttfb + 800,
                        ttfb_ms=ttfb,
                        input_tokens=200,
                        output_tokens=rng.randint(50, 400),
                        **base,
                    )
                )
                emit(
                    RequestCompleted(
                        ts=now,
                        request_id=rid,
                        outcome="ok",
                        status=200,
                        attempts=attempt,
                        latency_ms=ttfb + 800,
                        platform=m.platform,
                        model=m.id,
                    )
                )
                break
            route = RouteInput(
                mode=route.mode,
                requested=route.requested,
                est_tokens=200,
                reserve_tokens=1000,
                tried=(*route.tried, (key, m.ref)),
            )
        now += rng.uniform(0.0, 0.2)
        if r % 50 == 49:
            flush()
    flush()
    return view, now


def bench_decide(view: RoutingView, now: float, rounds: int) -> dict[str, float]:
    out = {}
    for mode in MODES:
        route = RouteInput(mode=mode, requested=(mode,), est_tokens=200, reserve_tokens=1000)
        for i in range(50):  # warm the caches the way a live gateway has them warm
            decide(view, route, now, random.Random(i))
        start = time.perf_counter()
        for i in range(rounds):
            decide(view, route, now, random.Random(i))
        out[mode] = (time.perf_counter() - start) / rounds * 1e6
    return out


def run(requests: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="switchboard-routing-") as tmp:
        path = Path(tmp) / "log.db"
        store = SqliteStore(path)
        try:
            t0 = time.perf_counter()
            view, now = simulate(store, requests)
            simulated_s = time.perf_counter() - t0
            decide_us = bench_decide(view, now, rounds)
            events = store.last_seq()
            # Like `switchboard replay`, which starts without the live view this process simulated with.
            del view
            gc.collect()
        finally:
            store.close()
        # The whole of `switchboard replay`: select the decisions, fold the log, decide each again.
        runs = {}
        for parallel in (False, True):
            t0 = time.perf_counter()
            run = run_replay(path, lambda: RoutingView(catalog(), RoutingPolicy()), parallel=parallel)
            runs[parallel] = (time.perf_counter() - t0, run)
    (replay_s, serial), (parallel_s, forked) = runs[False], runs[True]
    reproduced = serial.total - serial.changed
    return {
        "models": 100,
        "keys": 30,
        "history_requests": requests,
        "log_events": events,
        "simulate_s": round(simulated_s, 2),
        "decide_us": {mode: round(us, 1) for mode, us in decide_us.items()},
        "replay_decisions": serial.total,
        "replay_reproduced": reproduced,
        "replay_s": round(replay_s, 3),
        "replay_events_per_s": round(events / replay_s) if replay_s else None,
        "replay_parallel_reproduced": forked.total - forked.changed,
        "replay_parallel_processes": forked.processes,
        "replay_parallel_s": round(parallel_s, 3),
        "replay_parallel_events_per_s": round(events / parallel_s) if parallel_s else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000, help="requests in the synthetic history")
    parser.add_argument("--rounds", type=int, default=2000, help="decide calls timed per mode")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    requests, rounds = (2000, 300) if args.quick else (args.requests, args.rounds)
    report = run(requests, rounds)
    print_report(report)
    all_reproduced = report["replay_decisions"] == report["replay_reproduced"]
    return 0 if all_reproduced and report["replay_parallel_reproduced"] == report["replay_decisions"] else 1


def print_report(r: dict) -> None:
    print(
        f"\nrouting: {r['models']} models x 3 keys, history of {r['history_requests']} requests "
        f"({r['log_events']} events)"
    )
    for mode, us in r["decide_us"].items():
        print(f"  decide {mode:<11} {us:8.1f} us per decision")
    print(
        f"  replay, one process: {r['replay_reproduced']}/{r['replay_decisions']} decisions reproduced, "
        f"{r['log_events']} events in {r['replay_s']} s = {r['replay_events_per_s']:,} events/s"
    )
    print(
        f"  replay, {r['replay_parallel_processes']} processes: {r['replay_parallel_reproduced']}/"
        f"{r['replay_decisions']} reproduced, {r['replay_parallel_s']} s = "
        f"{r['replay_parallel_events_per_s']:,} events/s"
    )


if __name__ == "__main__":
    sys.exit(main())
