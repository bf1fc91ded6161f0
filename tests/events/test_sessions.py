"""Sessions and thread protection as pure code (DESIGN.md section 6): the protection table, session keys,
the sessions projection (TTL, LRU bound) and the in-flight projection behind single-flight platforms."""

from __future__ import annotations

import itertools
import random

import pytest

from events.catalog import CatalogModel
from events.decide import decide
from events.policy import RoutingPolicy
from events.sessions import (
    NO_ACTION,
    InFlight,
    Protection,
    Sessions,
    conversation_opening,
    derived_session,
    header_session,
    message_text,
    protect,
)
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    KeyAdded,
    RequestReceived,
    RouteInput,
    ServiceStarted,
    SessionBanLifted,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
)
from events.view import RoutingView, SessionPolicy

# ---- protect(): every row of the table -------------------------------------------------------------------

LEVELS = ("provider-ban", "model-skip", "off")
PROTECTED = ("server_error", "connect", "stall_pre", "stall_mid", "truncated", "empty", "rate_limited")
UNPROTECTED = ("auth", "bad_request")


def expected(level: str, kind: str, mid_stream: bool) -> Protection:
    if level == "off" or kind in UNPROTECTED:
        return NO_ACTION
    where = "mid-stream " if mid_stream else ""
    if level == "provider-ban":
        return Protection(
            ban_platform=True, skip_model=True, clear_pin=True, reason=f"provider-ban: {where}{kind}"
        )
    return Protection(
        ban_platform=False, skip_model=True, clear_pin=True, reason=f"model-skip: {where}{kind}"
    )


@pytest.mark.parametrize(
    ("level", "kind", "mid_stream"), list(itertools.product(LEVELS, PROTECTED + UNPROTECTED, (False, True)))
)
def test_protect_table(level: str, kind: str, mid_stream: bool) -> None:
    assert protect(level, kind, mid_stream) == expected(level, kind, mid_stream)


def test_only_provider_ban_bans_a_platform_and_off_never_acts() -> None:
    rows = [
        (level, kind, mid) for level in LEVELS for kind in PROTECTED + UNPROTECTED for mid in (False, True)
    ]
    assert {level for level, kind, mid in rows if protect(level, kind, mid).ban_platform} == {"provider-ban"}
    assert all(protect("off", kind, mid) == NO_ACTION for _, kind, mid in rows)
    # A client going away is never the model's fault, at any level.
    assert all(protect(level, "client_abort", mid) == NO_ACTION for level in LEVELS for mid in (False, True))


# ---- session keys ------------------------------------------------------------------------------------------


def test_header_session_is_hashed_and_trimmed() -> None:
    key = header_session("my-secret-conversation")
    assert key.startswith("h-") and "my-secret-conversation" not in key
    assert header_session("  my-secret-conversation \n") == key
    assert header_session("another") != key


def test_header_and_derived_keys_never_collide() -> None:
    assert header_session("hi") != derived_session("", "hi", "hi")
    assert derived_session("", "hi", "hello").startswith("c-")


def test_turn_two_finds_the_key_registered_at_the_end_of_turn_one() -> None:
    turn1 = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]
    system, first_user, first_reply = conversation_opening(turn1)
    assert (system, first_user, first_reply) == ("You are terse.", "hi", None)  # no key yet on turn one
    reply = {"role": "assistant", "content": "Hello from m."}
    registered = derived_session(system, first_user, message_text(reply))
    turn2 = [*turn1, reply, {"role": "user", "content": "and then?"}]
    assert derived_session(*conversation_opening(turn2)) == registered
    turn3 = [*turn2, {"role": "assistant", "content": "more"}, {"role": "user", "content": "again"}]
    assert derived_session(*conversation_opening(turn3)) == registered  # later turns do not move the key


def test_same_opening_different_system_or_reply_gives_different_keys() -> None:
    a = derived_session("You are A.", "hi", "Hello!")
    assert a != derived_session("You are B.", "hi", "Hello!")
    assert a != derived_session("You are A.", "hi", "Hi there.")
    assert a != derived_session("You are A.", "hello", "Hello!")
    # Parts are delimited: moving text between fields changes the key.
    assert derived_session("ab", "c", "d") != derived_session("a", "bc", "d")


