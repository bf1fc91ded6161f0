"""Operational statistics: the plain totals per model that the stats actor and `switchboard models` show."""

from __future__ import annotations

import pytest

from events.failures import MODEL_FAULTS
from events.op_stats import ModelCounters, OperationalStats
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

T0 = 1_700_000_017.0
REF = "groq/llama"


def fold(events: list[Event]) -> OperationalStats:
    stats = OperationalStats()
    for event in events:
        stats.apply(event)
    return stats


def succeeded(
    *,
    platform: str = "groq",
    latency_ms: float = 1100.0,
    ttfb_ms: float = 100.0,
    output_tokens: int = 100,
    input_tokens: int = 5,
) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=T0,
        attempt=1,
        platform=platform,
        model="llama",
        key_id="k1",
        latency_ms=latency_ms,
        ttfb_ms=ttfb_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def failed(kind: str, *, platform: str = "groq") -> AttemptFailed:
    return AttemptFailed(ts=T0, attempt=1, platform=platform, model="llama", key_id="k1", kind=kind)


def test_only_model_faults_count_as_failures() -> None:
    stats = fold([failed(kind) for kind in sorted(MODEL_FAULTS)])
    s = stats.models[REF]
    assert s.failures == len(MODEL_FAULTS) == 7
    assert set(s.failures_by_kind) == {
        "connect",
        "server_error",
        "stall_pre",
        "stall_mid",
        "truncated",
        "empty",
        "model_missing",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "rate_limited",
        "auth",
        "forbidden",
        "bad_request",
        "context_exceeded",
        "client_abort",
        "from_the_future",
    ],
)
def test_key_and_request_faults_say_nothing_about_the_model(kind: str) -> None:
    stats = fold([failed(kind)])
    assert stats.models == {}  # not even an entry
    stats.apply(succeeded())
    stats.apply(failed(kind))
    assert stats.models[REF].total == 1


def test_raw_counters() -> None:
    stats = fold(
        [
            succeeded(latency_ms=100, ttfb_ms=10, output_tokens=7),
            succeeded(latency_ms=300, ttfb_ms=30, output_tokens=3),
            failed("server_error"),
            failed("server_error"),
            failed("stall_pre"),
            failed("rate_limited"),
        ]
    )
    s = stats.models[REF]
    assert (s.successes, s.failures, s.total) == (2, 3, 5)
    assert dict(s.failures_by_kind) == {"server_error": 2, "stall_pre": 1}
    assert (s.latency_ms_total, s.output_tokens, s.input_tokens) == (400.0, 10, 10)


def test_stalls_are_counted_apart_from_outcomes() -> None:
    stats = OperationalStats()
    for phase in ("pre", "mid", "mid"):
        stats.apply(
            StreamStalled(ts=T0, platform="groq", model="llama", key_id="k1", phase=phase, silent_s=30.0)
        )
    s = stats.models[REF]
    assert s.stalls == 3
    assert s.total == 0  # the AttemptFailed that follows a stall is the outcome


def test_models_are_per_platform_and_id() -> None:
    stats = fold([succeeded(platform="groq"), succeeded(platform="cerebras"), failed("connect")])
    assert set(stats.models) == {"groq/llama", "cerebras/llama"}
    assert stats.models["groq/llama"].total == 2
    assert stats.models["cerebras/llama"].total == 1


def test_other_events_are_ignored() -> None:
    stats = fold(
        [
            KeyAdded(ts=0, key_id="k1", platform="groq", label="k", source="env"),
            AttemptStarted(ts=1, attempt=1, platform="groq", model="llama", key_id="k1"),
            ClientDisconnected(ts=2, platform="groq", model="llama"),
            RequestCompleted(ts=3, outcome="ok", status=200, attempts=1, latency_ms=5, platform="groq"),
        ]
    )
    assert stats.models == {}


def test_counters_are_the_means_of_what_was_folded() -> None:
    stats = fold(
        [
            succeeded(latency_ms=2100, ttfb_ms=100, output_tokens=200),  # 100 tok/s after the first byte
            succeeded(latency_ms=600, ttfb_ms=300, output_tokens=0),  # no tokens: not in the speed
            failed("empty"),
            StreamStalled(ts=T0, platform="groq", model="llama", key_id="k1", phase="mid", silent_s=9.0),
        ]
    )
    assert stats.counters() == [
        ModelCounters(
            ref=REF,
            successes=2,
            failures=1,
            failures_by_kind={"empty": 1},
            mean_latency_ms=1350.0,
            mean_ttfb_ms=200.0,
            tokens_per_s=100.0,
            output_tokens=200,
            stalls=1,
        )
    ]
    assert OperationalStats().counters() == []
