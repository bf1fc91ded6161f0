"""The catalog as routing sees it: the configured models with the operator's changes (ModelUpdated events)
applied over them, and lookups by `id` and `platform/id`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import msgspec

from events.quotas import Limits
from events.types import Event, ModelUpdated

VIRTUAL_MODELS = ("auto", "auto-smart", "auto-fast")
TASKS = ("chat", "embedding")  # what a model does: chat completions, or embedding vectors (/v1/embeddings)
ALIASES = {
    "freellmapi/auto": "auto",
    "freellmapi/auto-smart": "auto-smart",
    "freellmapi/auto-fast": "auto-fast",
}


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
    limits: Limits = field(default_factory=Limits)
    task: str = "chat"  # one of TASKS: chat routing never picks an embedding model, nor the reverse
    # The vectors an embedding model produces: models of one family (the same weights on two platforms)
    # give comparable vectors, so only they stand in for each other. None: the model is its own family.
    family: str | None = None
    ref: str = field(init=False, compare=False)  # `platform/id`, read on every decision: computed once

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref", f"{self.platform}/{self.id}")

    @property
    def vectors(self) -> str:
        """The family whose vectors this (embedding) model gives: its `family`, else its own ref."""
        return self.family or self.ref


@dataclass(frozen=True)
class ModelOverride:
    enabled: bool | None = None
    fallback: bool | None = None
    pool: str | None = None
    intelligence_rank: int | None = None
    limits: tuple[tuple[str, int | None], ...] = ()  # (limit, value) set by the operator; None lifts it


# (ref, enabled, fallback, pool, intelligence_rank, limits)
OverrideRow = tuple[str, bool | None, bool | None, str | None, int | None, tuple[tuple[str, int | None], ...]]


class CatalogState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The operator's overrides in the order they were first made."""

    overrides: tuple[OverrideRow, ...]
    version: int


class Catalog:
    """Configured models plus overrides. `models()` is cached until the next override."""

    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset({ModelUpdated})  # what `apply` acts on

    def __init__(self, models: Iterable[CatalogModel]) -> None:
        self._base = tuple(models)
        self.overrides: dict[str, ModelOverride] = {}
        self._current: tuple[CatalogModel, ...] | None = None
        self.version = 0  # changes whenever models() would change

    def apply(self, event: Event) -> None:
        if isinstance(event, ModelUpdated):
            ref = f"{event.platform}/{event.model}"
            old = self.overrides.get(ref, ModelOverride())
            limits = dict(old.limits)
            if event.limits is not None:
                limits.update(event.limits.given())
            self.overrides[ref] = ModelOverride(
                enabled=event.enabled if event.enabled is not None else old.enabled,
                fallback=event.fallback if event.fallback is not None else old.fallback,
                pool=event.pool if event.pool is not None else old.pool,
                intelligence_rank=(
                    event.intelligence_rank if event.intelligence_rank is not None else old.intelligence_rank
                ),
                limits=tuple(sorted(limits.items())),
            )
            self._current = None
            self.version += 1

    def state(self) -> CatalogState:
        return CatalogState(
            tuple(
                (ref, o.enabled, o.fallback, o.pool, o.intelligence_rank, o.limits)
                for ref, o in self.overrides.items()
            ),
            self.version,
        )

    def restore(self, state: CatalogState) -> None:
        """Take over `state` (from `state()` of a catalog built from the same configured models)."""
        self.overrides = {
            ref: ModelOverride(enabled, fallback, pool, rank, limits)
            for ref, enabled, fallback, pool, rank, limits in state.overrides
        }
        self._current = None
        self.version = state.version

    def models(self) -> tuple[CatalogModel, ...]:
        if self._current is None:
            out = []
            for base in self._base:
                m = base
                o = self.overrides.get(m.ref)
                if o is not None:
                    m = replace(
                        m,
                        enabled=m.enabled if o.enabled is None else o.enabled,
                        fallback=m.fallback if o.fallback is None else o.fallback,
                        pool=o.pool or m.pool,
                        intelligence_rank=(
                            m.intelligence_rank if o.intelligence_rank is None else o.intelligence_rank
                        ),
                        limits=replace(m.limits, **dict(o.limits)) if o.limits else m.limits,
                    )
                out.append(m)
            self._current = tuple(out)
        return self._current

    def resolve(self, name: str) -> list[CatalogModel]:
        """`platform/id` names one model; a bare `id` (which may itself contain '/') names it on every
        platform that serves it. Disabled models cannot be requested."""
        models = self.models()
        exact = [m for m in models if m.ref == name]
        found = exact or [m for m in models if m.id == name]
        return [m for m in found if m.enabled]
