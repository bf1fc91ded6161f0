"""A gateway from a config text of the test's own making, for what `harness.config_text` cannot say.

`harness.running_gateway` writes one fixed config (one platform, `[gateway] api_keys` always set). Tests
of several platforms, per-model context windows or generated gateway keys need their own TOML; the upstream
URL is only known once the fault-injecting upstream is listening, so the test passes a function of it.
"""

from __future__ import annotations

from pathlib import Path

import trio
from harness import ConfigFor, Gateway, gateway_from  # noqa: F401 - gateway_from: re-exported for the tests

from events.sqlite_store import SqliteStore
from events.types import AnyEvent
from service.server import DB_NAME


def platform_toml(name: str, base_url: str, keys: tuple[str, ...]) -> str:
    key_list = ", ".join(f'"{k}"' for k in keys)
    return (
        f'\n[[platforms]]\nname = "{name}"\nkind = "openai"\nbase_url = "{base_url}"\nkeys = [{key_list}]\n'
    )


def toml_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def model_toml(platform: str, model_id: str, rank: int, **fields: object) -> str:
    text = f'\n[[models]]\nplatform = "{platform}"\nid = "{model_id}"\nintelligence_rank = {rank}\n'
    for name, value in fields.items():
        text += f"{name} = {toml_value(value)}\n"
    return text


def server_toml(data_dir: Path, *, gateway_key: str | None, extra: str = "") -> str:
    """`[server]`, `[gateway]` (left out when `gateway_key` is None) and the catalog switched off."""
    text = f'[server]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "{data_dir}"\n'
    if gateway_key is not None:
        text += f'[gateway]\napi_keys = ["{gateway_key}"]\n'
    return text + "[catalog]\nbuiltin = false\n" + extra


def read_log(data_dir: Path) -> list[AnyEvent]:
    """Every event in the gateway's log, in order (open after the gateway stopped, or alongside it)."""
    store = SqliteStore(data_dir / DB_NAME)
    try:
        return [event for _, event in store.read_after(0)]
    finally:
        store.close()


async def settled(gw: Gateway) -> None:
    """Wait until every event this gateway appended is committed and folded by the model-health actor.

    Request telemetry is appended without waiting (DESIGN.md 2: it may lag by one batch window), so a test
    that checks what a failure did to the projections waits for this first. The writer takes events off
    its inbox before the batch window closes, so "nothing queued" alone is not enough: the counts must
    also hold still for several batch windows. Bounded by two seconds.
    """
    log, health = gw.runtime.log, gw.runtime.health

    def snapshot() -> tuple[int, int, int]:
        written = log.statistics()
        return written.queued, written.events_written, health.statistics().events_applied

    with trio.fail_after(2):
        before = snapshot()
        while True:
            await trio.sleep(0.01)
            now = snapshot()
            queued, written, applied = now
            if now == before and queued == 0 and applied >= written:
                return
            before = now
