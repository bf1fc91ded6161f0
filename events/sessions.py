"""Conversations that stay put: session keys, the sessions projection (pins, bans, last use), the in-flight
projection for single-flight platforms, and thread protection as one pure decision table.

A session key is `X-Session-Id` when the client sends one; otherwise it is derived from the conversation's
opening (system prompt, first user message, first assistant reply). The gateway registers a derived key at
the end of a successful first turn with the reply it served, so turn two finds it, and two conversations
that open with the same "hi" do not share one (the seed system hashed only the first user message).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from events.failures import PROTECTED
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    ServiceStarted,
    SessionBanLifted,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
)

# ---- session keys ---------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def header_session(value: str) -> str:
    """The client named its session; hashed so arbitrary header values never reach the log."""
    return "h-" + _digest("header", value.strip())


def message_text(message: Mapping[str, Any]) -> str:
    """What identifies a message: its text (array parts joined), else its tool calls (name + arguments)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    text = content.strip() if isinstance(content, str) else ""
    if text:
        return text
    calls = message.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    return "tools:" + "|".join(
        f"{f.get('name', '')}:{f.get('arguments', '')}" for f in functions if isinstance(f, dict)
    )


def conversation_opening(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str, str | None]:
    """(system prompt, first user message, first assistant reply or None)."""
    system = "\n".join(message_text(m) for m in messages if m.get("role") in ("system", "developer"))
    first_user = next((message_text(m) for m in messages if m.get("role") == "user"), "")
    first_reply = next((message_text(m) for m in messages if m.get("role") == "assistant"), None)
    return system, first_user, first_reply


def derived_session(system: str, first_user: str, first_reply: str) -> str:
    return "c-" + _digest("conversation", system, first_user, first_reply)


# ---- the sessions projection ----------------------------------------------------------------------------


@dataclass
class SessionState:
    last_use: float
    pin: tuple[str, str, str] | None = None  # (platform, model id, key_id)
    pin_used_at: float = 0.0
    bans: dict[str, str] = field(default_factory=dict)  # platform -> reason


class SessionsState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Least recently used first: (session, last_use, pin, pin_used_at, bans as (platform, reason))."""

    sessions: tuple[tuple[str, float, tuple[str, str, str] | None, float, tuple[tuple[str, str], ...]], ...]


class InFlightState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    attempts: tuple[tuple[str | None, int, str, str | None], ...]  # (request, attempt, platform, session)
    by_platform: tuple[tuple[str, tuple[tuple[str | None, int], ...]], ...]


class Sessions:
    """Live sessions, least recently used first; expired after `ttl_s` without use, at most `max_sessions`."""

    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset(
        {SessionPinned, SessionPinCleared, SessionBanned, SessionBanLifted}
    )

    def __init__(self, ttl_s: float = 1800.0, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()

    def _touch(self, session: str, ts: float) -> SessionState:
        state = self._sessions.get(session)
        if state is None or state.last_use + self.ttl_s <= ts:
            state = self._sessions[session] = SessionState(last_use=ts)
        state.last_use = max(state.last_use, ts)
        self._sessions.move_to_end(session)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return state

    def apply(self, event: Event) -> None:
        match event:
            case SessionPinned():
                state = self._touch(event.session, event.ts)
                state.pin = (event.platform, event.model, event.key_id)
                state.pin_used_at = event.ts
            case SessionPinCleared():
                cleared = self._sessions.get(event.session)
                if cleared is not None:
                    cleared.pin = None
            case SessionBanned():
                self._touch(event.session, event.ts).bans[event.platform] = event.reason
            case SessionBanLifted():
                # Not a use of the session: its last use (and so its expiry) stays.
                lifted = self._sessions.get(event.session)
                if lifted is not None:
                    lifted.bans.pop(event.platform, None)
            case _:
                pass

    def state(self) -> SessionsState:
        return SessionsState(
            tuple(
                (key, s.last_use, s.pin, s.pin_used_at, tuple(s.bans.items()))
                for key, s in self._sessions.items()
            )
        )

    def restore(self, state: SessionsState) -> None:
        self._sessions = OrderedDict(
            (key, SessionState(last_use, pin, pin_used_at, dict(bans)))
            for key, last_use, pin, pin_used_at, bans in state.sessions
        )

    def get(self, session: str, now: float) -> SessionState | None:
        # A pure read (see KeyHealth.cooling_until); expired sessions leave by the LRU bound.
        state = self._sessions.get(session)
        return state if state is not None and state.last_use + self.ttl_s > now else None

    def live(self, now: float) -> list[tuple[str, SessionState]]:
        return [(k, s) for k, s in self._sessions.items() if s.last_use + self.ttl_s > now]


class InFlight:
    """Attempts under way per platform and session. Every AttemptStarted has an end event (the request
    actor logs one on every path, cancellation included); a restart ends everything that was under way."""

    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset(
        {AttemptStarted, AttemptSucceeded, AttemptFailed, ServiceStarted}
    )

    def __init__(self) -> None:
        self._attempts: dict[tuple[str | None, int], tuple[str, str | None]] = {}
        self._by_platform: dict[str, dict[str | None, int]] = {}

    def apply(self, event: Event) -> None:
        match event:
            case AttemptStarted():
                self._attempts[(event.request_id, event.attempt)] = (event.platform, event.session)
                sessions = self._by_platform.setdefault(event.platform, {})
                sessions[event.session] = sessions.get(event.session, 0) + 1
            case AttemptSucceeded() | AttemptFailed():
                held = self._attempts.pop((event.request_id, event.attempt), None)
                if held is not None:
                    platform, session = held
                    sessions = self._by_platform[platform]
                    sessions[session] -= 1
                    if not sessions[session]:
                        del sessions[session]
            case ServiceStarted():
                self._attempts.clear()
                self._by_platform.clear()
            case _:
                pass

    def state(self) -> InFlightState:
        return InFlightState(
            tuple((request, attempt, p, s) for (request, attempt), (p, s) in self._attempts.items()),
            tuple((p, tuple(sessions.items())) for p, sessions in self._by_platform.items()),
        )

    def restore(self, state: InFlightState) -> None:
        self._attempts = {(request, attempt): (p, s) for request, attempt, p, s in state.attempts}
        self._by_platform = {p: dict(sessions) for p, sessions in state.by_platform}

    def other_sessions(self, platform: str, session: str | None) -> int:
        """How many other sessions (or session-less requests) have an attempt in flight on the platform."""
        return sum(1 for s in self._by_platform.get(platform, {}) if s != session or s is None)

    def count(self) -> int:
        return len(self._attempts)

    def busy(self, platform: str) -> bool:
        """Whether any attempt is in flight on the platform."""
        return bool(self._by_platform.get(platform))


# ---- thread protection ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protection:
    ban_platform: bool  # for this session, from now on
    skip_model: bool  # for the rest of this request
    clear_pin: bool
    reason: str


NO_ACTION = Protection(False, False, False, "")


def protect(level: str, kind: str, mid_stream: bool) -> Protection:
    """The decision table. `level` is the platform's protection; `kind` the failure kind."""
    if level == "off" or kind not in PROTECTED:
        return NO_ACTION
    where = "mid-stream " if mid_stream else ""
    if level == "provider-ban":
        return Protection(True, True, True, f"provider-ban: {where}{kind}")
    return Protection(False, True, True, f"model-skip: {where}{kind}")
