"""The analytics fold: counts per window, percentiles within 5%, pruning, sparse cells, any fold order."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from events.analytics import BINS, Analytics, bin_of, percentiles, value_of
from events.types import AttemptFailed, AttemptSucceeded, Event, RequestCompleted

NOW = 1_800_000_000.0  # a whole hour: 1_800_000_000 = 500,000 * 3600


def done(ts: float, outcome: str = "ok", latency: float = 500.0, attempts: int = 1) -> RequestCompleted:
    return RequestCompleted(
        ts=ts,
        request_id=f"r{ts}",
        outcome=outcome,  # type: ignore[arg-type]  # the tests give valid outcomes
        status=200 if outcome == "ok" else 502,
        attempts=attempts,
        latency_ms=latency,
    )


def ok(ts: float, model: str = "m1", key: str = "k1", latency: float = 400.0, ttfb: float = 100.0) -> Event:
    return AttemptSucceeded(
        ts=ts,
        request_id="r",
        attempt=1,
        platform="p1",
        model=model,
        key_id=key,
        latency_ms=latency,
        ttfb_ms=ttfb,
        input_tokens=10,
        output_tokens=5,
    )


def failed(ts: float, kind: str = "server_error", model: str = "m1", key: str = "k1") -> Event:
    return AttemptFailed(
        ts=ts, request_id="r", attempt=1, platform="p1", model=model, key_id=key, kind=kind, status=500
    )


def folded(events: Sequence[Event]) -> Analytics:
    a = Analytics()
    for e in events:
        a.apply(e)
    return a


def test_bins_are_within_five_percent_of_every_value_they_hold() -> None:
    for ms in [1.0, 1.04, 3.3, 99.9, 100.0, 512.0, 7_777.7, 45_000.0, 1e6]:
        assert abs(value_of(bin_of(ms)) - ms) / ms < 0.05
    assert bin_of(0.0) == 0 and bin_of(float("nan")) == 0 and bin_of(1e30) == BINS - 1


def test_percentiles_of_a_spread_are_within_five_percent() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(6, 1) for _ in range(20_000))
    hist: dict[int, int] = {}
    for v in values:
        hist[bin_of(v)] = hist.get(bin_of(v), 0) + 1
    p50, p95 = percentiles(hist, (0.5, 0.95))
    assert p50 is not None and p95 is not None
    assert abs(p50 - values[len(values) // 2]) / values[len(values) // 2] < 0.05
    assert abs(p95 - values[int(len(values) * 0.95)]) / values[int(len(values) * 0.95)] < 0.05
    assert percentiles({}, (0.5,)) == [None]


def test_summary_counts_outcomes_fallbacks_and_attempt_tokens() -> None:
    a = folded(
        [
            done(NOW - 10, "ok", 200.0),
            done(NOW - 20, "ok", 300.0, attempts=2),
            done(NOW - 30, "error", 5000.0, attempts=3),
            done(NOW - 40, "client_abort", 900.0),
            ok(NOW - 10, ttfb=120.0),
            failed(NOW - 21),
            ok(NOW - 20, ttfb=80.0),
        ]
    )
    s = a.summary(NOW, "1h")
    assert (s.requests, s.ok, s.errors, s.client_aborts, s.fallbacks) == (4, 2, 1, 1, 2)
    assert s.success_rate == 0.5
    assert s.tokens.input == 20 and s.tokens.output == 10
    assert s.latency_ms.p50 is not None and abs(s.latency_ms.p50 - 300.0) / 300 < 0.05
    assert s.ttfb_ms.p95 is not None and abs(s.ttfb_ms.p95 - 120.0) / 120 < 0.05


def test_windows_take_only_their_own_time() -> None:
    events = [done(NOW - 30 * 60), done(NOW - 5 * 3600), done(NOW - 3 * 86400), done(NOW - 20 * 86400)]
    a = folded(events)
    counts = {w: a.summary(NOW, w).requests for w in ("1h", "24h", "7d", "30d")}
    assert counts == {"1h": 1, "24h": 2, "7d": 3, "30d": 4}


def test_a_window_is_exact_to_the_minute_within_a_day() -> None:
    now = NOW + 30 * 60  # half past: the window's older edge falls inside an hour
    a = folded([done(now - 3600 + 90), done(now - 3600 - 90)])  # just inside, just outside
    assert a.summary(now, "1h").requests == 1
    a = folded([done(now - 86400 + 90), done(now - 86400 - 90)])
    assert a.summary(now, "24h").requests == 1


def test_by_dimension_is_sparse_and_counts_failures_but_not_client_aborts() -> None:
    a = folded(
        [
            ok(NOW - 5, model="m1", key="k1"),
            ok(NOW - 6, model="m2", key="k2"),
            failed(NOW - 7, model="m2", key="k2"),
            failed(NOW - 8, "client_abort", model="m3", key="k3"),
        ]
    )
    models = {r.name: r for r in a.by(NOW, "24h", "model").data}
    assert set(models) == {"p1/m1", "p1/m2"}  # m3 had only a client abort: no cell
    assert (models["p1/m2"].attempts, models["p1/m2"].ok, models["p1/m2"].failed) == (2, 1, 1)
    assert models["p1/m2"].success_rate == 0.5
    assert [r.name for r in a.by(NOW, "24h", "key").data] == ["k2", "k1"]  # most attempts first
    assert [(r.name, r.attempts) for r in a.by(NOW, "24h", "platform").data] == [("p1", 3)]
    assert [(e.kind, e.count) for e in a.errors(NOW, "24h").data] == [("server_error", 1)]


def test_timeline_has_a_point_per_bucket_with_traffic() -> None:
    a = folded([done(NOW - 61), done(NOW - 59), failed(NOW - 58, "rate_limited"), done(NOW - 7200)])
    t = a.timeline(NOW, "1h")
    assert t.bucket_s == 60
    assert [(p.t, p.requests) for p in t.points] == [(int(NOW) - 120, 1), (int(NOW) - 60, 1)]
    assert t.points[1].errors_by_kind == {"rate_limited": 1}
    hourly = a.timeline(NOW, "24h", "hour")
    assert hourly.bucket_s == 3600
    assert [(p.t, p.requests) for p in hourly.points] == [(int(NOW) - 7200, 1), (int(NOW) - 3600, 2)]
    assert a.timeline(NOW, "7d").bucket_s == 3600


def test_old_buckets_are_pruned_as_time_passes() -> None:
    a = folded([done(NOW - 10)])
    assert len(a.minutes.buckets) == 1 and len(a.hours.buckets) == 1
    a.apply(done(NOW + 25 * 3600))  # a day later: the first minute is gone, its hour stays
    assert len(a.minutes.buckets) == 1 and len(a.hours.buckets) == 2
    a.prune(NOW + 32 * 86400)  # a month after the last, nothing new: all gone
    assert not a.minutes.buckets and not a.hours.buckets
    a.apply(done(NOW))  # older than what is kept: not folded
    assert not a.hours.buckets


def test_memory_is_bounded_by_buckets_whatever_the_traffic() -> None:
    a = Analytics()
    rng = random.Random(3)
    for i in range(40_000):  # a week of traffic, an event every 15 s, a handful of models
        a.apply(ok(NOW + i * 15, model=f"m{i % 4}", latency=rng.uniform(10, 9000)))
    assert len(a.minutes.buckets) <= 24 * 60 and len(a.hours.buckets) <= 30 * 24
    assert max(len(c.latency) for b in a.hours.buckets.values() for c in b.cells.values()) <= BINS


@pytest.mark.parametrize("seed", [1, 2])
def test_the_order_of_folding_does_not_change_the_answers(seed: int) -> None:
    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(300):
        ts = NOW - rng.uniform(0, 2 * 86400)
        events.append(rng.choice([done(ts, latency=rng.uniform(1, 9000)), ok(ts), failed(ts)]))
        del i
    shuffled = events[:]
    rng.shuffle(shuffled)
    a, b = folded(events), folded(shuffled)
    for w in ("1h", "24h", "7d"):
        assert a.summary(NOW, w) == b.summary(NOW, w)
        assert a.by(NOW, w, "model") == b.by(NOW, w, "model")
        assert a.timeline(NOW, w) == b.timeline(NOW, w)


def test_past_days_are_merged_once_and_still_see_a_late_event() -> None:
    events = [done(NOW - 3 * 86400 + i * 600, latency=100.0 + i) for i in range(50)] + [ok(NOW - 2 * 86400)]
    a = folded(events)
    first = a.summary(NOW, "7d")
    assert first.requests == 50 and a.summary(NOW, "7d") == first  # the second from the merged days
    late = done(NOW - 3 * 86400 + 1, "error")  # another process's, committed after the question
    a.apply(late)
    again = a.summary(NOW, "7d")
    assert (again.requests, again.errors) == (51, 1)
    fresh = folded([*events, late])
    assert again == fresh.summary(NOW, "7d")
    assert a.by(NOW, "30d", "model") == fresh.by(NOW, "30d", "model")
