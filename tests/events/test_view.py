"""The routing view's per-type fold dispatch. `RoutingView.apply` hands each event only to the projections
whose `FOLDS` names its type, and a replay reads only `FOLDED_TAGS`; both are sound only if every projection
leaves alone what it does not declare. Checked against the fold it replaced: every projection, every event."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replay import KEYS, key_added, new_view, observable, random_events

from events.catalog import Catalog
from events.cooldowns import Cooldowns
from events.decide import decide
from events.key_health import KeyHealth
from events.model_stats import Stats
from events.quotas import Quotas
from events.sessions import InFlight, Sessions
from events.types import (
    EVENT_TYPES,
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ClientDisconnected,
    ConfigApplied,
    CooldownsReset,
    Event,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    KeyRemoved,
    ModelUpdated,
    RequestCompleted,
    RequestReceived,
    ResponseDeleted,
    ResponseStored,
    RouteDecided,
    RouteInput,
    ServiceStarted,
    ServiceStopped,
    SessionBanLifted,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
    StreamStalled,
    event_tag,
    event_type,
)
from events.view import RoutingView

PROJECTIONS = (Catalog, KeyHealth, Cooldowns, Quotas, Stats, Sessions, InFlight)


def fold_everything(view: RoutingView, seq: int, event: Event) -> None:
    """The fold before per-type dispatch: every projection applies every event, in the view's order."""
    view.catalog.apply(event)
    view.health.apply(event)
    view.cooldowns.apply(event)
    view.quotas.apply(event)
    view.stats.apply(event)
    view.sessions.apply(event)
    view.in_flight.apply(event)
    view.seq = seq


def _extra(rng: random.Random, ts: float) -> Event:
    """One of the events `random_events` does not make (or rarely makes), at `ts`."""
    key_id, platform = rng.choice(KEYS)
    rid = f"r{rng.randrange(6)}"
    return rng.choice(
        [
            ServiceStopped(ts=ts),
            ServiceStarted(ts=ts, version="t", events_replayed=3),
            KeyRemoved(ts=ts, key_id=rng.choice([key_id, "late", "never-added"])),
            key_added(key_id, platform, ts),  # back after a removal (a platform may get its first key again)
            SessionPinCleared(ts=ts, session=rng.choice(["s1", "s2", "s3"]), reason="cooling"),
            SessionPinned(ts=ts, session="s3", platform=platform, model="flash", key_id=key_id),
            RouteDecided(
                ts=ts,
                request_id=rid,
                attempt=1,
                seed=rng.getrandbits(32),
                view_seq=0,
                now=ts,
                input=RouteInput(mode="auto", requested=("auto",), session="s1"),
                candidates=(),
                excluded=(),
                chosen_ref="groq/llama-70b",
                chosen_key=key_id,
            ),
            RequestReceived(
                ts=ts, request_id=rid, model="auto", stream=True, messages=3, est_input_tokens=50_000
            ),
            RequestCompleted(
                ts=ts,
                request_id=rid,
                outcome=rng.choice(["ok", "error", "client_abort"]),
                status=200,
                attempts=2,
                latency_ms=900.0,
                platform="groq",
                model="llama-70b",
            ),
            ClientDisconnected(ts=ts, request_id=rid, platform="groq", model="llama-70b"),
            ConfigApplied(
                ts=ts, hash="h", models=({"platform": "groq", "id": "x"},), policy={"decay_days": 1}
            ),
            ResponseStored(ts=ts, request_id=rid, response_id=f"resp_{rid}", messages="[]", response="{}"),
            ResponseDeleted(ts=ts, response_id=f"resp_{rid}"),
        ]
    )


def every_kind_events(rng: random.Random, n: int) -> list[Event]:
    """`random_events`, with events of every other type mixed in (time order kept)."""
    out: list[Event] = []
    for event in random_events(rng, n):
        out.append(event)
        while rng.random() < 0.25:
            out.append(_extra(rng, event.ts))
    return out


def test_the_random_histories_hold_every_event_type() -> None:
    seen = {type(e) for seed in range(3) for e in every_kind_events(random.Random(seed), 300)}
    assert seen == set(EVENT_TYPES)


