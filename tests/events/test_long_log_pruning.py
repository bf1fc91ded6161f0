"""A rebuild reads nothing while it folds, so windows must not wait for a read to shed what has expired:
folding a long history keeps only the last minute (and day) of quota entries and the decay window's
buckets, and reads still count what they counted."""

from __future__ import annotations

from builders import model

from events.policy import RoutingPolicy
from events.quotas import Limits, Quotas
from events.types import AttemptStarted, AttemptSucceeded
from events.view import RoutingView

T0 = 1_750_000_000.0
HOURS = 30


def test_quota_windows_and_decayed_stats_stay_bounded_over_a_long_fold() -> None:
    m = model("gemini", "flash", limits=Limits(rpm=1000))
    view = RoutingView([m], RoutingPolicy(decay_days=0.5), rolling_day_platforms=frozenset({"gemini"}))
    seq = 0
    for i in range(HOURS * 3600 // 2):  # an attempt every 2 s for 30 h, nothing read meanwhile
        ts = T0 + 2.0 * i
        base = {"request_id": f"r{i}", "attempt": 1, "platform": "gemini", "model": "flash", "key_id": "k"}
        seq += 1
        view.apply(seq, AttemptStarted(ts=ts, **base))  # type: ignore[arg-type]
        seq += 1
        view.apply(
            seq,
            AttemptSucceeded(ts=ts, latency_ms=900, ttfb_ms=200, input_tokens=10, output_tokens=5, **base),  # type: ignore[arg-type]
        )
    slot = view.quotas._slots[("k", "gemini/flash")]
    assert len(slot.minute.entries) <= 2 * 30 + 2  # a minute of starts and successes
    assert len(slot.day.entries) <= 2 * 43_200 + 2  # type: ignore[union-attr]  # a rolling day's
    stats = view.stats.models["gemini/flash"]
    assert len(stats.decayed_total) <= 12 * 60 + 2  # half a day of minute buckets

    end = T0 + 2.0 * (HOURS * 3600 // 2 - 1)
    usage = view.quotas.usage("k", "gemini/flash", end)
    assert usage.requests_minute == 30  # starts at end-58 ... end: those younger than a minute
    assert usage.requests_day == 43_200
    assert usage.tokens_minute == 30 * 15


def test_a_calendar_day_still_starts_from_zero() -> None:
    quotas = Quotas()
    day = 86_400.0
    start = (T0 // day + 1) * day - 30  # 30 s before a UTC midnight
    base = {"request_id": "r", "attempt": 1, "platform": "groq", "model": "m", "key_id": "k"}
    for i in range(60):
        quotas.apply(AttemptStarted(ts=start + i, **base))  # type: ignore[arg-type]
    usage = quotas.usage("k", "groq/m", start + 59)
    assert (usage.requests_minute, usage.requests_day) == (60, 30)
