"""The model-health actor, fed by a log writer: asks see every event committed before them, and its views
(models, keys, statistics) follow the projections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from actors.clock import WallClock
from actors.log_writer import LogWriter
from actors.model_health import KeyView, ModelAvailability, ModelHealth, ModelHealthStatistics
from events.projections import KeyHealth, KeyInfo, ModelOverrides
from events.routing import Catalog, CatalogModel, Exclusion, UnknownModel
from events.store import MemoryStore
from events.types import (
    AttemptFailed,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    ModelUpdated,
    RequestReceived,
)

BIG = CatalogModel("groq", "llama-70b", "balanced", True, True, 128_000, 1, 5)
SMALL = CatalogModel("groq", "llama-8b", "fast", True, True, 8_000, 5, 1)
FLASH = CatalogModel("gemini", "flash", "balanced", True, True, None, 3, 3)
OFF = CatalogModel("cerebras", "qwen", "balanced", True, False, None, 2, 2)
MODELS = (BIG, SMALL, FLASH, OFF)


@dataclass
class Gateway:
    store: MemoryStore
    log: LogWriter
    health: ModelHealth
    now: Callable[[], float]


@asynccontextmanager
async def running(
    keys: Sequence[tuple[str, str]] = (("g1", "groq"), ("g2", "groq")),
    models: Sequence[CatalogModel] = MODELS,
    now: Callable[[], float] | None = None,
) -> AsyncIterator[Gateway]:
    """A log writer and a model-health actor on a memory store, with `keys` added (durably)."""
    store = MemoryStore()
    log = LogWriter(store)
    clock = now or WallClock().now
    health = ModelHealth(KeyHealth(rate_limit_cooldown_s=60), Catalog(models, ModelOverrides()), log, clock)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await nursery.start(health.run)
            for key_id, platform in keys:
                await log.append_durable(
                    KeyAdded(ts=clock(), key_id=key_id, platform=platform, label=key_id, source="config")
                )
            yield Gateway(store, log, health, clock)
            nursery.cancel_scope.cancel()


def rate_limited(key_id: str, model: CatalogModel, ts: float, wait: float | None) -> AttemptFailed:
    return AttemptFailed(
        ts=ts,
        attempt=1,
        platform=model.platform,
        model=model.id,
        key_id=key_id,
        kind="rate_limited",
        status=429,
        retry_after_s=wait,
    )


async def test_a_durable_invalidation_is_seen_by_the_next_plan(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        plan = await gw.health.plan(["groq/llama-70b"], 10, use_chain=False)
        assert set(plan.candidates[0].keys) == {"g1", "g2"}

        await gw.log.append_durable(KeyInvalidated(ts=gw.now(), key_id="g1", status=401, message="bad"))
        plan = await gw.health.plan(["groq/llama-70b"], 10, use_chain=False)
        assert plan.candidates[0].keys == ("g2",)

        await gw.log.append_durable(KeyInvalidated(ts=gw.now(), key_id="g2", status=403))
        plan = await gw.health.plan(["groq/llama-70b"], 10, use_chain=False)
        assert plan.candidates == ()
        assert plan.excluded == (Exclusion(BIG.ref, "key g1 invalid; key g2 invalid", None),)


async def test_every_ask_sees_the_admin_change_committed_just_before_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running(keys=[("g1", "groq")]) as gw:
        for i in range(30):
            if i % 2:
                await gw.log.append_durable(KeyEnabled(ts=gw.now(), key_id="g1"))
            else:
                await gw.log.append_durable(KeyDisabled(ts=gw.now(), key_id="g1", reason="ops"))
            # Telemetry in between does not get in the way of the ordering.
            await gw.log.append(
                RequestReceived(ts=gw.now(), model="auto", stream=False, messages=1, est_input_tokens=1)
            )
            plan = await gw.health.plan(["groq/llama-8b"], 1, use_chain=False)
            assert bool(plan.candidates) == bool(i % 2)


async def test_a_durably_disabled_model_is_unknown_to_the_next_plan(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        assert (await gw.health.plan(["llama-8b"], 1)).candidates[0].model == SMALL
        await gw.log.append_durable(
            ModelUpdated(ts=gw.now(), platform="groq", model="llama-8b", enabled=False)
        )
        with pytest.raises(UnknownModel, match="llama-8b"):
            await gw.health.plan(["llama-8b"], 1)
        # The actor survives a failed ask and keeps answering.
        plan = await gw.health.plan(["auto"], 1)
        assert [c.model for c in plan.candidates] == [BIG]
        assert [e.ref for e in plan.excluded] == [FLASH.ref]  # no gemini key


async def test_plans_rotate_keys_across_asks(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        firsts = [
            (await gw.health.plan(["groq/llama-70b"], 1, use_chain=False)).candidates[0].keys
            for _ in range(3)
        ]
        assert firsts == [("g1", "g2"), ("g2", "g1"), ("g1", "g2")]


async def test_cooling_follows_the_trio_clock(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        for key_id in ("g1", "g2"):
            await gw.log.append(rate_limited(key_id, BIG, gw.now(), 30.0))
        start = gw.now()
        await trio.sleep(1)  # telemetry: committed within one batch window
        plan = await gw.health.plan(["groq/llama-70b"], 1, use_chain=False)
        assert plan.candidates == ()
        (excluded,) = plan.excluded
        assert excluded.until == pytest.approx(start + 30)
        await trio.sleep(29.5)
        plan = await gw.health.plan(["groq/llama-70b"], 1, use_chain=False)
        assert len(plan.candidates) == 1


async def test_models_counts_usable_keys(autojump_clock: trio.abc.Clock) -> None:
    now = 5_000.0
    keys = [("g1", "groq"), ("g2", "groq"), ("g3", "groq"), ("c1", "cerebras")]
    async with running(keys=keys, now=lambda: now) as gw:
        await gw.log.append_durable(KeyInvalidated(ts=now, key_id="g3", status=401))
        await gw.log.append_durable(rate_limited("g1", BIG, now, 10.0))
        availability = await gw.health.models()
        assert availability == [
            ModelAvailability(BIG, 1),
            ModelAvailability(SMALL, 2),
            ModelAvailability(FLASH, 0),  # no key for gemini
            ModelAvailability(OFF, 1),  # disabled models are listed with their keys
        ]


async def test_keys_shows_status_and_cooling_per_model(autojump_clock: trio.abc.Clock) -> None:
    now = 5_000.0
    async with running(keys=[("g1", "groq"), ("g2", "groq"), ("gm1", "gemini")], now=lambda: now) as gw:
        await gw.log.append_durable(rate_limited("g1", BIG, now - 5, 20.0))
        await gw.log.append_durable(rate_limited("g1", SMALL, now - 50, 20.0))  # already over
        await gw.log.append_durable(rate_limited("gm1", FLASH, now, None))  # the default: 60 s
        await gw.log.append_durable(KeyDisabled(ts=now, key_id="g2", reason="spare"))
        views = await gw.health.keys()
        assert views == [
            KeyView(KeyInfo("g1", "groq", "g1", "config"), ((BIG.id, now + 15),)),
            KeyView(KeyInfo("g2", "groq", "g2", "config", "disabled", "spare"), ()),
            KeyView(KeyInfo("gm1", "gemini", "gm1", "config"), ((FLASH.id, now + 60),)),
        ]


async def test_statistics(autojump_clock: trio.abc.Clock) -> None:
    keys = [("g1", "groq"), ("g2", "groq"), ("g3", "groq"), ("gm1", "gemini")]
    async with running(keys=keys) as gw:
        assert gw.health.statistics() == ModelHealthStatistics(
            keys=4, keys_ok=4, keys_invalid=0, keys_disabled=0, models=4, events_applied=4, plans=0
        )
        await gw.log.append_durable(KeyInvalidated(ts=gw.now(), key_id="g1", status=401))
        await gw.log.append_durable(KeyDisabled(ts=gw.now(), key_id="g2"))
        await gw.health.plan(["auto"], 1)
        with pytest.raises(UnknownModel):
            await gw.health.plan(["nope"], 1)
        await gw.health.models()
        await gw.health.keys()
        assert gw.health.statistics() == ModelHealthStatistics(
            keys=4, keys_ok=2, keys_invalid=1, keys_disabled=1, models=4, events_applied=6, plans=2
        )


async def test_events_from_before_the_actor_came_up_are_not_its_business(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The supervisor rebuilds projections from the log first; the actor folds what is published after that.
    store = MemoryStore()
    store.append([KeyAdded(ts=0, key_id="old", platform="groq", label="old", source="env")])
    log = LogWriter(store)
    health = KeyHealth()
    actor = ModelHealth(health, Catalog(MODELS), log, lambda: 0.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await nursery.start(actor.run)
            await log.append_durable(KeyAdded(ts=0, key_id="new", platform="groq", label="new", source="env"))
            assert [v.info.key_id for v in await actor.keys()] == ["new"]
            assert actor.statistics().events_applied == 1
            nursery.cancel_scope.cancel()
