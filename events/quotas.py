"""Quota usage per key x model: requests and tokens in the last minute and in the current day.

Requests count when an attempt starts (the provider counts them whether or not they succeed); tokens count
when it succeeds (the usage it reported, else our estimate); while it runs, its reservation (estimated
input plus an output allowance) counts instead, so concurrent requests cannot all squeeze under a limit.
Daily windows reset at UTC midnight, or roll over the last 24 h for platforms that count that way.
Windows are pruned lazily, so each event and each read costs O(1) amortised: on every read, and on every
entry added (so a rebuild over a long log holds only the last minute and day, not every attempt ever).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import msgspec

from events.types import AttemptFailed, AttemptStarted, AttemptSucceeded, Event, ServiceStarted

MINUTE = 60.0
DAY = 86400.0

Slot = tuple[str, str]  # (key_id, model ref)


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None


class Usage(NamedTuple):  # read for every key checked in a decision: a tuple is cheaper to build
    requests_minute: int
    requests_day: int
    tokens_minute: int
    tokens_day: int
    reserved_tokens: int  # held by attempts still in flight


_UNUSED = Usage(0, 0, 0, 0, 0)


class _Window:
    """Sums of (requests, tokens) over entries younger than `span`; entries are appended in time order."""

    __slots__ = ("entries", "requests", "span", "tokens")

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[tuple[float, int, int]] = deque()
        self.requests = 0
        self.tokens = 0

    def add(self, ts: float, requests: int, tokens: int) -> None:
        # Pruning at the entry's own time drops only what any read at a later `now` would drop anyway.
        self.prune(ts)
        self.entries.append((ts, requests, tokens))
        self.requests += requests
        self.tokens += tokens

    def prune(self, now: float) -> None:
        horizon = now - self.span
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            _, r, t = entries.popleft()
            self.requests -= r
            self.tokens -= t


class _CalendarDay:
    """Sums for the current UTC day; a new day starts from zero."""

    __slots__ = ("day", "requests", "tokens")

    def __init__(self) -> None:
        self.day = -1
        self.requests = 0
        self.tokens = 0

    def add(self, ts: float, requests: int, tokens: int) -> None:
        day = int(ts // DAY)
        if day > self.day:
            self.day, self.requests, self.tokens = day, 0, 0
        if day == self.day:
            self.requests += requests
            self.tokens += tokens

    def prune(self, now: float) -> None:
        if int(now // DAY) > self.day:
            self.day, self.requests, self.tokens = int(now // DAY), 0, 0


class _SlotUsage:
    __slots__ = ("day", "minute", "reserved")

    def __init__(self, rolling_day: bool) -> None:
        self.minute = _Window(MINUTE)
        self.day: _Window | _CalendarDay = _Window(DAY) if rolling_day else _CalendarDay()
        self.reserved = 0


Entries = tuple[tuple[float, int, int], ...]  # (ts, requests, tokens)


class SlotState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One key x model's windows: the minute's entries; the rolling day's entries, or else the calendar
    day's (day number, requests, tokens); the tokens reserved by attempts in flight."""

    key_id: str
    ref: str
    minute: Entries
    rolling_day: Entries | None
    calendar_day: tuple[int, int, int] | None
    reserved: int


class QuotasState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    slots: tuple[SlotState, ...]
    in_flight: tuple[tuple[str | None, int, str, str, int], ...]  # (request, attempt, key_id, ref, reserved)


def _window(span: float, entries: Entries) -> _Window:
    window = _Window(span)
    window.entries.extend(entries)
    window.requests = sum(e[1] for e in entries)
    window.tokens = sum(e[2] for e in entries)
    return window