def test_array_content_is_the_same_text_as_string_content() -> None:
    as_string = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "ok"}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi "},
                {"type": "image_url", "image_url": {}},
                {"type": "text", "text": "there"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    assert conversation_opening(as_parts) == conversation_opening(as_string)
    assert message_text({"role": "user", "content": "  padded \n"}) == "padded"


def test_developer_and_several_system_messages_make_up_the_system_prompt() -> None:
    messages = [
        {"role": "system", "content": "one"},
        {"role": "developer", "content": "two"},
        {"role": "user", "content": "hi"},
    ]
    assert conversation_opening(messages)[0] == "one\ntwo"


def test_a_tool_call_reply_identifies_the_conversation() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    reply = {"role": "assistant", "content": None, "tool_calls": [call]}
    assert message_text(reply) == 'tools:get_weather:{"city":"Oslo"}'
    # What the gateway registers from a streamed tool call (name and argument pieces joined) is the same.
    streamed = {
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
    }
    assert message_text(streamed) == message_text(reply)
    turn2 = [
        {"role": "user", "content": "weather?"},
        reply,
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert conversation_opening(turn2) == ("", "weather?", message_text(reply))
    other = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}],
    }
    assert derived_session("", "weather?", message_text(other)) != derived_session(
        *conversation_opening(turn2)
    )


# ---- the sessions projection -----------------------------------------------------------------------------


def pinned(session: str, ts: float, model: str = "m", platform: str = "p", key: str = "k1") -> SessionPinned:
    return SessionPinned(ts=ts, session=session, platform=platform, model=model, key_id=key)


def test_ttl_expires_exactly_at_last_use_plus_ttl() -> None:
    sessions = Sessions(ttl_s=100.0)
    sessions.apply(pinned("s", 1000.0))
    assert sessions.get("s", 1099.999).pin == ("p", "m", "k1")
    assert [k for k, _ in sessions.live(1099.999)] == ["s"]
    assert sessions.live(1100.0) == []
    assert sessions.get("s", 1100.0) is None
    assert sessions.get("s", 1000.0) is not None  # a pure read: an earlier time still sees it


def test_use_extends_the_ttl_and_an_expired_session_restarts_empty() -> None:
    sessions = Sessions(ttl_s=100.0)
    sessions.apply(pinned("s", 1000.0))
    sessions.apply(SessionBanned(ts=1050.0, session="s", platform="x", reason="provider-ban: server_error"))
    state = sessions.get("s", 1149.0)
    assert (
        state is not None
        and state.pin == ("p", "m", "k1")
        and state.bans == {"x": "provider-ban: server_error"}
    )
    # Exactly at last use + ttl the old state is gone: a new event starts a fresh session, no old pin or bans.
    sessions.apply(SessionBanned(ts=1150.0, session="s", platform="y", reason="r"))
    state = sessions.get("s", 1150.0)
    assert state is not None and state.pin is None and state.bans == {"y": "r"}


def test_pin_cleared_keeps_bans_and_ignores_unknown_sessions() -> None:
    sessions = Sessions()
    sessions.apply(pinned("s", 10.0))
    sessions.apply(SessionBanned(ts=11.0, session="s", platform="x", reason="r"))
    sessions.apply(SessionPinCleared(ts=12.0, session="s", reason="failed"))
    sessions.apply(SessionPinCleared(ts=12.0, session="nobody", reason="failed"))
    state = sessions.get("s", 13.0)
    assert state is not None and state.pin is None and state.bans == {"x": "r"}
    assert sessions.get("nobody", 13.0) is None
    sessions.apply(pinned("s", 14.0, model="m2"))
    assert sessions.get("s", 15.0).pin == ("p", "m2", "k1")
    assert sessions.get("s", 15.0).pin_used_at == 14.0


def test_the_table_is_bounded_least_recently_used_first() -> None:
    sessions = Sessions(ttl_s=1e9, max_sessions=2)
    sessions.apply(pinned("a", 1.0))
    sessions.apply(pinned("b", 2.0))
    sessions.apply(pinned("a", 3.0))  # a is used again: b is now the least recently used
    sessions.apply(pinned("c", 4.0))
    assert [k for k, _ in sessions.live(5.0)] == ["a", "c"]
    assert sessions.get("b", 5.0) is None
    sessions.apply(SessionBanned(ts=6.0, session="d", platform="x", reason="r"))
    assert [k for k, _ in sessions.live(7.0)] == ["c", "d"]


