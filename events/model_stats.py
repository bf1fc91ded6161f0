"""Per-model statistics for scoring (the bandit's): recency-decayed successes and totals, speed and TTFB as
moving averages. The plain totals people read are events/op_stats.py's, folded by the stats actor.

Decay is linear over `decay_days`: an outcome of age a weighs clamp(1 - a / T, 0, 1). With running sums of
count n and timestamps S over the outcomes still inside the window, the decayed total at `now` is
n - (n * now - S) / T, so reading it costs O(1). Outcomes leave the window in one-minute buckets (a bucket
goes once its newest possible outcome is older than T), so the only imprecision is within the last minute
of the window, where weights are below 1/10080 anyway.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import msgspec

from events.failures import MODEL_FAULTS
from events.types import AttemptFailed, AttemptSucceeded, Event

BUCKET_S = 60.0
EWMA_ALPHA = 0.2  # speed and TTFB follow the recent successes


class _Decayed:
    """Decayed count of timestamps over a window of `span` seconds."""

    __slots__ = ("buckets", "n", "span", "sum_ts")

    def __init__(self, span: float) -> None:
        self.span = span
        self.buckets: deque[list[float]] = deque()  # [bucket start, n, sum_ts]
        self.n = 0.0
        self.sum_ts = 0.0

    def add(self, ts: float) -> None:
        # Expired buckets leave here too, not only on reads: a rebuild over a long log reads nothing.
        self.prune(ts)
        start = ts - ts % BUCKET_S
        if self.buckets and self.buckets[-1][0] == start:
            bucket = self.buckets[-1]
            bucket[1] += 1
            bucket[2] += ts
        else:
            self.buckets.append([start, 1.0, ts])
        self.n += 1
        self.sum_ts += ts

    def prune(self, now: float) -> None:
        buckets = self.buckets
        while buckets and buckets[0][0] + BUCKET_S <= now - self.span:
            _, n, s = buckets.popleft()
            self.n -= n
            self.sum_ts -= s

    def value(self, now: float) -> float:
        self.prune(now)
        if self.n <= 0:
            return 0.0
        return max(0.0, self.n - (self.n * now - self.sum_ts) / self.span)


Buckets = tuple[list[float], ...]  # [bucket start, n, sum_ts]


class DecayedState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    buckets: Buckets
    n: float
    sum_ts: float


class ModelStatsState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    ref: str
    successes: DecayedState
    total: DecayedState
    tps: float | None
    ttfb_ms: float | None


class StatsState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    models: tuple[ModelStatsState, ...]
    max_tps: float | None


def _export(d: _Decayed) -> DecayedState:
    # A week of minute buckets per model, copied while the model-health actor waits: only the newest
    # bucket is ever changed in place (`add`), so the others are shared, not copied.
    buckets = tuple(d.buckets)
    if buckets:
        buckets = (*buckets[:-1], buckets[-1].copy())
    return DecayedState(buckets, d.n, d.sum_ts)


def _restore(span: float, state: DecayedState) -> _Decayed:
    d = _Decayed(span)
    d.buckets.extend(map(list, state.buckets))  # never the exported lists themselves: they are shared
    # The running sums as they were (not re-added): floats must come back bit for bit.
    d.n, d.sum_ts = state.n, state.sum_ts
    return d


@dataclass
class ModelStats:
    decayed_successes: _Decayed
    decayed_total: _Decayed
    tps: float | None = None  # output tokens per second after the first byte (EWMA)
    ttfb_ms: float | None = None  # EWMA


class Stats:
    """Outcomes per model ref (`platform/id`). Only model faults count as failures: a 429, a bad key or a
    bad request says nothing about the model; a stall, a truncation or an empty answer does."""

    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset({AttemptSucceeded, AttemptFailed})

    def __init__(self, decay_days: float = 7.0) -> None:
        self.span = decay_days * 86400.0
        self.models: dict[str, ModelStats] = {}
        self.max_tps: float | None = None  # the fastest model's tokens/s, kept current as speeds change

    def of(self, ref: str) -> ModelStats | None:
        return self.models.get(ref)

    def _of(self, platform: str, model: str) -> ModelStats:
        ref = f"{platform}/{model}"
        stats = self.models.get(ref)
        if stats is None:
            stats = self.models[ref] = ModelStats(_Decayed(self.span), _Decayed(self.span))
        return stats

    def apply(self, event: Event) -> None:
        match event:
            case AttemptSucceeded():
                s = self._of(event.platform, event.model)
                s.decayed_successes.add(event.ts)
                s.decayed_total.add(event.ts)
                s.ttfb_ms = _ewma(s.ttfb_ms, event.ttfb_ms)
                generation_s = (event.latency_ms - event.ttfb_ms) / 1000
                if event.output_tokens > 0 and generation_s > 0.001:
                    was_max = s.tps is not None and s.tps == self.max_tps
                    s.tps = _ewma(s.tps, event.output_tokens / generation_s)
                    if self.max_tps is None or s.tps > self.max_tps:
                        self.max_tps = s.tps
                    elif was_max:  # the fastest got slower: rare, so a scan is fine
                        self.max_tps = max(m.tps for m in self.models.values() if m.tps is not None)
            case AttemptFailed(kind=kind) if kind in MODEL_FAULTS:
                self._of(event.platform, event.model).decayed_total.add(event.ts)
            case _:
                pass

    def state(self) -> StatsState:
        return StatsState(
            tuple(
                ModelStatsState(ref, _export(m.decayed_successes), _export(m.decayed_total), m.tps, m.ttfb_ms)
                for ref, m in self.models.items()
            ),
            self.max_tps,
        )

    def restore(self, state: StatsState) -> None:
        self.models = {
            m.ref: ModelStats(
                _restore(self.span, m.successes), _restore(self.span, m.total), m.tps, m.ttfb_ms
            )
            for m in state.models
        }
        self.max_tps = state.max_tps

    def decayed(self, ref: str, now: float) -> tuple[float, float]:
        """(successes, failures), recency-decayed."""
        s = self.models.get(ref)
        if s is None:
            return 0.0, 0.0
        successes = s.decayed_successes.value(now)
        return successes, max(0.0, s.decayed_total.value(now) - successes)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + EWMA_ALPHA * (new - old)
