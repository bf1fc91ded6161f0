"""Quota usage per key x model: requests counted when an attempt starts, tokens when it succeeds, the
reservation of attempts in flight in between; minute windows, UTC days and rolling days."""

from __future__ import annotations

from events.quotas import DAY, Limits, Quotas, Usage, over_limit
from events.types import AttemptFailed, AttemptStarted, AttemptSucceeded, ServiceStarted

REF = "groq/llama"
MIDNIGHT = 20_000 * DAY  # a UTC midnight


def started(
    ts: float,
    request_id: str = "r1",
    *,
    attempt: int = 1,
    key_id: str = "k1",
    model: str = "llama",
    platform: str = "groq",
    reserved: int = 0,
) -> AttemptStarted:
    return AttemptStarted(
        ts=ts,
        request_id=request_id,
        attempt=attempt,
        platform=platform,
        model=model,
        key_id=key_id,
        reserved_tokens=reserved,
    )


def succeeded(
    ts: float,
    request_id: str = "r1",
    *,
    attempt: int = 1,
    key_id: str = "k1",
    model: str = "llama",
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=ts,
        request_id=request_id,
        attempt=attempt,
        platform="groq",
        model=model,
        key_id=key_id,
        latency_ms=100.0,
        ttfb_ms=10.0,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def failed(
    ts: float, request_id: str = "r1", *, attempt: int = 1, kind: str = "server_error"
) -> AttemptFailed:
    return AttemptFailed(
        ts=ts, request_id=request_id, attempt=attempt, platform="groq", model="llama", key_id="k1", kind=kind
    )


def requests_at(quotas: Quotas, *times: float) -> None:
    for i, ts in enumerate(times):
        quotas.apply(started(ts, f"r{i}"))


# -- Requests per minute


def test_an_unknown_slot_has_no_usage() -> None:
    quotas = Quotas()
    assert quotas.usage("k1", REF, 0.0) == Usage(0, 0, 0, 0, 0)
    assert quotas.frees_at("k1", REF, 0.0, Limits(rpm=1), 0) is None


def test_requests_count_when_the_attempt_starts_whatever_its_outcome() -> None:
    quotas = Quotas()
    quotas.apply(started(10.0, "a"))
    quotas.apply(failed(11.0, "a", kind="rate_limited"))
    quotas.apply(started(12.0, "b"))
    quotas.apply(succeeded(13.0, "b"))
    quotas.apply(started(14.0, "c"))
    usage = quotas.usage("k1", REF, 15.0)
    assert (usage.requests_minute, usage.requests_day) == (3, 3)


def test_rpm_blocks_at_the_limit_and_frees_when_the_oldest_request_leaves_the_minute() -> None:
    limits = Limits(rpm=3)
    quotas = Quotas()
    requests_at(quotas, 1000.0, 1020.0)
    assert over_limit(limits, quotas.usage("k1", REF, 1030.0), 0) is None
    requests_at(quotas, 1030.0)
    assert over_limit(limits, quotas.usage("k1", REF, 1030.0), 0) == "quota: 3/3 requests this minute"
    assert quotas.frees_at("k1", REF, 1030.0, limits, 0) == 1060.0
    assert over_limit(limits, quotas.usage("k1", REF, 1059.999), 0) is not None
    usage = quotas.usage("k1", REF, 1060.0)
    assert usage.requests_minute == 2
    assert over_limit(limits, usage, 0) is None
    assert usage.requests_day == 3  # the day still counts it
    assert quotas.frees_at("k1", REF, 1060.0, limits, 0) is None  # nothing blocks any more


def test_the_minute_window_is_per_key_and_model() -> None:
    quotas = Quotas()
    quotas.apply(started(10.0, "a", key_id="k1", model="llama"))
    quotas.apply(started(10.0, "b", key_id="k2", model="llama"))
    quotas.apply(started(10.0, "c", key_id="k1", model="mixtral"))
    quotas.apply(started(10.0, "d", key_id="k1", model="llama", platform="cerebras"))
    for key_id, ref in [("k1", REF), ("k2", REF), ("k1", "groq/mixtral"), ("k1", "cerebras/llama")]:
        assert quotas.usage(key_id, ref, 11.0).requests_minute == 1


def test_rpm_frees_at_ignores_token_only_entries() -> None:
    limits = Limits(rpm=2)
    quotas = Quotas()
    quotas.apply(started(1000.0, "a"))
    quotas.apply(succeeded(1005.0, "a", output_tokens=10))  # a token-only entry at 1005
    quotas.apply(started(1010.0, "b"))
    quotas.apply(started(1020.0, "c"))
    now = 1061.0  # request a left the minute; b and c fill it
    assert over_limit(limits, quotas.usage("k1", REF, now), 0) == "quota: 2/2 requests this minute"
    assert quotas.frees_at("k1", REF, now, limits, 0) == 1070.0  # when b leaves, not 1065


# -- Requests per day


def test_rpd_resets_at_utc_midnight() -> None:
    limits = Limits(rpd=2)
    quotas = Quotas()
    requests_at(quotas, MIDNIGHT - 3600.0, MIDNIGHT - 600.0)
    usage = quotas.usage("k1", REF, MIDNIGHT - 1.0)
    assert (usage.requests_minute, usage.requests_day) == (0, 2)
    assert over_limit(limits, usage, 0) == "quota: 2/2 requests today"
    assert quotas.frees_at("k1", REF, MIDNIGHT - 1.0, limits, 0) == MIDNIGHT
    assert quotas.usage("k1", REF, MIDNIGHT - 0.001).requests_day == 2
    usage = quotas.usage("k1", REF, MIDNIGHT)
    assert usage.requests_day == 0
    assert over_limit(limits, usage, 0) is None


def test_a_new_day_counts_from_zero() -> None:
    quotas = Quotas()
    requests_at(quotas, MIDNIGHT - 10.0, MIDNIGHT - 5.0)
    quotas.apply(started(MIDNIGHT + 5.0, "late"))
    usage = quotas.usage("k1", REF, MIDNIGHT + 6.0)
    assert (usage.requests_minute, usage.requests_day) == (3, 1)


def test_an_rpd_block_frees_at_midnight_even_with_requests_in_the_last_minute() -> None:
    limits = Limits(rpd=2)
    quotas = Quotas()
    noon = MIDNIGHT - DAY / 2
    requests_at(quotas, noon - 50.0, noon - 40.0)
    assert over_limit(limits, quotas.usage("k1", REF, noon - 30.0), 0) == "quota: 2/2 requests today"
    assert quotas.frees_at("k1", REF, noon - 30.0, limits, 0) == MIDNIGHT  # not noon + 10 s


def test_rolling_day_platforms_roll_instead_of_resetting() -> None:
    limits = Limits(rpd=2)
    quotas = Quotas(rolling_day_platforms=frozenset({"groq"}))
    requests_at(quotas, MIDNIGHT - 3600.0, MIDNIGHT - 600.0)
    usage = quotas.usage("k1", REF, MIDNIGHT + 1.0)  # midnight does not reset a rolling day
    assert usage.requests_day == 2
    assert over_limit(limits, usage, 0) == "quota: 2/2 requests today"
    assert quotas.frees_at("k1", REF, MIDNIGHT + 1.0, limits, 0) == MIDNIGHT - 3600.0 + DAY
    assert quotas.usage("k1", REF, MIDNIGHT - 3600.0 + DAY - 0.001).requests_day == 2
    assert quotas.usage("k1", REF, MIDNIGHT - 3600.0 + DAY).requests_day == 1
    assert quotas.usage("k1", REF, MIDNIGHT - 600.0 + DAY).requests_day == 0
    assert quotas.frees_at("k1", REF, MIDNIGHT - 600.0 + DAY, limits, 0) is None


def test_only_the_listed_platforms_roll() -> None:
    quotas = Quotas(rolling_day_platforms=frozenset({"gemini"}))
    requests_at(quotas, MIDNIGHT - 600.0)
    assert quotas.usage("k1", REF, MIDNIGHT).requests_day == 0


# -- Tokens, reservations


def test_a_reservation_counts_while_the_attempt_runs_and_the_success_counts_its_tokens() -> None:
    quotas = Quotas()
    quotas.apply(started(100.0, "a", reserved=1500))
    assert quotas.usage("k1", REF, 101.0) == Usage(1, 1, 0, 0, 1500)
    assert quotas.in_flight() == 1
    quotas.apply(succeeded(102.0, "a", input_tokens=300, output_tokens=200))
    assert quotas.usage("k1", REF, 103.0) == Usage(1, 1, 500, 500, 0)
    assert quotas.in_flight() == 0
    # The tokens leave the minute 60 s after the success, not after the start.
    assert quotas.usage("k1", REF, 161.0).tokens_minute == 500
    assert quotas.usage("k1", REF, 162.0) == Usage(0, 1, 0, 500, 0)


def test_a_failure_releases_the_reservation_and_counts_no_tokens() -> None:
    quotas = Quotas()
    quotas.apply(started(100.0, "a", reserved=1500))
    quotas.apply(started(100.0, "b", reserved=700))
    quotas.apply(failed(101.0, "a"))
    assert quotas.usage("k1", REF, 101.0) == Usage(2, 2, 0, 0, 700)
    quotas.apply(failed(102.0, "b", kind="client_abort"))
    assert quotas.usage("k1", REF, 102.0) == Usage(2, 2, 0, 0, 0)
    assert quotas.in_flight() == 0


def test_reservations_are_matched_by_request_and_attempt() -> None:
    quotas = Quotas()
    quotas.apply(started(100.0, "a", attempt=1, reserved=100))
    quotas.apply(started(100.0, "a", attempt=2, reserved=200))
    quotas.apply(started(100.0, "b", attempt=1, reserved=400))
    quotas.apply(succeeded(101.0, "a", attempt=2, input_tokens=1, output_tokens=2))
    assert quotas.usage("k1", REF, 101.0).reserved_tokens == 500
    assert quotas.in_flight() == 2


def test_an_end_without_a_start_releases_nothing() -> None:
    # A log that begins mid-request (or an attempt started before the last restart) must not go negative.
    quotas = Quotas()
    quotas.apply(started(100.0, "a", reserved=300))
    quotas.apply(succeeded(101.0, "other", input_tokens=10, output_tokens=10))
    quotas.apply(failed(101.0, "ghost"))
    assert quotas.usage("k1", REF, 102.0) == Usage(1, 1, 20, 20, 300)


def test_tpm_counts_reservations_of_attempts_in_flight() -> None:
    limits = Limits(tpm=1000)
    quotas = Quotas()
    quotas.apply(started(100.0, "a", reserved=500))
    usage = quotas.usage("k1", REF, 100.0)
    assert over_limit(limits, usage, 500) is None  # exactly at the limit is allowed
    assert over_limit(limits, usage, 501) == "quota: 500+501 > 1000 tokens/minute"
    quotas.apply(succeeded(101.0, "a", input_tokens=100, output_tokens=50))
    usage = quotas.usage("k1", REF, 101.0)
    assert over_limit(limits, usage, 850) is None
    assert over_limit(limits, usage, 851) == "quota: 150+851 > 1000 tokens/minute"
    assert over_limit(limits, quotas.usage("k1", REF, 161.0), 1000) is None


def test_tpd_counts_the_day_and_reservations() -> None:
    limits = Limits(tpd=10_000)
    quotas = Quotas()
    quotas.apply(started(MIDNIGHT - 500.0, "a"))
    quotas.apply(succeeded(MIDNIGHT - 499.0, "a", input_tokens=6000, output_tokens=3000))
    quotas.apply(started(MIDNIGHT - 100.0, "b", reserved=800))
    usage = quotas.usage("k1", REF, MIDNIGHT - 99.0)
    assert usage.tokens_minute == 0
    assert over_limit(limits, usage, 200) is None
    assert over_limit(limits, usage, 201) == "quota: 9800+201 > 10000 tokens/day"
    assert over_limit(limits, quotas.usage("k1", REF, MIDNIGHT), 9201) == "quota: 800+9201 > 10000 tokens/day"


def test_over_limit_without_limits_never_blocks() -> None:
    assert over_limit(Limits(), Usage(10**6, 10**7, 10**9, 10**10, 10**9), 10**9) is None


def test_over_limit_names_the_first_limit_reached() -> None:
    usage = Usage(
        requests_minute=30, requests_day=1000, tokens_minute=6000, tokens_day=500_000, reserved_tokens=0
    )
    all_limits = Limits(rpm=30, rpd=1000, tpm=6000, tpd=500_000)
    assert over_limit(all_limits, usage, 1) == "quota: 30/30 requests this minute"
    assert over_limit(Limits(rpm=31, rpd=1000), usage, 1) == "quota: 1000/1000 requests today"
    assert over_limit(Limits(rpm=31, rpd=1001, tpm=6000, tpd=500_000), usage, 1) == (
        "quota: 6000+1 > 6000 tokens/minute"
    )
    assert over_limit(Limits(tpm=6001, tpd=500_000), usage, 1) == "quota: 500000+1 > 500000 tokens/day"
    assert over_limit(Limits(rpm=31, rpd=1001, tpm=6001, tpd=500_001), usage, 1) is None


def test_a_restart_releases_the_reservations_of_attempts_that_never_ended() -> None:
    # A hard kill leaves AttemptStarted without an end event; after ServiceStarted nothing holds tokens.
    quotas = Quotas()
    quotas.apply(started(10.0, "a", reserved=3000))
    assert quotas.usage("k1", REF, 11.0).reserved_tokens == 3000
    quotas.apply(ServiceStarted(ts=12.0, version="x"))
    assert quotas.usage("k1", REF, 13.0).reserved_tokens == 0
    assert quotas.in_flight() == 0
    assert quotas.usage("k1", REF, 13.0).requests_minute == 1  # the request itself still counted
