"""One request's story, from its events: what it asked for, each decision with its candidates and exclusions
and its replay, each attempt's place in time (a waterfall: when it started after the request was
received, how long it took, when its first byte came, how it ended), and how the request ended. Pure: the
caller reads the events and replays the decisions (service/admin_requests.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from events.catalog import ALIASES, VIRTUAL_MODELS
from events.explain import explain
from events.failures import FailureKind
from events.replay import Replayed
from events.store import Entry
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    RequestCompleted,
    RequestReceived,
    RouteDecided,
    event_type,
    without_conversation,
)
from events.view import POOL_REASON

Mode = Literal["auto", "auto-smart", "auto-fast", "named"]
MODES: tuple[str, ...] = (*VIRTUAL_MODELS, "named")


def requested_of(received: RequestReceived) -> tuple[str, ...]:
    # Logs older than `requested_models` joined the names into `model`.
    return received.requested_models or tuple(received.model.split(","))


def mode_of(requested: Sequence[str]) -> str:
    """The virtual model the client named (the last one, as the runner reads it; aliases resolved), or
    "named" when it named only concrete models."""
    return next((m for n in reversed(requested) if (m := ALIASES.get(n, n)) in VIRTUAL_MODELS), "named")


class RequestSummary(msgspec.Struct, frozen=True):
    id: str
    ts: float
    requested: str  # the model the client named (its `model`, then its `models`, comma-separated)
    mode: str
    stream: bool | None
    outcome: str | None  # ok | error | client_abort; None while it runs
    status: int | None
    attempts: int
    latency_ms: float | None
    platform: str | None  # where it was answered (while it runs: its latest attempt's)
    model: str | None
    error: str | None
    protocol: str = "chat"  # the client protocol it came by (chat, responses, messages, embeddings)


def summarize(
    request_id: str, events: Sequence[Event], received: RequestReceived | None = None
) -> RequestSummary:
    """A request's summary from its events (only its received, attempt-started and completed events are
    read; `received` when the caller has it apart)."""
    completed: RequestCompleted | None = None
    started: list[AttemptStarted] = []
    for e in events:
        if type(e) is RequestReceived:
            received = e
        elif type(e) is RequestCompleted:
            completed = e
        elif type(e) is AttemptStarted:
            started.append(e)
    requested = requested_of(received) if received is not None else ()
    ts = received.ts if received is not None else min((e.ts for e in events), default=0.0)
    if completed is not None:
        return RequestSummary(
            id=request_id,
            ts=ts,
            requested=",".join(requested),
            mode=mode_of(requested),
            stream=received.stream if received is not None else None,
            outcome=completed.outcome,
            status=completed.status,
            attempts=completed.attempts,
            latency_ms=completed.latency_ms,
            platform=completed.platform,
            model=completed.model,
            error=completed.error,
            protocol=received.protocol if received is not None else "chat",
        )
    latest = started[-1] if started else None
    return RequestSummary(
        id=request_id,
        ts=ts,
        requested=",".join(requested),
        mode=mode_of(requested),
        stream=received.stream if received is not None else None,
        outcome=None,
        status=None,
        attempts=len(started),
        latency_ms=None,
        platform=latest.platform if latest is not None else None,
        model=latest.model if latest is not None else None,
        error=None,
        protocol=received.protocol if received is not None else "chat",
    )


class EventRow(msgspec.Struct, frozen=True):
    seq: int
    type: str
    ts: float
    data: dict[str, Any]  # the event as the log stores it


AttemptOutcome = Literal["ok", "failed", "stalled", "client_gone", "running"]
_STALLS = frozenset({FailureKind.STALL_PRE, FailureKind.STALL_MID})


class AttemptRow(msgspec.Struct, frozen=True):
    attempt: int
    platform: str
    model: str
    key_id: str
    start_ms: float  # after the request was received
    duration_ms: float | None  # None while it runs
    ttfb_ms: float | None
    outcome: AttemptOutcome
    kind: str | None
    status: int | None
    message: str | None


class DecisionRow(msgspec.Struct, frozen=True):
    seq: int
    attempt: int
    view_seq: int
    mode: str
    chosen_ref: str | None
    chosen_key: str | None
    candidates: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    not_admitted: str | None
    explanation: str | None
    replayed_ref: str | None
    reproduces: bool | None  # None: not replayed (its view is too far from any start: see events/view_at.py)


class Story(msgspec.Struct, frozen=True):
    request: RequestSummary
    events: list[EventRow]
    attempts: list[AttemptRow]
    decisions: list[DecisionRow]
    reproduces: bool | None  # every decision reproduced (None: it has none, or one was not replayed)


def story(request_id: str, entries: Sequence[Entry], replayed: Mapping[int, Replayed]) -> Story:
    """The story of the request whose events (in log order) are `entries`; `replayed`: the replay of each of
    its decisions by seq (a decision missing there is shown without one)."""
    events = [e for _, e in entries]
    summary = summarize(request_id, events)
    received_ts = summary.ts
    rows = [
        EventRow(s, event_type(e), e.ts, msgspec.to_builtins(without_conversation(e))) for s, e in entries
    ]
    decisions = [_decision(s, e, replayed.get(s)) for s, e in entries if type(e) is RouteDecided]
    verdicts = [d.reproduces for d in decisions]
    return Story(
        request=summary,
        events=rows,
        attempts=_attempts(events, received_ts),
        decisions=decisions,
        reproduces=None if not verdicts or None in verdicts else all(verdicts),
    )


def _attempts(events: Sequence[Event], received_ts: float) -> list[AttemptRow]:
    rows: list[AttemptRow] = []
    open_: dict[int, tuple[int, AttemptStarted]] = {}  # attempt number -> (its row, its start)
    for e in events:
        if type(e) is AttemptStarted:
            open_[e.attempt] = (len(rows), e)
            rows.append(
                AttemptRow(
                    attempt=e.attempt,
                    platform=e.platform,
                    model=e.model,
                    key_id=e.key_id,
                    start_ms=round((e.ts - received_ts) * 1000, 1),
                    duration_ms=None,
                    ttfb_ms=None,
                    outcome="running",
                    kind=None,
                    status=None,
                    message=None,
                )
            )
        elif isinstance(e, AttemptSucceeded | AttemptFailed) and e.attempt in open_:
            i, start = open_.pop(e.attempt)
            took = e.latency_ms if e.latency_ms > 0 else (e.ts - start.ts) * 1000
            if isinstance(e, AttemptSucceeded):
                ended = dict(outcome="ok", ttfb_ms=round(e.ttfb_ms, 1))
            else:
                outcome = (
                    "stalled"
                    if e.kind in _STALLS
                    else "client_gone"
                    if e.kind == FailureKind.CLIENT_ABORT
                    else "failed"
                )
                ended = dict(outcome=outcome, kind=e.kind, status=e.status, message=e.message or None)
            rows[i] = msgspec.structs.replace(rows[i], duration_ms=round(took, 1), **ended)
    return rows


def _decision(seq: int, rec: RouteDecided, replayed: Replayed | None) -> DecisionRow:
    excluded = [msgspec.to_builtins(x) for x in rec.excluded]
    # Newer records name the models the mode's pool left out apart: one reason for all of them.
    excluded += [
        {"ref": ref, "reason": POOL_REASON, "until": None, "code": "pool"} for ref in rec.pool_excluded
    ]
    return DecisionRow(
        seq=seq,
        attempt=rec.attempt,
        view_seq=rec.view_seq,
        mode=rec.input.mode,
        chosen_ref=rec.chosen_ref,
        chosen_key=rec.chosen_key,
        candidates=[msgspec.to_builtins(c) for c in rec.candidates],
        excluded=excluded,
        not_admitted=rec.not_admitted,
        explanation=explain(replayed)
        if replayed is not None
        else explain(Replayed(seq, rec, None, False), replayed=False),
        replayed_ref=replayed.recomputed[0] if replayed is not None else None,
        reproduces=replayed.matches if replayed is not None else None,
    )
