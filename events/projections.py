"""Projections: state folded from the log, one event at a time, in O(1) per event.

Each projection has `apply(event)` and read methods that take `now` (wall seconds), so expiry is lazy and
no timer events exist. Rebuilding from the log is `for e in log: p.apply(e)`; the live actors do the same
with the events the log writer publishes, so a restart ends in the state the process had.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

from events.types import (
    AttemptFailed,
    AttemptSucceeded,
    Event,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    ModelUpdated,
    StreamStalled,
)

KeyStatus = Literal["ok", "invalid", "disabled"]


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    platform: str
    label: str
    source: str
    status: KeyStatus = "ok"
    reason: str = ""


class KeyHealth:
    """Per key: ok / invalid (401/403) / disabled, and per key x model: cooling until T after a 429."""

    def __init__(self, rate_limit_cooldown_s: float = 60.0) -> None:
        self.rate_limit_cooldown_s = rate_limit_cooldown_s
        self.keys: dict[str, KeyInfo] = {}
        self._cooling: dict[tuple[str, str], float] = {}

    def apply(self, event: Event) -> None:
        match event:
            case KeyAdded(key_id=key_id):
                known = self.keys.get(key_id)
                # Re-adding a known key (every start re-announces config keys) keeps its status.
                self.keys[key_id] = KeyInfo(
                    key_id, event.platform, event.label, event.source,
                    known.status if known else "ok", known.reason if known else "",
                )
            case KeyDisabled(key_id=key_id) if key_id in self.keys:
                self.keys[key_id] = replace(self.keys[key_id], status="disabled", reason=event.reason)
            case KeyEnabled(key_id=key_id) if key_id in self.keys:
                self.keys[key_id] = replace(self.keys[key_id], status="ok", reason="")
            case KeyInvalidated(key_id=key_id) if key_id in self.keys:
                reason = f"HTTP {event.status}: {event.message}" if event.message else f"HTTP {event.status}"
                self.keys[key_id] = replace(self.keys[key_id], status="invalid", reason=reason)
            case AttemptFailed(kind="rate_limited"):
                wait = event.retry_after_s if event.retry_after_s is not None else self.rate_limit_cooldown_s
                slot = (event.key_id, event.model)
                # Order-insensitive merge: a cooldown ends at the latest of its deadlines.
                self._cooling[slot] = max(self._cooling.get(slot, 0.0), event.ts + wait)
            case _:
                pass

    def cooling_until(self, key_id: str, model: str, now: float) -> float | None:
        until = self._cooling.get((key_id, model))
        if until is None:
            return None
        if until <= now:
            del self._cooling[(key_id, model)]
            return None
        return until

    def keys_of(self, platform: str) -> list[KeyInfo]:
        return [k for k in self.keys.values() if k.platform == platform]


@dataclass
class ModelStats:
    successes: int = 0
    failures: int = 0
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    latency_ms_total: float = 0.0
    ttfb_ms_total: float = 0.0
    output_tokens: int = 0
    input_tokens: int = 0
    stalls: int = 0

    @property
    def total(self) -> int:
        return self.successes + self.failures


class Stats:
    """Per model (`platform/id`): raw success and failure counters, latency and tokens."""

    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}

    def _of(self, platform: str, model: str) -> ModelStats:
        ref = f"{platform}/{model}"
        stats = self.models.get(ref)
        if stats is None:
            stats = self.models[ref] = ModelStats()
        return stats

    def apply(self, event: Event) -> None:
        match event:
            case AttemptSucceeded():
                s = self._of(event.platform, event.model)
                s.successes += 1
                s.latency_ms_total += event.latency_ms
                s.ttfb_ms_total += event.ttfb_ms
                s.input_tokens += event.input_tokens
                s.output_tokens += event.output_tokens
            case AttemptFailed(kind=kind) if kind != "client_abort":
                s = self._of(event.platform, event.model)
                s.failures += 1
                s.failures_by_kind[kind] += 1
            case StreamStalled():
                self._of(event.platform, event.model).stalls += 1
            case _:
                pass


@dataclass(frozen=True)
class ModelOverride:
    enabled: bool | None = None
    fallback: bool | None = None
    pool: str | None = None


class ModelOverrides:
    """Operator changes to the catalog (ModelUpdated), applied over the configured catalog."""

    def __init__(self) -> None:
        self.by_ref: dict[str, ModelOverride] = {}

    def apply(self, event: Event) -> None:
        if isinstance(event, ModelUpdated):
            ref = f"{event.platform}/{event.model}"
            old = self.by_ref.get(ref, ModelOverride())
            self.by_ref[ref] = ModelOverride(
                enabled=event.enabled if event.enabled is not None else old.enabled,
                fallback=event.fallback if event.fallback is not None else old.fallback,
                pool=event.pool if event.pool is not None else old.pool,
            )
