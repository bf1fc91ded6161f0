"""The session actor (actors/session.py), fed to a log writer on a MemoryStore: conversation keys, thread
protection and its durable events, pins, and single-flight admissions held in a scope.

Durable means committed before the ask returns: every check of the store below runs right after the
awaited call, with no settling. Tests where time matters run on trio's MockClock (`autojump_clock`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from actors.clock import WallClock
from actors.log_writer import LogWriter
from actors.session import Conversation, SessionActor, SessionStatistics
from events.catalog import CatalogModel
from events.sessions import NO_ACTION, Protection, derived_session, header_session
from events.store import MemoryStore
from events.types import Event, SessionBanned, SessionPinCleared, SessionPinned
from events.view import SessionPolicy

E = TypeVar("E", bound=Event)

LONGCAT = CatalogModel("longcat", "flash-chat", "smart", True, True, 128_000, 1, 3)
GROQ = CatalogModel("groq", "llama-70b", "balanced", True, True, 128_000, 2, 1)
OWL = CatalogModel("owl", "alpha", "smart", True, True, 128_000, 1, 2)
POLICY = SessionPolicy(
    protection={"longcat": "provider-ban", "owl": "off", "mistral": "provider-ban", "nvidia": "model-skip"},
    single_flight=frozenset({"longcat", "nvidia"}),
)

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "hi"}
FIRST_TURN = [SYSTEM, USER]


def second_turn(reply: str) -> list[dict[str, Any]]:
    return [SYSTEM, USER, {"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]


@dataclass
class Harness:
    store: MemoryStore
    log: LogWriter
    actor: SessionActor
    clock: WallClock

    def events(self, kind: type[E]) -> list[E]:
        return [e for _, e in self.store.read_after(0) if isinstance(e, kind)]

    def session_events(self) -> list[Event]:
        session_types = SessionBanned | SessionPinCleared | SessionPinned
        return [e for _, e in self.store.read_after(0) if isinstance(e, session_types)]


@asynccontextmanager
async def running(policy: SessionPolicy = POLICY) -> AsyncIterator[Harness]:
    """A log writer on a MemoryStore and a session actor writing to it; shut down actors first, then the
    log writer commits what is left."""
    store = MemoryStore()
    log = LogWriter(store)
    clock = WallClock()
    actor = SessionActor(log, policy, clock.now)
    with trio.fail_after(120):
        async with trio.open_nursery() as outer:
            await outer.start(log.run)
            async with trio.open_nursery() as inner:
                await inner.start(actor.run)
                yield Harness(store, log, actor, clock)
                inner.cancel_scope.cancel()
            log.close()


async def statistics(actor: SessionActor) -> SessionStatistics:
    """The actor's statistics once it has read its inbox (a release is a message, read on its next turn;
    any later ask is answered after it)."""
    await trio.testing.wait_all_tasks_blocked()
    return actor.statistics()


def header_conversation(
    actor: SessionActor, request_id: str = "r1", header: str = "thread-1"
) -> Conversation:
    return actor.conversation(request_id, FIRST_TURN, header, "auto")


# ---- conversation keys (pure, no round trip) ---------------------------------------------------------------


def new_actor() -> SessionActor:
    """An actor that is never run: what needs no round trip works without it."""
    return SessionActor(LogWriter(MemoryStore()), POLICY, lambda: 0.0)


@pytest.mark.parametrize("mode", ["auto", "auto-smart", "auto-fast", "groq/llama-70b"])
async def test_an_x_session_id_header_is_the_session_in_every_mode(mode: str) -> None:
    conv = new_actor().conversation("r1", second_turn("Hello"), "thread-1", mode)
    assert conv == Conversation("r1", header_session("thread-1"), pins=True)


async def test_the_header_session_ignores_surrounding_whitespace() -> None:
    actor = new_actor()
    a = actor.conversation("r1", FIRST_TURN, "thread-1", "auto")
    b = actor.conversation("r2", FIRST_TURN, "  thread-1\n", "auto")
    assert a.session == b.session
    assert a.session != actor.conversation("r3", FIRST_TURN, "thread-2", "auto").session


async def test_auto_smart_derives_the_session_from_the_conversations_opening() -> None:
    conv = new_actor().conversation("r2", second_turn("Hello!"), None, "auto-smart")
    assert conv.session == derived_session("You are terse.", "hi", "Hello!")
    assert (conv.pins, conv.system, conv.first_user) == (True, "You are terse.", "hi")


async def test_an_auto_smart_first_turn_has_no_session_yet_but_pins_apply() -> None:
    conv = new_actor().conversation("r1", FIRST_TURN, None, "auto-smart")
    assert conv == Conversation("r1", None, True, "You are terse.", "hi")


@pytest.mark.parametrize("mode", ["auto", "auto-fast", "groq/llama-70b"])
async def test_without_a_header_other_modes_have_no_session_and_no_pins(mode: str) -> None:
    conv = new_actor().conversation("r1", second_turn("Hello"), None, mode)
    assert conv == Conversation("r1", None, False)


async def test_an_empty_header_is_no_header() -> None:
    assert new_actor().conversation("r1", second_turn("x"), "", "auto").session is None


async def test_two_conversations_opening_alike_but_answered_differently_have_different_keys() -> None:
    actor = new_actor()
    a = actor.conversation("r1", second_turn("Hello!"), None, "auto-smart")
    b = actor.conversation("r2", second_turn("Hi, how can I help?"), None, "auto-smart")
    assert a.session != b.session


async def test_protection_without_pins_needs_no_round_trip() -> None:
    actor = new_actor()  # not running: a round trip would hang
    conv = actor.conversation("r1", FIRST_TURN, None, "auto")
    with trio.fail_after(1):
        assert await actor.protect(conv, LONGCAT, "server_error", False, False) is NO_ACTION
        await actor.register_turn(conv, LONGCAT, "l1", lambda: "Hello")
        await actor.pin_cleared(conv, "cooling")  # no session: nothing to clear


# ---- protection --------------------------------------------------------------------------------------------


async def test_provider_ban_after_a_failure_writes_a_durable_session_ban() -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        action = await h.actor.protect(conv, LONGCAT, "server_error", False, False)
        assert action == Protection(True, True, True, "provider-ban: server_error")
        (ban,) = h.events(SessionBanned)  # committed before protect returned
        assert (ban.session, ban.platform, ban.reason, ban.request_id) == (
            header_session("thread-1"),
            "longcat",
            "provider-ban: server_error",
            "r1",
        )
        assert h.events(SessionPinCleared) == []  # the pin was not used: nothing to clear


async def test_protection_mid_stream_says_so() -> None:
    async with running() as h:
        action = await h.actor.protect(header_conversation(h.actor), LONGCAT, "stall_mid", True, False)
        assert action.reason == "provider-ban: mid-stream stall_mid"
        assert h.events(SessionBanned)[0].reason == "provider-ban: mid-stream stall_mid"


async def test_a_failure_of_the_pinned_model_clears_the_pin() -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        await h.actor.protect(conv, LONGCAT, "connect", False, True)
        assert [type(e) for e in h.session_events()] == [SessionBanned, SessionPinCleared]
        (cleared,) = h.events(SessionPinCleared)
        assert (cleared.session, cleared.reason) == (header_session("thread-1"), "provider-ban: connect")
        assert conv.pin_cleared


async def test_model_skip_skips_and_clears_the_pin_without_a_ban() -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        action = await h.actor.protect(conv, GROQ, "empty", False, True)  # groq: model-skip by default
        assert action == Protection(False, True, True, "model-skip: empty")
        assert [type(e) for e in h.session_events()] == [SessionPinCleared]


async def test_a_platform_with_protection_off_is_left_alone() -> None:
    async with running() as h:
        action = await h.actor.protect(header_conversation(h.actor), OWL, "server_error", True, True)
        assert action == NO_ACTION
        assert h.session_events() == []


@pytest.mark.parametrize("kind", ["auth", "forbidden", "bad_request", "context_exceeded", "model_missing"])
async def test_a_failure_that_is_not_protected_changes_nothing(kind: str) -> None:
    async with running() as h:
        action = await h.actor.protect(header_conversation(h.actor), LONGCAT, kind, False, True)
        assert action == NO_ACTION
        assert h.session_events() == []
        assert (await statistics(h.actor)).bans == 0


async def test_the_pin_is_cleared_once_per_request() -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        await h.actor.protect(conv, GROQ, "server_error", False, True)
        await h.actor.protect(conv, GROQ, "connect", False, True)
        await h.actor.pin_cleared(conv, "the pinned model is cooling")
        assert len(h.events(SessionPinCleared)) == 1
        # The next request of the same session may clear it again.
        await h.actor.protect(header_conversation(h.actor, "r2"), GROQ, "connect", False, True)
        assert [e.request_id for e in h.events(SessionPinCleared)] == ["r1", "r2"]
        assert (await statistics(h.actor)).pins_cleared == 2


async def test_pin_cleared_writes_a_durable_event_once() -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        await h.actor.pin_cleared(conv, "key g1 invalid")
        (cleared,) = h.events(SessionPinCleared)
        assert (cleared.session, cleared.reason, cleared.request_id) == (
            header_session("thread-1"),
            "key g1 invalid",
            "r1",
        )
        await h.actor.pin_cleared(conv, "again")
        await h.actor.protect(conv, GROQ, "connect", False, True)
        assert len(h.events(SessionPinCleared)) == 1


async def test_a_first_turn_has_no_pin_to_clear() -> None:
    async with running() as h:
        conv = h.actor.conversation("r1", FIRST_TURN, None, "auto-smart")
        await h.actor.pin_cleared(conv, "cooling")
        await h.actor.protect(conv, GROQ, "connect", False, True)
        assert h.session_events() == []


async def test_a_first_turns_ban_is_written_with_the_derived_key_when_the_turn_registers() -> None:
    async with running() as h:
        conv = h.actor.conversation("r1", FIRST_TURN, None, "auto-smart")
        action = await h.actor.protect(conv, LONGCAT, "stall_pre", False, False)
        assert action.ban_platform
        assert h.session_events() == []  # no key yet: the ban waits for the reply
        await h.actor.register_turn(conv, GROQ, "g1", lambda: "Hello!")
        key = derived_session("You are terse.", "hi", "Hello!")
        events = h.session_events()
        assert [type(e) for e in events] == [SessionBanned, SessionPinned]
        ban, pin = events
        assert isinstance(ban, SessionBanned) and isinstance(pin, SessionPinned)
        assert (ban.session, ban.platform, ban.reason) == (key, "longcat", "provider-ban: stall_pre")
        assert (pin.session, pin.platform, pin.model, pin.key_id) == (key, "groq", "llama-70b", "g1")
        # The client's next turn carries the reply it was served, and finds both.
        assert h.actor.conversation("r2", second_turn("Hello!"), None, "auto-smart").session == key


async def test_a_first_turn_that_never_answers_writes_no_ban() -> None:
    async with running() as h:
        conv = h.actor.conversation("r1", FIRST_TURN, None, "auto-smart")
        await h.actor.protect(conv, LONGCAT, "server_error", False, False)
        await h.actor.protect(
            conv, CatalogModel("mistral", "large", "smart", True, True, None, 1, 1), "connect", False, False
        )
        assert conv.banned == [
            ("longcat", "provider-ban: server_error"),
            ("mistral", "provider-ban: connect"),
        ]
        assert h.session_events() == []
        assert (await statistics(h.actor)).bans == 2


# ---- register_turn -----------------------------------------------------------------------------------------


async def test_a_successful_turn_pins_the_session() -> None:
    async with running() as h:
        await h.actor.register_turn(header_conversation(h.actor), GROQ, "g2", lambda: "whatever")
        (pin,) = h.events(SessionPinned)
        assert (pin.request_id, pin.session, pin.platform, pin.model, pin.key_id) == (
            "r1",
            header_session("thread-1"),
            "groq",
            "llama-70b",
            "g2",
        )
        assert pin.ts == pytest.approx(h.clock.now(), abs=1.0)


async def test_a_later_auto_smart_turn_pins_its_derived_key() -> None:
    async with running() as h:
        conv = h.actor.conversation("r2", second_turn("Hello!"), None, "auto-smart")
        await h.actor.register_turn(conv, GROQ, "g1", lambda: "Something else")  # the key is known already
        (pin,) = h.events(SessionPinned)
        assert pin.session == derived_session("You are terse.", "hi", "Hello!")


async def test_a_first_turn_without_a_reply_text_pins_nothing() -> None:
    async with running() as h:
        conv = h.actor.conversation("r1", FIRST_TURN, None, "auto-smart")
        await h.actor.register_turn(conv, GROQ, "g1", lambda: None)
        assert h.session_events() == []
        assert (await statistics(h.actor)).turns_registered == 0


async def test_a_tool_call_reply_pins_the_key_its_next_turn_will_have() -> None:
    async with running() as h:
        conv = h.actor.conversation("r1", FIRST_TURN, None, "auto-smart")
        await h.actor.register_turn(conv, GROQ, "g1", lambda: 'tools:f:{"a":1}')
        following = [
            SYSTEM,
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "42"},
        ]
        assert (
            h.events(SessionPinned)[0].session
            == h.actor.conversation("r2", following, None, "auto-smart").session
        )


# ---- single-flight admissions ------------------------------------------------------------------------------


async def test_a_single_flight_platform_admits_one_session_at_a_time() -> None:
    async with running() as h:
        async with h.actor.admitted("longcat", "s1") as first:
            assert first
            async with h.actor.admitted("longcat", "s2") as second:
                assert not second
            async with h.actor.admitted("longcat", "s1") as again:
                assert again  # the same thread may go on
            assert (await statistics(h.actor)).admissions_held == 1
        async with h.actor.admitted("longcat", "s2") as later:
            assert later
        assert (await statistics(h.actor)) == SessionStatistics(
            turns_registered=0, bans=0, pins_cleared=0, admitted=3, refused=1, admissions_held=0
        )


async def test_an_admission_is_held_while_its_attempt_runs(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as h:
        results: list[tuple[float, bool]] = []

        async def attempt(session: str, start: float, run_s: float) -> None:
            await trio.sleep(start)
            async with h.actor.admitted("longcat", session) as ok:
                results.append((trio.current_time(), ok))
                if ok:
                    await trio.sleep(run_s)

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "s1", 0, 30)
            nursery.start_soon(attempt, "s2", 10, 5)  # while s1 runs: refused
            nursery.start_soon(attempt, "s2", 31, 5)  # after s1 ended: admitted
        assert [(round(t - t0), ok) for t, ok in results] == [(0, True), (10, False), (31, True)]
        assert (await statistics(h.actor)).admissions_held == 0


async def test_an_admission_is_released_when_the_attempt_raises() -> None:
    async with running() as h:
        with pytest.raises(RuntimeError):
            async with h.actor.admitted("longcat", "s1") as ok:
                assert ok
                raise RuntimeError("the attempt failed")
        async with h.actor.admitted("longcat", "s2") as ok:
            assert ok


async def test_an_admission_is_released_when_the_attempt_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as h:
        with trio.move_on_after(5) as scope:  # e.g. the client went away
            async with h.actor.admitted("longcat", "s1") as ok:
                assert ok
                await trio.sleep_forever()
        assert scope.cancelled_caught
        async with h.actor.admitted("longcat", "s2") as ok:
            assert ok
        assert (await statistics(h.actor)).admissions_held == 0


async def test_a_refused_admission_holds_nothing() -> None:
    async with running() as h:
        async with h.actor.admitted("longcat", "s1"):
            async with h.actor.admitted("longcat", "s2") as ok:
                assert not ok
            assert (await statistics(h.actor)).admissions_held == 1
        assert (await statistics(h.actor)).admissions_held == 0
        async with h.actor.admitted("longcat", "s3") as ok:
            assert ok


async def test_requests_without_a_session_are_each_their_own_thread() -> None:
    async with running() as h:
        async with h.actor.admitted("longcat", None) as first:
            assert first
            async with h.actor.admitted("longcat", None) as second:
                assert not second
            async with h.actor.admitted("longcat", "s1") as third:
                assert not third
        async with h.actor.admitted("longcat", "s1"):
            async with h.actor.admitted("longcat", None) as fourth:
                assert not fourth


async def test_platforms_are_admitted_independently() -> None:
    async with running() as h:
        async with h.actor.admitted("longcat", "s1"):
            async with h.actor.admitted("mistral", "s2") as other:
                assert other  # provider-ban but not single-flight: no admission asked
            async with h.actor.admitted("nvidia", "s2") as other:
                assert other  # single-flight listed but model-skip: not single-flight


@pytest.mark.parametrize(
    ("platform", "single"),
    [("longcat", True), ("nvidia", False), ("mistral", False), ("groq", False), ("owl", False)],
)
async def test_single_flight_is_a_listed_platform_with_provider_ban(platform: str, single: bool) -> None:
    assert new_actor().single_flight(platform) is single


@pytest.mark.parametrize("platform", ["groq", "nvidia", "mistral"])
async def test_a_platform_that_is_not_single_flight_never_asks(platform: str) -> None:
    actor = new_actor()  # not running: an ask would hang
    with trio.fail_after(1):
        async with actor.admitted(platform, "s1") as a, actor.admitted(platform, "s2") as b:
            assert a and b
    assert actor.statistics() == SessionStatistics(0, 0, 0, 0, 0, 0)


async def test_an_admission_asked_by_a_task_cancelled_before_the_answer_is_not_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    log = LogWriter(store)
    clock = WallClock()
    actor = SessionActor(log, POLICY, clock.now)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        # The actor has not read its inbox yet (it is busy, or starting): the client goes away meanwhile.
        with trio.move_on_after(1):
            async with actor.admitted("longcat", "s1"):
                pytest.fail("admitted before the actor read its inbox")
        await nursery.start(actor.run)
        try:
            async with actor.admitted("longcat", "s2") as ok:
                assert actor.statistics().admissions_held == 1  # s2's own
                assert ok
        finally:
            nursery.cancel_scope.cancel()


# ---- statistics --------------------------------------------------------------------------------------------


async def test_statistics_count_what_the_actor_did() -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        await h.actor.protect(conv, LONGCAT, "server_error", False, True)  # a ban and a cleared pin
        await h.actor.protect(conv, GROQ, "connect", False, True)  # model-skip: the pin is cleared already
        await h.actor.register_turn(conv, OWL, "o1", lambda: "Hi")
        first = h.actor.conversation("r2", FIRST_TURN, None, "auto-smart")
        await h.actor.register_turn(first, OWL, "o1", lambda: "Hi")
        async with h.actor.admitted("longcat", "s1"):
            async with h.actor.admitted("longcat", "s2"):
                pass
            held = await statistics(h.actor)
        assert held == SessionStatistics(
            turns_registered=2, bans=1, pins_cleared=1, admitted=1, refused=1, admissions_held=1
        )
        assert (await statistics(h.actor)).admissions_held == 0


async def test_only_session_events_are_written(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as h:
        conv = header_conversation(h.actor)
        await h.actor.protect(conv, LONGCAT, "server_error", False, True)
        await h.actor.register_turn(conv, GROQ, "g1", lambda: "x")
        await trio.sleep(1)  # a batch window later: nothing else arrives
        assert [type(e) for _, e in h.store.read_after(0)] == [
            SessionBanned,
            SessionPinCleared,
            SessionPinned,
        ]
