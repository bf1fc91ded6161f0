"""Model-health actor: owns the key-health and catalog projections and answers routing questions.

It folds every committed event it receives from the log writer, and answers `plan` asks from request
actors with the candidates a request may try. Nobody else reads or writes its state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from actors.log_writer import LogWriter
from actors.mailbox import Reply
from events.projections import KeyHealth, KeyInfo
from events.routing import Catalog, CatalogModel, Plan, UnknownModel, plan
from events.store import Entry


@dataclass(frozen=True)
class PlanAsk:
    requested: tuple[str, ...]
    est_tokens: int
    use_chain: bool


@dataclass(frozen=True)
class ModelsAsk:
    pass


@dataclass(frozen=True)
class KeysAsk:
    pass


@dataclass(frozen=True)
class ModelAvailability:
    model: CatalogModel
    usable_keys: int


@dataclass(frozen=True)
class KeyView:
    info: KeyInfo
    cooling: tuple[tuple[str, float], ...]  # (model, until)


@dataclass(frozen=True)
class ModelHealthStatistics:
    keys: int
    keys_ok: int
    keys_invalid: int
    keys_disabled: int
    models: int
    events_applied: int
    plans: int


Ask = PlanAsk | ModelsAsk | KeysAsk


class ModelHealth:
    def __init__(self, health: KeyHealth, catalog: Catalog, log: LogWriter, now: Callable[[], float]) -> None:
        self._health = health
        self._catalog = catalog
        self._now = now
        self._rotation: dict[str, int] = {}
        # One inbox for committed log batches and for asks, so asks see every event committed before them.
        self._send, self._recv = trio.open_memory_channel[list[Entry] | tuple[Ask, Reply[object]]](math.inf)
        log.subscribe(self._send.clone())
        self._applied = self._plans = 0

    async def plan(self, requested: Sequence[str], est_tokens: int, use_chain: bool = True) -> Plan:
        """Raises UnknownModel when a named model does not exist or is disabled."""
        result = await self._ask(PlanAsk(tuple(requested), est_tokens, use_chain))
        if isinstance(result, UnknownModel):
            raise result
        return result  # type: ignore[return-value]

    async def models(self) -> list[ModelAvailability]:
        return await self._ask(ModelsAsk())  # type: ignore[return-value]

    async def keys(self) -> list[KeyView]:
        return await self._ask(KeysAsk())  # type: ignore[return-value]

    async def _ask(self, ask: Ask) -> object:
        reply: Reply[object] = Reply()
        await self._send.send((ask, reply))
        return await reply.wait()

    def statistics(self) -> ModelHealthStatistics:
        statuses = [k.status for k in self._health.keys.values()]
        return ModelHealthStatistics(
            keys=len(statuses),
            keys_ok=statuses.count("ok"),
            keys_invalid=statuses.count("invalid"),
            keys_disabled=statuses.count("disabled"),
            models=len(self._catalog.models()),
            events_applied=self._applied,
            plans=self._plans,
        )

    async def run(self, *, task_status: trio.TaskStatus[ModelHealth] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        async with self._recv:
            async for message in self._recv:
                if isinstance(message, list):
                    for _, event in message:
                        self._health.apply(event)
                        self._catalog.overrides.apply(event)
                    self._applied += len(message)
                else:
                    ask, reply = message
                    reply.send(self._answer(ask))

    def _answer(self, ask: Ask) -> object:
        now = self._now()
        match ask:
            case PlanAsk():
                self._plans += 1
                try:
                    return plan(self._catalog, self._health, ask.requested, now, est_tokens=ask.est_tokens,
                                use_chain=ask.use_chain, rotation=self._rotation)
                except UnknownModel as exc:
                    return exc
            case ModelsAsk():
                out = []
                for m in self._catalog.models():
                    usable = sum(
                        1 for k in self._health.keys_of(m.platform)
                        if k.status == "ok" and self._health.cooling_until(k.key_id, m.id, now) is None
                    )
                    out.append(ModelAvailability(m, usable))
                return out
            case KeysAsk():
                views = []
                models = self._catalog.models()
                for info in self._health.keys.values():
                    cooling = tuple(
                        (m.id, until) for m in models if m.platform == info.platform
                        if (until := self._health.cooling_until(info.key_id, m.id, now)) is not None
                    )
                    views.append(KeyView(info, cooling))
                return views
