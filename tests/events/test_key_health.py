"""Key health: per key ok / invalid / disabled (admin events, 401/403, health checks), and per key x model
cooling after a 429 or an exhausted rate-limit header, read lazily at an explicit `now`."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from events.key_health import KeyHealth, KeyInfo
from events.types import (
    AttemptFailed,
    AttemptSucceeded,
    CooldownsReset,
    Event,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
)


def fold(health: KeyHealth, events: Iterable[Event]) -> KeyHealth:
    for event in events:
        health.apply(event)
    return health


def added(key_id: str = "k1", platform: str = "groq", ts: float = 0.0, label: str = "main") -> KeyAdded:
    return KeyAdded(ts=ts, key_id=key_id, platform=platform, label=label, source="config")


def failed(
    kind: str,
    ts: float = 100.0,
    *,
    key_id: str = "k1",
    model: str = "llama",
    platform: str = "groq",
    retry_after_s: float | None = None,
) -> AttemptFailed:
    return AttemptFailed(
        ts=ts,
        request_id="r1",
        attempt=1,
        platform=platform,
        model=model,
        key_id=key_id,
        kind=kind,
        retry_after_s=retry_after_s,
    )


def succeeded(
    ts: float = 100.0, *, key_id: str = "k1", model: str = "llama", exhausted_for_s: float | None = None
) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=ts,
        request_id="r1",
        attempt=1,
        platform="groq",
        model=model,
        key_id=key_id,
        latency_ms=100.0,
        ttfb_ms=10.0,
        input_tokens=5,
        output_tokens=7,
        exhausted_for_s=exhausted_for_s,
    )


# -- Key status


def test_key_added_is_ok() -> None:
    health = fold(KeyHealth(), [added("k1", "groq", label="main")])
    assert health.keys == {"k1": KeyInfo("k1", "groq", "main", "config", "ok", "")}
    assert health.keys_of("groq") == [health.keys["k1"]]
    assert health.keys_of("gemini") == []
    assert health.has_keys("groq")
    assert not health.has_keys("gemini")


def test_keys_of_a_platform_keep_the_order_they_were_added() -> None:
    health = fold(KeyHealth(), [added("k2"), added("k1"), added("x", "gemini"), added("k3"), added("k1")])
    assert [k.key_id for k in health.keys_of("groq")] == ["k2", "k1", "k3"]


def test_key_invalidated_keeps_the_status_and_message() -> None:
    health = fold(
        KeyHealth(), [added(), KeyInvalidated(ts=1, key_id="k1", status=401, message="Invalid API Key")]
    )
    assert health.keys["k1"].status == "invalid"
    assert health.keys["k1"].reason == "HTTP 401: Invalid API Key"
    health.apply(KeyInvalidated(ts=2, key_id="k1", status=403))
    assert health.keys["k1"].reason == "HTTP 403"


def test_re_announcing_a_key_keeps_its_invalid_status() -> None:
    # Every start re-announces the configured keys: a key the provider rejected must stay rejected.
    health = fold(
        KeyHealth(),
        [
            added("k1", label="old"),
            KeyInvalidated(ts=1, key_id="k1", status=401, message="nope"),
            added("k1", label="new"),
        ],
    )
    assert health.keys["k1"] == KeyInfo("k1", "groq", "new", "config", "invalid", "HTTP 401: nope")


def test_re_announcing_a_key_keeps_it_disabled() -> None:
    health = fold(KeyHealth(), [added(), KeyDisabled(ts=1, key_id="k1", reason="spare"), added()])
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("disabled", "spare")


def test_disable_then_enable() -> None:
    health = fold(KeyHealth(), [added(), KeyDisabled(ts=1, key_id="k1", reason="maintenance")])
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("disabled", "maintenance")
    health.apply(KeyEnabled(ts=2, key_id="k1"))
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("ok", "")


def test_enable_clears_an_invalid_key() -> None:
    health = fold(
        KeyHealth(), [added(), KeyInvalidated(ts=1, key_id="k1", status=401), KeyEnabled(ts=2, key_id="k1")]
    )
    assert health.keys["k1"].status == "ok"


def test_status_events_for_an_unknown_key_are_ignored() -> None:
    health = fold(
        KeyHealth(),
        [
            KeyDisabled(ts=1, key_id="ghost"),
            KeyEnabled(ts=2, key_id="ghost"),
            KeyInvalidated(ts=3, key_id="ghost", status=401),
            KeyChecked(ts=4, key_id="ghost", ok=False, status=401),
        ],
    )
    assert health.keys == {}


def test_attempt_failures_do_not_change_a_key_status() -> None:
    # The request actor writes a KeyInvalidated after an `auth` failure; the failure itself is telemetry.
    health = fold(KeyHealth(), [added()])
    for kind in ("auth", "server_error", "connect", "stall_pre", "model_missing", "client_abort"):
        health.apply(failed(kind, retry_after_s=30))
    assert health.keys["k1"].status == "ok"
    assert health.cooling_until("k1", "llama", 100.0) is None


# -- Health checks


def test_a_passing_check_restores_an_invalid_key() -> None:
    health = fold(KeyHealth(), [added(), KeyInvalidated(ts=1, key_id="k1", status=401, message="expired")])
    health.apply(KeyChecked(ts=2, key_id="k1", ok=True, status=200))
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("ok", "")


def test_a_passing_check_does_not_enable_a_disabled_key() -> None:
    # Disabling is the operator's decision; only the operator undoes it.
    health = fold(KeyHealth(), [added(), KeyDisabled(ts=1, key_id="k1", reason="ops")])
    health.apply(KeyChecked(ts=2, key_id="k1", ok=True, status=200))
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("disabled", "ops")


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_check_invalidates_an_ok_key(status: int) -> None:
    health = fold(KeyHealth(), [added()])
    health.apply(KeyChecked(ts=2, key_id="k1", ok=False, status=status, message="bad key"))
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("invalid", f"health check: HTTP {status}")


def test_a_rejected_check_leaves_a_disabled_key_disabled() -> None:
    health = fold(KeyHealth(), [added(), KeyDisabled(ts=1, key_id="k1", reason="ops")])
    health.apply(KeyChecked(ts=2, key_id="k1", ok=False, status=401))
    assert health.keys["k1"].status == "disabled"


@pytest.mark.parametrize("status", [None, 429, 500, 503])
def test_an_inconclusive_check_changes_nothing(status: int | None) -> None:
    for start in ([added()], [added(), KeyInvalidated(ts=1, key_id="k1", status=401)]):
        health = fold(KeyHealth(), start)
        before = health.keys["k1"]
        health.apply(KeyChecked(ts=2, key_id="k1", ok=False, status=status))
        assert health.keys["k1"] == before


# -- Cooling: 429s


def test_rate_limit_cools_for_retry_after() -> None:
    health = fold(KeyHealth(rate_limit_cooldown_s=60), [failed("rate_limited", ts=100.0, retry_after_s=5.0)])
    assert health.cooling_until("k1", "llama", 100.0) == 105.0
    assert health.cooling_until("k1", "llama", 104.999) == 105.0


def test_rate_limit_without_retry_after_cools_for_the_default() -> None:
    health = fold(KeyHealth(rate_limit_cooldown_s=42), [failed("rate_limited", ts=100.0)])
    assert health.cooling_until("k1", "llama", 100.0) == 142.0
    assert health.cooling_until("k1", "llama", 141.9) == 142.0
    assert health.cooling_until("k1", "llama", 142.0) is None


def test_retry_after_zero_is_not_the_default() -> None:
    health = fold(KeyHealth(rate_limit_cooldown_s=60), [failed("rate_limited", ts=100.0, retry_after_s=0.0)])
    assert health.cooling_until("k1", "llama", 100.0) is None


def test_cooling_expires_exactly_at_ts_plus_wait_not_before() -> None:
    health = fold(KeyHealth(), [failed("rate_limited", ts=1000.0, retry_after_s=30.0)])
    assert health.cooling_until("k1", "llama", 1029.999999) == 1030.0
    assert health.cooling_until("k1", "llama", 1030.0) is None
    # A pure read: asking at a later time does not change the answer for an earlier one.
    assert health.cooling_until("k1", "llama", 1029.0) == 1030.0


def test_cooling_is_per_key_and_model() -> None:
    health = fold(KeyHealth(), [added("k1"), added("k2")])
    health.apply(failed("rate_limited", ts=100.0, key_id="k1", model="llama", retry_after_s=10))
    assert health.cooling_until("k1", "llama", 101.0) == 110.0
    assert health.cooling_until("k2", "llama", 101.0) is None
    assert health.cooling_until("k1", "mixtral", 101.0) is None
    assert health.keys["k1"].status == "ok"  # cooling is not a key status


def test_overlapping_cooldowns_end_at_the_latest_deadline() -> None:
    health = fold(
        KeyHealth(),
        [
            failed("rate_limited", ts=100.0, retry_after_s=50.0),  # until 150
            failed("rate_limited", ts=110.0, retry_after_s=5.0),  # until 115: must not shorten it
        ],
    )
    assert health.cooling_until("k1", "llama", 120.0) == 150.0
    health.apply(failed("rate_limited", ts=140.0, retry_after_s=30.0))  # until 170: extends it
    assert health.cooling_until("k1", "llama", 160.0) == 170.0


def test_cooldowns_merge_in_any_order() -> None:
    events = [
        failed("rate_limited", ts=100.0, retry_after_s=50.0),
        failed("rate_limited", ts=110.0, retry_after_s=5.0),
        failed("rate_limited", ts=105.0),
        succeeded(ts=120.0, exhausted_for_s=40.0),
    ]
    ends = set()
    for order in (events, events[::-1], [events[1], events[3], events[2], events[0]]):
        health = fold(KeyHealth(rate_limit_cooldown_s=60), order)
        ends.add(health.cooling_until("k1", "llama", 100.0))
    assert ends == {165.0}


# -- Cooling: exhausted rate-limit headers on a success


def test_an_exhausted_success_cools_the_key_for_that_model() -> None:
    health = fold(
        KeyHealth(), [added("k1"), added("k2"), succeeded(ts=500.0, key_id="k1", exhausted_for_s=12.5)]
    )
    assert health.cooling_until("k1", "llama", 500.0) == 512.5
    assert health.cooling_until("k1", "llama", 512.4999) == 512.5
    assert health.cooling_until("k1", "llama", 512.5) is None
    assert health.cooling_until("k1", "mixtral", 501.0) is None
    assert health.cooling_until("k2", "llama", 501.0) is None
    assert health.keys["k1"].status == "ok"


def test_a_success_with_quota_left_cools_nothing() -> None:
    health = fold(KeyHealth(), [added(), succeeded(ts=500.0)])
    assert health.cooling_until("k1", "llama", 500.0) is None


def test_a_success_does_not_shorten_a_429_cooldown() -> None:
    health = fold(
        KeyHealth(),
        [failed("rate_limited", ts=100.0, retry_after_s=60.0), succeeded(ts=101.0, exhausted_for_s=1.0)],
    )
    assert health.cooling_until("k1", "llama", 130.0) == 160.0


# -- An operator's reset


def test_a_reset_lifts_every_cooldown_of_the_key_or_one_model() -> None:
    health = fold(
        KeyHealth(),
        [
            added("k1"),
            added("k2"),
            failed("rate_limited", key_id="k1", model="a", retry_after_s=600.0),
            failed("rate_limited", key_id="k1", model="b", retry_after_s=600.0),
            failed("forbidden", key_id="k1", model="c"),
            failed("rate_limited", key_id="k2", model="a", retry_after_s=600.0),
        ],
    )
    health.apply(CooldownsReset(ts=101.0, key_id="k1", model="a"))
    assert health.cooling_until("k1", "a", 102.0) is None
    assert health.cooling_until("k1", "b", 102.0) == 700.0
    assert health.cooling_until("k2", "a", 102.0) == 700.0  # another key's cooldown stays
    health.apply(CooldownsReset(ts=103.0, key_id="k1"))
    assert health.cooling_until("k1", "b", 104.0) is None
    assert health.forbidden_until("k1", "c", 104.0) is None and health.cooling_until("k1", "c", 104.0) is None
    assert health.cooling_until("k2", "a", 104.0) == 700.0
    health.apply(failed("rate_limited", ts=105.0, key_id="k1", model="a", retry_after_s=10.0))
    assert health.cooling_until("k1", "a", 106.0) == 115.0  # a new 429 after the reset cools again
    assert health.keys["k1"].status == "ok"
