"""Projections folded from events: key health and cooldowns, stats, model overrides; and the promise that a
live fold and a rebuild from the log end in the same state."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.supervisor import rebuild
from events.projections import KeyHealth, KeyInfo, ModelOverride, ModelOverrides, Stats
from events.store import MemoryStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ClientDisconnected,
    Event,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    ModelUpdated,
    RequestCompleted,
    StreamStalled,
)


def fold(projection: KeyHealth | Stats | ModelOverrides, events: Iterable[Event]) -> None:
    for event in events:
        projection.apply(event)


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


def succeeded(platform: str = "groq", model: str = "llama", **kw: float) -> AttemptSucceeded:
    values: dict[str, float] = {"latency_ms": 100.0, "ttfb_ms": 10.0, "input_tokens": 5, "output_tokens": 7}
    values.update(kw)
    return AttemptSucceeded(
        ts=1.0,
        attempt=1,
        platform=platform,
        model=model,
        key_id="k1",
        latency_ms=values["latency_ms"],
        ttfb_ms=values["ttfb_ms"],
        input_tokens=int(values["input_tokens"]),
        output_tokens=int(values["output_tokens"]),
    )


# -- KeyHealth: key status


def test_key_added_is_ok() -> None:
    health = KeyHealth()
    health.apply(added("k1", "groq", label="main"))
    assert health.keys == {"k1": KeyInfo("k1", "groq", "main", "config", "ok", "")}
    assert health.keys_of("groq") == [health.keys["k1"]]
    assert health.keys_of("gemini") == []


def test_key_invalidated_keeps_the_status_and_message() -> None:
    health = KeyHealth()
    fold(health, [added(), KeyInvalidated(ts=1, key_id="k1", status=401, message="Invalid API Key")])
    assert health.keys["k1"].status == "invalid"
    assert health.keys["k1"].reason == "HTTP 401: Invalid API Key"
    health.apply(KeyInvalidated(ts=2, key_id="k1", status=403))
    assert health.keys["k1"].reason == "HTTP 403"


def test_re_announcing_a_key_keeps_its_invalid_status() -> None:
    # Every start re-announces the configured keys: a key the provider rejected must stay rejected.
    health = KeyHealth()
    fold(
        health,
        [
            added("k1", label="old"),
            KeyInvalidated(ts=1, key_id="k1", status=401, message="nope"),
            added("k1", label="new"),
        ],
    )
    assert health.keys["k1"] == KeyInfo("k1", "groq", "new", "config", "invalid", "HTTP 401: nope")


def test_re_announcing_a_key_keeps_it_disabled() -> None:
    health = KeyHealth()
    fold(health, [added(), KeyDisabled(ts=1, key_id="k1", reason="spare"), added()])
    assert health.keys["k1"].status == "disabled"
    assert health.keys["k1"].reason == "spare"


def test_disable_then_enable() -> None:
    health = KeyHealth()
    fold(health, [added(), KeyDisabled(ts=1, key_id="k1", reason="maintenance")])
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("disabled", "maintenance")
    health.apply(KeyEnabled(ts=2, key_id="k1"))
    assert (health.keys["k1"].status, health.keys["k1"].reason) == ("ok", "")


def test_enable_clears_an_invalid_key() -> None:
    health = KeyHealth()
    fold(health, [added(), KeyInvalidated(ts=1, key_id="k1", status=401), KeyEnabled(ts=2, key_id="k1")])
    assert health.keys["k1"].status == "ok"


def test_status_events_for_an_unknown_key_are_ignored() -> None:
    health = KeyHealth()
    fold(
        health,
        [
            KeyDisabled(ts=1, key_id="ghost"),
            KeyEnabled(ts=2, key_id="ghost"),
            KeyInvalidated(ts=3, key_id="ghost", status=401),
        ],
    )
    assert health.keys == {}


def test_other_failures_do_not_touch_the_key() -> None:
    health = KeyHealth()
    health.apply(added())
    for kind in ("auth", "server_error", "connect", "stall_pre", "model_missing", "client_abort"):
        health.apply(failed(kind, retry_after_s=30))
    assert health.keys["k1"].status == "ok"
    assert health.cooling_until("k1", "llama", 100.0) is None


# -- KeyHealth: 429 cooling


def test_rate_limit_cools_for_retry_after() -> None:
    health = KeyHealth(rate_limit_cooldown_s=60)
    health.apply(failed("rate_limited", ts=100.0, retry_after_s=5.0))
    assert health.cooling_until("k1", "llama", 100.0) == 105.0
    assert health.cooling_until("k1", "llama", 104.999) == 105.0


def test_rate_limit_without_retry_after_cools_for_the_default() -> None:
    health = KeyHealth(rate_limit_cooldown_s=42)
    health.apply(failed("rate_limited", ts=100.0))
    assert health.cooling_until("k1", "llama", 100.0) == 142.0
    assert health.cooling_until("k1", "llama", 141.9) == 142.0
    assert health.cooling_until("k1", "llama", 142.0) is None


def test_retry_after_zero_is_not_the_default() -> None:
    health = KeyHealth(rate_limit_cooldown_s=60)
    health.apply(failed("rate_limited", ts=100.0, retry_after_s=0.0))
    assert health.cooling_until("k1", "llama", 100.0) is None


def test_cooling_expires_exactly_at_ts_plus_wait_not_before() -> None:
    health = KeyHealth()
    health.apply(failed("rate_limited", ts=1000.0, retry_after_s=30.0))
    assert health.cooling_until("k1", "llama", 1029.999999) == 1030.0
    assert health.cooling_until("k1", "llama", 1030.0) is None
    assert health.cooling_until("k1", "llama", 1029.0) is None  # expired entries are gone for good


def test_cooling_is_per_key_and_model() -> None:
    health = KeyHealth()
    fold(health, [added("k1"), added("k2")])
    health.apply(failed("rate_limited", ts=100.0, key_id="k1", model="llama", retry_after_s=10))
    assert health.cooling_until("k1", "llama", 101.0) == 110.0
    assert health.cooling_until("k2", "llama", 101.0) is None
    assert health.cooling_until("k1", "mixtral", 101.0) is None
    assert health.keys["k1"].status == "ok"  # cooling is not a key status


def test_overlapping_cooldowns_end_at_the_latest_deadline() -> None:
    health = KeyHealth()
    fold(
        health,
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
    ]
    ends = set()
    for order in (events, events[::-1], [events[1], events[2], events[0]]):
        health = KeyHealth(rate_limit_cooldown_s=60)
        fold(health, order)
        ends.add(health.cooling_until("k1", "llama", 100.0))
    assert ends == {165.0}


# -- Stats


def test_stats_count_successes_and_sums() -> None:
    stats = Stats()
    fold(
        stats, [succeeded(latency_ms=100, ttfb_ms=10), succeeded(latency_ms=300, ttfb_ms=30, output_tokens=3)]
    )
    s = stats.models["groq/llama"]
    assert (s.successes, s.failures, s.total) == (2, 0, 2)
    assert (s.latency_ms_total, s.ttfb_ms_total) == (400.0, 40.0)
    assert (s.input_tokens, s.output_tokens) == (10, 10)


def test_stats_count_failures_by_kind_but_not_client_aborts() -> None:
    stats = Stats()
    fold(
        stats,
        [
            failed("server_error"),
            failed("server_error"),
            failed("rate_limited"),
            failed("client_abort"),
            failed("client_abort", model="other"),
        ],
    )
    s = stats.models["groq/llama"]
    assert s.failures == 3
    assert dict(s.failures_by_kind) == {"server_error": 2, "rate_limited": 1}
    assert "groq/other" not in stats.models  # an abort alone does not even create the model's entry


def test_stats_count_stalls() -> None:
    stats = Stats()
    for phase in ("pre", "mid", "mid"):
        stats.apply(
            StreamStalled(ts=1.0, platform="groq", model="llama", key_id="k1", phase=phase, silent_s=30.0)
        )
    s = stats.models["groq/llama"]
    assert s.stalls == 3
    assert s.total == 0  # a stall event is not an attempt outcome; its AttemptFailed counts


def test_stats_key_models_by_platform_and_id() -> None:
    stats = Stats()
    fold(
        stats,
        [succeeded("groq", "llama"), succeeded("cerebras", "llama"), failed("connect", platform="groq")],
    )
    assert set(stats.models) == {"groq/llama", "cerebras/llama"}
    assert stats.models["groq/llama"].total == 2
    assert stats.models["cerebras/llama"].total == 1


def test_stats_ignore_other_events() -> None:
    stats = Stats()
    fold(
        stats,
        [
            added(),
            AttemptStarted(ts=1, attempt=1, platform="groq", model="llama", key_id="k1"),
            ClientDisconnected(ts=2, platform="groq", model="llama"),
            RequestCompleted(ts=3, outcome="ok", status=200, attempts=1, latency_ms=5, platform="groq"),
        ],
    )
    assert stats.models == {}


# -- ModelOverrides


def test_model_overrides_merge_field_by_field() -> None:
    overrides = ModelOverrides()
    overrides.apply(ModelUpdated(ts=1, platform="groq", model="llama", enabled=False))
    assert overrides.by_ref == {"groq/llama": ModelOverride(enabled=False)}
    overrides.apply(ModelUpdated(ts=2, platform="groq", model="llama", pool="fast"))
    assert overrides.by_ref["groq/llama"] == ModelOverride(enabled=False, pool="fast")
    overrides.apply(ModelUpdated(ts=3, platform="groq", model="llama", enabled=True, fallback=False))
    assert overrides.by_ref["groq/llama"] == ModelOverride(enabled=True, fallback=False, pool="fast")
    overrides.apply(ModelUpdated(ts=4, platform="groq", model="llama"))  # nothing set: nothing changes
    assert overrides.by_ref["groq/llama"] == ModelOverride(enabled=True, fallback=False, pool="fast")


def test_model_overrides_are_per_platform_and_id() -> None:
    overrides = ModelOverrides()
    overrides.apply(ModelUpdated(ts=1, platform="groq", model="meta/llama", enabled=False))
    overrides.apply(ModelUpdated(ts=1, platform="openrouter", model="meta/llama", pool="smart"))
    overrides.apply(added())
    assert overrides.by_ref == {
        "groq/meta/llama": ModelOverride(enabled=False),
        "openrouter/meta/llama": ModelOverride(pool="smart"),
    }


# -- Live fold == rebuild from the log

KEYS = ("k1", "k2", "k3")
MODELS = ("llama", "mixtral")
PLATFORMS = ("groq", "gemini")
KINDS = ("rate_limited", "server_error", "auth", "client_abort", "connect", "stall_mid", "future_kind")

_ts = st.floats(min_value=0, max_value=1000, allow_nan=False)
_key = st.sampled_from(KEYS)
_model = st.sampled_from(MODELS)
_platform = st.sampled_from(PLATFORMS)
_event = st.one_of(
    st.builds(
        KeyAdded,
        ts=_ts,
        key_id=_key,
        platform=_platform,
        label=st.text(max_size=4),
        source=st.sampled_from(["config", "env", "vault"]),
    ),
    st.builds(KeyDisabled, ts=_ts, key_id=_key, reason=st.text(max_size=4)),
    st.builds(KeyEnabled, ts=_ts, key_id=_key),
    st.builds(
        KeyInvalidated, ts=_ts, key_id=_key, status=st.sampled_from([401, 403]), message=st.text(max_size=4)
    ),
    st.builds(
        AttemptFailed,
        ts=_ts,
        attempt=st.integers(1, 3),
        platform=_platform,
        model=_model,
        key_id=_key,
        kind=st.sampled_from(KINDS),
        retry_after_s=st.none() | st.floats(min_value=0, max_value=500, allow_nan=False),
    ),
    st.builds(
        AttemptSucceeded,
        ts=_ts,
        attempt=st.integers(1, 3),
        platform=_platform,
        model=_model,
        key_id=_key,
        latency_ms=st.floats(0, 1e4),
        ttfb_ms=st.floats(0, 1e4),
        input_tokens=st.integers(0, 10**6),
        output_tokens=st.integers(0, 10**6),
    ),
    st.builds(
        StreamStalled,
        ts=_ts,
        platform=_platform,
        model=_model,
        key_id=_key,
        phase=st.sampled_from(["pre", "mid"]),
        silent_s=st.floats(0, 100),
    ),
    st.builds(
        ModelUpdated,
        ts=_ts,
        platform=_platform,
        model=_model,
        enabled=st.none() | st.booleans(),
        fallback=st.none() | st.booleans(),
        pool=st.none() | st.sampled_from(["fast", "smart"]),
    ),
    st.builds(ClientDisconnected, ts=_ts, platform=st.none() | _platform, model=st.none() | _model),
)


def observable(health: KeyHealth, overrides: ModelOverrides, stats: Stats, now: float) -> object:
    cooling = {(k, m): health.cooling_until(k, m, now) for k in KEYS for m in MODELS}
    by_platform = {p: health.keys_of(p) for p in PLATFORMS}
    counters = {
        ref: (
            s.successes,
            s.failures,
            dict(s.failures_by_kind),
            s.latency_ms_total,
            s.ttfb_ms_total,
            s.input_tokens,
            s.output_tokens,
            s.stalls,
        )
        for ref, s in stats.models.items()
    }
    return health.keys, by_platform, cooling, dict(overrides.by_ref), counters


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_event, max_size=6), max_size=8),
    now=st.floats(min_value=0, max_value=1600, allow_nan=False),
)
def test_live_fold_equals_rebuild_from_the_log(batches: list[list[Event]], now: float) -> None:
    live = (KeyHealth(rate_limit_cooldown_s=60), ModelOverrides(), Stats())
    store = MemoryStore()
    for batch in batches:
        store.append(batch)
        for event in batch:
            for projection in live:
                projection.apply(event)

    rebuilt = (KeyHealth(rate_limit_cooldown_s=60), ModelOverrides(), Stats())
    count = rebuild(store, *rebuilt)

    assert count == sum(len(b) for b in batches)
    assert observable(*live, now) == observable(*rebuilt, now)
