"""Per-model cooldowns and the 429 penalty.

- Transient cooldown: once every usable key of a model has failed with a transient fault (5xx, connect,
  stall) within `transient_window_s`, the model cools for `transient_cooldown_s`. One bad key is the key's
  problem; all of them failing is the model's (the seed system cooled the model after one failure).
- Model missing: a 404 for the model cools it on that platform for `model_missing_cooldown_s`.
- 429 penalty: +penalty_per_429 points when a 429 leaves every key of the model cooling, capped; the points
  decay by one every `penalty_decay_s` and by one per success.
Cooldowns merge order-insensitively: a cooldown ends at the latest of its deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import msgspec

from events.failures import TRANSIENT, FailureKind
from events.key_health import KeyHealth
from events.policy import RoutingPolicy
from events.types import AttemptFailed, AttemptSucceeded, CooldownsReset, Event


@dataclass
class _ModelCooldown:
    until: float = 0.0
    reason: str = ""
    failed_keys: dict[str, float] = field(default_factory=dict)  # key -> last transient failure
    penalty: float = 0.0
    penalty_as_of: float = 0.0


class CooldownsState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Per model ref: (ref, until, reason, ((key, last transient failure), ...), penalty, penalty_as_of);
    the bound on every deadline; the refs with points, in the order they got them."""

    models: tuple[tuple[str, float, str, tuple[tuple[str, float], ...], float, float], ...]
    latest_until: float
    penalised: tuple[str, ...]


class Cooldowns:
    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset({AttemptSucceeded, AttemptFailed, CooldownsReset})

    def __init__(self, policy: RoutingPolicy, health: KeyHealth) -> None:
        self._policy = policy
        self._health = health
        self._models: dict[str, _ModelCooldown] = {}
        # An upper bound that lets a decision skip per-model lookups when nothing is cooling.
        self._latest_until = 0.0
        # Models whose points were above zero when last set (their points at a given time may have decayed
        # to zero since): what `penalties` reads, instead of every model with any cooldown state.
        self._penalised: dict[str, _ModelCooldown] = {}

    def _of(self, ref: str) -> _ModelCooldown:
        state = self._models.get(ref)
        if state is None:
            state = self._models[ref] = _ModelCooldown()
        return state

    def apply(self, event: Event) -> None:
        """Apply after KeyHealth has applied the same event (it needs the keys' state after it)."""
        p = self._policy
        match event:
            case AttemptSucceeded():
                ref = f"{event.platform}/{event.model}"
                state = self._models.get(ref)
                if state is not None:
                    state.failed_keys.clear()
                    self._set_penalty(ref, state, event.ts, -1.0)
            case AttemptFailed(kind=kind) if kind in TRANSIENT:
                state = self._of(f"{event.platform}/{event.model}")
                horizon = event.ts - p.transient_window_s
                state.failed_keys = {k: t for k, t in state.failed_keys.items() if t > horizon}
                state.failed_keys[event.key_id] = event.ts
                usable = [k.key_id for k in self._health.keys_of(event.platform) if k.status == "ok"]
                if usable and all(k in state.failed_keys for k in usable):
                    self._cool(
                        state,
                        event.ts + p.transient_cooldown_s,
                        f"transient: every key failed ({kind}) within {p.transient_window_s:g}s",
                    )
                    state.failed_keys.clear()
            case AttemptFailed(kind=FailureKind.MODEL_MISSING):
                state = self._of(f"{event.platform}/{event.model}")
                self._cool(
                    state, event.ts + p.model_missing_cooldown_s, "model not found on this platform (404)"
                )
            case AttemptFailed(kind=FailureKind.RATE_LIMITED):
                keys = [k for k in self._health.keys_of(event.platform) if k.status == "ok"]
                if all(self._health.cooling_until(k.key_id, event.model, event.ts) is not None for k in keys):
                    ref = f"{event.platform}/{event.model}"
                    self._set_penalty(ref, self._of(ref), event.ts, p.penalty_per_429)
            case CooldownsReset(model=str(model)):
                info = self._health.keys.get(event.key_id)
                state = self._models.get(f"{info.platform}/{model}") if info is not None else None
                if state is not None:
                    # Lifted, not shortened: `_latest_until` stays an upper bound, which is all it must be.
                    state.until, state.reason = 0.0, ""
                    state.failed_keys.clear()
            case _:
                pass

    def state(self) -> CooldownsState:
        return CooldownsState(
            tuple(
                (ref, m.until, m.reason, tuple(m.failed_keys.items()), m.penalty, m.penalty_as_of)
                for ref, m in self._models.items()
            ),
            self._latest_until,
            tuple(self._penalised),
        )

    def restore(self, state: CooldownsState) -> None:
        """Take over `state`; the key health this reads must be restored too."""
        self._models = {
            ref: _ModelCooldown(until, reason, dict(failed), penalty, as_of)
            for ref, until, reason, failed, penalty, as_of in state.models
        }
        self._latest_until = state.latest_until
        self._penalised = {ref: self._models[ref] for ref in state.penalised}

    def _cool(self, state: _ModelCooldown, until: float, reason: str) -> None:
        if until > state.until:
            state.until, state.reason = until, reason
        self._latest_until = max(self._latest_until, until)

    def _set_penalty(self, ref: str, state: _ModelCooldown, ts: float, delta: float) -> None:
        if delta <= 0.0 and state.penalty == 0.0:
            return  # a success of a model without points (the common case) changes nothing
        current = self._penalty_at(state, ts)
        state.penalty = min(self._policy.penalty_cap, max(0.0, current + delta))
        state.penalty_as_of = ts
        if state.penalty > 0.0:
            self._penalised[ref] = state
        else:
            self._penalised.pop(ref, None)

    def _penalty_at(self, state: _ModelCooldown, now: float) -> float:
        decayed = (now - state.penalty_as_of) / self._policy.penalty_decay_s
        return max(0.0, state.penalty - max(0.0, decayed))

    def any_cooling(self, now: float) -> bool:
        return now < self._latest_until

    def penalties(self, now: float) -> dict[str, float]:
        """Every model with penalty points left at `now` (usually none or a few)."""
        if not self._penalised:
            return {}
        decay_s = self._policy.penalty_decay_s  # _penalty_at, inlined: this runs on every decision
        return {
            ref: points
            for ref, state in self._penalised.items()
            if (points := state.penalty - max(0.0, (now - state.penalty_as_of) / decay_s)) > 0.0
        }

    def cooling(self, ref: str, now: float) -> tuple[float, str] | None:
        state = self._models.get(ref)
        if state is None or state.until <= now:
            return None
        return state.until, state.reason

    def penalty(self, ref: str, now: float) -> float:
        state = self._models.get(ref)
        if state is None or state.penalty == 0.0:
            return 0.0
        return self._penalty_at(state, now)
