"""Model-health actor: owns the routing view (key health, quotas, cooldowns, stats, catalog) and decides.

It folds every committed batch it receives from the log writer and answers asks from request actors,
all through one inbox, so an ask always sees every event committed before it was sent. A decision
records the view's position (`view_seq`) so a replay can rebuild exactly this view.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import trio

from actors.log_writer import LogWriter
from actors.mailbox import Reply
from events.catalog import CatalogModel
from events.decide import Decision, MeanScore, UnknownModel, decide, mean_scores
from events.key_health import KeyInfo
from events.store import Entry
from events.types import RouteInput
from events.view import RoutingView, ViewState


@dataclass(frozen=True)
class DecideAsk:
    input: RouteInput
    seed: int


@dataclass(frozen=True)
class ModelsAsk:
    pass


@dataclass(frozen=True)
class KeysAsk:
    pass


@dataclass(frozen=True)
class ModelsDetailAsk:
    """Every model as the operator reads it (admin API), computed at one position."""


@dataclass(frozen=True)
class SessionsAsk:
    """Every live session, most recently used first."""


@dataclass(frozen=True)
class StateAsk:
    """A copy of the view's state at its position (for a snapshot)."""


@dataclass(frozen=True)
class Decided:
    decision: Decision
    seed: int
    view_seq: int
    now: float


@dataclass(frozen=True)
class ModelAvailability:
    model: CatalogModel
    usable_keys: int


@dataclass(frozen=True)
class KeyView:
    info: KeyInfo
    cooling: tuple[tuple[str, float], ...]  # (model id, until)
    forbidden: frozenset[str] = frozenset()  # model ids of `cooling` the provider forbade (403), not 429s


@dataclass(frozen=True)
class ModelDetail:
    model: CatalogModel
    keys: int
    usable_keys: int
    cooldown_until: float | None  # when it is usable again: its own cooldown, or every key's (the earliest)
    decayed_successes: float
    decayed_failures: float
    tps: float | None
    ttfb_ms: float | None
    score: MeanScore


@dataclass(frozen=True)
class SessionView:
    session: str
    last_use: float
    pin: tuple[str, str, str] | None  # (platform, model id, key id)
    pin_used_at: float
    bans: tuple[tuple[str, str], ...]  # (platform, reason)


@dataclass(frozen=True)
class ModelHealthStatistics:
    keys: int
    keys_ok: int
    keys_invalid: int
    keys_disabled: int
    models: int
    events_applied: int
    decisions: int
    view_seq: int


Ask = DecideAsk | ModelsAsk | KeysAsk | ModelsDetailAsk | SessionsAsk | StateAsk


