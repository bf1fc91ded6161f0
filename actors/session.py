"""Session actor: the command side of conversations (DESIGN.md section 6).

It derives a request's session key, registers a successful turn (the pin), applies thread protection after
every failure (ban the platform for the session, clear the pin), and admits attempts on single-flight
platforms. Its writes are the durable session events (`SessionPinned`, `SessionBanned`,
`SessionPinCleared`), committed before it answers, so a client's next turn finds them; the routing view
folds them for `decide`, so replay sees what the live gateway saw.

Admissions are live state of this actor, not a projection: two sessions deciding within one log batch
window would both see a single-flight platform free in the view, and only one of them is admitted. An
admission is held in a scope (`async with actor.admitted(...)`), so it is released on every path.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import trio

from actors.log_writer import LogWriter
from actors.mailbox import Reply
from events.catalog import CatalogModel
from events.sessions import (
    NO_ACTION,
    Protection,
    conversation_opening,
    derived_session,
    header_session,
    protect,
)
from events.types import Event, SessionBanned, SessionPinCleared, SessionPinned
from events.view import SessionPolicy


@dataclass
class Conversation:
    """One request's view of its conversation: the session key (None for a first turn without
    X-Session-Id) and whether pins apply (auto-smart, or any mode when the client names its session)."""

    request_id: str
    session: str | None
    pins: bool
    system: str = ""
    first_user: str = ""
    pin_cleared: bool = False
    banned: list[tuple[str, str]] = field(default_factory=list)  # a first turn's bans, until it has a key


@dataclass(frozen=True)
class _Protect:
    conversation: Conversation
    model: CatalogModel
    kind: str
    after_content: bool
    pin_used: bool


@dataclass(frozen=True)
class _Register:
    conversation: Conversation
    pin: tuple[CatalogModel, str] | None  # (model, key) to pin; None: only write a first turn's bans
    reply_text: str | None


@dataclass(frozen=True)
class _ClearPin:
    conversation: Conversation
    reason: str


@dataclass(frozen=True)
class _Admit:
    platform: str
    session: str | None
    token: object  # names this admission, for its release


@dataclass(frozen=True)
class _Release:
    token: object


_Ask = _Protect | _Register | _ClearPin | _Admit


@dataclass(frozen=True)
class SessionStatistics:
    turns_registered: int
    bans: int
    pins_cleared: int
    admitted: int
    refused: int
    admissions_held: int


_ADMITTED = nullcontext(True)  # reusable: it holds nothing


class SessionActor:
    def __init__(self, log: LogWriter, policy: SessionPolicy, now: Callable[[], float]) -> None:
        self._log = log
        self._policy = policy
        self._now = now
        self._send, self._recv = trio.open_memory_channel[tuple[_Ask, Reply[Any]] | _Release](math.inf)
        self._held: dict[str, dict[str | None, int]] = {}  # single-flight platform -> session -> attempts
        self._admissions: dict[object, tuple[str, str | None]] = {}  # token -> (platform, session)
        self._turns = self._bans = self._cleared = self._admitted = self._refused = 0

    # ---- asks (each a round trip through the inbox) ---------------------------------------------------

    def conversation(
        self, request_id: str, messages: Sequence[Mapping[str, Any]], header: str | None, mode: str
    ) -> Conversation:
        """The request's session key. Pure and cheap, so it needs no round trip."""
        if header:
            return Conversation(request_id, header_session(header), True)
        if mode != "auto-smart":
            return Conversation(request_id, None, False)
        system, first_user, first_reply = conversation_opening(messages)
        session = derived_session(system, first_user, first_reply) if first_reply is not None else None
        return Conversation(request_id, session, True, system, first_user)

    async def protect(
        self, conversation: Conversation, model: CatalogModel, kind: str, after_content: bool, pin_used: bool
    ) -> Protection:
        """Thread protection after a failure, before or after content: what this request and this session
        avoid from now on. It guards conversations, so it acts only where pins apply."""
        if not conversation.pins:
            return NO_ACTION
        result: Protection = await self._ask(_Protect(conversation, model, kind, after_content, pin_used))
        return result

    async def register_turn(
        self, conversation: Conversation, model: CatalogModel, key_id: str, reply: Callable[[], str | None]
    ) -> None:
        """A successful turn pins the conversation under the key its next turn will have (a first turn's is
        derived from `reply()`, the reply the client got, read only then)."""
        if conversation.pins:
            text = reply() if conversation.session is None else None
            await self._ask(_Register(conversation, (model, key_id), text))

    async def keep_bans(self, conversation: Conversation, reply: Callable[[], str | None]) -> None:
        """A first turn the client got an answer to without a pin (a truncated one): its bans are written
        under the key its next turn will have, so that turn still avoids the platforms that failed."""
        if conversation.pins and conversation.session is None and conversation.banned:
            await self._ask(_Register(conversation, None, reply()))

    async def pin_cleared(self, conversation: Conversation, reason: str) -> None:
        """A decision could not use the session's pin: drop it (once per request)."""
        if conversation.session and not conversation.pin_cleared:
            await self._ask(_ClearPin(conversation, reason))

    def admitted(self, platform: str | None, session: str | None) -> AbstractAsyncContextManager[bool]:
        """Whether an attempt on `platform` may go ahead, held for the scope (single-flight platforms;
        None, no platform at all, is always admitted, with no round trip)."""
        if platform is None or not self.single_flight(platform):
            return _ADMITTED
        return self._admission(platform, session)

    @asynccontextmanager
    async def _admission(self, platform: str, session: str | None) -> AsyncIterator[bool]:
        token = object()
        try:
            ok: bool = await self._ask(_Admit(platform, session, token))
            yield ok
        finally:
            # Always, even when the ask itself was cancelled (the actor may have admitted it after the asker
            # left). The release follows the ask on the same channel, so it is never handled first; the
            # actor ignores the release of a refusal. Unbounded: never blocks.
            self._send.send_nowait(_Release(token))

    def single_flight(self, platform: str) -> bool:
        p = self._policy
        return platform in p.single_flight and p.level(platform) == "provider-ban"

    def statistics(self) -> SessionStatistics:
        held = sum(n for sessions in self._held.values() for n in sessions.values())
        return SessionStatistics(self._turns, self._bans, self._cleared, self._admitted, self._refused, held)

    async def _ask(self, ask: _Ask) -> Any:
        reply: Reply[Any] = Reply()
        await self._send.send((ask, reply))
        return await reply.wait()

    # ---- the actor ------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SessionActor] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as writes, self._recv:
            task_status.started(self)
            async for message in self._recv:
                if isinstance(message, _Release):
                    self._release(message)
                    continue
                ask, reply = message
                if isinstance(ask, _Admit):
                    reply.send(self._admit(ask))
                    continue
                answer, events = self._command(ask)
                # Durable writes run beside the inbox, so one session's commit never holds up another's ask.
                writes.start_soon(self._write, events, reply, answer)

    async def _write(self, events: list[Event], reply: Reply[Any], answer: Any) -> None:
        for event in events:
            await self._log.append_durable(event)
        reply.send(answer)

    def _command(self, ask: _Protect | _Register | _ClearPin) -> tuple[Any, list[Event]]:
        now, conv = self._now(), ask.conversation
        events: list[Event] = []
        match ask:
            case _Protect():
                action = protect(self._policy.level(ask.model.platform), ask.kind, ask.after_content)
                if action.ban_platform:
                    self._bans += 1
                    if conv.session is None:
                        conv.banned.append((ask.model.platform, action.reason))
                    else:
                        events.append(self._ban(conv, conv.session, ask.model.platform, action.reason))
                if action.clear_pin and ask.pin_used:
                    events += self._clear(conv, action.reason)
                return action, events
            case _Register():
                session = conv.session
                if session is None:  # a first turn: the next one is known by the reply served now
                    if ask.reply_text is None:
                        return None, []
                    session = derived_session(conv.system, conv.first_user, ask.reply_text)
                    events += [self._ban(conv, session, p, why) for p, why in conv.banned]
                    conv.banned.clear()
                if ask.pin is not None:
                    model, key_id = ask.pin
                    self._turns += 1
                    events.append(
                        SessionPinned(
                            ts=now,
                            request_id=conv.request_id,
                            session=session,
                            platform=model.platform,
                            model=model.id,
                            key_id=key_id,
                        )
                    )
                return None, events
            case _ClearPin():
                return None, self._clear(conv, ask.reason)

    def _ban(self, conv: Conversation, session: str, platform: str, reason: str) -> SessionBanned:
        return SessionBanned(
            ts=self._now(), request_id=conv.request_id, session=session, platform=platform, reason=reason
        )

    def _clear(self, conv: Conversation, reason: str) -> list[Event]:
        if conv.session is None or conv.pin_cleared:
            return []
        conv.pin_cleared = True
        self._cleared += 1
        return [
            SessionPinCleared(ts=self._now(), request_id=conv.request_id, session=conv.session, reason=reason)
        ]

    def _admit(self, ask: _Admit) -> bool:
        sessions = self._held.setdefault(ask.platform, {})
        if any(s != ask.session or s is None for s in sessions):
            self._refused += 1
            return False
        sessions[ask.session] = sessions.get(ask.session, 0) + 1
        self._admissions[ask.token] = (ask.platform, ask.session)
        self._admitted += 1
        return True

    def _release(self, release: _Release) -> None:
        held = self._admissions.pop(release.token, None)
        if held is None:
            return  # refused, not held
        platform, session = held
        sessions = self._held[platform]
        sessions[session] -= 1
        if not sessions[session]:
            del sessions[session]