# ---- the in-flight projection -----------------------------------------------------------------------------


def started(request_id: str, attempt: int, platform: str, session: str | None) -> AttemptStarted:
    return AttemptStarted(
        ts=1.0,
        request_id=request_id,
        attempt=attempt,
        platform=platform,
        model="m",
        key_id="k",
        session=session,
    )


def succeeded(request_id: str, attempt: int, platform: str) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=2.0,
        request_id=request_id,
        attempt=attempt,
        platform=platform,
        model="m",
        key_id="k",
        latency_ms=1.0,
        ttfb_ms=1.0,
        input_tokens=1,
        output_tokens=1,
    )


def failed(request_id: str, attempt: int, platform: str, kind: str = "server_error") -> AttemptFailed:
    return AttemptFailed(
        ts=2.0, request_id=request_id, attempt=attempt, platform=platform, model="m", key_id="k", kind=kind
    )


def test_in_flight_counts_other_sessions_and_releases_on_success() -> None:
    flight = InFlight()
    flight.apply(started("r1", 1, "p", "A"))
    assert flight.count() == 1
    assert flight.other_sessions("p", "A") == 0  # its own session does not block it
    assert flight.other_sessions("p", "B") == 1
    assert flight.other_sessions("p", None) == 1
    assert flight.other_sessions("q", "B") == 0
    flight.apply(succeeded("r1", 1, "p"))
    assert (flight.count(), flight.other_sessions("p", "B")) == (0, 0)


@pytest.mark.parametrize("kind", ["server_error", "stall_mid", "client_abort", "connect", "rate_limited"])
def test_in_flight_releases_on_every_failure(kind: str) -> None:
    flight = InFlight()
    flight.apply(started("r1", 1, "p", "A"))
    flight.apply(failed("r1", 1, "p", kind))
    assert (flight.count(), flight.other_sessions("p", "B")) == (0, 0)


def test_in_flight_counts_sessions_not_attempts() -> None:
    flight = InFlight()
    flight.apply(started("r1", 1, "p", "A"))
    flight.apply(started("r2", 1, "p", "A"))
    flight.apply(started("r3", 1, "p", "C"))
    assert flight.other_sessions("p", "B") == 2  # A (twice) and C
    assert flight.other_sessions("p", "A") == 1
    flight.apply(succeeded("r1", 1, "p"))
    assert flight.other_sessions("p", "B") == 2  # A still has r2 in flight
    flight.apply(failed("r2", 1, "p"))
    assert flight.other_sessions("p", "B") == 1
    assert flight.other_sessions("p", "C") == 0


def test_session_less_requests_block_every_other_request() -> None:
    flight = InFlight()
    flight.apply(started("r1", 1, "p", None))
    assert flight.other_sessions("p", "A") == 1
    assert flight.other_sessions("p", None) == 1  # two session-less requests are not the same conversation


def test_end_events_are_idempotent_and_unknown_ends_are_ignored() -> None:
    flight = InFlight()
    flight.apply(succeeded("nobody", 1, "p"))
    flight.apply(started("r1", 1, "p", "A"))
    flight.apply(failed("r1", 1, "p"))
    flight.apply(failed("r1", 1, "p"))
    assert (flight.count(), flight.other_sessions("p", "B")) == (0, 0)
    # Attempts are told apart by (request, attempt).
    flight.apply(started("r1", 2, "p", "A"))
    flight.apply(succeeded("r1", 1, "p"))
    assert flight.other_sessions("p", "B") == 1


def test_service_started_releases_everything_that_was_under_way() -> None:
    flight = InFlight()
    flight.apply(started("r1", 1, "p", "A"))
    flight.apply(started("r2", 1, "q", None))
    flight.apply(ServiceStarted(ts=3.0, version="x"))
    assert flight.count() == 0
    assert flight.other_sessions("p", "B") == flight.other_sessions("q", "B") == 0
    # An end event of an attempt from before the restart changes nothing.
    flight.apply(succeeded("r1", 1, "p"))
    assert flight.count() == 0


def test_other_event_types_change_nothing() -> None:
    flight = InFlight()
    flight.apply(started("r1", 1, "p", "A"))
    flight.apply(
        RequestReceived(ts=1.0, request_id="r9", model="auto", stream=False, messages=1, est_input_tokens=1)
    )
    assert flight.other_sessions("p", "B") == 1


