"""Per-model statistics for scoring (the bandit's): recency-decayed successes and totals, speed and TTFB as
moving averages. The plain totals people read are events/op_stats.py's, folded by the stats actor.

Decay is linear over `decay_days`: an outcome of age a weighs clamp(1 - a / T, 0, 1). With running sums of
count n and timestamps S over the outcomes still inside the window, the decayed total at `now` is
n - (n * now - S) / T, so reading it costs O(1). Outcomes leave the window in one-minute buckets (a bucket
goes once its newest possible outcome is older than T), so the only imprecision is within the last minute
of the window, where weights are below 1/10080 anyway.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from typing import ClassVar

import msgspec

from events.failures import MODEL_FAULTS
from events.types import AttemptFailed, AttemptSucceeded, Event

BUCKET_S = 60.0
EWMA_ALPHA = 0.2  # speed and TTFB follow the recent successes


class _Decayed:
    """Decayed count of timestamps over a window of `span` seconds.

    The buckets are one flat array of doubles, (start, n, sum_ts) per bucket, oldest first from `_head`:
    a week of minute buckets per model is 240 KB instead of ten thousand lists, and a snapshot copies and
    restores it as bytes."""

    __slots__ = ("_flat", "_head", "n", "span", "sum_ts")

    def __init__(self, span: float) -> None:
        self.span = span
        self._flat = array("d")
        self._head = 0  # index of the oldest bucket's start; what lies before it has left the window
        self.n = 0.0
        self.sum_ts = 0.0

    def __len__(self) -> int:
        """How many buckets it holds."""
        return (len(self._flat) - self._head) // 3

    def add(self, ts: float) -> None:
        # Expired buckets leave here too, not only on reads: a rebuild over a long log reads nothing.
        self.prune(ts)
        start = ts - ts % BUCKET_S
        flat = self._flat
        if len(flat) > self._head and flat[-3] == start:
            flat[-2] += 1
            flat[-1] += ts
        else:
            flat.extend((start, 1.0, ts))
        self.n += 1
        self.sum_ts += ts

    def prune(self, now: float) -> None:
        flat, i, end = self._flat, self._head, len(self._flat)
        while i < end and flat[i] + BUCKET_S <= now - self.span:
            self.n -= flat[i + 1]
            self.sum_ts -= flat[i + 2]
            i += 3
        if i != self._head:
            if 2 * i >= end:  # most of the array has left: drop it (amortised O(1) per bucket)
                del flat[:i]
                i = 0
            self._head = i

    def export(self) -> bytes:
        kept = self._flat[self._head :]
        if sys.byteorder != "little":
            kept.byteswap()
        return kept.tobytes()

    @classmethod
    def restored(cls, span: float, buckets: bytes, n: float, sum_ts: float) -> _Decayed:
        d = cls(span)
        d._flat.frombytes(buckets)
        if sys.byteorder != "little":
            d._flat.byteswap()
        # The running sums as they were (not re-added): floats must come back bit for bit.
        d.n, d.sum_ts = n, sum_ts
        return d

    def value(self, now: float) -> float:
        self.prune(now)
        if self.n <= 0:
            return 0.0
        return max(0.0, self.n - (self.n * now - self.sum_ts) / self.span)


BUCKET_BYTES = 24  # (start, n, sum_ts) as little-endian doubles


class DecayedState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    buckets: bytes  # BUCKET_BYTES per bucket, oldest first
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

    def damaged(self) -> str | None:
        """Why this state cannot be restored, if it cannot (a decoder checks types, not this)."""
        for m in self.models:
            for d in (m.successes, m.total):
                if len(d.buckets) % BUCKET_BYTES:
                    return f"the decay buckets of {m.ref} are {len(d.buckets)} bytes, not whole buckets"
        return None


def _export(d: _Decayed) -> DecayedState:
    return DecayedState(d.export(), d.n, d.sum_ts)


def _restore(span: float, state: DecayedState) -> _Decayed:
    return _Decayed.restored(span, state.buckets, state.n, state.sum_ts)


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