def more_observable(view: RoutingView, now: float) -> object:
    sessions = (None, "s1", "s2", "s3")
    return (
        observable(view, now),
        view.in_flight.count(),
        {(p, s): view.in_flight.other_sessions(p, s) for _, p in KEYS for s in sessions},
        view.health.platforms_version,
        view.catalog.version,
        view.cooldowns.penalties(now),
        view.cooldowns.any_cooling(now),
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(0, 150),
    laters=st.lists(st.floats(0, 3 * 86400), max_size=2),
    check_every=st.integers(1, 8),
)
def test_dispatching_by_type_folds_like_every_projection_folding_every_event(
    seed: int, n: int, laters: list[float], check_every: int
) -> None:
    events = every_kind_events(random.Random(seed), n)
    dispatched, reference = new_view(), new_view()
    for seq, event in enumerate(events, start=1):
        dispatched.apply(seq, event)
        fold_everything(reference, seq, event)
        if seq % check_every == 0:  # along the way too: sessions and cooldowns do not outlive long gaps
            assert more_observable(dispatched, event.ts) == more_observable(reference, event.ts)
    last = events[-1].ts
    for later in sorted({0.0, 90.0, *laters}):  # soon after, while sessions and cooldowns are live; later
        assert more_observable(dispatched, last + later) == more_observable(reference, last + later)
    for mode in ("auto", "auto-fast", "auto-smart"):
        route = RouteInput(mode=mode, requested=(mode,), session="s1", use_pin=True)
        assert decide(dispatched, route, last + 1, random.Random(seed)) == decide(
            reference, route, last + 1, random.Random(seed)
        )


def test_folded_tags_are_the_types_some_projection_folds() -> None:
    folded = {t for t in EVENT_TYPES if any(t in p.FOLDS for p in PROJECTIONS)}
    assert {event_tag(t) for t in folded} == RoutingView.FOLDED_TAGS
    # The bulk of a log, which a replay skips.
    assert {"route_decided", "request_received", "request_completed"}.isdisjoint(RoutingView.FOLDED_TAGS)
    assert all(set(EVENT_TYPES).issuperset(p.FOLDS) for p in PROJECTIONS)


def one_of_each(ts: float) -> list[Event]:
    """An event of every type, each about keys, models, sessions and requests the history knows."""
    attempt = {"request_id": "r1", "attempt": 1, "platform": "groq", "model": "llama-70b", "key_id": "g1"}
    other = {**attempt, "request_id": "r2"}  # in flight too (see _history_view): what the failures end
    events: list[Event] = [
        ServiceStopped(ts=ts),
        RequestReceived(ts=ts, request_id="r1", model="auto", stream=False, messages=1, est_input_tokens=10),
        AttemptStarted(ts=ts, **attempt, reserved_tokens=5000, session="s1"),  # type: ignore[arg-type]
        AttemptSucceeded(
            ts=ts,
            **attempt,  # type: ignore[arg-type]
            latency_ms=900.0,
            ttfb_ms=100.0,
            input_tokens=10,
            output_tokens=500,
            exhausted_for_s=30.0,
        ),
        AttemptFailed(ts=ts, **other, kind="rate_limited", retry_after_s=500.0),  # type: ignore[arg-type]
        AttemptFailed(ts=ts, **other, kind="server_error"),  # type: ignore[arg-type]
        AttemptFailed(ts=ts, **other, kind="model_missing"),  # type: ignore[arg-type]
        StreamStalled(ts=ts, platform="groq", model="llama-70b", key_id="g1", phase="mid", silent_s=30.0),
        ClientDisconnected(ts=ts, request_id="r1", platform="groq", model="llama-70b"),
        RequestCompleted(
            ts=ts, request_id="r1", outcome="error", status=502, attempts=1, latency_ms=1.0, platform="groq"
        ),
        key_added("new", "mistral", ts),
        KeyRemoved(ts=ts, key_id="g1"),
        KeyDisabled(ts=ts, key_id="g2"),
        KeyEnabled(ts=ts, key_id="g2"),
        KeyInvalidated(ts=ts, key_id="gm1", status=401),
        KeyChecked(ts=ts, key_id="fresh", ok=False, status=401),  # ok -> invalid
        ModelUpdated(ts=ts, platform="groq", model="llama-70b", enabled=False, pool="smart"),
        RouteDecided(
            ts=ts,
            request_id="r1",
            attempt=1,
            seed=1,
            view_seq=1,
            now=ts,
            input=RouteInput(mode="auto"),
            candidates=(),
            excluded=(),
            chosen_ref="groq/llama-70b",
            chosen_key="g1",
        ),
        SessionPinned(ts=ts, session="s1", platform="groq", model="llama-70b", key_id="g2"),
        SessionPinCleared(ts=ts, session="s1", reason="x"),
        SessionBanned(ts=ts, session="s1", platform="groq", reason="stall"),
        SessionBanLifted(ts=ts, session="s1", platform="groq"),
        CooldownsReset(ts=ts, key_id="g2"),
        CooldownsReset(ts=ts, key_id="g2", model="llama-70b"),
        ConfigApplied(ts=ts, hash="h", platforms=("groq",), policy={"rate_limit_cooldown_s": 1.0}),
        ResponseStored(ts=ts, request_id="r1", response_id="resp_1", messages="[]", response="{}"),
        ResponseDeleted(ts=ts, response_id="resp_1"),
        ServiceStarted(ts=ts, version="t"),  # last: it ends every attempt in flight
    ]
    assert {type(e) for e in events} == set(EVENT_TYPES)
    return events


