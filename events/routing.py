"""Which models and keys a request may try, in which order. Pure: a function of the catalog, the key
health projection, the request and `now`.

Order for now: the explicit model (or the request's `models` list), then the enabled fallback chain by
intelligence rank (`auto-fast` puts the fast pool first, by speed). Every model left out is listed with
the reason, so an error can say why nothing was tried.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from events.projections import KeyHealth, ModelOverrides

VIRTUAL_MODELS = ("auto", "auto-smart", "auto-fast")
ALIASES = {"freellmapi/auto": "auto", "freellmapi/auto-smart": "auto-smart", "freellmapi/auto-fast": "auto-fast"}


@dataclass(frozen=True)
class CatalogModel:
    platform: str
    id: str
    pool: str
    fallback: bool
    enabled: bool
    context_window: int | None
    intelligence_rank: int
    speed_rank: int

    @property
    def ref(self) -> str:
        return f"{self.platform}/{self.id}"


@dataclass(frozen=True)
class Candidate:
    model: CatalogModel
    keys: tuple[str, ...]  # usable keys, in the order to try them


@dataclass(frozen=True)
class Exclusion:
    ref: str
    reason: str
    until: float | None = None  # when the reason is a cooldown: when the first key is usable again


@dataclass(frozen=True)
class Plan:
    candidates: tuple[Candidate, ...]
    excluded: tuple[Exclusion, ...]


class UnknownModel(LookupError):
    pass


class Catalog:
    """The configured models with operator overrides applied; lookups by `id` and `platform/id`."""

    def __init__(self, models: Iterable[CatalogModel], overrides: ModelOverrides | None = None) -> None:
        self._base = tuple(models)
        self.overrides = overrides or ModelOverrides()

    def models(self) -> list[CatalogModel]:
        out = []
        for m in self._base:
            o = self.overrides.by_ref.get(m.ref)
            if o is not None:
                m = replace(
                    m,
                    enabled=m.enabled if o.enabled is None else o.enabled,
                    fallback=m.fallback if o.fallback is None else o.fallback,
                    pool=o.pool or m.pool,
                )
            out.append(m)
        return out

    def resolve(self, name: str) -> list[CatalogModel]:
        """`platform/id` names one model; a bare `id` (which may itself contain '/') names it on every
        platform that serves it. Disabled models cannot be requested."""
        models = self.models()
        exact = [m for m in models if m.ref == name]
        found = exact or [m for m in models if m.id == name]
        return [m for m in found if m.enabled]

    def exists(self, name: str) -> bool:
        return bool(self.resolve(name))


def plan(
    catalog: Catalog,
    health: KeyHealth,
    requested: Sequence[str],
    now: float,
    *,
    est_tokens: int = 0,
    use_chain: bool = True,
    rotation: dict[str, int] | None = None,
) -> Plan:
    """Candidates for a request naming `requested` (virtual models, ids or refs, in order).

    `rotation` holds a round-robin counter per platform, advanced here so that successive requests start
    on different keys; it is the only thing this function changes.
    """
    models = catalog.models()
    ordered: list[CatalogModel] = []
    mode = "auto"
    for name in requested:
        name = ALIASES.get(name, name)
        if name in VIRTUAL_MODELS:
            mode = name
            continue
        found = catalog.resolve(name)
        if not found:
            raise UnknownModel(name)
        ordered.extend(sorted(found, key=lambda m: m.intelligence_rank))
    if use_chain:
        chain = [m for m in models if m.enabled and m.fallback]
        if mode == "auto-fast":
            chain.sort(key=lambda m: (m.pool != "fast", m.speed_rank, m.intelligence_rank))
        elif mode == "auto-smart":
            chain.sort(key=lambda m: (m.pool != "smart", m.intelligence_rank, m.speed_rank))
        else:
            chain.sort(key=lambda m: (m.intelligence_rank, m.speed_rank))
        ordered.extend(chain)

    seen: set[str] = set()
    candidates: list[Candidate] = []
    excluded: list[Exclusion] = []
    for m in ordered:
        if m.ref in seen:
            continue
        seen.add(m.ref)
        if m.context_window is not None and est_tokens > m.context_window:
            excluded.append(Exclusion(m.ref, f"context window {m.context_window} < {est_tokens} tokens"))
            continue
        keys, why, until = _usable_keys(health, m, now)
        if not keys:
            excluded.append(Exclusion(m.ref, why, until))
            continue
        if rotation is not None and len(keys) > 1:
            turn = rotation.get(m.platform, 0)
            rotation[m.platform] = turn + 1
            k = turn % len(keys)
            keys = keys[k:] + keys[:k]
        candidates.append(Candidate(m, tuple(keys)))
    return Plan(tuple(candidates), tuple(excluded))


def _usable_keys(health: KeyHealth, model: CatalogModel, now: float) -> tuple[list[str], str, float | None]:
    keys = health.keys_of(model.platform)
    if not keys:
        return [], "no key for this platform", None
    usable: list[str] = []
    reasons: list[str] = []
    soonest: float | None = None
    for key in keys:
        if key.status != "ok":
            reasons.append(f"key {key.key_id} {key.status}")
            continue
        until = health.cooling_until(key.key_id, model.id, now)
        if until is not None:
            reasons.append(f"key {key.key_id} rate-limited for {until - now:.0f}s more")
            soonest = until if soonest is None else min(soonest, until)
            continue
        usable.append(key.key_id)
    return usable, "; ".join(reasons), soonest
