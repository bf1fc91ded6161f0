"""The model-health actor, fed by a log writer: asks see every event committed before them, decisions
record the view position they were made on (so a replay reproduces them), and its views (models, keys,
statistics) follow the projections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from actors.clock import WallClock
from actors.log_writer import LogWriter
from actors.model_health import Decided, KeyView, ModelAvailability, ModelHealth, ModelHealthStatistics
from events.catalog import CatalogModel
from events.decide import UnknownModel
from events.key_health import KeyInfo
from events.policy import RoutingPolicy
from events.replay import replay, select_decisions
from events.store import MemoryStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Excluded,
    ExclusionCode,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    ModelUpdated,
    RequestReceived,
    RouteDecided,
    RouteInput,
)
from events.view import RoutingView, rebuild

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


def new_view(models: Sequence[CatalogModel] = MODELS) -> RoutingView:
    return RoutingView(models, RoutingPolicy(rate_limit_cooldown_s=60))


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
    health = ModelHealth(new_view(models), log, clock)
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


def only(*names: str) -> RouteInput:
    return RouteInput(mode="auto", requested=names, use_chain=False)


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


async def test_a_durable_invalidation_is_seen_by_the_next_decision(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        keys = {
            (await gw.health.decide(only("groq/llama-70b"), seed)).decision.chosen_key for seed in range(20)
        }
        assert keys == {"g1", "g2"}

        await gw.log.append_durable(KeyInvalidated(ts=gw.now(), key_id="g1", status=401, message="bad"))
        for seed in range(20):
            decision = (await gw.health.decide(only("groq/llama-70b"), seed)).decision
            assert decision.chosen_key == "g2"
            assert (
                Excluded(ref=BIG.ref, reason="key g1 invalid", code=ExclusionCode.KEY_UNUSABLE)
                in decision.excluded
            )

        await gw.log.append_durable(KeyInvalidated(ts=gw.now(), key_id="g2", status=403))
        decision = (await gw.health.decide(only("groq/llama-70b"))).decision
        assert (decision.chosen, decision.chosen_key) == (None, None)
        assert decision.excluded == (
            Excluded(ref=BIG.ref, reason="key g1 invalid", code=ExclusionCode.KEY_UNUSABLE),
            Excluded(ref=BIG.ref, reason="key g2 invalid", code=ExclusionCode.KEY_UNUSABLE),
        )


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
            decided = await gw.health.decide(only("groq/llama-8b"), i)
            assert (decided.decision.chosen is not None) == bool(i % 2)


async def test_a_decision_records_its_seed_time_and_view_position(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        seq = await gw.log.append_durable(
            KeyAdded(ts=gw.now(), key_id="gm1", platform="gemini", label="gm1", source="env")
        )
        await trio.sleep(5)
        before = gw.now()
        decided = await gw.health.decide(RouteInput(mode="auto", requested=("auto",)), 1234)
        assert isinstance(decided, Decided)
        assert (decided.seed, decided.view_seq, decided.now) == (1234, seq, before)
        again = await gw.health.decide(RouteInput(mode="auto", requested=("auto",)), 1234)
        assert again.decision == decided.decision  # same view, time and seed
        unseeded = {
            (await gw.health.decide(RouteInput(mode="auto", requested=("auto",)))).seed for _ in range(5)
        }
        assert len(unseeded) == 5


async def test_a_durably_disabled_model_is_unknown_to_the_next_decision(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as gw:
        assert (await gw.health.decide(only("llama-8b"))).decision.chosen == SMALL
        await gw.log.append_durable(
            ModelUpdated(ts=gw.now(), platform="groq", model="llama-8b", enabled=False)
        )
        with pytest.raises(UnknownModel, match="llama-8b"):
            await gw.health.decide(only("llama-8b"))
        # The actor survives a failed ask and keeps answering.
        decision = (await gw.health.decide(RouteInput(mode="auto", requested=("auto",)))).decision
        assert decision.chosen == BIG
        assert decision.no_key_models == 1  # gemini/flash: no gemini key


async def test_cooling_follows_the_trio_clock(autojump_clock: trio.abc.Clock) -> None:
    async with running() as gw:
        start = gw.now()
        for key_id in ("g1", "g2"):
            await gw.log.append(rate_limited(key_id, BIG, start, 30.0))
        await trio.sleep(1)  # telemetry: committed within one batch window
        decision = (await gw.health.decide(only("groq/llama-70b"))).decision
        assert decision.chosen is None
        assert [e.until for e in decision.excluded] == [pytest.approx(start + 30)] * 2
        await trio.sleep(29.5)
        assert (await gw.health.decide(only("groq/llama-70b"))).decision.chosen == BIG


async def test_models_counts_usable_keys(autojump_clock: trio.abc.Clock) -> None:
    now = 5_000.0
    keys = [("g1", "groq"), ("g2", "groq"), ("g3", "groq"), ("c1", "cerebras")]
    async with running(keys=keys, now=lambda: now) as gw:
        await gw.log.append_durable(KeyInvalidated(ts=now, key_id="g3", status=401))
        await gw.log.append_durable(rate_limited("g1", BIG, now, 10.0))
        assert await gw.health.models() == [
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
        await gw.log.append_durable(
            AttemptSucceeded(
                ts=now,
                attempt=1,
                platform="groq",
                model=SMALL.id,
                key_id="g2",
                latency_ms=1,
                ttfb_ms=1,
                input_tokens=1,
                output_tokens=1,
                exhausted_for_s=7.0,
            )
        )
        assert await gw.health.keys() == [
            KeyView(KeyInfo("g1", "groq", "g1", "config"), ((BIG.id, now + 15),)),
            KeyView(KeyInfo("g2", "groq", "g2", "config", "disabled", "spare"), ((SMALL.id, now + 7),)),
            KeyView(KeyInfo("gm1", "gemini", "gm1", "config"), ((FLASH.id, now + 60),)),
        ]


async def test_statistics(autojump_clock: trio.abc.Clock) -> None:
    keys = [("g1", "groq"), ("g2", "groq"), ("g3", "groq"), ("gm1", "gemini")]
    async with running(keys=keys) as gw:
        assert gw.health.statistics() == ModelHealthStatistics(
            keys=4,
            keys_ok=4,
            keys_invalid=0,
            keys_disabled=0,
            models=4,
            events_applied=4,
            decisions=0,
            view_seq=4,
        )
        await gw.log.append_durable(KeyInvalidated(ts=gw.now(), key_id="g1", status=401))
        await gw.log.append_durable(KeyDisabled(ts=gw.now(), key_id="g2"))
        await gw.health.decide(RouteInput(mode="auto", requested=("auto",)))
        with pytest.raises(UnknownModel):
            await gw.health.decide(only("nope"))
        await gw.health.models()
        await gw.health.keys()
        assert gw.health.statistics() == ModelHealthStatistics(
            keys=4,
            keys_ok=2,
            keys_invalid=1,
            keys_disabled=1,
            models=4,
            events_applied=6,
            decisions=2,
            view_seq=6,
        )


async def test_the_actor_folds_what_is_published_after_the_rebuild(autojump_clock: trio.abc.Clock) -> None:
    # The supervisor rebuilds the view from the log first; the actor folds what is published after that.
    store = MemoryStore()
    store.append([KeyAdded(ts=0, key_id="old", platform="groq", label="old", source="env")])
    view = new_view()
    assert rebuild(store, view) == 1
    log = LogWriter(store)
    actor = ModelHealth(view, log, lambda: 0.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await nursery.start(actor.run)
            await log.append_durable(KeyAdded(ts=0, key_id="new", platform="groq", label="new", source="env"))
            assert [v.info.key_id for v in await actor.keys()] == ["old", "new"]
            assert actor.statistics().events_applied == 1
            assert (await actor.decide(only("llama-70b"))).view_seq == 2
            nursery.cancel_scope.cancel()


async def test_a_replay_reproduces_the_actors_decisions(autojump_clock: trio.abc.Clock) -> None:
    """Decisions taken while telemetry is still in the log writer's batch record the position the actor had
    folded, not the log's end; a replay rebuilds exactly that view."""
    keys = [("g1", "groq"), ("g2", "groq"), ("gm1", "gemini")]
    async with running(keys=keys) as gw:
        for i in range(40):
            mode = ("auto", "auto-fast", "flash")[i % 3]
            route = RouteInput(mode="auto", requested=(mode,), reserve_tokens=100)
            decided = await gw.health.decide(route, seed=i)
            d = decided.decision
            await gw.log.append(
                d.record(
                    ts=gw.now(),
                    request_id=f"r{i}",
                    attempt=1,
                    seed=decided.seed,
                    view_seq=decided.view_seq,
                    now=decided.now,
                    route=route,
                )
            )
            if d.chosen is None or d.chosen_key is None:
                continue
            base = {
                "request_id": f"r{i}",
                "attempt": 1,
                "platform": d.chosen.platform,
                "model": d.chosen.id,
                "key_id": d.chosen_key,
            }
            await gw.log.append(AttemptStarted(ts=gw.now(), **base))  # type: ignore[arg-type]
            if i % 4 == 0:
                await gw.log.append(
                    AttemptFailed(ts=gw.now(), kind="rate_limited", retry_after_s=3.0, **base)
                )  # type: ignore[arg-type]
            elif i % 4 == 1:
                await gw.log.append(AttemptFailed(ts=gw.now(), kind="server_error", **base))  # type: ignore[arg-type]
            else:
                await gw.log.append(
                    AttemptSucceeded(
                        ts=gw.now(), latency_ms=900.0, ttfb_ms=100.0, input_tokens=5, output_tokens=50, **base
                    )
                )  # type: ignore[arg-type]
            if i % 7 == 0:
                await trio.sleep(1.0)  # time passes: cooldowns expire, batches commit
        await trio.sleep(1)
    targets = select_decisions(gw.store)
    assert len(targets) == 40
    # Some decisions were made while events appended before them were not folded yet.
    log = gw.store.read_after(0)
    assert any(not isinstance(e, RouteDecided) for s, d in targets for seq, e in log if d.view_seq < seq < s)
    results = list(replay(gw.store, new_view(), targets))
    assert [r.matches for r in results] == [True] * 40
