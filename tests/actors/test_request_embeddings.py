"""The request runner with an embeddings request (`protocol="embeddings"`): one family's models named,
the chain off, no session (not even with a session header: embeddings are no conversation), and an answer
judged as an embeddings list; a stall or a bad answer falls over within the family."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors.clock import WallClock
from actors.log_writer import LogWriter
from actors.model_health import ModelHealth
from actors.request import ChatRequest, Deadlines, RequestActor
from actors.session import SessionActor
from events.attempts import Completion, Failure
from events.catalog import CatalogModel
from events.policy import RoutingPolicy
from events.store import MemoryStore
from events.types import AttemptFailed, AttemptStarted, KeyAdded, RequestReceived, RouteDecided
from events.view import RoutingView

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakes.py, beside this file
from fakes import FOREVER, FakeUpstream, Reply, json_reply

A = CatalogModel("a", "bge", "balanced", False, True, None, 1, 1, task="embedding", family="bge")
B = CatalogModel("b", "bge-b", "balanced", False, True, None, 2, 1, task="embedding", family="bge")
CHAT = CatalogModel("a", "chat", "balanced", True, True, None, 3, 1)
DEADLINES = Deadlines(first_byte_s=10.0, stall_s=10.0, keepalive_s=5.0)


def vectors(*values: float) -> Reply:
    data = [{"object": "embedding", "index": i, "embedding": [v, v]} for i, v in enumerate(values)]
    return json_reply({"object": "list", "data": data, "usage": {"prompt_tokens": 4, "total_tokens": 4}})


@dataclasses.dataclass
class Run:
    store: MemoryStore
    log: LogWriter
    actor: RequestActor
    upstream: FakeUpstream

    async def events(self, cls: type[Any]) -> list[Any]:
        """The request's events of `cls`, once everything queued is committed (a durable append commits
        what was queued before it)."""
        await self.log.append_durable(
            RequestReceived(ts=0.0, model="-", stream=False, messages=0, est_input_tokens=0)
        )
        return [e for _, e in self.store.read_after(0) if isinstance(e, cls) and e.request_id == "r1"]


@asynccontextmanager
async def running(scripts: dict[str, Reply | Sequence[Reply]]) -> AsyncIterator[Run]:
    store = MemoryStore()
    log = LogWriter(store)
    clock = WallClock()
    view = RoutingView((A, B, CHAT), RoutingPolicy())
    health = ModelHealth(view, log, clock.now)
    sessions = SessionActor(log, view.session_policy, clock.now)
    upstream = FakeUpstream(scripts)
    actor = RequestActor(
        log=log,
        health=health,
        sessions=sessions,
        upstream=upstream,
        deadlines=DEADLINES,
        max_attempts=5,
        now=clock.now,
    )
    async with trio.open_nursery() as outer:
        await outer.start(log.run)
        async with trio.open_nursery() as inner:
            for start in (health.run, sessions.run, actor.run):
                await inner.start(start)
            for key_id, platform in (("ka", "a"), ("kb", "b")):
                await log.append_durable(
                    KeyAdded(ts=clock.now(), key_id=key_id, platform=platform, label=key_id, source="config")
                )
            yield Run(store, log, actor, upstream)
            inner.cancel_scope.cancel()
        log.close()


def request(*refs: str, inputs: Sequence[str] = ("x", "y"), **kw: Any) -> ChatRequest:
    body = {"model": "bge", "input": list(inputs)}
    return ChatRequest("r1", body, refs, False, 5, use_chain=False, protocol="embeddings", **kw)


async def test_an_embeddings_request_has_no_session_even_with_a_session_header(autojump_clock: Any) -> None:
    async with running({"a/bge": vectors(0.1, 0.2)}) as run:
        result = await run.actor.complete(request("a/bge", "b/bge-b", session_header="s-1"))
        assert isinstance(result, Completion) and result.routed_via == "a/bge"
        (exchange,) = run.upstream.calls()
        (received,) = await run.events(RequestReceived)
        (decided,) = await run.events(RouteDecided)
        (started,) = await run.events(AttemptStarted)
    assert exchange.call.operation == "embeddings" and exchange.call.body == {
        "model": "bge",
        "input": ["x", "y"],
    }
    assert received.protocol == "embeddings" and received.messages == 0
    assert decided.input.task == "embedding" and decided.input.session is None and not decided.input.use_pin
    assert decided.input.reserve_tokens == 0  # nothing is generated
    assert started.session is None
    assert [d["embedding"] for d in msgspec.json.decode(result.body)["data"]] == [[0.1, 0.1], [0.2, 0.2]]


async def test_a_stall_falls_over_within_the_family(autojump_clock: Any) -> None:
    async with running({"a/bge": Reply(before=(FOREVER,)), "b/bge-b": vectors(0.3, 0.4)}) as run:
        result = await run.actor.complete(request("a/bge", "b/bge-b"))
    assert isinstance(result, Completion) and result.routed_via == "b/bge-b" and result.attempts == 2


async def test_an_answer_short_of_vectors_falls_over_within_the_family(autojump_clock: Any) -> None:
    async with running({"a/bge": vectors(0.1), "b/bge-b": vectors(0.3, 0.4)}) as run:
        result = await run.actor.complete(request("a/bge", "b/bge-b"))
        (failed,) = await run.events(AttemptFailed)
    assert isinstance(result, Completion) and result.routed_via == "b/bge-b" and result.attempts == 2
    assert (failed.platform, failed.kind) == ("a", "server_error")
    assert failed.message == "the provider's answer has 1 embeddings for 2 inputs"


async def test_a_chat_model_named_by_an_embeddings_request_is_a_400_without_a_call(
    autojump_clock: Any,
) -> None:
    async with running({}) as run:
        result = await run.actor.complete(request("a/chat"))
    assert isinstance(result, Failure) and result.status == 400
    assert result.message == "'a/chat' is a chat model, not an embedding model."