# ---- how decide() uses them -------------------------------------------------------------------------------


def view_with(protection: dict[str, str], single_flight: frozenset[str] = frozenset()) -> RoutingView:
    models = [
        CatalogModel(
            platform=p,
            id=i,
            pool="smart",
            fallback=True,
            enabled=True,
            context_window=None,
            intelligence_rank=1,
            speed_rank=1,
        )
        for p, i in (("ban", "b1"), ("ban", "b2"), ("other", "o1"))
    ]
    view = RoutingView(
        models,
        RoutingPolicy(),
        session_policy=SessionPolicy(protection=protection, single_flight=single_flight),
    )
    for seq, (key, platform) in enumerate((("kb", "ban"), ("ko", "other")), start=1):
        view.apply(seq, KeyAdded(ts=0.0, key_id=key, platform=platform, label=key, source="config"))
    return view


def smart(session: str) -> RouteInput:
    return RouteInput(mode="auto-smart", requested=("auto-smart",), session=session, use_pin=True)


def test_a_pin_takes_the_turn_and_a_ban_excludes_the_platform() -> None:
    view = view_with({"ban": "provider-ban"})
    view.apply(10, pinned("s", 100.0, model="b1", platform="ban", key="kb"))
    d = decide(view, smart("s"), 101.0, random.Random(1))
    assert (d.chosen_ref, d.chosen_key, d.pin_used) == ("ban/b1", "kb", True)
    assert [c.ref for c in d.candidates] == ["ban/b1"]
    view.apply(11, SessionBanned(ts=102.0, session="s", platform="ban", reason="provider-ban: server_error"))
    for seed in range(20):
        d = decide(view, smart("s"), 103.0, random.Random(seed))
        assert (d.chosen_ref, d.pin_used) == ("other/o1", False)
        assert d.pin_cleared is not None and "banned" in d.pin_cleared
        assert {e.ref for e in d.excluded if e.reason.startswith("banned for this session")} == {
            "ban/b1",
            "ban/b2",
        }
    # Another session is not affected.
    assert {decide(view, smart("t"), 103.0, random.Random(seed)).chosen_ref for seed in range(40)} == {
        "ban/b1",
        "ban/b2",
        "other/o1",
    }


def test_single_flight_skips_a_platform_another_session_uses() -> None:
    view = view_with({"ban": "provider-ban"}, frozenset({"ban"}))
    view.apply(10, started("r1", 1, "ban", "A"))
    for seed in range(20):
        d = decide(view, smart("B"), 100.0, random.Random(seed))
        assert d.chosen_ref == "other/o1"
        assert any(e.reason.startswith("single-flight") for e in d.excluded if e.ref.startswith("ban/"))
    assert {decide(view, smart("A"), 100.0, random.Random(seed)).chosen_ref for seed in range(40)} == {
        "ban/b1",
        "ban/b2",
        "other/o1",
    }
    view.apply(11, failed("r1", 1, "ban", "client_abort"))
    assert "ban/b1" in {decide(view, smart("B"), 100.0, random.Random(seed)).chosen_ref for seed in range(40)}


def test_single_flight_needs_provider_ban() -> None:
    view = view_with({"ban": "model-skip"}, frozenset({"ban"}))
    view.apply(10, started("r1", 1, "ban", "A"))
    assert "ban/b1" in {decide(view, smart("B"), 100.0, random.Random(seed)).chosen_ref for seed in range(40)}


def test_a_lifted_ban_goes_and_the_rest_of_the_session_stays() -> None:
    sessions = Sessions(ttl_s=100.0)
    sessions.apply(SessionPinned(ts=1.0, session="s1", platform="groq", model="m", key_id="k"))
    sessions.apply(SessionBanned(ts=2.0, session="s1", platform="groq", reason="stall"))
    sessions.apply(SessionBanned(ts=3.0, session="s1", platform="longcat", reason="stall"))
    sessions.apply(SessionBanLifted(ts=50.0, session="s1", platform="groq"))
    sessions.apply(SessionBanLifted(ts=50.0, session="nobody", platform="groq"))
    state = sessions.get("s1", 60.0)
    assert state is not None and state.bans == {"longcat": "stall"} and state.pin == ("groq", "m", "k")
    assert state.last_use == 3.0  # lifting is not a use: the session still expires on time
    assert sessions.get("s1", 103.0) is None and sessions.get("nobody", 60.0) is None
