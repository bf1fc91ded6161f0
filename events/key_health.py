"""Key health: per key ok / invalid (401, or a 403 whose key check failed) / disabled, and per key x model
cooling until T (429s, exhausted rate-limit headers, a 403 for a working key). A projection: folded from
events, read with an explicit `now`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal, cast

import msgspec

from events.failures import FailureKind
from events.types import (
    AttemptFailed,
    AttemptSucceeded,
    CooldownsReset,
    Event,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    KeyRemoved,
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


Deadlines = tuple[tuple[str, str, float], ...]  # (key_id, model, until)


class KeyHealthState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Every key (key_id, platform, label, source, status, reason), each platform's keys in the order they
    came, and the cooling and forbidden deadlines per key x model."""

    keys: tuple[tuple[str, str, str, str, str, str], ...]
    by_platform: tuple[tuple[str, tuple[str, ...]], ...]
    platforms_version: int
    cooling: Deadlines
    forbidden: Deadlines


class KeyHealth:
    """Per key: ok / invalid (401/403) / disabled, and per key x model: cooling until T after a 429."""

    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset(
        {
            KeyAdded,
            KeyRemoved,
            KeyDisabled,
            KeyEnabled,
            KeyInvalidated,
            KeyChecked,
            CooldownsReset,
            AttemptFailed,
            AttemptSucceeded,
        }
    )

    def __init__(self, rate_limit_cooldown_s: float = 60.0, key_forbidden_cooldown_s: float = 3600.0) -> None:
        self.rate_limit_cooldown_s = rate_limit_cooldown_s
        self.key_forbidden_cooldown_s = key_forbidden_cooldown_s
        self.keys: dict[str, KeyInfo] = {}
        self._by_platform: dict[str, list[str]] = {}
        self.platforms_version = 0  # changes when a platform gets its first key
        self._cooling: dict[tuple[str, str], float] = {}  # (key, model) -> until: 429s, spent quotas
        self._forbidden: dict[tuple[str, str], float] = {}  # (key, model) -> until: 403s of a working key

    def apply(self, event: Event) -> None:
        match event:
            case KeyAdded(key_id=key_id):
                known = self.keys.get(key_id)
                if known is None:
                    if event.platform not in self._by_platform:
                        self.platforms_version += 1
                    self._by_platform.setdefault(event.platform, []).append(key_id)
                # Re-adding a known key (every start re-announces config keys) keeps its status.
                self.keys[key_id] = KeyInfo(
                    key_id,
                    event.platform,
                    event.label,
                    event.source,
                    known.status if known else "ok",
                    known.reason if known else "",
                )
            case KeyRemoved(key_id=key_id) if key_id in self.keys:
                platform = self.keys.pop(key_id).platform
                remaining = [k for k in self._by_platform[platform] if k != key_id]
                if remaining:
                    self._by_platform[platform] = remaining
                else:
                    del self._by_platform[platform]
                    self.platforms_version += 1
            case KeyDisabled(key_id=key_id) if key_id in self.keys:
                self.keys[key_id] = replace(self.keys[key_id], status="disabled", reason=event.reason)
            case KeyEnabled(key_id=key_id) if key_id in self.keys:
                self.keys[key_id] = replace(self.keys[key_id], status="ok", reason="")
            case KeyInvalidated(key_id=key_id) if key_id in self.keys:
                reason = f"HTTP {event.status}: {event.message}" if event.message else f"HTTP {event.status}"
                self.keys[key_id] = replace(self.keys[key_id], status="invalid", reason=reason)
            case KeyChecked(key_id=key_id) if key_id in self.keys:
                info = self.keys[key_id]
                if event.ok and info.status == "invalid":
                    self.keys[key_id] = replace(info, status="ok", reason="")
                elif event.status in (401, 403) and info.status == "ok":
                    self.keys[key_id] = replace(
                        info, status="invalid", reason=f"health check: HTTP {event.status}"
                    )
            case CooldownsReset(key_id=key_id):
                # The operator's word over the provider's: rate-limited and forbidden alike are lifted.
                for slots in (self._cooling, self._forbidden):
                    for slot in [s for s in slots if s[0] == key_id and event.model in (None, s[1])]:
                        del slots[slot]
            case AttemptFailed(kind=FailureKind.RATE_LIMITED):
                wait = event.retry_after_s if event.retry_after_s is not None else self.rate_limit_cooldown_s
                self._cool(event.key_id, event.model, event.ts + wait)
            case AttemptFailed(kind=FailureKind.FORBIDDEN):
                # A 403 for a key that works elsewhere: this key may not use this model (or this content).
                slot = (event.key_id, event.model)
                until = event.ts + self.key_forbidden_cooldown_s
                self._forbidden[slot] = max(self._forbidden.get(slot, 0.0), until)
            case AttemptSucceeded(exhausted_for_s=wait) if wait is not None:
                # The provider said this was the last request (x-ratelimit-remaining: 0) until its reset.
                self._cool(event.key_id, event.model, event.ts + wait)
            case _:
                pass

    def state(self) -> KeyHealthState:
        return KeyHealthState(
            tuple((k.key_id, k.platform, k.label, k.source, k.status, k.reason) for k in self.keys.values()),
            tuple((platform, tuple(keys)) for platform, keys in self._by_platform.items()),
            self.platforms_version,
            tuple((key, model, until) for (key, model), until in self._cooling.items()),
            tuple((key, model, until) for (key, model), until in self._forbidden.items()),
        )

    def restore(self, state: KeyHealthState) -> None:
        self.keys = {
            key_id: KeyInfo(key_id, platform, label, source, cast(KeyStatus, status), reason)
            for key_id, platform, label, source, status, reason in state.keys
        }
        self._by_platform = {platform: list(keys) for platform, keys in state.by_platform}
        self.platforms_version = state.platforms_version
        self._cooling = {(key, model): until for key, model, until in state.cooling}
        self._forbidden = {(key, model): until for key, model, until in state.forbidden}

    def _cool(self, key_id: str, model: str, until: float) -> None:
        # Order-insensitive merge: a cooldown ends at the latest of its deadlines.
        slot = (key_id, model)
        self._cooling[slot] = max(self._cooling.get(slot, 0.0), until)

    def cooling_until(self, key_id: str, model: str, now: float) -> float | None:
        """Until when the key may not be used for the model (rate-limited or forbidden), if it may not now."""
        # A pure read: deleting expired entries here would make the fold of a late event (stamped before
        # this read's `now`) differ from a rebuild's. The maps are bounded by keys x models.
        slot = (key_id, model)
        until = max(self._cooling.get(slot, 0.0), self._forbidden.get(slot, 0.0))
        return until if until > now else None

    def forbidden_until(self, key_id: str, model: str, now: float) -> float | None:
        """Until when the key is kept off the model because the provider forbade it (403), if it is now."""
        until = self._forbidden.get((key_id, model))
        return until if until is not None and until > now else None

    def has_keys(self, platform: str) -> bool:
        return platform in self._by_platform

    def keys_of(self, platform: str) -> list[KeyInfo]:
        return [self.keys[k] for k in self._by_platform.get(platform, ())]
