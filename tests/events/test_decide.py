"""The routing decision: `decide(view, input, now, rng)` is pure. Which models and keys it considers, what it
leaves out and why, the pools of each mode, named models, and the promise that the same view, input, time
and seed give the same decision -- the one an exhaustive argmax over the sampled scores would give."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable

import pytest
from builders import model
from hypothesis import given, settings
from hypothesis import strategies as st

import events.decide as decide_module
from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from events.decide import Decision, UnknownModel, _group, _Parts, decide, mean_scores
from events.policy import RoutingPolicy
from events.quotas import Limits, over_limit
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    Excluded,
    ExclusionCode,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    ModelUpdated,
    RouteInput,
    SessionBanned,
    SessionPinned,
    decode_event,
    encode_event,
)
from events.view import POOL_REASON, RoutingView

NOW = 1_000_000.0


# Lower intelligence_rank is smarter, lower speed_rank is faster.
SMART = model("longcat", "flash-chat", pool="smart", intelligence=1, speed=40)
BIG = model("groq", "llama-70b", intelligence=2, speed=20)
OWL = model("openrouter", "owl/alpha", pool="smart", intelligence=3, speed=60)
MID = model("gemini", "flash", intelligence=4, speed=10)
FAST = model("cerebras", "llama-8b", pool="fast", intelligence=9, speed=1)
FAST2 = model("groq", "llama-8b", pool="fast", intelligence=8, speed=2)
HIDDEN = model("groq", "whisper", fallback=False, intelligence=5, speed=5)  # not in the chain
OFF = model("gemini", "pro", enabled=False, intelligence=0, speed=0)
CATALOG = (MID, FAST, OWL, BIG, SMART, FAST2, HIDDEN, OFF)
ALL_KEYS = (("lc1", "longcat"), ("g1", "groq"), ("or1", "openrouter"), ("gm1", "gemini"), ("c1", "cerebras"))
SEEDS = range(40)


def make_view(
    models: Iterable[CatalogModel] = CATALOG,
    keys: Iterable[tuple[str, str]] = ALL_KEYS,
    policy: RoutingPolicy | None = None,
    events: Iterable[Event] = (),
) -> RoutingView:
    view = RoutingView(models, policy or RoutingPolicy())
    feed(view, *(KeyAdded(ts=0.0, key_id=k, platform=p, label=k, source="config") for k, p in keys))
    feed(view, *events)
    return view


def feed(view: RoutingView, *events: Event) -> None:
    for event in events:
        view.apply(view.seq + 1, event)


def route_input(*requested: str, **kw: object) -> RouteInput:
    names = [ALIASES.get(n, n) for n in requested]
    mode = next((n for n in names if n in VIRTUAL_MODELS), "auto")
    return RouteInput(mode=mode, requested=tuple(requested), **kw)  # type: ignore[arg-type]


def route(view: RoutingView, *requested: str, now: float = NOW, seed: int = 0, **kw: object) -> Decision:
    return decide(view, route_input(*requested, **kw), now, random.Random(seed))


def reasons(d: Decision) -> dict[str, list[tuple[str, float | None]]]:
    out: dict[str, list[tuple[str, float | None]]] = {}
    for e in d.excluded:
        out.setdefault(e.ref, []).append((e.reason, e.until))
    return out


def refs(d: Decision) -> list[str]:
    return [c.ref for c in d.candidates]


def rate_limited(m: CatalogModel, key_id: str, ts: float, wait: float | None) -> AttemptFailed:
    return AttemptFailed(
        ts=ts,
        request_id="x",
        attempt=1,
        platform=m.platform,
        model=m.id,
        key_id=key_id,
        kind="rate_limited",
        status=429,
        retry_after_s=wait,
    )


def failed(m: CatalogModel, key_id: str, ts: float, kind: str = "server_error") -> AttemptFailed:
    return AttemptFailed(
        ts=ts, request_id="x", attempt=1, platform=m.platform, model=m.id, key_id=key_id, kind=kind
    )


def started(
    m: CatalogModel, key_id: str, ts: float, request_id: str = "s", reserved: int = 0
) -> AttemptStarted:
    return AttemptStarted(
        ts=ts,
        request_id=request_id,
        attempt=1,
        platform=m.platform,
        model=m.id,
        key_id=key_id,
        reserved_tokens=reserved,
    )


def succeeded(
    m: CatalogModel,
    key_id: str,
    ts: float,
    *,
    ttfb_ms: float = 200.0,
    latency_ms: float = 1200.0,
    output_tokens: int = 100,
) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=ts,
        request_id="ok",
        attempt=1,
        platform=m.platform,
        model=m.id,
        key_id=key_id,
        latency_ms=latency_ms,
        ttfb_ms=ttfb_ms,
        input_tokens=10,
        output_tokens=output_tokens,
    )


# -- A fresh install routes in every mode


@pytest.mark.parametrize(
    "mode", ["auto", "auto-fast", "auto-smart", "freellmapi/auto", "freellmapi/auto-smart"]
)
def test_a_fresh_install_routes_in_every_mode(mode: str) -> None:
    view = make_view()
    for seed in SEEDS:
        d = route(view, mode, seed=seed)
        assert d.chosen is not None and d.chosen_key is not None
        assert d.chosen_key in {k for k, p in ALL_KEYS if p == d.chosen.platform}
        assert d.candidates and d.candidates_total >= len(d.candidates)


def test_no_model_named_means_auto() -> None:
    view = make_view()
    for seed in range(10):
        assert route(view, seed=seed) == route(view, "auto", seed=seed)


@pytest.mark.parametrize(("alias", "mode"), sorted(ALIASES.items()))
def test_aliases_decide_like_their_mode(alias: str, mode: str) -> None:
    view = make_view()
    for seed in range(10):
        assert route(view, alias, seed=seed) == route(view, mode, seed=seed)


def test_a_fresh_install_routes_an_explicit_model() -> None:
    view = make_view()
    d = route(view, "flash")
    assert (d.chosen, d.chosen_key) == (MID, "gm1")
    assert d.candidates[0].ref == MID.ref and d.candidates[0].named


def test_score_parts_add_up() -> None:
    view = make_view(
        events=[
            succeeded(BIG, "g1", NOW - 100, ttfb_ms=300.0),
            rate_limited(MID, "gm1", NOW - 10, 1.0),  # MID's only key: a 3-point penalty
        ]
    )
    p = view.policy
    for mode in ("auto", "auto-smart"):
        d = route(view, mode, now=NOW, seed=3)
        assert d.candidates
        for c in d.candidates:
            assert 0.0 < c.theta < 1.0
            if mode == "auto-smart":
                fixed = (
                    p.smart_intelligence * c.intelligence + p.smart_speed * c.speed + p.smart_ttfb * c.ttfb
                )
            else:
                fixed = c.speed + c.ttfb + p.intelligence_weight * c.intelligence
            assert c.score == pytest.approx(c.theta + fixed - c.penalty, abs=1e-5)
    parts = {
        c.ref: c for c in route(view, "llama-70b", "flash", "flash-chat", "llama-8b", now=NOW).candidates
    }
    assert parts[SMART.ref].intelligence == 1.0  # the smartest enabled model
    assert parts[FAST.ref].intelligence == 0.0  # the least smart
    assert parts[BIG.ref].intelligence == pytest.approx(7 / 8)
    assert parts[BIG.ref].ttfb == p.ttfb_bonus  # 300 ms: fast first byte
    assert parts[SMART.ref].ttfb == 0.0  # no data: neutral
    assert parts[MID.ref].penalty == pytest.approx(
        (3 - 10 / 120) * p.penalty_weight, abs=1e-6
    )  # decayed 10 s
    assert parts[SMART.ref].penalty == 0.0
    # No speed data: 400 tok/s at speed rank 1, 200 at rank 2, ...
    assert parts[FAST.ref].speed == pytest.approx(p.speed_weight)
    assert parts[FAST2.ref].speed == pytest.approx(p.speed_weight / 2)


@pytest.mark.parametrize(
    ("ttfb_ms", "term"),
    [
        (100.0, 0.25),
        (500.0, 0.25),
        (1250.0, 0.125),
        (2000.0, 0.0),
        (6000.0, -0.25),
        (10_000.0, -0.5),
        (60_000.0, -0.5),
    ],
)
def test_the_ttfb_term(ttfb_ms: float, term: float) -> None:
    view = make_view(events=[succeeded(MID, "gm1", NOW - 1, ttfb_ms=ttfb_ms, latency_ms=ttfb_ms + 1000)])
    assert route(view, "flash").candidates[0].ttfb == pytest.approx(term)


def test_a_slow_model_is_penalised_below_slow_tps() -> None:
    view = make_view(
        events=[succeeded(MID, "gm1", NOW - 1, ttfb_ms=0.0, latency_ms=20_000.0, output_tokens=100)]
    )
    p = view.policy
    tps = 5.0
    expected = p.speed_weight * tps / 400.0 - p.slow_penalty * (1 - tps / p.slow_tps)
    assert route(view, "flash").candidates[0].speed == pytest.approx(expected)


def test_the_bandit_prefers_the_model_that_succeeds() -> None:
    good = model("groq", "good")
    bad = model("groq", "bad")
    history: list[Event] = []
    for i in range(60):
        history.append(succeeded(good, "g1", NOW - 3600 + i, ttfb_ms=0.0, latency_ms=1000.0))
        history.append(failed(bad, "g1", NOW - 3600 + i))
    # The same speed for both, so only theta differs.
    history.append(succeeded(bad, "g1", NOW - 3000, ttfb_ms=0.0, latency_ms=1000.0))
    view = make_view([bad, good], [("g1", "groq")], events=history)
    assert {route(view, "auto", seed=s).chosen_ref for s in SEEDS} == {good.ref}


# -- Pools


def test_auto_leaves_the_smart_pool_out_with_a_reason() -> None:
    view = make_view()
    for seed in SEEDS:
        d = route(view, "auto", seed=seed)
        assert d.chosen is not None and d.chosen.pool != "smart"
        why = reasons(d)
        for m in (SMART, OWL):
            ((reason, until),) = why[m.ref]
            assert reason.startswith("pool") and until is None
        assert not {SMART.ref, OWL.ref} & set(refs(d))


def test_auto_smart_prefers_smart_models_with_usable_keys() -> None:
    view = make_view()
    assert {route(view, "auto-smart", seed=s).chosen_ref for s in SEEDS} == {SMART.ref, OWL.ref}
    feed(view, KeyInvalidated(ts=NOW, key_id="lc1", status=401))
    assert {route(view, "auto-smart", seed=s).chosen_ref for s in SEEDS} == {OWL.ref}
    feed(view, rate_limited(OWL, "or1", NOW, 30.0))
    chosen = set()
    for seed in SEEDS:
        d = route(view, "auto-smart", seed=seed)
        assert d.chosen is not None and d.chosen.pool != "smart"
        chosen.add(d.chosen_ref)
        # The smart models were scored (they go first) but had no key to offer.
        assert {SMART.ref, OWL.ref} <= set(refs(d))
        why = reasons(d)
        assert ("key lc1 invalid", None) in why[SMART.ref]
        assert ("key or1 rate-limited for 30s", NOW + 30) in why[OWL.ref]
    assert len(chosen) > 1  # the rest compete on score


def test_auto_smart_keeps_the_other_pools_as_fallback() -> None:
    view = make_view(keys=[("g1", "groq"), ("gm1", "gemini")])  # no key for the smart models
    d = route(view, "auto-smart")
    assert d.chosen is not None and d.chosen.pool != "smart"
    assert d.no_key_models == 3  # longcat, openrouter and cerebras have no key


def test_auto_fast_prefers_the_fast_pool() -> None:
    view = make_view()
    assert {route(view, "auto-fast", seed=s).chosen_ref for s in SEEDS} == {FAST.ref, FAST2.ref}
    feed(view, KeyDisabled(ts=NOW, key_id="c1"), rate_limited(FAST2, "g1", NOW, 10.0))
    d = route(view, "auto-fast")
    assert d.chosen is not None and d.chosen.pool != "fast"
    # Both fast models were scored first (and listed first), but neither had a key to offer.
    assert {c.pool for c in d.candidates[:2]} == {"fast"}
    assert d.candidates[0].score >= d.candidates[1].score
    assert route(view, "auto-fast", now=NOW + 10).chosen == FAST2  # its key is back


def test_auto_fast_and_auto_smart_list_their_pool_first() -> None:
    view = make_view()
    for mode, pool in (("auto-fast", "fast"), ("auto-smart", "smart")):
        for seed in range(10):
            d = route(view, mode, seed=seed)
            groups = [0 if c.pool == pool else 1 for c in d.candidates]
            assert groups == sorted(groups)
            assert d.candidates[0].pool == pool


# -- Named models


def test_a_named_model_is_never_dropped_by_a_pool_filter() -> None:
    view = make_view()
    for seed in SEEDS:
        d = route(view, "flash-chat", seed=seed)  # a smart model, in auto
        assert d.chosen == SMART
        d = route(view, "auto-fast", "longcat/flash-chat", seed=seed)
        assert d.chosen == SMART
        assert d.candidates[0].ref == SMART.ref and d.candidates[0].named
        assert all(not c.named for c in d.candidates[1:])


def test_named_models_come_first_in_request_order() -> None:
    view = make_view()
    for seed in range(10):
        d = route(view, "cerebras/llama-8b", "owl/alpha", "flash", seed=seed)
        assert refs(d)[:3] == [FAST.ref, OWL.ref, MID.ref]
        assert [c.named for c in d.candidates[:3]] == [True, True, True]
        assert d.chosen == FAST  # the first that has a key, whatever the scores
        assert OWL.ref not in refs(d)[3:]


def test_the_next_named_model_takes_over_when_the_first_has_no_key() -> None:
    view = make_view(events=[KeyInvalidated(ts=1.0, key_id="c1", status=401)])
    d = route(view, "cerebras/llama-8b", "owl/alpha")
    assert d.chosen == OWL
    assert reasons(d)[FAST.ref] == [("key c1 invalid", None)]


def test_an_excluded_named_model_falls_through_to_the_chain() -> None:
    view = make_view(
        keys=[("g1", "groq"), ("gm1", "gemini")], events=[KeyInvalidated(ts=1, key_id="gm1", status=401)]
    )
    d = route(view, "flash")
    assert d.chosen in (BIG, FAST2)
    assert refs(d)[0] == MID.ref
    assert ("key gm1 invalid", None) in reasons(d)[MID.ref]


def test_use_chain_false_tries_only_the_named_models() -> None:
    view = make_view()
    d = route(view, "flash", "llama-70b", use_chain=False)
    assert refs(d) == [MID.ref, BIG.ref]
    assert d.candidates_total == 2
    d = route(view, "auto", use_chain=False)
    assert (d.candidates, d.chosen, d.chosen_key, d.candidates_total) == ((), None, None, 0)
    view = make_view(events=[KeyInvalidated(ts=1, key_id="gm1", status=401)])
    d = route(view, "flash", use_chain=False)
    assert (d.chosen, d.chosen_key) == (None, None)


def test_a_model_outside_the_chain_can_be_named() -> None:
    view = make_view()
    assert route(view, "groq/whisper").chosen == HIDDEN
    for seed in SEEDS:
        d = route(view, "auto", seed=seed)
        assert HIDDEN.ref not in refs(d) and d.chosen != HIDDEN


def test_duplicates_are_removed_keeping_the_first_place() -> None:
    view = make_view()
    d = route(view, "flash", "gemini/flash", "auto", "flash")
    assert [c.ref for c in d.candidates if c.named] == [MID.ref]
    assert len(set(refs(d))) == len(refs(d))


def test_the_same_id_on_two_platforms_is_tried_smartest_first() -> None:
    view = make_view()
    d = route(view, "llama-8b", use_chain=False)
    assert refs(d) == [FAST2.ref, FAST.ref]  # intelligence rank 8 before 9
    assert d.chosen == FAST2


@pytest.mark.parametrize("name", ["nothing", "gemini/pro", "pro", "groq/flash", "gemini"])
def test_unknown_or_disabled_models_raise(name: str) -> None:
    with pytest.raises(UnknownModel, match=name):
        route(make_view(), name)


def test_an_operator_override_disables_and_enables_a_model() -> None:
    view = make_view(events=[ModelUpdated(ts=1, platform="gemini", model="flash", enabled=False)])
    with pytest.raises(UnknownModel):
        route(view, "flash")
    assert all(MID.ref not in refs(route(view, "auto", seed=s)) for s in range(10))
    feed(view, ModelUpdated(ts=2, platform="gemini", model="pro", enabled=True, pool="fast"))
    assert route(view, "pro").chosen_ref == "gemini/pro"
    assert "gemini/pro" in {route(view, "auto-fast", seed=s).chosen_ref for s in SEEDS}


def test_an_operator_override_takes_a_model_out_of_the_chain() -> None:
    view = make_view(events=[ModelUpdated(ts=1, platform="groq", model="llama-70b", fallback=False)])
    assert all(BIG.ref not in refs(route(view, "auto", seed=s)) for s in SEEDS)
    assert route(view, "llama-70b").chosen_ref == BIG.ref


# -- Exclusions


def test_a_platform_without_keys_is_counted_not_listed() -> None:
    view = make_view(keys=[("g1", "groq")])
    d = route(view, "auto")
    assert d.no_key_models == 2  # gemini/flash and cerebras/llama-8b; the smart ones are out by pool first
    assert d.candidates_total == 2
    assert set(refs(d)) == {BIG.ref, FAST2.ref}
    assert set(reasons(d)) == {SMART.ref, OWL.ref}


def test_invalid_and_disabled_keys_are_excluded_with_reasons() -> None:
    view = make_view(
        keys=[("g1", "groq"), ("g2", "groq"), ("gm1", "gemini")],
        events=[
            KeyInvalidated(ts=1, key_id="g1", status=401),
            KeyDisabled(ts=1, key_id="g2"),
            KeyInvalidated(ts=1, key_id="gm1", status=403),
        ],
    )
    d = route(view, "flash", "llama-70b", use_chain=False)
    assert (d.chosen, d.chosen_key) == (None, None)
    assert reasons(d) == {
        MID.ref: [("key gm1 invalid", None)],
        BIG.ref: [("key g1 invalid", None), ("key g2 disabled", None)],
    }


def test_only_usable_keys_are_chosen() -> None:
    view = make_view(
        keys=[("g1", "groq"), ("g2", "groq"), ("g3", "groq")],
        events=[KeyInvalidated(ts=1, key_id="g2", status=401)],
    )
    assert {route(view, "groq/llama-70b", seed=s).chosen_key for s in SEEDS} == {"g1", "g3"}
    feed(view, KeyChecked(ts=2, key_id="g2", ok=True, status=200))  # a passing health check restores it
    assert {route(view, "groq/llama-70b", seed=s).chosen_key for s in SEEDS} == {"g1", "g2", "g3"}


def test_rate_limited_keys_are_excluded_until_their_deadline() -> None:
    view = make_view(
        keys=[("g1", "groq"), ("g2", "groq"), ("g3", "groq")],
        events=[
            rate_limited(BIG, "g1", NOW - 10, 40.0),  # until NOW + 30
            rate_limited(BIG, "g2", NOW, 20.0),  # until NOW + 20
            KeyInvalidated(ts=1, key_id="g3", status=401),
        ],
    )
    d = route(view, "groq/llama-70b", use_chain=False)
    assert d.chosen is None
    assert reasons(d)[BIG.ref] == [
        ("key g1 rate-limited for 30s", NOW + 30),
        ("key g2 rate-limited for 20s", NOW + 20),
        ("key g3 invalid", None),
    ]
    assert route(view, "groq/llama-70b", use_chain=False, now=NOW + 19.9).chosen is None
    assert route(view, "groq/llama-70b", use_chain=False, now=NOW + 20).chosen_key == "g2"
    assert {route(view, "groq/llama-70b", now=NOW + 30, seed=s).chosen_key for s in SEEDS} == {"g1", "g2"}


def test_key_cooling_is_per_model() -> None:
    view = make_view(keys=[("g1", "groq")], events=[rate_limited(BIG, "g1", NOW, 30.0)])
    d = route(view, "llama-70b", "llama-8b")
    assert (d.chosen, d.chosen_key) == (FAST2, "g1")
    assert reasons(d)[BIG.ref] == [("key g1 rate-limited for 30s", NOW + 30)]


def test_an_exhausted_key_is_left_out_until_its_reset() -> None:
    exhausted = AttemptSucceeded(
        ts=NOW,
        request_id="r",
        attempt=1,
        platform="groq",
        model="llama-70b",
        key_id="g1",
        latency_ms=1.0,
        ttfb_ms=1.0,
        input_tokens=1,
        output_tokens=1,
        exhausted_for_s=7.0,
    )
    view = make_view(keys=[("g1", "groq"), ("g2", "groq")], events=[exhausted])
    assert {route(view, "llama-70b", seed=s).chosen_key for s in SEEDS} == {"g2"}
    assert {route(view, "llama-70b", now=NOW + 7, seed=s).chosen_key for s in SEEDS} == {"g1", "g2"}


def test_a_cooling_model_is_excluded_with_until() -> None:
    view = make_view(events=[failed(MID, "gm1", NOW - 5)])  # its only key failed: transient cooldown
    d = route(view, "flash")
    ((reason, until),) = reasons(d)[MID.ref]
    assert until == NOW + 10
    assert reason.startswith("cooling for 10s (transient")
    assert d.chosen != MID
    assert MID.ref not in refs(d)
    assert route(view, "flash", now=NOW + 10).chosen == MID


def test_a_missing_model_is_excluded_for_an_hour() -> None:
    view = make_view(events=[failed(BIG, "g1", NOW, kind="model_missing")])
    d = route(view, "groq/llama-70b", use_chain=False)
    assert d.chosen is None
    ((reason, until),) = reasons(d)[BIG.ref]
    assert until == NOW + 3600 and "404" in reason
    assert route(view, "groq/llama-70b", use_chain=False, now=NOW + 3600).chosen == BIG


def test_quota_exclusions_say_which_limit_and_when_it_frees() -> None:
    limited = model("groq", "limited", limits=Limits(rpm=2, tpm=10_000))
    view = make_view(
        [limited],
        [("g1", "groq")],
        events=[
            started(limited, "g1", NOW - 50, "a"),
            started(limited, "g1", NOW - 20, "b"),
        ],
    )
    d = route(view, "limited")
    assert d.chosen is None
    assert reasons(d)[limited.ref] == [("key g1 quota: 2/2 requests this minute", NOW + 10)]
    assert route(view, "limited", now=NOW + 10).chosen == limited


def test_quota_counts_the_request_reservation() -> None:
    limited = model("groq", "limited", limits=Limits(tpm=10_000))
    view = make_view(
        [limited], [("g1", "groq")], events=[started(limited, "g1", NOW - 5, "a", reserved=6000)]
    )
    assert route(view, "limited", est_tokens=2000, reserve_tokens=2000).chosen == limited
    d = route(view, "limited", est_tokens=2000, reserve_tokens=2001)
    assert d.chosen is None
    # The block is the in-flight reservation: it ends when that attempt does, not at a known time.
    assert reasons(d)[limited.ref] == [("key g1 quota: 6000+4001 > 10000 tokens/minute", None)]


def test_context_window_too_small_is_excluded() -> None:
    small = model("groq", "small", context_window=8_000)
    exact = model("groq", "exact", context_window=10_000)
    unknown = model("groq", "unknown", context_window=None)
    view = make_view([small, exact, unknown], [("g1", "groq")])
    d = route(view, "auto", est_tokens=10_000)
    assert reasons(d) == {small.ref: [("context window 8000 < 10000 estimated tokens", None)]}
    assert d.candidates_total == 2
    assert {route(view, "auto", est_tokens=10_000, seed=s).chosen_ref for s in SEEDS} == {
        exact.ref,
        unknown.ref,
    }
    with_small = route(view, "small", est_tokens=10_000)  # naming it does not make it fit
    assert small.ref in reasons(with_small)
    assert with_small.chosen != small


def test_min_context_keeps_only_larger_windows() -> None:
    small = model("groq", "small", context_window=8_000)
    large = model("groq", "large", context_window=32_000)
    view = make_view([small, large], [("g1", "groq")])
    d = route(view, "small", min_context=8_000)
    assert d.chosen == large
    assert reasons(d) == {small.ref: [("context window 8000 not larger than 8000", None)]}
    assert route(view, "auto", min_context=32_000).chosen is None


def test_skip_models_and_skip_platforms_have_reasons() -> None:
    view = make_view()
    d = route(
        view,
        "flash",
        "llama-70b",
        skip_models=((MID.ref, "provider said it does not exist"),),
        skip_platforms=(("groq", "rejected the request: bad"),),
    )
    why = reasons(d)
    assert why[MID.ref] == [("skipped for this request: provider said it does not exist", None)]
    assert why[BIG.ref] == [("platform skipped for this request: rejected the request: bad", None)]
    assert why[FAST2.ref] == [("platform skipped for this request: rejected the request: bad", None)]
    assert d.chosen is not None and d.chosen.platform != "groq" and d.chosen != MID


def test_tried_keys_are_not_tried_again() -> None:
    view = make_view(keys=[("g1", "groq"), ("g2", "groq")])
    for seed in SEEDS:
        d = route(view, "llama-70b", tried=(("g1", BIG.ref),), seed=seed)
        assert (d.chosen, d.chosen_key) == (BIG, "g2")
        assert reasons(d)[BIG.ref] == [("key g1 already tried for this request", None)]
    d = route(view, "llama-70b", tried=(("g1", BIG.ref), ("g2", BIG.ref)), use_chain=False)
    assert d.chosen is None
    # A key tried for one model is still fine for another.
    assert route(view, "groq/llama-8b", tried=(("g1", BIG.ref), ("g2", BIG.ref))).chosen == FAST2


def test_reading_cooldowns_does_not_depend_on_the_order_models_are_checked() -> None:
    a, b = model("groq", "a", intelligence=1), model("groq", "b", intelligence=2)
    view = make_view(
        [a, b], [("g1", "groq")], events=[rate_limited(a, "g1", NOW, 10), rate_limited(b, "g1", NOW, 20)]
    )
    d = route(view, "a", "b", now=NOW + 5)
    assert d.chosen is None
    assert [(e.ref, e.until) for e in d.excluded] == [(a.ref, NOW + 10), (b.ref, NOW + 20)]
    assert route(view, "b", "a", now=NOW + 5).excluded[0].ref == b.ref


# -- Keys


def test_the_key_with_fewer_requests_this_minute_is_preferred() -> None:
    view = make_view(
        keys=[("g1", "groq"), ("g2", "groq"), ("g3", "groq")],
        events=[
            started(BIG, "g1", NOW - 30, "a"),
            started(BIG, "g3", NOW - 59, "b"),
            started(BIG, "g3", NOW - 58, "c"),
        ],
    )
    assert {route(view, "llama-70b", seed=s).chosen_key for s in SEEDS} == {"g2"}
    # Requests on another model of the same key do not count against this one.
    assert {route(view, "groq/llama-8b", seed=s).chosen_key for s in SEEDS} == {"g1", "g2", "g3"}
    # As requests leave the minute their keys come back; the rng breaks the ties.
    assert {route(view, "llama-70b", now=NOW + 2.5, seed=s).chosen_key for s in SEEDS} == {"g2", "g3"}
    assert {route(view, "llama-70b", now=NOW + 30, seed=s).chosen_key for s in SEEDS} == {"g1", "g2", "g3"}


# -- Sessions


def pinned(model_: CatalogModel, key_id: str, ts: float = NOW - 10, session: str = "s1") -> SessionPinned:
    return SessionPinned(ts=ts, session=session, platform=model_.platform, model=model_.id, key_id=key_id)


def test_a_pin_takes_the_turn_when_pins_apply() -> None:
    view = make_view(events=[pinned(MID, "gm1")])
    for seed in range(10):
        d = route(view, "auto-smart", session="s1", use_pin=True, seed=seed)
        assert (d.chosen, d.chosen_key, d.pin_used) == (MID, "gm1", True)
        assert refs(d) == [MID.ref]
    assert not route(view, "auto-smart", session="s1", use_pin=False).pin_used
    assert not route(view, "flash-chat", session="s1", use_pin=True).pin_used  # a named model wins


def test_a_pin_that_cannot_be_used_is_cleared_with_a_reason() -> None:
    view = make_view(events=[pinned(MID, "gm1"), failed(MID, "gm1", NOW - 1)])
    d = route(view, "auto-smart", session="s1", use_pin=True)
    assert not d.pin_used
    assert d.pin_cleared is not None and d.pin_cleared.startswith(f"pinned model {MID.ref} is cooling")
    assert d.chosen is not None and d.chosen != MID


def test_a_pin_on_a_model_that_became_an_embedding_model_is_cleared() -> None:
    """The pin was made while it was a chat model; a config since made it an embedding model."""
    as_embedding = dataclasses.replace(MID, task="embedding", family="gemini/flash")
    catalog = [as_embedding if m == MID else m for m in CATALOG]
    view = make_view(models=catalog, events=[pinned(MID, "gm1")])
    d = route(view, "auto-smart", session="s1", use_pin=True)
    assert not d.pin_used and d.pin_cleared == f"pinned model {MID.ref} is no longer available"
    assert d.chosen is not None and d.chosen.task == "chat"


def test_a_platform_banned_for_the_session_is_excluded() -> None:
    view = make_view(events=[SessionBanned(ts=NOW - 1, session="s1", platform="longcat", reason="stall_mid")])
    for seed in range(10):
        d = route(view, "auto-smart", session="s1", seed=seed)
        assert d.chosen == OWL
        assert reasons(d)[SMART.ref] == [("banned for this session: stall_mid", None)]
    assert route(view, "auto-smart", session="s2", seed=1).chosen_ref in {SMART.ref, OWL.ref}


# -- Determinism and the pruned walk

KEYS = (
    ("g1", "groq"),
    ("g2", "groq"),
    ("gm1", "gemini"),
    ("c1", "cerebras"),
    ("lc1", "longcat"),
    ("or1", "openrouter"),
)
LIMITED = model("groq", "limited", pool="fast", intelligence=6, speed=3, limits=Limits(rpm=3, tpm=20_000))
PROP_CATALOG = (*CATALOG, LIMITED)
CHAIN = tuple(m for m in PROP_CATALOG if m.enabled)
KINDS = (
    "server_error",
    "connect",
    "stall_pre",
    "rate_limited",
    "auth",
    "model_missing",
    "bad_request",
    "truncated",
)


def history(rng: random.Random, n: int, end: float = NOW) -> list[Event]:
    """`n` events over the half hour before `end`, in time order, like the live log."""
    times = sorted(rng.uniform(end - 1800, end) for _ in range(n))
    events: list[Event] = []
    for i, ts in enumerate(times):
        m = rng.choice(CHAIN)
        keys = [k for k, p in KEYS if p == m.platform] or ["g1"]
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.35:
            events.append(started(m, key, ts, f"r{i}", reserved=rng.choice([0, 500, 3000])))
            events.append(
                succeeded(
                    m,
                    key,
                    ts + rng.uniform(0.1, 5),
                    ttfb_ms=rng.uniform(50, 4000),
                    latency_ms=rng.uniform(4000, 9000),
                    output_tokens=rng.randrange(0, 800),
                )
            )
        elif roll < 0.7:
            kind = rng.choice(KINDS)
            events.append(started(m, key, ts, f"r{i}"))
            events.append(
                AttemptFailed(
                    ts=ts + 0.5,
                    request_id=f"r{i}",
                    attempt=1,
                    platform=m.platform,
                    model=m.id,
                    key_id=key,
                    kind=kind,
                    retry_after_s=rng.choice([None, 5.0, 120.0]),
                )
            )
        elif roll < 0.75:
            events.append(started(m, key, ts, f"open{i}", reserved=rng.randrange(0, 5000)))  # still in flight
        elif roll < 0.82:
            events.append(KeyInvalidated(ts=ts, key_id=key, status=401))
        elif roll < 0.9:
            events.append(
                rng.choice(
                    [
                        KeyEnabled(ts=ts, key_id=key),
                        KeyDisabled(ts=ts, key_id=key),
                        KeyChecked(ts=ts, key_id=key, ok=rng.random() < 0.5, status=200),
                    ]
                )
            )
        else:
            events.append(
                ModelUpdated(
                    ts=ts,
                    platform=m.platform,
                    model=m.id,
                    enabled=rng.choice([None, True, True, False]),
                    fallback=rng.choice([None, True, False]),
                    pool=rng.choice([None, "fast", "smart", "balanced"]),
                )
            )
    return events


_requests = st.sampled_from(
    [
        ("auto",),
        ("auto-fast",),
        ("auto-smart",),
        ("flash",),
        ("auto-fast", "longcat/flash-chat"),
        ("llama-8b", "owl/alpha"),
        ("groq/whisper",),
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    history_seed=st.integers(0, 2**32),
    n=st.integers(0, 80),
    seed=st.integers(0, 2**63 - 1),
    requested=_requests,
    est_tokens=st.sampled_from([0, 1000, 9000]),
    later=st.floats(0, 120),
)
def test_the_same_view_input_time_and_seed_give_the_same_decision(
    history_seed: int, n: int, seed: int, requested: tuple[str, ...], est_tokens: int, later: float
) -> None:
    events = history(random.Random(history_seed), n)
    req = route_input(*requested, est_tokens=est_tokens, reserve_tokens=1000, tried=(("g1", BIG.ref),))
    now = NOW + later
    view = make_view(PROP_CATALOG, KEYS, events=events)
    try:
        first = decide(view, req, now, random.Random(seed))
    except UnknownModel:
        with pytest.raises(UnknownModel):
            decide(make_view(PROP_CATALOG, KEYS, events=events), req, now, random.Random(seed))
        return
    again = decide(view, req, now, random.Random(seed))  # the same view, after it served a decision
    fresh = decide(make_view(PROP_CATALOG, KEYS, events=events), req, now, random.Random(seed))  # no caches
    assert first == again == fresh


def usable(view: RoutingView, m: CatalogModel, req: RouteInput, now: float) -> bool:
    tokens = req.est_tokens + req.reserve_tokens
    for info in view.health.keys_of(m.platform):
        if info.status != "ok" or (info.key_id, m.ref) in req.tried:
            continue
        if view.health.cooling_until(info.key_id, m.id, now) is not None:
            continue
        if over_limit(m.limits, view.quotas.usage(info.key_id, m.ref, now), tokens) is None:
            return True
    return False


@settings(max_examples=80, deadline=None)
@given(
    history_seed=st.integers(0, 2**32),
    n=st.integers(0, 80),
    seed=st.integers(0, 2**63 - 1),
    mode=st.sampled_from(["auto", "auto-fast", "auto-smart"]),
    later=st.floats(0, 120),
)
def test_the_pruned_walk_chooses_the_argmax_of_the_sampled_scores(
    monkeypatch_module: pytest.MonkeyPatch, history_seed: int, n: int, seed: int, mode: str, later: float
) -> None:
    view = make_view(PROP_CATALOG, KEYS, events=history(random.Random(history_seed), n))
    req = route_input(mode, reserve_tokens=1000, tried=(("g2", BIG.ref),))
    now = NOW + later
    d = decide(view, req, now, random.Random(seed))
    scored = {c.ref: c for c in d.candidates}  # every scored model (the recording limit is lifted)
    models = {m.ref: m for m in view.catalog.models()}
    eligible = [
        m
        for m in models.values()
        if m.enabled
        and m.fallback
        and view.health.has_keys(m.platform)
        and not (mode == "auto" and m.pool == "smart")
        and view.cooldowns.cooling(m.ref, now) is None
    ]
    assert d.candidates_total == len(eligible)
    parts = _Parts(view, view.policy, mode, now)
    if d.chosen is None:
        # Nothing had a usable key: every eligible model was scored and none could be used.
        assert not any(usable(view, m, req, now) for m in eligible)
        assert set(scored) == {m.ref for m in eligible}
        return
    best = scored[d.chosen.ref]
    assert usable(view, d.chosen, req, now)
    group = _group(d.chosen.pool, mode)
    for m in eligible:
        g = _group(m.pool, mode)
        if g < group:
            assert not usable(view, m, req, now), f"{m.ref} is in an earlier pool group and has a key"
        elif g == group and m.ref in scored:
            if usable(view, m, req, now):
                assert best.score >= scored[m.ref].score
        elif g == group:
            # Never sampled: even theta = 1 could not have beaten the chosen score.
            assert parts.of(m)[0] + 1.0 <= best.score + 1e-6


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterable[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decide_module, "RECORDED_CANDIDATES", 1000)
        yield mp


# -- The decision record


def test_the_record_names_pool_exclusions_by_ref_and_keeps_every_other_reason() -> None:
    view = make_view(events=[KeyInvalidated(ts=NOW, key_id="g1", status=401)])
    req = route_input(BIG.id, "auto")
    d = decide(view, req, NOW, random.Random(0))
    assert ("key g1 invalid", None) in reasons(d)[BIG.ref]  # named: its keys were checked
    rec = d.record(ts=NOW, request_id="r1", attempt=2, seed=7, view_seq=view.seq, now=NOW, route=req)
    assert set(rec.pool_excluded) == {SMART.ref, OWL.ref}
    assert list(rec.excluded) == [e for e in d.excluded if e.reason != POOL_REASON]
    assert Excluded(ref=BIG.ref, reason="key g1 invalid", code=ExclusionCode.KEY_UNUSABLE) in rec.excluded
    assert (rec.request_id, rec.attempt, rec.seed, rec.view_seq, rec.now, rec.input) == (
        "r1",
        2,
        7,
        view.seq,
        NOW,
        req,
    )
    assert (rec.candidates, rec.chosen_ref, rec.chosen_key) == (d.candidates, d.chosen_ref, d.chosen_key)
    assert (rec.candidates_total, rec.no_key_models) == (d.candidates_total, d.no_key_models)
    assert decode_event(encode_event(rec)) == rec
    # The bound applies to the exclusions with their own reasons, not to the pool's refs.
    bounded = d.record(
        ts=NOW, request_id="r1", attempt=2, seed=7, view_seq=0, now=NOW, route=req, max_excluded=0
    )
    assert (bounded.excluded, bounded.pool_excluded) == ((), rec.pool_excluded)


# ---- the mean score the admin API shows -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "auto-smart"])
def test_the_mean_score_has_a_decisions_parts_with_the_bandits_mean_for_theta(mode: str) -> None:
    history = [succeeded(BIG, "g1", NOW - 600 + i, ttfb_ms=300.0 + i) for i in range(5)]
    history += [failed(BIG, "g1", NOW - 300), failed(MID, "gm1", NOW - 200, kind="empty")]
    history += [rate_limited(MID, "gm1", NOW - 100, 10.0)]
    view = make_view(events=history)
    decision = route(view, mode, seed=3)
    assert decision.candidates
    by_ref = {m.ref: m for m in CATALOG}
    for c in decision.candidates:
        [mean] = mean_scores(view, [by_ref[c.ref]], NOW)
        assert (c.speed, c.ttfb, c.intelligence, c.penalty) == pytest.approx(
            (mean.speed, mean.ttfb, mean.intelligence, mean.penalty), abs=1e-6
        )
        total = mean.smart if mode == "auto-smart" else mean.balanced
        assert c.score - c.theta == pytest.approx(total - mean.theta_mean, abs=1e-5)
    s, f = view.stats.decayed(BIG.ref, NOW)
    [big] = mean_scores(view, [BIG], NOW)
    assert big.theta_mean == pytest.approx((s + 2) / (s + f + 4)) and s > 4.9 and f > 0.9
    assert mean_scores(view, [FAST], NOW)[0].theta_mean == 0.5  # no data: the prior's mean