class ModelHealth:
    def __init__(self, view: RoutingView, log: LogWriter, now: Callable[[], float]) -> None:
        self._view = view
        self._now = now
        # One inbox for committed log batches and for asks, so asks see every event committed before them.
        self._send, self._recv = trio.open_memory_channel[list[Entry] | tuple[Ask, Reply[object]]](math.inf)
        log.subscribe(self._send.clone())
        self._applied = self._decisions = 0

    async def decide(self, route: RouteInput, seed: int | None = None) -> Decided:
        """Raises UnknownModel when a named model does not exist or is disabled."""
        seed = random.getrandbits(63) if seed is None else seed
        result = await self._ask(DecideAsk(route, seed))
        if isinstance(result, UnknownModel):
            raise result
        return cast(Decided, result)  # _answer answers a DecideAsk with a Decided or an UnknownModel

    async def models(self) -> list[ModelAvailability]:
        return cast(list[ModelAvailability], await self._ask(ModelsAsk()))

    async def keys(self) -> list[KeyView]:
        return cast(list[KeyView], await self._ask(KeysAsk()))

    async def models_detail(self) -> list[ModelDetail]:
        return cast(list[ModelDetail], await self._ask(ModelsDetailAsk()))

    async def sessions(self) -> list[SessionView]:
        return cast(list[SessionView], await self._ask(SessionsAsk()))

    async def view_state(self) -> ViewState:
        """What the view has folded, copied at one position (between two batches)."""
        return cast(ViewState, await self._ask(StateAsk()))

    async def _ask(self, ask: Ask) -> object:
        reply: Reply[object] = Reply()
        await self._send.send((ask, reply))
        return await reply.wait()

    def statistics(self) -> ModelHealthStatistics:
        statuses = [k.status for k in self._view.health.keys.values()]
        return ModelHealthStatistics(
            keys=len(statuses),
            keys_ok=statuses.count("ok"),
            keys_invalid=statuses.count("invalid"),
            keys_disabled=statuses.count("disabled"),
            models=len(self._view.catalog.models()),
            events_applied=self._applied,
            decisions=self._decisions,
            view_seq=self._view.seq,
        )

    async def run(self, *, task_status: trio.TaskStatus[ModelHealth] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        async with self._recv:
            async for message in self._recv:
                if isinstance(message, list):
                    self._view.apply_all(message)
                    self._applied += len(message)
                else:
                    ask, reply = message
                    reply.send(self._answer(ask))

    def _answer(self, ask: Ask) -> object:
        now = self._now()
        view = self._view
        match ask:
            case DecideAsk():
                self._decisions += 1
                try:
                    decision = decide(view, ask.input, now, random.Random(ask.seed))
                except UnknownModel as exc:
                    return exc
                return Decided(decision, ask.seed, view.seq, now)
            case ModelsAsk():
                return [ModelAvailability(m, len(usable_keys(view, m, now))) for m in view.catalog.models()]
            case KeysAsk():
                views = []
                models = view.catalog.models()
                for info in view.health.keys.values():
                    cooling = tuple(
                        (m.id, until)
                        for m in models
                        if m.platform == info.platform
                        if (until := view.health.cooling_until(info.key_id, m.id, now)) is not None
                    )
                    forbidden = frozenset(
                        model_id
                        for model_id, _ in cooling
                        if view.health.forbidden_until(info.key_id, model_id, now) is not None
                    )
                    views.append(KeyView(info, cooling, forbidden))
                return views
            case ModelsDetailAsk():
                return models_detail(view, now)
            case SessionsAsk():
                return [
                    SessionView(key, s.last_use, s.pin, s.pin_used_at, tuple(s.bans.items()))
                    for key, s in reversed(view.sessions.live(now))
                ]
            case StateAsk():
                return view.state()


def models_detail(view: RoutingView, now: float) -> list[ModelDetail]:
    models = view.catalog.models()
    out = []
    for m, score in zip(models, mean_scores(view, models, now), strict=True):
        keys = [k for k in view.health.keys_of(m.platform) if k.status == "ok"]
        key_until = [view.health.cooling_until(k.key_id, m.id, now) for k in keys]
        until: float | None = None
        if keys and all(u is not None for u in key_until):
            until = min(u for u in key_until if u is not None)
        own = view.cooldowns.cooling(m.ref, now)
        if own is not None:
            until = own[0] if until is None else max(until, own[0])
        successes, failures = view.stats.decayed(m.ref, now)
        stats = view.stats.of(m.ref)
        out.append(
            ModelDetail(
                model=m,
                keys=len(view.health.keys_of(m.platform)),
                usable_keys=len(usable_keys(view, m, now)),
                cooldown_until=until,
                decayed_successes=successes,
                decayed_failures=failures,
                tps=stats.tps if stats is not None else None,
                ttfb_ms=stats.ttfb_ms if stats is not None else None,
                score=score,
            )
        )
    return out


def usable_keys(view: RoutingView, m: CatalogModel, now: float) -> list[str]:
    """Keys of the model's platform that are ok and not cooling for it."""
    return [
        k.key_id
        for k in view.health.keys_of(m.platform)
        if k.status == "ok" and view.health.cooling_until(k.key_id, m.id, now) is None
    ]
