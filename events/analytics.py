"""Analytics: a time-bucketed fold of the log for the admin API (requests, attempts per model, platform
and key, latency percentiles, errors by kind), answered for a window ending at `now`.

What it folds: `RequestCompleted` (requests, ok / error / client_abort, latency, fallbacks: more than one
attempt) and `AttemptSucceeded` / `AttemptFailed` (per model, platform and key: attempts, ok, failed,
latency and TTFB of the answers, tokens; failures by kind). An attempt the client cut short
(`client_abort`) says nothing about the upstream: it is not counted among attempts nor errors (the
request-level `client_aborts` counts those requests). Events are bucketed by their own `ts`, so folding
the same events in any order gives the same answers (a rebuild at start reads them by type).

Buckets: a minute bucket per minute kept 24 h, an hour bucket per hour kept 30 days; an event goes into
both. Older buckets are pruned as time passes (the newest time seen, or the `now` of a question). Only
cells that had traffic exist (a bucket per minute or hour with any event; in it, a cell per model,
platform and key that had an attempt; in a histogram, a bin per value range that had a sample).

Memory is bounded whatever the traffic: at most 1,440 minute and 720 hour buckets, each with at most
1 + M + P + K cells (M models, P platforms, K keys the log names: a configuration's size), each cell with at
most three histograms of `BINS` bins. With 12 models, 5 platforms and 10 keys that is at most
2,160 x 28 cells; in practice a histogram holds the few dozen bins its latencies span.

Percentiles come from fixed log-spaced bins (each 10% wider than the last, from 1 ms), so a percentile is
within 5% of the true value (the bin's geometric middle is at most 4.9% from either edge); histograms merge
by adding bins, across buckets and cells.

A window is whole buckets: hour buckets that start inside it, and for the older edge the minute buckets
before the first of them (exact to the minute for 1 h and 24 h; 7 d and 30 d reach back to the first whole
hour, minute buckets being kept only a day).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar

import msgspec

from events.failures import FailureKind
from events.types import AttemptFailed, AttemptSucceeded, Event, RequestCompleted, event_tag

MINUTE, HOUR, DAY = 60, 3600, 86400
MINUTES_KEPT_S = 24 * HOUR
HOURS_KEPT_S = 30 * 24 * HOUR
WINDOWS: dict[str, int] = {"1h": HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR, "30d": 30 * 24 * HOUR}
BUCKETS: dict[str, int] = {"minute": MINUTE, "hour": HOUR}
Dim = Literal["model", "platform", "key"]
DIMS: tuple[Dim, ...] = ("model", "platform", "key")

RATIO = 1.1  # each bin 10% wider than the one before: a bin's middle is within 5% of its edges
BINS = 200  # bin 0 below 1 ms, then up to 1.1**199 ms (about 20 days): nothing is past the last
_LOG_RATIO = math.log(RATIO)

FOLDED_TYPES: frozenset[type[Event]] = frozenset({RequestCompleted, AttemptSucceeded, AttemptFailed})
FOLDED_TAGS: frozenset[str] = frozenset(event_tag(t) for t in FOLDED_TYPES)


def bin_of(ms: float) -> int:
    """The histogram bin of a duration in milliseconds."""
    if not ms >= 1.0:  # also NaN
        return 0
    return min(BINS - 1, 1 + int(math.log(ms) / _LOG_RATIO))


def value_of(b: int) -> float:
    """What a bin stands for: its geometric middle (bin 0: 0.5 ms)."""
    return 0.5 if b == 0 else RATIO ** (b - 0.5)


Histogram = dict[int, int]  # bin -> samples, only bins with samples
_K = TypeVar("_K")


def percentiles(hist: Histogram, ps: Iterable[float]) -> list[float | None]:
    """The value at each quantile `p` (0..1) of a histogram (None when it is empty); walks only the bins
    it has."""
    total = sum(hist.values())
    ordered = sorted(hist.items())
    out: list[float | None] = []
    for p in ps:
        if total == 0:
            out.append(None)
            continue
        rank, seen = max(1, math.ceil(p * total)), 0
        for b, n in ordered:
            seen += n
            if seen >= rank:
                out.append(round(value_of(b), 1))
                break
    return out


class Percentiles(msgspec.Struct, frozen=True):
    p50: float | None
    p95: float | None


def _pcts(hists: Iterable[Histogram]) -> Percentiles:
    merged: Histogram = {}
    for hist in hists:
        _merge(merged, hist)
    p50, p95 = percentiles(merged, (0.5, 0.95))
    return Percentiles(p50, p95)


class Tokens(msgspec.Struct, frozen=True):
    input: int
    output: int


@dataclass(slots=True)
class RequestCell:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    client_aborts: int = 0
    fallbacks: int = 0
    latency: Histogram = field(default_factory=dict)


@dataclass(slots=True)
class AttemptCell:
    attempts: int = 0
    ok: int = 0
    failed: int = 0
    latency: Histogram = field(default_factory=dict)  # of answers
    ttfb: Histogram = field(default_factory=dict)  # of answers
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class Bucket:
    requests: RequestCell = field(default_factory=RequestCell)
    cells: dict[tuple[Dim, str], AttemptCell] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # attempt failures by kind


class _Layer:
    """Buckets of one width, kept for `keep_s` behind the newest time seen."""

    def __init__(self, width_s: int, keep_s: int) -> None:
        self.width_s, self.keep_s = width_s, keep_s
        self.buckets: dict[int, Bucket] = {}
        self._horizon = -math.inf  # buckets starting before it are gone
        self._last: tuple[float, float, Bucket] | None = None  # (start, end, bucket) of the last event's

    def at(self, ts: float) -> Bucket | None:
        last = self._last
        if last is not None and last[0] <= ts < last[1]:  # most events land where the one before did
            return last[2]
        start = int(ts // self.width_s) * self.width_s
        if start < self._horizon:
            return None
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = Bucket()
            self.prune(ts)
        self._last = (start, start + self.width_s, bucket)
        return bucket

    def prune(self, now: float) -> None:
        horizon = int((now - self.keep_s) // self.width_s + 1) * self.width_s
        if horizon <= self._horizon:
            return
        self._horizon = horizon
        for start in [s for s in self.buckets if s < horizon]:
            del self.buckets[start]
        if self._last is not None and self._last[0] < horizon:
            self._last = None

    def since(self, start: float, before: float = math.inf) -> Iterator[tuple[int, Bucket]]:
        """Buckets starting at or after `start` and before `before`, oldest first."""
        for s in sorted(self.buckets):
            if start <= s < before:
                yield s, self.buckets[s]


class Summary(msgspec.Struct, frozen=True):
    window: str
    requests: int
    ok: int
    errors: int
    client_aborts: int
    success_rate: float | None
    fallbacks: int
    latency_ms: Percentiles
    ttfb_ms: Percentiles
    tokens: Tokens


class DimRow(msgspec.Struct, frozen=True):
    name: str
    attempts: int
    ok: int
    failed: int
    success_rate: float | None
    latency_ms: Percentiles
    ttfb_ms: Percentiles
    tokens: Tokens


class ByDim(msgspec.Struct, frozen=True):
    window: str
    dim: str
    data: list[DimRow]


class Point(msgspec.Struct, frozen=True):
    t: int
    requests: int
    ok: int
    errors: int
    latency_ms: Percentiles
    errors_by_kind: dict[str, int]


class Timeline(msgspec.Struct, frozen=True):
    window: str
    bucket_s: int
    points: list[Point]


class KindCount(msgspec.Struct, frozen=True):
    kind: str
    count: int


class Errors(msgspec.Struct, frozen=True):
    window: str
    data: list[KindCount]


def _rate(ok: int, total: int) -> float | None:
    return round(ok / total, 4) if total else None


class Analytics:
    FOLDS: ClassVar[frozenset[type[Event]]] = FOLDED_TYPES

    def __init__(self) -> None:
        self.minutes = _Layer(MINUTE, MINUTES_KEPT_S)
        self.hours = _Layer(HOUR, HOURS_KEPT_S)
        self.events = 0
        self._days: dict[int, Bucket] = {}  # whole past days' hour buckets merged, until one of them changes

    # ---- the fold ------------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        # Bins and names are found once per event, not once per cell: a rebuild folds a month of them.
        match event:
            case RequestCompleted():
                latency = bin_of(event.latency_ms)
                self._changed(event.ts)
                for layer in (self.minutes, self.hours):
                    bucket = layer.at(event.ts)
                    if bucket is not None:
                        _request(bucket.requests, event, latency)
            case AttemptSucceeded() | AttemptFailed():
                kind = event.kind if isinstance(event, AttemptFailed) else None
                if kind == FailureKind.CLIENT_ABORT:
                    return
                names: tuple[tuple[Dim, str], ...] = (
                    ("model", f"{event.platform}/{event.model}"),
                    ("platform", event.platform),
                    ("key", event.key_id),
                )
                answer = (
                    (bin_of(event.latency_ms), bin_of(event.ttfb_ms), event.input_tokens, event.output_tokens)
                    if isinstance(event, AttemptSucceeded)
                    else None
                )
                self._changed(event.ts)
                for layer in (self.minutes, self.hours):
                    bucket = layer.at(event.ts)
                    if bucket is None:
                        continue
                    if kind is not None:
                        bucket.kinds[kind] = bucket.kinds.get(kind, 0) + 1
                    cells = bucket.cells
                    for name in names:
                        cell = cells.get(name)
                        if cell is None:
                            cell = cells[name] = AttemptCell()
                        _attempt(cell, answer)
            case _:
                return
        self.events += 1

    def _changed(self, ts: float) -> None:
        if self._days:
            self._days.pop(int(ts // DAY) * DAY, None)

    def prune(self, now: float) -> None:
        self.minutes.prune(now)
        self.hours.prune(now)
        for day in [d for d in self._days if d < now - HOURS_KEPT_S]:
            del self._days[day]

    # ---- questions, for a window ending at `now` -------------------------------------------------------

    def _window(self, now: float, window_s: int) -> list[Bucket]:
        """The buckets that make up the window, whole days already past merged into one each (cached):
        a 30-day question adds up some 80 buckets, not 720 (it runs on the event loop)."""
        self.prune(now)
        start = now - window_s
        hours = list(self.hours.since(start))
        first_hour = hours[0][0] if hours else math.ceil(start / HOUR) * HOUR
        out = [b for _, b in self.minutes.since(start, first_hour)]
        today = int(now // DAY) * DAY
        days: list[int] = []
        for s, b in hours:
            day = s - s % DAY
            if start <= day and day + DAY <= today:
                if not days or days[-1] != day:
                    days.append(day)
            else:
                out.append(b)
        for day in days:
            merged = self._days.get(day)
            if merged is None:
                found = (self.hours.buckets.get(h) for h in range(day, day + DAY, HOUR))
                merged = self._days[day] = _merged(b for b in found if b is not None)
            out.append(merged)
        return out

    def merge_past_days(self, now: float) -> None:
        """Merge the past days now (a rebuild does, off the event loop) rather than at the first question."""
        self._window(now, WINDOWS["30d"])

    def summary(self, now: float, window: str) -> Summary:
        buckets = self._window(now, WINDOWS[window])
        req = [b.requests for b in buckets]
        platforms = [c for b in buckets for (dim, _), c in b.cells.items() if dim == "platform"]
        requests, ok = sum(r.requests for r in req), sum(r.ok for r in req)
        return Summary(
            window=window,
            requests=requests,
            ok=ok,
            errors=sum(r.errors for r in req),
            client_aborts=sum(r.client_aborts for r in req),
            success_rate=_rate(ok, requests),
            fallbacks=sum(r.fallbacks for r in req),
            latency_ms=_pcts(r.latency for r in req),
            ttfb_ms=_pcts(c.ttfb for c in platforms),
            tokens=Tokens(sum(c.input_tokens for c in platforms), sum(c.output_tokens for c in platforms)),
        )

    def by(self, now: float, window: str, dim: Dim) -> ByDim:
        merged: dict[str, list[AttemptCell]] = {}
        for bucket in self._window(now, WINDOWS[window]):
            for (d, name), cell in bucket.cells.items():
                if d == dim:
                    merged.setdefault(name, []).append(cell)
        rows = []
        for name, cells in merged.items():
            attempts, ok = sum(c.attempts for c in cells), sum(c.ok for c in cells)
            rows.append(
                DimRow(
                    name=name,
                    attempts=attempts,
                    ok=ok,
                    failed=sum(c.failed for c in cells),
                    success_rate=_rate(ok, attempts),
                    latency_ms=_pcts(c.latency for c in cells),
                    ttfb_ms=_pcts(c.ttfb for c in cells),
                    tokens=Tokens(sum(c.input_tokens for c in cells), sum(c.output_tokens for c in cells)),
                )
            )
        rows.sort(key=lambda r: (-r.attempts, r.name))
        return ByDim(window=window, dim=dim, data=rows)

    def timeline(self, now: float, window: str, bucket: str | None = None) -> Timeline:
        """Points per bucket that had traffic (those without are left out: zero), oldest first. Default
        bucket: minutes for 1 h and 24 h, hours for 7 d and 30 d; minute buckets reach back 24 h only."""
        window_s = WINDOWS[window]
        width = BUCKETS[bucket] if bucket is not None else (MINUTE if window_s <= 24 * HOUR else HOUR)
        layer = self.minutes if width == MINUTE else self.hours
        self.prune(now)
        points = []
        # Every bucket that overlaps the window (the oldest one may reach a little past it).
        for start, b in layer.since(now - window_s - width + 1e-9):
            r = b.requests
            if not (r.requests or b.kinds):
                continue
            points.append(
                Point(
                    t=start,
                    requests=r.requests,
                    ok=r.ok,
                    errors=r.errors,
                    latency_ms=_pcts([r.latency]),
                    errors_by_kind=dict(sorted(b.kinds.items())),
                )
            )
        return Timeline(window=window, bucket_s=width, points=points)

    def errors(self, now: float, window: str) -> Errors:
        kinds: dict[str, int] = {}
        for bucket in self._window(now, WINDOWS[window]):
            for kind, n in bucket.kinds.items():
                kinds[kind] = kinds.get(kind, 0) + n
        data = [KindCount(k, n) for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
        return Errors(window=window, data=data)


def _merged(buckets: Iterable[Bucket]) -> Bucket:
    """One bucket holding what `buckets` hold together."""
    out = Bucket()
    o = out.requests
    for b in buckets:
        r = b.requests
        o.requests += r.requests
        o.ok += r.ok
        o.errors += r.errors
        o.client_aborts += r.client_aborts
        o.fallbacks += r.fallbacks
        _merge(o.latency, r.latency)
        for name, c in b.cells.items():
            t = out.cells.get(name)
            if t is None:
                t = out.cells[name] = AttemptCell()
            t.attempts += c.attempts
            t.ok += c.ok
            t.failed += c.failed
            t.input_tokens += c.input_tokens
            t.output_tokens += c.output_tokens
            _merge(t.latency, c.latency)
            _merge(t.ttfb, c.ttfb)
        _merge(out.kinds, b.kinds)
    return out


def _merge(into: dict[_K, int], counts: dict[_K, int]) -> None:
    for k, n in counts.items():
        into[k] = into.get(k, 0) + n


def _request(cell: RequestCell, event: RequestCompleted, latency: int) -> None:
    cell.requests += 1
    if event.outcome == "ok":
        cell.ok += 1
    elif event.outcome == "error":
        cell.errors += 1
    else:
        cell.client_aborts += 1
    if event.attempts > 1:
        cell.fallbacks += 1
    cell.latency[latency] = cell.latency.get(latency, 0) + 1


def _attempt(cell: AttemptCell, answer: tuple[int, int, int, int] | None) -> None:
    """One attempt: failed (None) or answered (its latency and TTFB bins, its tokens)."""
    cell.attempts += 1
    if answer is None:
        cell.failed += 1
        return
    latency, ttfb, input_tokens, output_tokens = answer
    cell.ok += 1
    cell.latency[latency] = cell.latency.get(latency, 0) + 1
    cell.ttfb[ttfb] = cell.ttfb.get(ttfb, 0) + 1
    cell.input_tokens += input_tokens
    cell.output_tokens += output_tokens
