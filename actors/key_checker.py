"""Key checker: calls the provider (a cheap `GET /models`) with keys that are invalid or cooling, and logs
what it found as `KeyChecked`, so an invalid key that starts working again comes back on its own (and one
revoked while cooling is marked invalid before a request finds out). A cooling key stays cooling: a model
list says nothing about that model's quota.

The status recorded is the adapter's reading of the check's answer (`ProviderAdapter.key_check_status`): a
provider that says "bad key" with another status (Gemini: 400 with reason API_KEY_INVALID) is recorded as
the 401 it means, so key health and the 403 check read one status whatever the kind.

Error handling: every check has its own deadline; a provider that does not answer is recorded as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from actors.log_writer import LogWriter
from actors.model_health import KeyView, ModelHealth
from actors.upstream import TransportFailure, Upstream
from events.types import KeyChecked


@dataclass(frozen=True)
class KeyCheckerStatistics:
    rounds: int
    checks: int
    restored: int


def needs_check(view: KeyView) -> bool:
    return view.info.status == "invalid" or bool(view.cooling)


async def check_key(
    upstream: Upstream, platform: str, key_id: str, now: Callable[[], float], timeout_s: float = 10.0
) -> KeyChecked:
    status: int | None = None
    message = ""
    with trio.move_on_after(timeout_s) as scope:
        try:
            status = await upstream.check_key(platform, key_id)
        except TransportFailure as exc:
            message = upstream.redact(key_id, str(exc))
    if scope.cancelled_caught:
        message = f"no answer within {timeout_s:g}s"
    ok = status is not None and 200 <= status < 300
    if status is not None and not ok:
        message = f"HTTP {status}"
    return KeyChecked(ts=now(), key_id=key_id, ok=ok, status=status, message=message)


class KeyChecker:
    def __init__(
        self,
        health: ModelHealth,
        upstream: Upstream,
        log: LogWriter,
        now: Callable[[], float],
        *,
        interval_s: float = 300.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._health = health
        self._upstream = upstream
        self._log = log
        self._now = now
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._rounds = self._checks = self._restored = 0

    def statistics(self) -> KeyCheckerStatistics:
        return KeyCheckerStatistics(self._rounds, self._checks, self._restored)

    async def run(self, *, task_status: trio.TaskStatus[KeyChecker] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            await trio.sleep(self._interval_s)
            await self.check_round()

    async def check_now(self, platform: str, key_id: str) -> KeyChecked:
        """One key's check, made at once (an operator asked); the caller records it."""
        self._checks += 1
        return await check_key(self._upstream, platform, key_id, self._now, self._timeout_s)

    async def check_round(self) -> list[KeyChecked]:
        """Check every key that is invalid or cooling, concurrently; log and return the results."""
        self._rounds += 1
        due = [v for v in await self._health.keys() if needs_check(v)]
        results: list[KeyChecked] = []

        async def one(view: KeyView) -> None:
            result = await check_key(
                self._upstream, view.info.platform, view.info.key_id, self._now, self._timeout_s
            )
            results.append(result)
            if result.ok and view.info.status == "invalid":
                self._restored += 1
            await self._log.append_durable(result)

        async with trio.open_nursery() as nursery:
            for view in due:
                nursery.start_soon(one, view)
        self._checks += len(results)
        return results
