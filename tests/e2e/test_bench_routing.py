"""scripts/bench's routing part still runs against the replay API (it broke once, unseen, when replay
stopped keeping its results): a small run reproduces every decision, in one process and in two."""

from __future__ import annotations

import bench_routing


def test_the_routing_benchmark_runs_and_every_replay_reproduces() -> None:
    report = bench_routing.run(300, 20)
    assert report["replay_decisions"] > 300
    assert report["replay_reproduced"] == report["replay_parallel_reproduced"] == report["replay_decisions"]
