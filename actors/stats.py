"""Stats actor: folds attempt outcomes into per-model counters and answers snapshot asks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from actors.log_writer import LogWriter
from actors.mailbox import Reply
from events.model_stats import Stats
from events.store import Entry


@dataclass(frozen=True)
class ModelCounters:
    ref: str
    successes: int
    failures: int
    failures_by_kind: dict[str, int]
    mean_latency_ms: float | None
    mean_ttfb_ms: float | None  # recent (exponentially weighted)
    tokens_per_s: float | None  # recent (exponentially weighted)
    output_tokens: int
    stalls: int


@dataclass(frozen=True)
class StatsStatistics:
    models: int
    events_applied: int


class StatsActor:
    def __init__(self, stats: Stats, log: LogWriter) -> None:
        self._stats = stats
        self._send, self._recv = trio.open_memory_channel[list[Entry] | Reply[list[ModelCounters]]](math.inf)
        log.subscribe(self._send.clone())
        self._applied = 0

    async def snapshot(self) -> list[ModelCounters]:
        reply: Reply[list[ModelCounters]] = Reply()
        await self._send.send(reply)
        return await reply.wait()

    def statistics(self) -> StatsStatistics:
        return StatsStatistics(models=len(self._stats.models), events_applied=self._applied)

    async def run(self, *, task_status: trio.TaskStatus[StatsActor] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        async with self._recv:
            async for message in self._recv:
                if isinstance(message, list):
                    for _, event in message:
                        self._stats.apply(event)
                    self._applied += len(message)
                else:
                    message.send(self._counters())

    def _counters(self) -> list[ModelCounters]:
        return [
            ModelCounters(
                ref=ref,
                successes=s.successes,
                failures=s.failures,
                failures_by_kind=dict(s.failures_by_kind),
                mean_latency_ms=s.latency_ms_total / s.successes if s.successes else None,
                mean_ttfb_ms=s.ttfb_ms,
                tokens_per_s=s.tps,
                output_tokens=s.output_tokens,
                stalls=s.stalls,
            )
            for ref, s in sorted(self._stats.models.items())
        ]
