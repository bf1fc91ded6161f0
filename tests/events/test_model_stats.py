"""Per-model statistics for scoring: 7-day linearly decayed successes and failures (model faults only),
tokens/s and TTFB as moving averages, and the fastest model's speed. (Plain totals: test_op_stats.py.)"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.failures import MODEL_FAULTS
from events.model_stats import EWMA_ALPHA, Stats
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ClientDisconnected,
    Event,
    KeyAdded,
    RequestCompleted,
    StreamStalled,
)

DAY = 86400.0
WEEK = 7 * DAY
T0 = 1_700_000_017.0  # not on a minute boundary
REF = "groq/llama"


def fold(stats: Stats, events: Iterable[Event]) -> Stats:
    for event in events:
        stats.apply(event)
    return stats


def succeeded(
    ts: float = T0,
    *,
    platform: str = "groq",
    model: str = "llama",
    latency_ms: float = 1100.0,
    ttfb_ms: float = 100.0,
    output_tokens: int = 100,
    input_tokens: int = 5,
) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=ts,
        attempt=1,
        platform=platform,
        model=model,
        key_id="k1",
        latency_ms=latency_ms,
        ttfb_ms=ttfb_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def failed(kind: str, ts: float = T0, *, platform: str = "groq", model: str = "llama") -> AttemptFailed:
    return AttemptFailed(ts=ts, attempt=1, platform=platform, model=model, key_id="k1", kind=kind)


def speed(tps: float, ts: float = T0, model: str = "llama") -> AttemptSucceeded:
    """A success generating at `tps` tokens/s (1000 tokens after the first byte)."""
    return succeeded(ts, model=model, ttfb_ms=0.0, latency_ms=1000 * 1000 / tps, output_tokens=1000)


# -- Decay


@pytest.mark.parametrize(
    ("age", "weight"),
    [
        (0.0, 1.0),
        (DAY, 6 / 7),
        (3.5 * DAY, 0.5),
        (6 * DAY, 1 / 7),
        (WEEK, 0.0),
        (WEEK + 30, 0.0),
        (WEEK + 3600, 0.0),
        (30 * DAY, 0.0),
    ],
)
def test_a_success_decays_linearly_over_seven_days(age: float, weight: float) -> None:
    stats = fold(Stats(), [succeeded(T0)])
    successes, failures = stats.decayed(REF, T0 + age)
    assert successes == pytest.approx(weight, abs=1e-9)
    assert failures == 0.0


def test_the_decay_reads_are_repeatable_and_move_forward() -> None:
    stats = fold(Stats(), [succeeded(T0)])
    for now in (T0, T0 + 3.5 * DAY, T0 + 3.5 * DAY, T0 + 8 * DAY, T0 + 9 * DAY):
        expected = max(0.0, 1 - (now - T0) / WEEK)
        assert stats.decayed(REF, now)[0] == pytest.approx(expected, abs=1e-9)


def test_failures_are_the_decayed_total_minus_the_decayed_successes() -> None:
    stats = fold(Stats(), [succeeded(T0), failed("server_error", T0 + DAY), failed("connect", T0 + 2 * DAY)])
    successes, failures = stats.decayed(REF, T0 + 3.5 * DAY)
    assert successes == pytest.approx(0.5)
    assert failures == pytest.approx((1 - 2.5 / 7) + (1 - 1.5 / 7))


def test_the_decay_window_follows_the_policy() -> None:
    stats = fold(Stats(decay_days=1.0), [succeeded(T0)])
    assert stats.decayed(REF, T0 + DAY / 2)[0] == pytest.approx(0.5)
    assert stats.decayed(REF, T0 + DAY)[0] == pytest.approx(0.0, abs=1e-9)


def test_an_unknown_model_has_nothing() -> None:
    assert Stats().decayed("groq/none", T0) == (0.0, 0.0)
    assert Stats().of("groq/none") is None


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(st.tuples(st.floats(0, 10 * DAY), st.booleans()), max_size=30),
    later=st.floats(0, 10 * DAY),
)
def test_decayed_counts_match_the_weights_of_each_outcome(
    outcomes: list[tuple[float, bool]], later: float
) -> None:
    outcomes.sort()
    stats = Stats()
    for offset, ok in outcomes:
        stats.apply(succeeded(T0 + offset) if ok else failed("server_error", T0 + offset))
    now = T0 + (outcomes[-1][0] if outcomes else 0.0) + later

    def weight(offset: float) -> float:
        return min(1.0, max(0.0, 1 - (now - T0 - offset) / WEEK))

    want_s = sum(weight(o) for o, ok in outcomes if ok)
    want_f = sum(weight(o) for o, ok in outcomes if not ok)
    successes, failures = stats.decayed(REF, now)
    # Outcomes leave in one-minute buckets: within the window's last minute a weight may read as -1/10080.
    slack = len(outcomes) * 60 / WEEK + 1e-6
    assert successes == pytest.approx(want_s, abs=slack)
    assert failures == pytest.approx(want_f, abs=2 * slack)


# -- What counts


def test_only_model_faults_count_as_failures() -> None:
    stats = Stats()
    for kind in sorted(MODEL_FAULTS):
        stats.apply(failed(kind))
    assert len(MODEL_FAULTS) == 7
    assert stats.decayed(REF, T0)[1] == pytest.approx(7.0)


@pytest.mark.parametrize(
    "kind",
    ["rate_limited", "auth", "bad_request", "context_exceeded", "client_abort", "a_kind_from_the_future"],
)
def test_key_and_request_faults_say_nothing_about_the_model(kind: str) -> None:
    stats = fold(Stats(), [failed(kind), failed(kind, model="other")])
    assert stats.models == {}  # not even an entry
    assert stats.decayed(REF, T0) == (0.0, 0.0)
    stats.apply(succeeded())
    stats.apply(failed(kind))
    assert stats.decayed(REF, T0) == (pytest.approx(1.0), 0.0)


def test_models_are_per_platform_and_id() -> None:
    stats = fold(Stats(), [succeeded(platform="groq"), succeeded(platform="cerebras"), failed("connect")])
    assert set(stats.models) == {"groq/llama", "cerebras/llama"}
    assert sum(stats.decayed("groq/llama", T0)) == pytest.approx(2.0)
    assert sum(stats.decayed("cerebras/llama", T0)) == pytest.approx(1.0)


def test_other_events_are_ignored() -> None:
    stats = fold(
        Stats(),
        [
            KeyAdded(ts=0, key_id="k1", platform="groq", label="k", source="env"),
            AttemptStarted(ts=1, attempt=1, platform="groq", model="llama", key_id="k1"),
            ClientDisconnected(ts=2, platform="groq", model="llama"),
            StreamStalled(ts=2, platform="groq", model="llama", key_id="k1", phase="pre", silent_s=30.0),
            RequestCompleted(ts=3, outcome="ok", status=200, attempts=1, latency_ms=5, platform="groq"),
        ],
    )
    assert stats.models == {}
    assert stats.max_tps is None


# -- Speed and TTFB


def test_tokens_per_second_after_the_first_byte_as_a_moving_average() -> None:
    stats = fold(Stats(), [succeeded(latency_ms=2100, ttfb_ms=100, output_tokens=200)])  # 100 tok/s
    assert stats.models[REF].tps == pytest.approx(100.0)
    stats.apply(succeeded(latency_ms=1100, ttfb_ms=100, output_tokens=200))  # 200 tok/s
    assert stats.models[REF].tps == pytest.approx(100.0 + EWMA_ALPHA * 100.0)
    assert stats.max_tps == stats.models[REF].tps


def test_ttfb_as_a_moving_average() -> None:
    stats = fold(Stats(), [succeeded(ttfb_ms=100.0)])
    assert stats.models[REF].ttfb_ms == 100.0
    stats.apply(succeeded(ttfb_ms=600.0, latency_ms=2000.0))
    assert stats.models[REF].ttfb_ms == pytest.approx(100.0 + EWMA_ALPHA * 500.0)


def test_answers_without_generated_tokens_leave_the_speed_alone() -> None:
    stats = fold(Stats(), [succeeded(latency_ms=2100, ttfb_ms=100, output_tokens=200)])
    stats.apply(succeeded(latency_ms=500, ttfb_ms=100, output_tokens=0))  # no tokens
    stats.apply(succeeded(latency_ms=100.5, ttfb_ms=100, output_tokens=50))  # all in one chunk: no time
    s = stats.models[REF]
    assert s.tps == pytest.approx(100.0)
    assert s.ttfb_ms == pytest.approx(100.0)  # TTFB still learns from them
    assert stats.decayed(REF, T0)[0] == pytest.approx(3.0)


def test_failures_do_not_touch_speed() -> None:
    stats = fold(Stats(), [speed(100.0), failed("server_error"), failed("stall_mid")])
    assert stats.models[REF].tps == pytest.approx(100.0)


def test_max_tps_follows_the_fastest_model() -> None:
    stats = fold(Stats(), [speed(100.0, model="a"), speed(50.0, model="b")])
    assert stats.max_tps == pytest.approx(100.0)
    stats.apply(speed(300.0, model="b"))  # b: 50 -> 100 (EWMA), a tie
    assert stats.max_tps == pytest.approx(100.0)
    stats.apply(speed(300.0, model="b"))  # b: 140
    assert stats.max_tps == pytest.approx(140.0)


def test_max_tps_drops_when_the_fastest_model_slows() -> None:
    stats = fold(Stats(), [speed(100.0, model="a"), speed(50.0, model="b")])
    stats.apply(speed(10.0, model="a"))  # a: 82, still the fastest
    assert stats.max_tps == pytest.approx(82.0)
    for _ in range(3):  # a: 67.6, 56.08, 46.864 -- now b is the fastest
        stats.apply(speed(10.0, model="a"))
    assert stats.models["groq/a"].tps == pytest.approx(46.864)
    assert stats.max_tps == pytest.approx(50.0)
    stats.apply(speed(10.0, model="b"))  # b: 42, a is the fastest again
    assert stats.max_tps == pytest.approx(46.864)


def test_a_slower_model_slowing_does_not_move_the_max() -> None:
    stats = fold(Stats(), [speed(100.0, model="a"), speed(50.0, model="b"), speed(10.0, model="b")])
    assert stats.max_tps == pytest.approx(100.0)
