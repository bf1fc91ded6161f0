"""The routing view and replay. Folding events one by one (as the live actor does, deciding in between)
ends where a rebuild from the log ends; replaying a log of recorded decisions reproduces every one of them;
a what-if policy changes exactly the decisions it would have changed."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import msgspec
import pytest
from builders import model
from hypothesis import given, settings
from hypothesis import strategies as st

from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from events.config_applied import record_config, recorded_configs, view_of
from events.decide import Decision, UnknownModel, decide
from events.policy import RoutingPolicy
from events.quotas import Limits
from events.replay import (
    ConfigViews,
    Replayed,
    iter_decisions,
    replay,
    replay_stream,
    scan_decisions,
    scan_targets,
    select_decisions,
)
from events.store import Entry, MemoryStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ConfigApplied,
    CooldownsReset,
    Event,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    LimitChanges,
    ModelUpdated,
    RequestReceived,
    RouteDecided,
    RouteInput,
    ServiceStarted,
    SessionBanLifted,
    SessionBanned,
    SessionPinned,
    StreamStalled,
)
from events.view import RoutingView, SessionPolicy, rebuild

T0 = 1_750_000_000.0


CATALOG = (
    model("longcat", "flash-chat", pool="smart", intelligence=1, speed=40),
    model(
        "groq",
        "llama-70b",
        intelligence=2,
        speed=20,
        context_window=128_000,
        limits=Limits(rpm=4, tpm=12_000),
    ),
    model("openrouter", "owl/alpha", pool="smart", intelligence=3, speed=60),
    model("gemini", "flash", intelligence=4, speed=10, context_window=1_000_000, limits=Limits(rpd=30)),
    model("cerebras", "llama-8b", pool="fast", intelligence=9, speed=1, context_window=8_000),
    model(
        "groq", "llama-8b", pool="fast", intelligence=8, speed=2, context_window=8_000, limits=Limits(rpm=6)
    ),
    model("groq", "whisper", fallback=False, intelligence=5, speed=5),
    model("gemini", "pro", enabled=False, intelligence=0, speed=0),
)
ENABLED = tuple(m for m in CATALOG if m.enabled)
KEYS = (
    ("g1", "groq"),
    ("g2", "groq"),
    ("gm1", "gemini"),
    ("c1", "cerebras"),
    ("lc1", "longcat"),
    ("or1", "openrouter"),
)
ROLLING = frozenset({"gemini"})


def new_view(policy: RoutingPolicy | None = None, models: Sequence[CatalogModel] = CATALOG) -> RoutingView:
    return RoutingView(models, policy or RoutingPolicy(), ROLLING)


def key_added(key_id: str, platform: str, ts: float = T0) -> KeyAdded:
    return KeyAdded(ts=ts, key_id=key_id, platform=platform, label=key_id, source="config")


def keys_of(platform: str) -> list[str]:
    return [k for k, p in KEYS if p == platform]


# -- A random, time-ordered history of everything the view folds


def random_events(rng: random.Random, n: int, start: float = T0) -> list[Event]:
    events: list[Event] = [key_added(k, p, start) for k, p in KEYS]
    ts = start
    for _ in range(n):
        ts += rng.choice([0.0, 0.5, 3.0, 20.0, 70.0, 3600.0])
        m = rng.choice(ENABLED)
        key = rng.choice(keys_of(m.platform))
        rid = f"r{rng.randrange(6)}"
        base = {
            "ts": ts,
            "request_id": rid,
            "attempt": rng.randrange(1, 3),
            "platform": m.platform,
            "model": m.id,
            "key_id": key,
        }
        roll = rng.random()
        if roll < 0.25:
            events.append(
                AttemptStarted(
                    **base,
                    reserved_tokens=rng.choice([0, 800, 5000]),  # type: ignore[arg-type]
                    session=rng.choice([None, "s1", "s2"]),
                )
            )
        elif roll < 0.45:
            events.append(
                AttemptSucceeded(
                    **base,
                    latency_ms=rng.uniform(100, 9000),  # type: ignore[arg-type]
                    ttfb_ms=rng.uniform(10, 3000),
                    input_tokens=rng.randrange(0, 3000),
                    output_tokens=rng.randrange(0, 2000),
                    exhausted_for_s=rng.choice([None, None, None, 30.0]),
                )
            )
        elif roll < 0.7:
            kind = rng.choice(
                [
                    "server_error",
                    "connect",
                    "stall_pre",
                    "stall_mid",
                    "rate_limited",
                    "rate_limited",
                    "auth",
                    "model_missing",
                    "bad_request",
                    "empty",
                    "client_abort",
                    "future_kind",
                ]
            )
            events.append(
                AttemptFailed(**base, kind=kind, retry_after_s=rng.choice([None, 0.0, 10.0, 300.0]))
            )  # type: ignore[arg-type]
        elif roll < 0.75:
            events.append(
                StreamStalled(
                    ts=ts,
                    platform=m.platform,
                    model=m.id,
                    key_id=key,
                    phase=rng.choice(["pre", "mid"]),
                    silent_s=30.0,
                )
            )
        elif roll < 0.85:
            events.append(
                rng.choice(
                    [
                        KeyInvalidated(ts=ts, key_id=key, status=401),
                        KeyDisabled(ts=ts, key_id=key, reason="ops"),
                        KeyEnabled(ts=ts, key_id=key),
                        KeyChecked(
                            ts=ts, key_id=key, ok=rng.random() < 0.5, status=rng.choice([200, 401, 500])
                        ),
                        key_added("late", "groq", ts),
                        CooldownsReset(ts=ts, key_id=key, model=rng.choice([None, m.id])),
                    ]
                )
            )
        elif roll < 0.92:
            events.append(
                ModelUpdated(
                    ts=ts,
                    platform=m.platform,
                    model=m.id,
                    enabled=rng.choice([None, True, False]),
                    fallback=rng.choice([None, False]),
                    pool=rng.choice([None, "fast", "smart", "balanced"]),
                    intelligence_rank=rng.choice([None, None, 1, 5, 90]),
                    limits=rng.choice(
                        [
                            None,
                            None,
                            LimitChanges(rpm=2),
                            LimitChanges(rpm=None, tpm=3000),
                            LimitChanges(rpd=1),
                        ]
                    ),
                )
            )
        elif roll < 0.97:
            events.append(
                rng.choice(
                    [
                        SessionPinned(ts=ts, session="s1", platform=m.platform, model=m.id, key_id=key),
                        SessionBanned(ts=ts, session="s2", platform=m.platform, reason="stall"),
                        SessionBanLifted(ts=ts, session="s2", platform=m.platform),
                    ]
                )
            )
        else:
            events.append(
                rng.choice(
                    [
                        ServiceStarted(ts=ts, version="t"),
                        RequestReceived(
                            ts=ts, request_id=rid, model="auto", stream=False, messages=1, est_input_tokens=9
                        ),
                    ]
                )
            )
    return events


def observable(view: RoutingView, now: float) -> object:
    """Everything `decide` reads, at `now`."""
    models = view.catalog.models()
    key_ids = sorted(view.health.keys)
    return (
        view.seq,
        models,
        dict(view.health.keys),
        {(k, m.id): view.health.cooling_until(k, m.id, now) for k in key_ids for m in models},
        {
            m.ref: [
                k.key_id
                for k in view.health.keys_of(m.platform)
                if k.status == "ok" and view.health.cooling_until(k.key_id, m.id, now) is None
            ]
            for m in models
        },
        {m.ref: view.cooldowns.cooling(m.ref, now) for m in models},
        {m.ref: round(view.cooldowns.penalty(m.ref, now), 9) for m in models},
        {(k, m.ref): view.quotas.usage(k, m.ref, now) for k in key_ids for m in models},
        {(k, m.ref): view.quotas.frees_at(k, m.ref, now, m.limits, 0) for k in key_ids for m in models},
        view.quotas.in_flight(),
        {m.ref: tuple(round(x, 9) for x in view.stats.decayed(m.ref, now)) for m in models},
        {ref: (s.tps, s.ttfb_ms) for ref, s in view.stats.models.items()},
        view.stats.max_tps,
        view.intelligence(),
        [(k, s.pin, s.bans) for k, s in view.sessions.live(now)],
        {p: view.in_flight.other_sessions(p, None) for _, p in KEYS},
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(0, 120),
    batch=st.integers(1, 50),
    read_every=st.integers(1, 10),
    laters=st.lists(st.floats(0, 8 * 86400), min_size=1, max_size=3),
)
def test_folding_live_with_decisions_in_between_equals_a_rebuild(
    seed: int, n: int, batch: int, read_every: int, laters: list[float]
) -> None:
    events = random_events(random.Random(seed), n)
    store = MemoryStore()
    live = new_view()
    rng = random.Random(seed)
    for i, event in enumerate(events):
        (s,) = store.append([event])
        live.apply(s, event)
        if i % read_every == 0:  # the live actor decides at the current time between batches
            decide(
                live,
                RouteInput(
                    mode="auto",
                    requested=(rng.choice(["auto", "auto-smart", "auto-fast"]),),
                    session=rng.choice([None, "s1", "s2"]),
                ),
                event.ts,
                random.Random(i),
            )
    rebuilt = new_view()
    assert rebuild(store, rebuilt, batch=batch) == len(events)
    last = events[-1].ts
    for later in sorted(laters):
        assert observable(live, last + later) == observable(rebuilt, last + later)


def test_rebuild_stops_at_upto_continues_from_the_view_and_feeds_other_projections() -> None:
    events = random_events(random.Random(7), 60)
    store = MemoryStore()
    store.append(events)
    seen: list[Event] = []
    view = new_view()
    assert rebuild(store, view, upto=20, batch=7, also=(seen.append,)) == 20
    assert view.seq == 20
    assert seen == events[:20]
    assert rebuild(store, view, batch=7, also=(seen.append,)) == len(events) - 20
    assert view.seq == len(events)
    assert seen == events
    assert rebuild(store, view) == 0
    whole = new_view()
    rebuild(store, whole)
    assert observable(view, events[-1].ts) == observable(whole, events[-1].ts)


def fold(view: RoutingView, *events: Event) -> None:
    for event in events:
        view.apply(view.seq + 1, event)


def test_intelligence_is_normalised_over_enabled_models_and_follows_the_catalog() -> None:
    view = new_view()
    fold(view, *(key_added(k, p) for k, p in KEYS))
    smartness = view.intelligence()
    assert smartness["longcat/flash-chat"] == 1.0
    assert smartness["cerebras/llama-8b"] == 0.0
    assert smartness["groq/llama-70b"] == pytest.approx(7 / 8)
    assert smartness["gemini/pro"] == 1.0  # disabled and smarter than the rest: clamped
    fold(view, ModelUpdated(ts=T0, platform="cerebras", model="llama-8b", enabled=False))
    assert view.intelligence()["groq/llama-8b"] == 0.0  # now the least smart enabled model


def test_cached_score_parts_follow_successes_the_catalog_and_the_fastest_speed() -> None:
    """The view caches score parts between decisions; after every kind of change a view that served
    decisions all along must score like a fresh one rebuilt from the same events."""
    events: list[Event] = [key_added(k, p) for k, p in KEYS]
    view = new_view()
    fold(view, *events)
    req = RouteInput(mode="auto-smart", requested=("auto-smart",))

    def parts(v: RoutingView) -> dict[str, tuple[float, float, float]]:
        d = decide(v, req, T0 + 10, random.Random(1))
        return {c.ref: (c.speed, c.ttfb, c.intelligence) for c in d.candidates}

    def success(
        platform: str, model_id: str, ttfb_ms: float, latency_ms: float, tokens: int
    ) -> AttemptSucceeded:
        return AttemptSucceeded(
            ts=T0,
            platform=platform,
            model=model_id,
            key_id=keys_of(platform)[0],
            attempt=1,
            latency_ms=latency_ms,
            ttfb_ms=ttfb_ms,
            input_tokens=1,
            output_tokens=tokens,
        )

    changes: list[Event] = [
        success("longcat", "flash-chat", 300.0, 1300.0, 100),  # its TTFB and speed
        success("openrouter", "owl/alpha", 5000.0, 6000.0, 50),
        success("groq", "llama-8b", 10.0, 20.0, 20_000),  # a new fastest model: everyone's speed term moves
        ModelUpdated(ts=T0, platform="longcat", model="flash-chat", enabled=False),  # intelligence moves
        ModelUpdated(ts=T0, platform="longcat", model="flash-chat", enabled=True),
        success("groq", "llama-8b", 10.0, 10_010.0, 10),  # the fastest slows down
        AttemptFailed(
            ts=T0, platform="openrouter", model="owl/alpha", key_id="or1", attempt=1, kind="rate_limited"
        ),  # a 429 penalty
    ]
    for change in changes:
        events.append(change)
        fold(view, change)
        after = parts(view)
        fresh = new_view()
        fold(fresh, *events)
        assert after == parts(fresh)
        assert decide(view, req, T0 + 10, random.Random(5)) == decide(fresh, req, T0 + 10, random.Random(5))
    assert after["longcat/flash-chat"][1] == RoutingPolicy().ttfb_bonus


def _store_of(events: Iterable[Event]) -> MemoryStore:
    store = MemoryStore()
    store.append(list(events))
    return store


# -- Reads between events that arrive late (the live actor decides while a batch is in the log writer)


def test_a_decision_read_does_not_change_how_a_late_event_folds() -> None:
    m = CATALOG[1]  # groq/llama-70b, keys g1 and g2
    events: list[Event] = [
        key_added("g1", "groq"),
        key_added("g2", "groq"),
        AttemptFailed(
            ts=T0 + 100.0,
            attempt=1,
            platform="groq",
            model=m.id,
            key_id="g2",
            kind="rate_limited",
            retry_after_s=10.0,
        ),  # g2 cools until T0 + 110
        # Committed in the next batch: g1's 429 happened at T0 + 109.999, while g2 still cooled.
        AttemptFailed(
            ts=T0 + 109.999,
            attempt=1,
            platform="groq",
            model=m.id,
            key_id="g1",
            kind="rate_limited",
            retry_after_s=60.0,
        ),
    ]
    live, rebuilt = new_view(), new_view()
    for seq, event in enumerate(events[:3], start=1):
        live.apply(seq, event)
    route = RouteInput(mode="auto", requested=(m.ref,), use_chain=False)
    decide(live, route, T0 + 110.001, random.Random(0))  # between the batches: reads g2's cooldown
    live.apply(4, events[3])
    rebuild(_store_of(events), rebuilt)
    assert rebuilt.cooldowns.penalty(m.ref, T0 + 110.0) > 0.0
    assert live.cooldowns.penalty(m.ref, T0 + 111.0) == rebuilt.cooldowns.penalty(m.ref, T0 + 111.0)


# -- Recording decisions like the live system, then replaying them

ROUTES = (
    ("auto",),
    ("auto-fast",),
    ("auto-smart",),
    ("flash",),
    ("llama-8b", "owl/alpha"),
    ("auto-fast", "longcat/flash-chat"),
    ("groq/whisper",),
    ("freellmapi/auto-smart",),
)


def simulate(
    seed: int,
    requests: int,
    policy: RoutingPolicy | None = None,
    *,
    store: MemoryStore | None = None,
    models: Sequence[CatalogModel] = CATALOG,
) -> MemoryStore:
    """A gateway in miniature: decisions on a live view that lags the log by a batch, each recorded as
    RouteDecided with the view's position, followed by the attempt it chose and its outcome. Given a
    `store`, a (re)start on it: the view is built from `policy` and `models` and folds the whole log first."""
    rng = random.Random(seed)
    store = store if store is not None else MemoryStore()
    live = new_view(policy, models)
    rebuild(store, live)
    unpublished: list[Entry] = []

    def append(*events: Event) -> None:
        unpublished.extend(zip(store.append(events), events, strict=True))

    def publish() -> None:
        live.apply_all(unpublished)
        unpublished.clear()

    if live.health.keys:  # a restart, two hours on, after the operator put every key back
        now = max(e.ts for _, e in store.read_after(0)) + 7200.0
        append(*(KeyEnabled(ts=now, key_id=k) for k, _ in KEYS))
        publish()
    else:
        append(*(key_added(k, p) for k, p in KEYS))
        publish()
        now = T0
    for r in range(requests):
        now += rng.choice([0.001, 0.5, 2.0, 5.0, 30.0, 90.0])
        if rng.random() < 0.6:
            publish()
        if rng.random() < 0.05:  # an admin change: durable, folded before the next decision
            key = rng.choice(KEYS)[0]
            append(
                rng.choice(
                    [
                        KeyInvalidated(ts=now, key_id=key, status=401),
                        KeyEnabled(ts=now, key_id=key),
                        ModelUpdated(ts=now, platform="gemini", model="flash", enabled=rng.random() < 0.7),
                    ]
                )
            )
            publish()
        requested = rng.choice(ROUTES)
        names = [ALIASES.get(n, n) for n in requested]
        mode = next((n for n in names if n in VIRTUAL_MODELS), "auto")
        rid = f"req{r}"
        route = RouteInput(
            mode=mode,
            requested=requested,
            est_tokens=rng.choice([10, 500, 20_000]),
            reserve_tokens=1000,
            session=rng.choice([None, "s1"]),
            use_pin=mode == "auto-smart",
        )
        append(
            RequestReceived(
                ts=now,
                request_id=rid,
                model=requested[0],
                stream=False,
                messages=1,
                est_input_tokens=route.est_tokens,
            )
        )
        for attempt in range(1, 4):
            decision_seed = rng.getrandbits(63)
            try:
                d = decide(live, route, now, random.Random(decision_seed))
            except UnknownModel:
                break  # a 404 for the client: nothing recorded
            append(
                d.record(
                    ts=now,
                    request_id=rid,
                    attempt=attempt,
                    seed=decision_seed,
                    view_seq=live.seq,
                    now=now,
                    route=route,
                    max_excluded=20,
                )
            )
            if d.chosen is None or d.chosen_key is None:
                break
            m, key = d.chosen, d.chosen_key
            base = {
                "request_id": rid,
                "attempt": attempt,
                "platform": m.platform,
                "model": m.id,
                "key_id": key,
            }
            append(
                AttemptStarted(
                    ts=now,
                    reserved_tokens=route.est_tokens + route.reserve_tokens,
                    session=route.session,
                    **base,
                )
            )  # type: ignore[arg-type]
            if rng.random() < 0.3:
                publish()
            now += rng.choice([0.2, 1.0, 4.0])
            roll = rng.random()
            if roll < 0.55:
                append(
                    AttemptSucceeded(
                        ts=now,
                        latency_ms=rng.uniform(200, 5000),
                        ttfb_ms=rng.uniform(50, 2500),
                        input_tokens=route.est_tokens,
                        output_tokens=rng.randrange(1, 900),
                        exhausted_for_s=30.0 if rng.random() < 0.05 else None,
                        **base,
                    )
                )  # type: ignore[arg-type]
                if route.session is not None:
                    append(
                        SessionPinned(
                            ts=now,
                            request_id=rid,
                            session=route.session,
                            platform=m.platform,
                            model=m.id,
                            key_id=key,
                        )
                    )
                break
            kind = rng.choice(
                [
                    "server_error",
                    "connect",
                    "stall_pre",
                    "rate_limited",
                    "rate_limited",
                    "auth",
                    "model_missing",
                    "context_exceeded",
                ]
            )
            append(AttemptFailed(ts=now, kind=kind, retry_after_s=rng.choice([None, 20.0]), **base))  # type: ignore[arg-type]
            if kind == "auth":
                append(KeyInvalidated(ts=now, request_id=rid, key_id=key, status=401))
            route = replace_route(route, key, m, kind)
    publish()
    return store


def replace_route(route: RouteInput, key: str, m: CatalogModel, kind: str) -> RouteInput:
    """What the request actor learns from a failed attempt."""
    changes: dict[str, object] = {"tried": (*route.tried, (key, m.ref))}
    if kind == "model_missing":
        changes["skip_models"] = (*route.skip_models, (m.ref, "404"))
    elif kind == "context_exceeded":
        changes["min_context"] = max(route.min_context or 0, m.context_window or 0)
    return msgspec.structs.replace(route, **changes)


def decisions(store: MemoryStore) -> list[tuple[int, RouteDecided]]:
    return [(s, e) for s, e in store.read_after(0) if isinstance(e, RouteDecided)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), requests=st.integers(1, 60), batch=st.sampled_from([1, 3, 50, 5000]))
def test_a_replay_reproduces_every_recorded_decision(seed: int, requests: int, batch: int) -> None:
    store = simulate(seed, requests)
    targets = select_decisions(store, batch=batch)
    assert targets == decisions(store)
    results = list(replay(store, new_view(), targets, batch=batch))
    view_seq = {s: d.view_seq for s, d in targets}
    assert [r.seq for r in results] == sorted(view_seq, key=lambda s: (view_seq[s], s))
    assert len(results) == len(targets)
    assert all(r.matches for r in results), [r.seq for r in results if not r.matches]
    for r in results:
        assert r.recomputed == (r.recorded.chosen_ref, r.recorded.chosen_key)


def test_the_simulation_makes_interesting_logs() -> None:
    store = simulate(11, 200)
    found = decisions(store)
    events = [e for _, e in store.read_after(0)]
    assert len(found) > 200
    assert any(d.chosen_ref is None for _, d in found)
    assert len({d.chosen_ref for _, d in found}) >= 5
    assert any("cooling" in x.reason for _, d in found for x in d.excluded)
    assert any("quota" in x.reason for _, d in found for x in d.excluded)
    # Decisions made while attempt outcomes appended before them were still unpublished (the batch lag).
    log = store.read_after(0)
    assert any(
        isinstance(e, (AttemptSucceeded, AttemptFailed))
        for s, d in found
        for seq, e in log
        if d.view_seq < seq < s
    )
    assert any(isinstance(e, AttemptFailed) and e.kind == "rate_limited" for e in events)
    assert all(r.matches for r in replay(store, new_view(), found))


def test_a_replay_of_some_decisions_reproduces_them() -> None:
    store = simulate(5, 80)
    every = decisions(store)
    some = every[::7]
    assert all(r.matches for r in replay(store, new_view(), some, batch=4))
    by_request = select_decisions(store, request_id=some[-1][1].request_id)
    assert all(r.matches for r in replay(store, new_view(), by_request))


# -- What-if


def whatif_by_rebuild(
    store: MemoryStore, new: Callable[[], RoutingView], recorded: RouteDecided
) -> Decision | None:
    """The what-if decision computed the slow way: a fresh view rebuilt up to the recorded position."""
    view = new()
    rebuild(store, view, upto=recorded.view_seq)
    try:
        return decide(view, recorded.input, recorded.now, random.Random(recorded.seed))
    except UnknownModel:
        return None


def same(d: Decision | None, recorded: RouteDecided) -> bool:
    return (
        d is not None
        and (d.chosen_ref, d.chosen_key) == (recorded.chosen_ref, recorded.chosen_key)
        and [c.ref for c in d.candidates] == [c.ref for c in recorded.candidates]
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), requests=st.integers(1, 50))
def test_a_what_if_differs_exactly_where_its_decisions_differ(seed: int, requests: int) -> None:
    store = simulate(seed, requests)
    targets = decisions(store)
    quick = RoutingPolicy(transient_cooldown_s=0.001)
    for factory in (
        lambda: new_view(quick),
        lambda: new_view(models=[replace(m, enabled=False) if m.id == "llama-8b" else m for m in CATALOG]),
    ):
        results = {r.seq: r for r in replay(store, factory(), targets)}
        assert set(results) == {s for s, _ in targets}
        for s, recorded in targets:
            slow = whatif_by_rebuild(store, factory, recorded)
            assert results[s].matches == same(slow, recorded)
            assert results[s].decision == slow


def test_a_shorter_transient_cooldown_changes_exactly_the_decisions_made_while_cooling() -> None:
    a = model("groq", "a", intelligence=1)
    b = model("gemini", "b", intelligence=2)
    live = RoutingView([a, b], RoutingPolicy())
    store = MemoryStore()
    route = RouteInput(mode="auto", requested=("a",))

    def log(*events: Event) -> None:
        live.apply_all(list(zip(store.append(events), events, strict=True)))

    def decision(now: float, route: RouteInput = route) -> None:
        d = decide(live, route, now, random.Random(int(now)))
        log(
            d.record(
                ts=now,
                request_id=f"at{now:g}",
                attempt=1,
                seed=int(now),
                view_seq=live.seq,
                now=now,
                route=route,
            )
        )

    log(key_added("g1", "groq", 0.0), key_added("gm1", "gemini", 0.0))
    decision(100.0)  # a
    log(AttemptFailed(ts=101.0, attempt=1, platform="groq", model="a", key_id="g1", kind="server_error"))
    decision(105.0)  # a cools until 116: b
    decision(115.9)  # b
    decision(116.0)  # a again
    decision(120.0, RouteInput(mode="auto", requested=("b",)))  # b, named
    recorded = {e.request_id: e.chosen_ref for _, e in decisions(store)}
    assert recorded == {"at100": a.ref, "at105": b.ref, "at115.9": b.ref, "at116": a.ref, "at120": b.ref}

    same_policy = {
        r.recorded.request_id: r.matches
        for r in replay(store, RoutingView([a, b], RoutingPolicy()), decisions(store))
    }
    assert all(same_policy.values())
    quick = list(
        replay(store, RoutingView([a, b], RoutingPolicy(transient_cooldown_s=0.001)), decisions(store))
    )
    assert {r.recorded.request_id for r in quick if not r.matches} == {"at105", "at115.9"}
    assert {r.recorded.request_id: r.recomputed[0] for r in quick}["at105"] == a.ref

    # The same log with b disabled: what chose b changes; what named b finds no such model.
    without_b = list(
        replay(store, RoutingView([a, replace(b, enabled=False)], RoutingPolicy()), decisions(store))
    )
    changed = {r.recorded.request_id: r for r in without_b if not r.matches}
    assert set(changed) == {"at105", "at115.9", "at120"}
    assert changed["at105"].recomputed == (None, None)  # a is cooling and b is gone
    assert changed["at120"].decision is None  # UnknownModel: b does not exist under this config
    assert changed["at120"].recomputed == (None, None)


# -- Edge positions


def test_decisions_made_on_an_empty_view_replay_on_an_empty_view() -> None:
    store = MemoryStore()
    empty = new_view()
    route = RouteInput(mode="auto", requested=("auto",))
    # The key was appended but not yet folded when the first decision was made (view_seq 0).
    store.append([key_added("g1", "groq")])
    d0 = decide(empty, route, T0, random.Random(1))
    assert d0.chosen is None
    store.append(
        [
            d0.record(
                ts=T0,
                request_id="r0",
                attempt=1,
                seed=1,
                view_seq=0,
                now=T0,
                route=route,
            )
        ]
    )
    rebuild(store, empty)
    d1 = decide(empty, route, T0 + 1, random.Random(2))
    assert d1.chosen is not None
    store.append(
        [
            d1.record(
                ts=T0 + 1,
                request_id="r1",
                attempt=1,
                seed=2,
                view_seq=empty.seq,
                now=T0 + 1,
                route=route,
            )
        ]
    )
    for batch in (1, 2, 100):
        results = list(replay(store, new_view(), decisions(store), batch=batch))
        assert [(r.recorded.request_id, r.matches) for r in results] == [("r0", True), ("r1", True)]
        assert results[0].decision is not None and results[0].decision.chosen is None


def test_decisions_are_replayed_in_view_order_and_report_progress() -> None:
    store = simulate(3, 40)
    targets = decisions(store)
    seen: list[tuple[int, int]] = []
    results = list(
        replay(
            store, new_view(), list(reversed(targets)), progress=lambda a, b: seen.append((a, b)), batch=10
        )
    )
    assert [r.recorded.view_seq for r in results] == sorted(d.view_seq for _, d in targets)
    assert all(r.matches for r in results)
    last_needed = max(d.view_seq for _, d in targets)
    assert seen and all(b == last_needed for _, b in seen)
    assert [a for a, _ in seen] == sorted(a for a, _ in seen)
    assert list(replay(store, new_view(), [])) == []


def test_select_decisions_by_request_and_by_range() -> None:
    store = simulate(9, 30)
    every = decisions(store)
    assert select_decisions(store) == every
    rid = every[len(every) // 2][1].request_id
    assert rid is not None
    by_request = select_decisions(store, request_id=rid)
    assert by_request == [(s, d) for s, d in every if d.request_id == rid]
    assert [d.attempt for _, d in by_request] == list(range(1, len(by_request) + 1))
    lo, hi = every[3][0], every[-3][0]
    assert select_decisions(store, from_seq=lo, to_seq=hi, batch=4) == [
        (s, d) for s, d in every if lo <= s <= hi
    ]
    assert select_decisions(store, from_seq=lo + 1, to_seq=lo + 1) == []
    assert select_decisions(store, to_seq=every[0][0]) == every[:1]
    assert select_decisions(store, from_seq=every[-1][0]) == every[-1:]
    assert select_decisions(store, request_id="no-such-request") == []


def test_replayed_reports_what_it_recomputed() -> None:
    store = simulate(2, 10)
    (first, *_) = replay(store, new_view(), decisions(store)[:1])
    assert isinstance(first, Replayed)
    assert first.decision is not None
    assert first.recomputed == (first.decision.chosen_ref, first.decision.chosen_key)


# -- Across configuration changes: each decision under the configuration recorded before it

# Another catalog (the intelligence ranks reversed, a model dropped) and policy, as after an edited config.
CATALOG_B = tuple(replace(m, intelligence_rank=10 - m.intelligence_rank) for m in CATALOG if m.id != "flash")
POLICY_B = RoutingPolicy(rate_limit_cooldown_s=1.0, transient_cooldown_s=0.001, speed_weight=0.9)


def recorded(policy: RoutingPolicy, models: Sequence[CatalogModel], ts: float = T0) -> ConfigApplied:
    return record_config(
        ts=ts,
        models=models,
        policy=policy,
        sessions=SessionPolicy(),
        platforms={m.platform for m in CATALOG},
        rolling_day_platforms=ROLLING,
    )


def simulate_runs(
    seed: int, runs: Sequence[tuple[RoutingPolicy, Sequence[CatalogModel]]], requests: int
) -> MemoryStore:
    """Gateway runs on one log, each started with its configuration (recorded when it changed)."""
    store = MemoryStore()
    last = None
    for i, (policy, models) in enumerate(runs):
        record = recorded(policy, models)
        if record.hash != last:
            store.append([record])
            last = record.hash
        simulate(seed + i, requests, policy, store=store, models=models)
    return store


def test_a_recorded_configuration_builds_the_view_the_gateway_built() -> None:
    for policy, models in ((RoutingPolicy(), CATALOG), (POLICY_B, CATALOG_B)):
        record = recorded(policy, models)
        view = view_of(msgspec.json.decode(msgspec.json.encode(record), type=ConfigApplied))
        assert view.catalog.models() == tuple(models)
        assert view.policy == policy
        assert view.quotas._rolling == ROLLING
        assert view.session_policy == SessionPolicy()
    assert recorded(RoutingPolicy(), CATALOG).hash == recorded(RoutingPolicy(), CATALOG, ts=T0 + 99).hash
    assert recorded(RoutingPolicy(), CATALOG).hash != recorded(RoutingPolicy(decay_days=6.0), CATALOG).hash


def test_each_decision_replays_on_the_view_of_the_last_configuration_before_it() -> None:
    a, b = recorded(RoutingPolicy(), CATALOG), recorded(POLICY_B, CATALOG_B)
    views = ConfigViews([(4, a), (8, b), (11, a)], new_view)
    assert views.keys == [None, a.hash, b.hash]  # A came back: one view
    assert [views.keys[views.which(s)] for s in (2, 3, 6, 9, 12, 13)] == [
        None,
        None,
        a.hash,
        b.hash,
        a.hash,
        a.hash,
    ]
    assert views.factories[0] is new_view
    assert views.factories[2]().policy == POLICY_B
    assert ConfigViews([], new_view).which(99) == 0


def test_a_log_written_under_a_then_b_then_a_replays_each_decision_under_its_configuration() -> None:
    runs = [
        (RoutingPolicy(), CATALOG),
        (POLICY_B, CATALOG_B),
        (RoutingPolicy(), CATALOG),
        (RoutingPolicy(), CATALOG),
    ]
    store = simulate_runs(21, runs, 60)
    targets = decisions(store)
    configs = recorded_configs(store)
    assert len(configs) == 3  # the fourth run changed nothing: not recorded again
    views = ConfigViews(configs, new_view)
    assert views.keys[1:] == [configs[0][1].hash, configs[1][1].hash]
    scan = scan_decisions(store, which=views.which)
    assert scan == scan_targets(targets, views.which)
    assert sorted(scan.per_view) == [1, 2] and sum(scan.per_view.values()) == len(targets)
    fresh = [views.factories[i]() for i in (0, 1, 2)]
    results = list(
        replay_stream(
            store, fresh, iter_decisions(store), lag=scan.lag, last_needed=scan.last_needed, which=views.which
        )
    )
    assert [r.seq for r in results] == [r.seq for r in replay(store, new_view(), targets)]  # in replay order
    assert all(r.matches for r in results), [r.seq for r in results if not r.matches]
    # Under one configuration for all (a what-if), the other's decisions do not all reproduce.
    assert not all(r.matches for r in replay(store, new_view(), targets))
