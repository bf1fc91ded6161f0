"""What a run that ended without `service_stopped` (killed, crashed, the machine lost power) left unfinished,
read from the end of its log: the requests that never completed and the attempts that never ended.

Only the last `UNCLEAN_WINDOW` events are read, so a start after a crash costs the same on any log: a
request lives for minutes at most, and what it left open is among the run's last events (a run that wrote
more than that after a request began is reported as "at least").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from events.store import Entry
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    RequestCompleted,
    RequestReceived,
    ServiceStarted,
)

UNCLEAN_WINDOW = 20_000
SHOWN = 5  # ids named in the start-up line; the rest are counted


@dataclass(frozen=True)
class Unfinished:
    """The end of an unclean run: when its last event was written and what was left open then."""

    last_event_ts: float | None
    requests: tuple[str, ...] = ()  # request ids received, never completed
    attempts: tuple[tuple[str, int, str], ...] = ()  # (request id, attempt, platform/model) never ended
    partial: bool = False  # the run began before the events read: counts are lower bounds

    def summary(self) -> str:
        """One clause for the start-up warning."""
        if not self.requests and not self.attempts:
            return "no request was left unfinished"
        least = "at least " if self.partial else ""
        parts = [f"{least}{len(self.requests)} requests never completed"]
        if self.requests:
            shown = ", ".join(self.requests[:SHOWN]) + (", ..." if len(self.requests) > SHOWN else "")
            parts[0] += f" ({shown})"
        if self.attempts:
            models = sorted({m for _, _, m in self.attempts})
            parts.append(
                f"{len(self.attempts)} upstream attempts never ended (on {', '.join(models[:SHOWN])})"
            )
        return "; ".join(parts)


@dataclass
class _Open:
    requests: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    attempts: dict[tuple[str, int], str] = field(default_factory=dict)


def unfinished(entries: Iterable[Entry], *, from_run_start: bool) -> Unfinished:
    """Fold the last events of a run (in log order) into what it left open. `from_run_start`: the entries
    begin at or before the run's `service_started`, so nothing older can be open."""
    run = _Open()
    last_ts: float | None = None
    saw_start = from_run_start
    for _, event in entries:
        last_ts = event.ts
        if isinstance(event, ServiceStarted):
            run, saw_start = _Open(), True  # an earlier run's leftovers are that run's story
        elif isinstance(event, RequestReceived) and event.request_id:
            run.requests[event.request_id] = None
        elif isinstance(event, RequestCompleted) and event.request_id:
            run.requests.pop(event.request_id, None)
        elif isinstance(event, AttemptStarted) and event.request_id:
            run.attempts[(event.request_id, event.attempt)] = f"{event.platform}/{event.model}"
        elif isinstance(event, AttemptSucceeded | AttemptFailed) and event.request_id:
            run.attempts.pop((event.request_id, event.attempt), None)
    return Unfinished(
        last_ts,
        tuple(run.requests),
        tuple((rid, n, model) for (rid, n), model in run.attempts.items()),
        partial=not saw_start,
    )
