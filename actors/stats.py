"""Stats actor: the one owner of operational statistics (events/op_stats.py) while the gateway runs. It folds
every committed batch and answers snapshot asks (the admin console and metrics read it); `switchboard
models` folds the same class from the log when it runs on its own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from actors.log_writer import LogWriter
from actors.mailbox import Reply
from events.op_stats import ModelCounters, OperationalStats
from events.store import Entry


@dataclass(frozen=True)
class StatsStatistics:
    models: int
    events_applied: int


class StatsActor:
    def __init__(self, stats: OperationalStats, log: LogWriter) -> None:
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
                    message.send(self._stats.counters())
