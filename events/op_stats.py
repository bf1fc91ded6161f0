"""Operational statistics: the plain totals people read (the admin console, metrics, `switchboard models`),
as opposed to the decayed bandit statistics routing scores with (events/model_stats.py).

Folded by the stats actor while the gateway runs, and by the CLI with this same class when it reads a log:
one fold, one place. Only model faults count as a model's failures (a 429 or a bad key says nothing about
the model).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import msgspec

from events.failures import MODEL_FAULTS
from events.types import AttemptFailed, AttemptSucceeded, Event, StreamStalled


@dataclass
class ModelTotals:
    successes: int = 0
    failures: int = 0  # model faults
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    stalls: int = 0
    latency_ms_total: float = 0.0
    ttfb_ms_total: float = 0.0
    generation_s_total: float = 0.0  # after the first byte, of answers that generated tokens
    generated_tokens: int = 0  # ... their output tokens
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.successes + self.failures


@dataclass(frozen=True)
class ModelCounters:
    """One model's totals as the stats actor answers them."""

    ref: str
    successes: int
    failures: int
    failures_by_kind: dict[str, int]
    mean_latency_ms: float | None
    mean_ttfb_ms: float | None
    tokens_per_s: float | None
    output_tokens: int
    stalls: int


class TotalsState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    ref: str
    successes: int
    failures: int
    failures_by_kind: tuple[tuple[str, int], ...]
    stalls: int
    latency_ms_total: float
    ttfb_ms_total: float
    generation_s_total: float
    generated_tokens: int
    input_tokens: int
    output_tokens: int


class OpStatsState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    models: tuple[TotalsState, ...]


class OperationalStats:
    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset({AttemptSucceeded, AttemptFailed, StreamStalled})

    def __init__(self) -> None:
        self.models: dict[str, ModelTotals] = {}

    def _of(self, platform: str, model: str) -> ModelTotals:
        ref = f"{platform}/{model}"
        totals = self.models.get(ref)
        if totals is None:
            totals = self.models[ref] = ModelTotals()
        return totals

    def apply(self, event: Event) -> None:
        match event:
            case AttemptSucceeded():
                t = self._of(event.platform, event.model)
                t.successes += 1
                t.latency_ms_total += event.latency_ms
                t.ttfb_ms_total += event.ttfb_ms
                t.input_tokens += event.input_tokens
                t.output_tokens += event.output_tokens
                generation_s = (event.latency_ms - event.ttfb_ms) / 1000
                if event.output_tokens > 0 and generation_s > 0.001:
                    t.generation_s_total += generation_s
                    t.generated_tokens += event.output_tokens
            case AttemptFailed(kind=kind) if kind in MODEL_FAULTS:
                t = self._of(event.platform, event.model)
                t.failures += 1
                t.failures_by_kind[kind] += 1
            case StreamStalled():
                self._of(event.platform, event.model).stalls += 1
            case _:
                pass

    def state(self) -> OpStatsState:
        return OpStatsState(
            tuple(
                TotalsState(
                    ref,
                    t.successes,
                    t.failures,
                    tuple(t.failures_by_kind.items()),
                    t.stalls,
                    t.latency_ms_total,
                    t.ttfb_ms_total,
                    t.generation_s_total,
                    t.generated_tokens,
                    t.input_tokens,
                    t.output_tokens,
                )
                for ref, t in self.models.items()
            )
        )

    def restore(self, state: OpStatsState) -> None:
        self.models = {
            t.ref: ModelTotals(
                t.successes,
                t.failures,
                Counter(dict(t.failures_by_kind)),
                t.stalls,
                t.latency_ms_total,
                t.ttfb_ms_total,
                t.generation_s_total,
                t.generated_tokens,
                t.input_tokens,
                t.output_tokens,
            )
            for t in state.models
        }

    def counters(self) -> list[ModelCounters]:
        return [
            ModelCounters(
                ref=ref,
                successes=t.successes,
                failures=t.failures,
                failures_by_kind=dict(t.failures_by_kind),
                mean_latency_ms=t.latency_ms_total / t.successes if t.successes else None,
                mean_ttfb_ms=t.ttfb_ms_total / t.successes if t.successes else None,
                tokens_per_s=t.generated_tokens / t.generation_s_total if t.generation_s_total else None,
                output_tokens=t.output_tokens,
                stalls=t.stalls,
            )
            for ref, t in sorted(self.models.items())
        ]
