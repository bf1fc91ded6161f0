"""scripts/bench's protocol part still runs every protocol's handler end to end (not a timed test: it checks
that the benchmark measures what it says, each protocol answering 200 in its own form)."""

from __future__ import annotations

import bench_protocols


def test_the_protocol_benchmark_runs_every_protocol_stream_and_not() -> None:
    report = bench_protocols.run(20, 1)
    rows = {(p["protocol"], p["stream"]) for p in report["protocols"]}
    assert rows == {(name, stream) for name in ("chat", "responses", "messages") for stream in (False, True)}
    assert all(p["edge_us"] > 0 for p in report["protocols"])