def _history_view() -> tuple[RoutingView, float]:
    view = new_view()
    events = every_kind_events(random.Random(5), 150)
    for seq, event in enumerate(events, start=1):
        view.apply(seq, event)
    # State every event of `one_of_each` can act on: an attempt in flight, a pinned session, a fresh ok key.
    ts = events[-1].ts + 1
    view.apply(
        len(events) + 1,
        AttemptStarted(
            ts=ts, request_id="r1", attempt=1, platform="groq", model="llama-70b", key_id="g1", session="s1"
        ),
    )
    view.apply(
        len(events) + 2,
        AttemptStarted(ts=ts, request_id="r2", attempt=1, platform="groq", model="llama-70b", key_id="g1"),
    )
    view.apply(
        len(events) + 3,
        SessionPinned(ts=ts, session="s1", platform="groq", model="llama-70b", key_id="g1"),
    )
    view.apply(len(events) + 4, key_added("fresh", "mistral", ts))
    return view, ts


def _projections(view: RoutingView) -> list[object]:
    return [
        view.catalog,
        view.health,
        view.cooldowns,
        view.quotas,
        view.stats,
        view.sessions,
        view.in_flight,
    ]


@pytest.mark.parametrize("tag", sorted({event_tag(t) for t in EVENT_TYPES} - RoutingView.FOLDED_TAGS))
def test_an_event_no_projection_folds_changes_no_projection(tag: str) -> None:
    view, ts = _history_view()
    (event,) = [e for e in one_of_each(ts) if event_type(e) == tag]
    before = [pickle.dumps(p) for p in _projections(view)]
    fold_everything(view, view.seq + 1, event)
    assert [pickle.dumps(p) for p in _projections(view)] == before


@pytest.mark.parametrize("projection", range(len(PROJECTIONS)), ids=[p.__name__ for p in PROJECTIONS])
def test_a_projection_ignores_every_type_it_does_not_declare(projection: int) -> None:
    """Stronger than the above: dispatch skips a projection for every type outside its own FOLDS."""
    view, ts = _history_view()
    p = _projections(view)[projection]
    declared = PROJECTIONS[projection].FOLDS
    others = [e for e in one_of_each(ts) if type(e) not in declared]
    assert others
    for event in others:
        before = pickle.dumps(p)
        p.apply(event)  # type: ignore[attr-defined]
        assert pickle.dumps(p) == before, event_type(event)
    # ... while every declared type does act on this history: the events above are not inert by construction.
    acted = set()
    for event in one_of_each(ts):
        if type(event) in declared:
            before = pickle.dumps(p)
            p.apply(event)  # type: ignore[attr-defined]
            if pickle.dumps(p) != before:
                acted.add(type(event))
    assert acted == declared


def test_a_view_given_an_unfolded_event_only_moves_its_position() -> None:
    view, ts = _history_view()
    reference, _ = _history_view()
    for event in one_of_each(ts):
        if event_type(event) in RoutingView.FOLDED_TAGS:
            continue
        view.apply(view.seq + 1, event)
        reference.seq += 1
        assert more_observable(view, ts + 5) == more_observable(reference, ts + 5)
