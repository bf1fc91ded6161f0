"""Per-model cooldowns (transient once every usable key failed, model missing) and the 429 penalty."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.cooldowns import Cooldowns
from events.key_health import KeyHealth
from events.policy import RoutingPolicy
from events.types import (
    AttemptFailed,
    AttemptSucceeded,
    CooldownsReset,
    Event,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
)

REF = "groq/llama"


class Model:
    """Key health and cooldowns fed together, health first (as the routing view does)."""

    def __init__(self, *keys: str, policy: RoutingPolicy | None = None) -> None:
        self.policy = policy or RoutingPolicy()
        self.health = KeyHealth(self.policy.rate_limit_cooldown_s)
        self.cooldowns = Cooldowns(self.policy, self.health)
        for key_id in keys:
            self.apply(KeyAdded(ts=0.0, key_id=key_id, platform="groq", label=key_id, source="config"))

    def apply(self, *events: Event) -> None:
        for event in events:
            self.health.apply(event)
            self.cooldowns.apply(event)

    def cooling(self, now: float, ref: str = REF) -> tuple[float, str] | None:
        return self.cooldowns.cooling(ref, now)

    def penalty(self, now: float, ref: str = REF) -> float:
        return self.cooldowns.penalty(ref, now)


def failed(
    kind: str,
    ts: float,
    key_id: str = "k1",
    *,
    model: str = "llama",
    platform: str = "groq",
    retry_after_s: float | None = None,
) -> AttemptFailed:
    return AttemptFailed(
        ts=ts,
        request_id="r",
        attempt=1,
        platform=platform,
        model=model,
        key_id=key_id,
        kind=kind,
        retry_after_s=retry_after_s,
    )


def succeeded(ts: float, key_id: str = "k1", model: str = "llama") -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=ts,
        request_id="r",
        attempt=1,
        platform="groq",
        model=model,
        key_id=key_id,
        latency_ms=100.0,
        ttfb_ms=10.0,
        input_tokens=1,
        output_tokens=1,
    )


# -- Transient cooldown


def test_one_key_failing_is_not_the_model_failing() -> None:
    m = Model("k1", "k2", "k3")
    m.apply(failed("server_error", 100.0, "k1"), failed("connect", 101.0, "k2"))
    assert m.cooling(102.0) is None


@pytest.mark.parametrize("kind", ["server_error", "connect", "stall_pre", "stall_mid"])
def test_the_model_cools_once_every_usable_key_failed_within_the_window(kind: str) -> None:
    m = Model("k1", "k2")
    m.apply(failed(kind, 100.0, "k1"), failed(kind, 130.0, "k2"))
    cooling = m.cooling(130.0)
    assert cooling is not None
    until, reason = cooling
    assert until == 130.0 + 15.0
    assert reason.startswith("transient: every key failed") and kind in reason


def test_a_transient_cooldown_expires_exactly() -> None:
    m = Model("k1")
    m.apply(failed("server_error", 100.0))
    assert m.cooling(114.999)[0] == 115.0  # type: ignore[index]
    assert m.cooling(115.0) is None
    assert m.cooling(99.0) is not None  # a read does not consume the cooldown


@pytest.mark.parametrize(
    "kind",
    [
        "rate_limited",
        "auth",
        "bad_request",
        "context_exceeded",
        "truncated",
        "empty",
        "client_abort",
        "a_kind_from_the_future",
    ],
)
def test_other_failures_do_not_cool_the_model(kind: str) -> None:
    m = Model("k1")
    m.apply(failed(kind, 100.0, retry_after_s=1.0))
    assert m.cooling(100.0) is None


def test_failures_outside_the_window_do_not_add_up() -> None:
    m = Model("k1", "k2")
    m.apply(failed("server_error", 100.0, "k1"), failed("server_error", 160.0, "k2"))  # 60 s apart: too old
    assert m.cooling(160.0) is None
    m.apply(failed("server_error", 219.999, "k1"))  # within 60 s of k2's failure
    assert m.cooling(220.0) == (234.999, m.cooling(220.0)[1])  # type: ignore[index]


def test_a_success_in_between_resets_the_count() -> None:
    m = Model("k1", "k2")
    m.apply(failed("server_error", 100.0, "k1"), succeeded(101.0, "k1"), failed("server_error", 102.0, "k2"))
    assert m.cooling(102.0) is None
    m.apply(failed("server_error", 103.0, "k1"))
    assert m.cooling(103.0) is not None


def test_a_success_of_another_model_does_not_reset_the_count() -> None:
    m = Model("k1", "k2")
    m.apply(
        failed("server_error", 100.0, "k1"),
        succeeded(101.0, "k1", model="other"),
        failed("server_error", 102.0, "k2"),
    )
    assert m.cooling(102.0) is not None
    assert m.cooling(102.0, "groq/other") is None


def test_invalid_and_disabled_keys_need_not_fail() -> None:
    m = Model("k1", "k2", "k3")
    m.apply(KeyInvalidated(ts=1.0, key_id="k2", status=401), KeyDisabled(ts=1.0, key_id="k3"))
    m.apply(failed("connect", 100.0, "k1"))
    assert m.cooling(100.0) is not None


def test_a_rate_limited_key_is_still_usable_and_must_fail_too() -> None:
    m = Model("k1", "k2")
    m.apply(failed("rate_limited", 99.0, "k2", retry_after_s=30.0))
    m.apply(failed("server_error", 100.0, "k1"))
    assert m.cooling(100.0) is None


def test_after_a_cooldown_every_key_must_fail_again() -> None:
    m = Model("k1", "k2")
    m.apply(failed("server_error", 100.0, "k1"), failed("server_error", 101.0, "k2"))
    assert m.cooling(101.0) is not None
    m.apply(failed("server_error", 120.0, "k1"))
    assert m.cooling(120.0) is None
    m.apply(failed("server_error", 121.0, "k2"))
    assert m.cooling(121.0)[0] == 136.0  # type: ignore[index]


def test_the_cooldown_length_is_policy() -> None:
    m = Model("k1", policy=RoutingPolicy(transient_cooldown_s=0.001))
    m.apply(failed("server_error", 100.0))
    assert m.cooling(100.0)[0] == 100.001  # type: ignore[index]
    assert m.cooling(100.001) is None


def test_cooldowns_are_per_platform_and_model() -> None:
    m = Model("k1")
    m.apply(KeyAdded(ts=0.0, key_id="c1", platform="cerebras", label="c1", source="env"))
    m.apply(failed("server_error", 100.0, "k1"))
    assert m.cooling(100.0) is not None
    assert m.cooling(100.0, "groq/mixtral") is None
    assert m.cooling(100.0, "cerebras/llama") is None


# -- Model missing


def test_a_404_cools_the_model_on_that_platform_for_an_hour() -> None:
    m = Model("k1", "k2")
    m.apply(KeyAdded(ts=0.0, key_id="c1", platform="cerebras", label="c1", source="env"))
    m.apply(failed("model_missing", 100.0, "k1"))  # one key is enough: the model is not there
    until, reason = m.cooling(100.0)  # type: ignore[misc]
    assert until == 3700.0
    assert "404" in reason
    assert m.cooling(3699.999) is not None
    assert m.cooling(3700.0) is None
    assert m.cooling(100.0, "cerebras/llama") is None


def test_cooldowns_end_at_the_latest_deadline() -> None:
    m = Model("k1")
    m.apply(failed("model_missing", 100.0), failed("server_error", 200.0))
    until, reason = m.cooling(200.0)  # type: ignore[misc]
    assert until == 3700.0 and "404" in reason
    m2 = Model("k1")
    m2.apply(failed("server_error", 200.0), failed("model_missing", 100.0))  # any order
    assert m2.cooling(200.0) == (until, reason)


# -- 429 penalty


def test_no_penalty_while_another_key_is_free() -> None:
    m = Model("k1", "k2")
    m.apply(failed("rate_limited", 100.0, "k1", retry_after_s=30.0))
    assert m.penalty(100.0) == 0.0


def test_a_penalty_once_every_key_is_cooling_then_three_per_429_capped() -> None:
    m = Model("k1", "k2")
    m.apply(failed("rate_limited", 100.0, "k1", retry_after_s=300.0))
    m.apply(failed("rate_limited", 100.0, "k2", retry_after_s=300.0))
    assert m.penalty(100.0) == 3.0
    m.apply(failed("rate_limited", 100.0, "k1", retry_after_s=300.0))
    assert m.penalty(100.0) == 6.0
    m.apply(failed("rate_limited", 100.0, "k2", retry_after_s=300.0))
    m.apply(failed("rate_limited", 100.0, "k2", retry_after_s=300.0))
    assert m.penalty(100.0) == 10.0  # 15, capped
    assert m.cooling(100.0) is None  # a penalty, not a cooldown


def test_invalid_keys_do_not_hold_back_the_penalty() -> None:
    m = Model("k1", "k2")
    m.apply(KeyInvalidated(ts=1.0, key_id="k2", status=401))
    m.apply(failed("rate_limited", 100.0, "k1"))
    assert m.penalty(100.0) == 3.0


def test_a_429_that_cools_nothing_adds_no_penalty() -> None:
    m = Model("k1")
    m.apply(failed("rate_limited", 100.0, retry_after_s=0.0))
    assert m.penalty(100.0) == 0.0


def test_the_penalty_decays_one_point_per_two_minutes() -> None:
    m = Model("k1")
    m.apply(failed("rate_limited", 1000.0, retry_after_s=10.0))
    assert m.penalty(1000.0) == 3.0
    assert m.penalty(1060.0) == pytest.approx(2.5)
    assert m.penalty(1120.0) == pytest.approx(2.0)
    assert m.penalty(1360.0) == 0.0
    assert m.penalty(99_999.0) == 0.0


def test_a_success_takes_one_point_off() -> None:
    m = Model("k1")
    m.apply(failed("rate_limited", 1000.0, retry_after_s=10.0))
    m.apply(succeeded(1000.0))
    assert m.penalty(1000.0) == 2.0
    m.apply(succeeded(1120.0))  # decayed to 1, then one off
    assert m.penalty(1120.0) == 0.0
    m.apply(succeeded(1200.0))
    assert m.penalty(1200.0) == 0.0  # never negative


def test_a_new_429_adds_to_the_decayed_penalty() -> None:
    m = Model("k1")
    m.apply(failed("rate_limited", 1000.0, retry_after_s=10.0))
    m.apply(failed("rate_limited", 1240.0, retry_after_s=10.0))  # 3 decayed to 1, plus 3
    assert m.penalty(1240.0) == pytest.approx(4.0)
    assert m.penalty(1480.0) == pytest.approx(2.0)


# -- penalties(now): every model with points left, read from the index of penalised models

MODELS = ("llama", "gemma")
_step = st.tuples(
    st.sampled_from(["rate_limited"] * 4 + ["success"] * 2 + ["server_error", "key"]),
    st.sampled_from(MODELS),
    st.sampled_from(["k1", "k2"]),
    st.sampled_from([0.0, 0.0, 0.001, 0.5, 10.0, 59.9, 60.0, 119.0, 120.0, 400.0, 1500.0]),  # since the last
    st.sampled_from([None, None, 0.0, 1.0, 300.0]),  # retry-after of a 429
)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(_step, min_size=1, max_size=40),
    later=st.lists(st.floats(0.0, 3000.0), max_size=4),
    policy=st.sampled_from(
        [RoutingPolicy(), RoutingPolicy(penalty_per_429=2.5, penalty_cap=4.0, penalty_decay_s=7.0)]
    ),
)
def test_penalties_are_every_model_with_points_left(
    steps: list[tuple[str, str, str, float, float | None]], later: list[float], policy: RoutingPolicy
) -> None:
    m = Model("k1", "k2", policy=policy)
    refs = [f"groq/{model}" for model in MODELS]

    def check(now: float) -> None:
        expected = {ref: m.penalty(now, ref) for ref in refs if m.penalty(now, ref) > 0.0}
        assert m.cooldowns.penalties(now) == expected  # exact: the same formula

    ts = 1_750_000_000.0
    for kind, model, key_id, gap, retry_after_s in steps:
        ts += gap
        if kind == "success":
            m.apply(succeeded(ts, key_id, model))
        elif kind == "key":  # a key leaves or rejoins rotation: whether every usable key is cooling changes
            m.apply(KeyDisabled(ts=ts, key_id=key_id) if key_id == "k2" else KeyEnabled(ts=ts, key_id="k2"))
        else:
            m.apply(failed(kind, ts, key_id, model=model, retry_after_s=retry_after_s))
        for dt in (0.0, 1.0, 60.0):
            check(ts + dt)
    for dt in later:
        check(ts + dt)


def test_penalties_agree_with_penalty_at_the_instant_the_points_run_out() -> None:
    m = Model("k1")
    m.apply(failed("rate_limited", 1000.0), failed("rate_limited", 1001.0))  # 3 - 1/120 + 3 points at 1001
    end = 1001.0 + (6.0 - 1.0 / 120.0) * 120.0
    assert end == 1720.0
    assert m.cooldowns.penalties(end) == ({REF: m.penalty(end)} if m.penalty(end) > 0.0 else {})


def test_a_reset_of_one_model_lifts_its_own_cooldown_on_the_keys_platform() -> None:
    m = Model("k1")
    m.apply(failed("server_error", 100.0))  # the only key failed: the model cools
    assert m.cooling(101.0) is not None
    m.apply(CooldownsReset(ts=101.0, key_id="k1"))  # every model of the key: key cooldowns only
    assert m.cooling(102.0) is not None
    m.apply(CooldownsReset(ts=102.0, key_id="k1", model="other"))
    assert m.cooling(103.0) is not None
    m.apply(CooldownsReset(ts=103.0, key_id="k1", model="llama"))
    assert m.cooling(104.0) is None
    m.apply(CooldownsReset(ts=104.0, key_id="unknown", model="llama"))  # no such key: nothing to do
    m.apply(failed("server_error", 105.0))
    assert m.cooling(106.0) is not None  # its failures count afresh