class Quotas:
    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset(
        {AttemptStarted, AttemptSucceeded, AttemptFailed, ServiceStarted}
    )

    def __init__(self, rolling_day_platforms: frozenset[str] = frozenset()) -> None:
        self._rolling = rolling_day_platforms
        self._slots: dict[Slot, _SlotUsage] = {}
        self._in_flight: dict[tuple[str | None, int], tuple[Slot, int]] = {}

    def _slot(self, platform: str, key_id: str, model: str) -> _SlotUsage:
        slot = (key_id, f"{platform}/{model}")
        usage = self._slots.get(slot)
        if usage is None:
            usage = self._slots[slot] = _SlotUsage(platform in self._rolling)
        return usage

    def apply(self, event: Event) -> None:
        match event:
            case AttemptStarted():
                usage = self._slot(event.platform, event.key_id, event.model)
                usage.minute.add(event.ts, 1, 0)
                usage.day.add(event.ts, 1, 0)
                usage.reserved += event.reserved_tokens
                self._in_flight[(event.request_id, event.attempt)] = (
                    (event.key_id, f"{event.platform}/{event.model}"),
                    event.reserved_tokens,
                )
            case AttemptSucceeded() | AttemptFailed():
                held = self._in_flight.pop((event.request_id, event.attempt), None)
                usage = self._slot(event.platform, event.key_id, event.model)
                if held is not None:
                    usage.reserved -= held[1]
                if isinstance(event, AttemptSucceeded):
                    tokens = event.input_tokens + event.output_tokens
                    usage.minute.add(event.ts, 0, tokens)
                    usage.day.add(event.ts, 0, tokens)
            case ServiceStarted():
                # Nothing survives a restart: attempts without an end event (a hard kill) hold nothing.
                for slot, reserved in self._in_flight.values():
                    self._slots[slot].reserved -= reserved
                self._in_flight.clear()
            case _:
                pass

    def state(self) -> QuotasState:
        slots = []
        for (key_id, ref), usage in self._slots.items():
            day = usage.day
            slots.append(
                SlotState(
                    key_id,
                    ref,
                    tuple(usage.minute.entries),
                    tuple(day.entries) if isinstance(day, _Window) else None,
                    (day.day, day.requests, day.tokens) if isinstance(day, _CalendarDay) else None,
                    usage.reserved,
                )
            )
        return QuotasState(
            tuple(slots),
            tuple(
                (request_id, attempt, key_id, ref, reserved)
                for (request_id, attempt), ((key_id, ref), reserved) in self._in_flight.items()
            ),
        )

    def restore(self, state: QuotasState) -> None:
        self._slots = {}
        for s in state.slots:
            usage = self._slots[(s.key_id, s.ref)] = _SlotUsage(s.rolling_day is not None)
            usage.minute = _window(MINUTE, s.minute)
            if s.rolling_day is not None:
                usage.day = _window(DAY, s.rolling_day)
            elif s.calendar_day is not None:
                calendar = _CalendarDay()
                calendar.day, calendar.requests, calendar.tokens = s.calendar_day
                usage.day = calendar
            usage.reserved = s.reserved
        self._in_flight = {
            (request_id, attempt): ((key_id, ref), reserved)
            for request_id, attempt, key_id, ref, reserved in state.in_flight
        }

    def usage(self, key_id: str, ref: str, now: float) -> Usage:
        usage = self._slots.get((key_id, ref))
        if usage is None:
            return _UNUSED
        usage.minute.prune(now)
        usage.day.prune(now)
        return Usage(
            usage.minute.requests, usage.day.requests, usage.minute.tokens, usage.day.tokens, usage.reserved
        )

    def frees_at(self, key_id: str, ref: str, now: float, limits: Limits, tokens: int) -> float | None:
        """When the limit that blocks one more request of `tokens` stops blocking it, if nothing else is
        sent meanwhile: the moment enough of the window's requests (or tokens) have left it, or for a
        calendar day the next UTC midnight."""
        usage = self._slots.get((key_id, ref))
        if usage is None:
            return None
        current = self.usage(key_id, ref, now)
        pending = current.reserved_tokens + tokens
        blocks = [
            (
                limits.rpm,
                current.requests_minute - limits.rpm + 1 if limits.rpm is not None else 0,
                usage.minute,
                1,
            ),
            (
                limits.rpd,
                current.requests_day - limits.rpd + 1 if limits.rpd is not None else 0,
                usage.day,
                1,
            ),
            (
                limits.tpm,
                current.tokens_minute + pending - limits.tpm if limits.tpm is not None else 0,
                usage.minute,
                2,
            ),
            (
                limits.tpd,
                current.tokens_day + pending - limits.tpd if limits.tpd is not None else 0,
                usage.day,
                2,
            ),
        ]
        for limit, excess, window, field_index in blocks:
            if limit is None or excess <= 0:
                continue
            if isinstance(window, _CalendarDay):
                return (window.day + 1) * DAY
            freed = 0.0
            for entry in window.entries:
                freed += entry[field_index]
                if freed >= excess:
                    return entry[0] + window.span
            return None  # in-flight reservations hold it: it frees when they finish
        return None

    def in_flight(self) -> int:
        return len(self._in_flight)


def over_limit(limits: Limits, usage: Usage, tokens: int) -> str | None:
    """Why one more request of `tokens` (input + output reservation) would exceed a limit, or None."""
    if limits.rpm is not None and usage.requests_minute >= limits.rpm:
        return f"quota: {usage.requests_minute}/{limits.rpm} requests this minute"
    if limits.rpd is not None and usage.requests_day >= limits.rpd:
        return f"quota: {usage.requests_day}/{limits.rpd} requests today"
    pending = usage.reserved_tokens + tokens
    if limits.tpm is not None and usage.tokens_minute + pending > limits.tpm:
        return f"quota: {usage.tokens_minute + usage.reserved_tokens}+{tokens} > {limits.tpm} tokens/minute"
    if limits.tpd is not None and usage.tokens_day + pending > limits.tpd:
        return f"quota: {usage.tokens_day + usage.reserved_tokens}+{tokens} > {limits.tpd} tokens/day"
    return None
