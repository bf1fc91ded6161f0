"""The request actor against a scripted in-process upstream (tests/actors/fakes.py): the attempt loop,
the first-byte and stall deadlines, the commit contract of streams, client disconnects, and what each of
them leaves in the log.

Every test runs on trio's MockClock (`autojump_clock`): a 5 s stall takes no real time, and every time
asserted below is virtual. Each test goes through `running(...)`, whose teardown checks the invariants that
must hold after any request: every AttemptStarted has exactly one end event (so quota reservations and
in-flight entries are released), and the actor has no request or stream left open.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import trio
import trio.lowlevel

from actors.attempt import DRAIN_S, client_left
from actors.clock import WallClock
from actors.log_writer import LogWriter
from actors.model_health import ModelHealth
from actors.request import ChatRequest, Deadlines, RequestActor, RequestStatistics
from actors.session import SessionActor
from actors.sse import error_frame
from actors.sse import frame as sse_frame
from actors.stream import CONSUMER_GONE_S, Routed, StreamEnd, StreamHandle
from events.attempts import Completion, Failure
from events.attempts import final_failure as _final_failure
from events.catalog import CatalogModel
from events.frames import Chunk
from events.policy import RoutingPolicy
from events.store import MemoryStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ClientDisconnected,
    Event,
    Excluded,
    KeyAdded,
    KeyChecked,
    KeyInvalidated,
    RequestCompleted,
    RequestReceived,
    RouteDecided,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
    StreamStalled,
)
from events.view import POOL_REASON, RoutingView, SessionPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakes.py, beside this file
from fakes import (
    DONE_FRAME,
    FOREVER,
    ROLE,
    Broken,
    FakeUpstream,
    Reply,
    answer,
    chunk,
    completion,
    error_reply,
    frame,
    json_reply,
    sse_reply,
)

E = TypeVar("E", bound=Event)


def _model(platform: str, model_id: str, *, enabled: bool = True) -> CatalogModel:
    return CatalogModel(platform, model_id, "balanced", True, enabled, 128_000, 1, 1)


# One key per platform, so "the next candidate" is the next model named by the request, in order.
MODELS = (
    _model("local", "a"),
    _model("local", "b"),
    _model("local", "c"),
    _model("alt", "x"),
    _model("local", "off", enabled=False),
)
KEYS = (("k1", "local"), ("k2", "alt"))
DEADLINES = Deadlines(first_byte_s=5, stall_s=5, keepalive_s=2)
MESSAGES = [{"role": "user", "content": "hi"}]
EST_TOKENS = 10

OK_BODY = json_reply(completion("Hello from the fallback."))
OK_STREAM = sse_reply(*answer("Hello", " from", " the fallback."))


# ---- the gateway under test ------------------------------------------------------------------------------


@dataclass
class Gateway:
    store: MemoryStore
    log: LogWriter
    view: RoutingView
    health: ModelHealth
    actor: RequestActor
    upstream: FakeUpstream
    now: Any
    _ids: int = field(default=0)

    def request(
        self, *models: str, stream: bool = False, use_chain: bool = False, **body: Any
    ) -> ChatRequest:
        self._ids += 1
        return ChatRequest(
            request_id=f"r{self._ids}",
            body={"messages": MESSAGES, **body},
            requested=models,
            stream=stream,
            est_tokens=EST_TOKENS,
            use_chain=use_chain,
        )

    async def settle(self) -> None:
        """Wait until every event queued so far is committed and folded into the view (no virtual time
        passes but the log writer's batch window): a durable append commits everything queued before it,
        and the model-health actor folds a batch before it answers an ask sent after the commit."""
        await self.log.append_durable(
            RequestReceived(ts=self.now(), model="-", stream=False, messages=0, est_input_tokens=0)
        )
        await self.health.models()

    def events(self, kind: type[E], request_id: str | None = None) -> list[E]:
        return [
            e
            for _, e in self.store.read_after(0)
            if isinstance(e, kind) and (request_id is None or e.request_id == request_id)
        ]

    def kinds(self, request_id: str) -> list[str]:
        """The event types of one request, in log order."""
        return [type(e).__name__ for _, e in self.store.read_request(request_id)]


def assert_every_attempt_ended(store: MemoryStore) -> int:
    """Every AttemptStarted has exactly one end event (AttemptSucceeded or AttemptFailed) after it, for the
    same model and key; no end event lacks its start. Returns how many attempts there were."""
    starts: dict[tuple[str | None, int], tuple[int, AttemptStarted]] = {}
    ends: dict[tuple[str | None, int], list[Event]] = {}
    for seq, event in store.read_after(0):
        if isinstance(event, AttemptStarted):
            key = (event.request_id, event.attempt)
            assert key not in starts, f"attempt {key} started twice"
            starts[key] = (seq, event)
        elif isinstance(event, AttemptSucceeded | AttemptFailed):
            key = (event.request_id, event.attempt)
            assert key in starts and starts[key][0] < seq, (
                f"{type(event).__name__} {key} has no start before it"
            )
            started = starts[key][1]
            assert (event.platform, event.model, event.key_id) == (
                started.platform,
                started.model,
                started.key_id,
            )
            ends.setdefault(key, []).append(event)
    for key in starts:
        assert len(ends.get(key, ())) == 1, (
            f"attempt {key} has {len(ends.get(key, ()))} end events: {ends.get(key)}"
        )
    return len(starts)


def assert_nothing_held(gw: Gateway) -> None:
    """The view agrees: no attempt in flight, no quota reservation left."""
    assert gw.view.quotas.in_flight() == 0
    assert gw.view.in_flight.count() == 0
    now = gw.now()
    for started in gw.events(AttemptStarted):
        usage = gw.view.quotas.usage(started.key_id, f"{started.platform}/{started.model}", now)
        assert usage.reserved_tokens == 0


@asynccontextmanager
async def running(
    scripts: Mapping[str, Reply | Sequence[Reply]],
    *,
    max_attempts: int = 5,
    keys: Sequence[tuple[str, str]] = KEYS,
    start_actor: bool = True,
    session_policy: SessionPolicy | None = None,
) -> AsyncIterator[Gateway]:
    """A log writer on a MemoryStore, a model-health actor on a RoutingView of MODELS, `keys` added durably,
    and a request actor on a FakeUpstream with `scripts` (started unless `start_actor` is False: then the
    test runs `gw.actor.run` in a nursery of its own). Shuts down like the supervisor: actors first, then
    the log writer commits what is left."""
    store = MemoryStore()
    log = LogWriter(store)
    clock = WallClock()
    view = RoutingView(MODELS, RoutingPolicy(), session_policy=session_policy)
    health = ModelHealth(view, log, clock.now)
    upstream = FakeUpstream(scripts)
    sessions = SessionActor(log, view.session_policy, clock.now)
    actor = RequestActor(
        log=log,
        health=health,
        sessions=sessions,
        upstream=upstream,
        deadlines=DEADLINES,
        max_attempts=max_attempts,
        now=clock.now,
    )
    gw = Gateway(store, log, view, health, actor, upstream, clock.now)
    with trio.fail_after(600):
        async with trio.open_nursery() as outer:
            await outer.start(log.run)
            async with trio.open_nursery() as inner:
                await inner.start(health.run)
                await inner.start(sessions.run)
                if start_actor:
                    await inner.start(actor.run)
                for key_id, platform in keys:
                    await log.append_durable(
                        KeyAdded(
                            ts=clock.now(), key_id=key_id, platform=platform, label=key_id, source="config"
                        )
                    )
                yield gw
                await gw.settle()
                assert_every_attempt_ended(store)
                assert_nothing_held(gw)
                stats = actor.statistics()
                assert (stats.in_flight, stats.streams_open) == (0, 0)
                inner.cancel_scope.cancel()
            log.close()


# ---- helpers ---------------------------------------------------------------------------------------------


def wire(item: Any) -> list[Any]:
    """A neutral stream item as the chat-completions edge writes it: chunks as SSE frames, the end as
    [DONE], a failure after commit as an error event and [DONE]; `Routed` and a failure before commit stay
    objects (they become headers and a status)."""
    if isinstance(item, Chunk):
        return [sse_frame(item.raw)]
    if isinstance(item, StreamEnd):
        return [DONE_FRAME]
    if isinstance(item, Failure) and item.after_content:
        return [error_frame(item.message, item.type, item.code), DONE_FRAME]
    if isinstance(item, bytes | Routed | Failure):
        return [item]
    raise AssertionError(f"not a stream item: {item!r}")


async def collect(handle: StreamHandle) -> list[tuple[float, Any]]:
    """Every item of a stream until its channel closes, as written on the wire (see `wire`), with the
    virtual time it arrived (from now)."""
    start = trio.current_time()
    return [(trio.current_time() - start, piece) async for item in handle.items for piece in wire(item)]


def items_of(timed: list[tuple[float, Any]]) -> list[Any]:
    return [item for _, item in timed]


def error_payloads(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        msgspec.json.decode(item[6:])["error"]
        for item in (piece for i in items for piece in wire(i))
        if isinstance(item, bytes) and item.startswith(b'data: {"error"')
    ]


def content_of(items: Sequence[Any]) -> str:
    text = ""
    for item in (piece for i in items for piece in wire(i)):
        if isinstance(item, bytes) and item.startswith(b"data: {") and not item.startswith(b'data: {"error"'):
            for choice in msgspec.json.decode(item[6:]).get("choices", ()):
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def answer_text(result: Completion) -> str:
    return msgspec.json.decode(result.body)["choices"][0]["message"]["content"]


def only(items: Sequence[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


async def wait_until_idle(actor: RequestActor, max_checkpoints: int = 1000) -> None:
    """Let every runnable task run (checkpoints only: no virtual time passes) until the actor has no
    request and no stream left."""
    for _ in range(max_checkpoints):
        stats = actor.statistics()
        if stats.in_flight == 0 and stats.streams_open == 0:
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError(f"the actor still holds work: {actor.statistics()}")


# ---- non-streaming ---------------------------------------------------------------------------------------


async def test_a_healthy_answer_is_returned_with_its_route(autojump_clock: trio.abc.Clock) -> None:
    async with running({"local/a": json_reply(completion("Hello"))}) as gw:
        req = gw.request("local/a", "local/b", temperature=0.5)
        start = trio.current_time()
        result = await gw.actor.complete(req)
        elapsed = trio.current_time() - start
        await gw.settle()

        assert isinstance(result, Completion)
        assert (result.routed_via, result.attempts) == ("local/a", 1)
        assert answer_text(result) == "Hello"
        assert elapsed == 0
        call = only(gw.upstream.calls()).call
        assert (call.platform, call.model, call.key_id, call.stream) == ("local", "a", "k1", False)
        assert call.body == {"messages": MESSAGES, "temperature": 0.5, "model": "a"}
        assert gw.kinds(req.request_id) == [
            "RequestReceived",
            "RouteDecided",
            "AttemptStarted",
            "AttemptSucceeded",
            "RequestCompleted",
        ]
        started = only(gw.events(AttemptStarted))
        assert started.reserved_tokens == EST_TOKENS + 1000  # estimated input + the default output reserve
        done = only(gw.events(RequestCompleted))
        assert (done.outcome, done.status, done.platform, done.model, done.attempts) == (
            "ok",
            200,
            "local",
            "a",
            1,
        )
        assert gw.actor.statistics() == RequestStatistics(
            in_flight=0, streams_open=0, requests=1, attempts=1, client_disconnects=0
        )


@pytest.mark.parametrize(
    ("reply", "kind", "status"),
    [
        pytest.param(error_reply(500), "server_error", 500, id="500"),
        pytest.param(error_reply(503), "server_error", 503, id="503"),
        pytest.param(error_reply(401, "invalid api key"), "auth", 401, id="401"),
        pytest.param(error_reply(429, headers={"retry-after": "7"}), "rate_limited", 429, id="429"),
        pytest.param(error_reply(404, "no such model"), "model_missing", 404, id="404"),
        pytest.param(
            json_reply({"error": {"message": "overloaded", "code": 503}}),
            "server_error",
            503,
            id="wrapped-200",
        ),
        pytest.param(json_reply({"object": "list", "data": []}), "server_error", 502, id="not-a-completion"),
        pytest.param(json_reply(completion("")), "empty", 200, id="empty"),
        pytest.param(json_reply(completion("Hel", finish="length")), "truncated", 200, id="truncated"),
        pytest.param(Reply(before=(Broken("connection refused"),)), "connect", None, id="connect-error"),
        pytest.param(
            Reply(body=(b'{"choices": [{"mess', Broken("connection reset"))),
            "connect",
            None,
            id="reset-in-body",
        ),
    ],
)
async def test_a_failure_before_an_answer_falls_over_to_the_next_model_at_once(
    autojump_clock: trio.abc.Clock, reply: Reply, kind: str, status: int | None
) -> None:
    # The fallback is on another platform, so even a 401 (which invalidates local's only key) falls over.
    async with running({"local/a": reply, "alt/x": OK_BODY}) as gw:
        req = gw.request("local/a", "alt/x")
        start = trio.current_time()
        result = await gw.actor.complete(req)
        elapsed = trio.current_time() - start
        await gw.settle()

        assert isinstance(result, Completion)
        assert (result.routed_via, result.attempts) == ("alt/x", 2)
        assert answer_text(result) == "Hello from the fallback."
        assert elapsed == pytest.approx(0, abs=1e-9)  # no sleeps, no backoff
        failed = only(gw.events(AttemptFailed))
        assert (failed.platform, failed.model, failed.key_id) == ("local", "a", "k1")
        assert (failed.kind, failed.status, failed.mid_stream) == (kind, status, False)
        succeeded = only(gw.events(AttemptSucceeded))
        assert (succeeded.model, succeeded.key_id, succeeded.attempt) == ("x", "k2", 2)
        assert not gw.events(StreamStalled)
        failed_call, fallback_call = gw.upstream.calls()
        assert failed_call.closed_at == start  # the failed attempt's connection was closed at once
        assert fallback_call.body_finished


async def test_a_429_records_its_retry_after_and_cools_the_key_for_that_model(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running({"local/a": error_reply(429, headers={"retry-after": "7"}), "local/b": OK_BODY}) as gw:
        result = await gw.actor.complete(gw.request("local/a", "local/b"))
        await gw.settle()

        assert isinstance(result, Completion) and result.routed_via == "local/b"
        assert only(gw.events(AttemptFailed)).retry_after_s == 7
        cooling = {view.info.key_id: dict(view.cooling) for view in await gw.health.keys()}
        assert cooling["k1"] == {"a": pytest.approx(gw.now() + 7, abs=0.1)}  # b, same key, is not cooling


@pytest.mark.parametrize(
    "silent",
    [
        pytest.param(Reply(before=(FOREVER,)), id="no-headers"),
        pytest.param(Reply(body=(FOREVER,)), id="no-body"),
    ],
)
async def test_no_first_byte_falls_over_after_exactly_first_byte_s(
    autojump_clock: trio.abc.Clock, silent: Reply
) -> None:
    async with running({"local/a": silent, "local/b": OK_BODY}) as gw:
        start = trio.current_time()
        result = await gw.actor.complete(gw.request("local/a", "local/b"))
        elapsed = trio.current_time() - start
        await gw.settle()

        assert isinstance(result, Completion) and result.routed_via == "local/b"
        assert elapsed == pytest.approx(DEADLINES.first_byte_s)
        stalled = only(gw.events(StreamStalled))
        assert (stalled.model, stalled.phase, stalled.silent_s) == ("a", "pre", DEADLINES.first_byte_s)
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.status) == ("stall_pre", None)
        assert "sent no first byte within 5s" in failed.message
        hung = gw.upstream.calls("local/a")[0]
        assert hung.cancelled and hung.closed_at == pytest.approx(start + DEADLINES.first_byte_s)


async def test_a_body_that_stops_after_some_bytes_falls_over_after_stall_s(
    autojump_clock: trio.abc.Clock,
) -> None:
    stops = Reply(body=(1.0, b'{"choices": [{"index": 0, ', FOREVER))
    async with running({"local/a": stops, "local/b": OK_BODY}) as gw:
        start = trio.current_time()
        result = await gw.actor.complete(gw.request("local/a", "local/b"))
        elapsed = trio.current_time() - start
        await gw.settle()

        assert isinstance(result, Completion) and result.routed_via == "local/b"
        assert elapsed == pytest.approx(1.0 + DEADLINES.stall_s)  # first byte at 1 s, then stall_s of silence
        stalled = only(gw.events(StreamStalled))
        assert stalled.silent_s == DEADLINES.stall_s
        # Nothing reached the client, so it is retried like a stall before the first byte.
        assert only(gw.events(AttemptFailed)).kind == "stall_pre"
        assert gw.upstream.calls("local/a")[0].cancelled


async def test_a_body_that_stops_after_some_bytes_is_not_described_as_sending_no_first_byte(
    autojump_clock: trio.abc.Clock,
) -> None:
    stops = Reply(body=(1.0, b'{"choices": [{"index": 0, ', FOREVER))
    async with running({"local/a": stops, "local/b": OK_BODY}) as gw:
        await gw.actor.complete(gw.request("local/a", "local/b"))
        await gw.settle()
        assert "no first byte" not in only(gw.events(AttemptFailed)).message


async def test_a_slow_body_that_keeps_sending_is_not_a_stall(autojump_clock: trio.abc.Clock) -> None:
    # A byte every 4 s for 20 s: longer than both deadlines in total, never silent for stall_s.
    body = json_reply(completion("Hello")).body[0]
    assert isinstance(body, bytes)
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)][:5]
    slow = Reply(body=(*(step for piece in pieces for step in (4.0, piece)), body[40:]))
    async with running({"local/a": slow}) as gw:
        start = trio.current_time()
        result = await gw.actor.complete(gw.request("local/a"))
        assert trio.current_time() - start == pytest.approx(20.0)
        assert isinstance(result, Completion) and answer_text(result) == "Hello"
        await gw.settle()
        assert not gw.events(StreamStalled)


async def test_an_auth_failure_invalidates_the_key_for_every_later_request(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running({"local/a": error_reply(401, "invalid api key"), "alt/x": OK_BODY}) as gw:
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        assert isinstance(result, Completion) and result.routed_via == "alt/x"
        await gw.settle()

        invalidated = only(gw.events(KeyInvalidated))
        assert (invalidated.key_id, invalidated.status, invalidated.message) == ("k1", 401, "invalid api key")
        assert gw.health.statistics().keys_invalid == 1

        # The next request for another model of that platform does not even try the key.
        later = await gw.actor.complete(gw.request("local/b"))
        assert isinstance(later, Failure)
        assert (later.status, later.code, later.attempts) == (503, "no_available_model", 0)
        assert "local/b: skipped, key k1 invalid" in later.message
        assert gw.upstream.calls("local/b") == []


async def test_when_every_model_fails_the_failure_is_a_502_listing_each_attempt(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running(
        {"local/a": error_reply(500, "boom"), "local/b": Reply(before=(Broken("refused"),))}
    ) as gw:
        req = gw.request("local/a", "local/b")
        result = await gw.actor.complete(req)
        await gw.settle()

        assert isinstance(result, Failure)
        assert (result.status, result.type, result.code, result.attempts) == (
            502,
            "upstream_error",
            "all_attempts_failed",
            2,
        )
        assert result.retry_after_s is None
        assert result.message.startswith("All 2 attempts failed: ")
        assert "local/a (key k1): server_error 500 boom" in result.message
        assert "local/b (key k1): connect refused" in result.message
        done = only(gw.events(RequestCompleted, req.request_id))
        assert (done.outcome, done.status, done.attempts) == ("error", 502, 2)
        assert [f.kind for f in gw.events(AttemptFailed)] == ["server_error", "connect"]


async def test_when_every_model_is_rate_limited_the_failure_is_a_429_with_the_soonest_retry(
    autojump_clock: trio.abc.Clock,
) -> None:
    scripts = {
        "local/a": error_reply(429, headers={"retry-after": "30"}),
        "local/b": error_reply(429, headers={"retry-after": "7"}),
    }
    async with running(scripts) as gw:
        result = await gw.actor.complete(gw.request("local/a", "local/b"))
        await gw.settle()

        assert isinstance(result, Failure)
        assert (result.status, result.type, result.code, result.attempts) == (
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            2,
        )
        assert result.retry_after_s == pytest.approx(7, abs=0.1)
        assert "Every candidate is rate-limited" in result.message


@pytest.mark.parametrize("name", ["local/nope", "nope", "local/off"])
async def test_an_unknown_or_disabled_model_is_a_404_without_any_upstream_call(
    autojump_clock: trio.abc.Clock, name: str
) -> None:
    async with running({}) as gw:
        req = gw.request(name)
        result = await gw.actor.complete(req)
        await gw.settle()

        assert isinstance(result, Failure)
        assert (result.status, result.type, result.code) == (404, "invalid_request_error", "model_not_found")
        assert f"'{name}'" in result.message
        assert gw.upstream.calls() == []
        assert gw.kinds(req.request_id) == ["RequestReceived", "RequestCompleted"]
        assert only(gw.events(RequestCompleted)).status == 404


async def test_max_attempts_bounds_the_number_of_upstream_calls(autojump_clock: trio.abc.Clock) -> None:
    scripts = {ref: error_reply(500) for ref in ("local/a", "local/b", "local/c")}
    async with running(scripts, max_attempts=2) as gw:
        result = await gw.actor.complete(gw.request("local/a", "local/b", "local/c"))
        await gw.settle()

        assert isinstance(result, Failure) and (result.status, result.attempts) == (502, 2)
        assert [e.ref for e in gw.upstream.calls()] == ["local/a", "local/b"]
        assert [d.attempt for d in gw.events(RouteDecided)] == [1, 2]
        assert gw.actor.statistics().attempts == 2


async def test_a_truncated_answer_is_the_last_resort_when_nothing_better_comes(
    autojump_clock: trio.abc.Clock,
) -> None:
    scripts = {"local/a": json_reply(completion("Half an ans", finish="length")), "local/b": error_reply(503)}
    async with running(scripts) as gw:
        result = await gw.actor.complete(gw.request("local/a", "local/b"))
        await gw.settle()

        assert isinstance(result, Completion)
        assert (result.routed_via, result.attempts, answer_text(result)) == ("local/a", 2, "Half an ans")
        assert [f.kind for f in gw.events(AttemptFailed)] == ["truncated", "server_error"]


async def test_a_caller_that_goes_away_cancels_the_attempt_and_is_logged_as_a_client_abort(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running({"local/a": Reply(before=(FOREVER,))}) as gw:
        req = gw.request("local/a", "local/b")
        with trio.move_on_after(1.0):
            await gw.actor.complete(req)
        gone_at = trio.current_time()
        await gw.settle()

        hung = only(gw.upstream.calls())
        assert hung.cancelled and hung.closed_at == gone_at
        assert not gw.events(StreamStalled)
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.mid_stream) == ("client_abort", False)
        disconnected = only(gw.events(ClientDisconnected))
        assert (disconnected.platform, disconnected.model, disconnected.content_forwarded) == (
            "local",
            "a",
            False,
        )
        done = only(gw.events(RequestCompleted))
        assert (done.outcome, done.status, done.attempts) == ("client_abort", 499, 1)
        assert gw.actor.statistics().client_disconnects == 1


# ---- streaming -------------------------------------------------------------------------------------------


async def test_a_stream_sends_routed_then_the_frames_then_closes(autojump_clock: trio.abc.Clock) -> None:
    frames = answer("Hel", "lo")
    async with running({"local/a": sse_reply(*frames)}) as gw:
        req = gw.request("local/a", "local/b", stream=True)
        handle = await gw.actor.open_stream(req)
        timed = await collect(handle)
        await gw.settle()

        # The role chunk (no content) is held back until the first content, then sent after Routed.
        assert items_of(timed) == [Routed("local/a", 1), *frames]
        assert all(t == 0 for t, _ in timed)
        assert only(gw.upstream.calls()).call.stream
        assert gw.kinds(req.request_id) == [
            "RequestReceived",
            "RouteDecided",
            "AttemptStarted",
            "AttemptSucceeded",
            "RequestCompleted",
        ]
        succeeded = only(gw.events(AttemptSucceeded))
        assert succeeded.streamed
        assert only(gw.events(RequestCompleted)).outcome == "ok"
        assert gw.actor.keepalive_s == DEADLINES.keepalive_s


@pytest.mark.parametrize(
    "silent",
    [
        pytest.param(sse_reply(before=(FOREVER,)), id="no-headers"),
        pytest.param(sse_reply(FOREVER), id="headers-only"),
        pytest.param(sse_reply(ROLE, FOREVER), id="role-chunk-only"),
    ],
)
async def test_a_stream_silent_before_content_falls_over_silently(
    autojump_clock: trio.abc.Clock, silent: Reply
) -> None:
    async with running({"local/a": silent, "local/b": OK_STREAM}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", "local/b", stream=True))
        start = trio.current_time()
        timed = await collect(handle)
        await gw.settle()

        first_at, first = timed[0]
        assert first == Routed("local/b", 2)
        assert first_at == pytest.approx(DEADLINES.first_byte_s)
        # Only the fallback's frames: nothing of the silent attempt, no error event.
        assert items_of(timed)[1:] == list(OK_STREAM.body)
        stalled = only(gw.events(StreamStalled))
        assert (stalled.model, stalled.phase) == ("a", "pre")
        assert only(gw.events(AttemptFailed)).kind == "stall_pre"
        hung = gw.upstream.calls("local/a")[0]
        assert hung.cancelled and hung.closed_at == pytest.approx(start + DEADLINES.first_byte_s)


async def test_a_stream_that_stalls_after_content_ends_with_an_error_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    partial = (ROLE, 0.5, chunk("Hel"), 0.5, chunk("lo"), FOREVER)
    async with running({"local/a": sse_reply(*partial), "local/b": OK_STREAM}) as gw:
        req = gw.request("local/a", "local/b", stream=True)
        handle = await gw.actor.open_stream(req)
        timed = await collect(handle)
        await gw.settle()

        items = items_of(timed)
        assert items[:4] == [Routed("local/a", 1), ROLE, chunk("Hel"), chunk("lo")]
        last_content_at = timed[3][0]
        assert last_content_at == pytest.approx(1.0)
        (error,) = error_payloads(items)
        assert (error["type"], error["code"]) == ("stream_timeout", "stall_mid")
        assert items[-1] == DONE_FRAME and len(items) == 6
        error_at, done_at = timed[4][0], timed[5][0]
        assert error_at == done_at == pytest.approx(last_content_at + DEADLINES.stall_s)
        assert content_of(items) == "Hello"  # the partial answer, and no fallback content
        assert gw.upstream.calls("local/b") == []

        stalled = only(gw.events(StreamStalled))
        assert (stalled.phase, stalled.silent_s) == ("mid", DEADLINES.stall_s)
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.mid_stream) == ("stall_mid", True)
        done = only(gw.events(RequestCompleted, req.request_id))
        assert (done.outcome, done.status) == ("error", 502)
        assert gw.upstream.calls("local/a")[0].cancelled


async def test_a_json_answer_to_a_stream_request_is_sent_as_a_stream(autojump_clock: trio.abc.Clock) -> None:
    # Some providers ignore stream=true: their whole answer is still a good answer.
    async with running({"local/a": json_reply(completion("Hello")), "alt/x": OK_STREAM}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", "alt/x", stream=True))
        items = items_of(await collect(handle))
        await gw.settle()

        assert items[0] == Routed("local/a", 1)
        assert b'"delta":{"role":"assistant","content":"Hello"}' in items[1]
        assert b'"object":"chat.completion.chunk"' in items[1]
        assert items[2:] == [b"data: [DONE]\n\n"]
        assert only(gw.events(AttemptSucceeded)).model == "a"


@pytest.mark.parametrize(
    ("failing", "kind", "status"),
    [
        pytest.param(
            sse_reply(frame({"error": {"message": "overloaded", "code": 503}}), DONE_FRAME),
            "server_error",
            503,
            id="wrapped-error-frame",
        ),
        pytest.param(
            sse_reply(ROLE, frame({"error": {"message": "slow down", "code": 429}})),
            "rate_limited",
            429,
            id="wrapped-429-after-role",
        ),
        pytest.param(
            json_reply({"error": {"message": "overloaded", "code": 503}}),
            "server_error",
            503,
            id="wrapped-json-body",
        ),
        pytest.param(error_reply(500), "server_error", 500, id="500"),
        pytest.param(sse_reply(ROLE, chunk(finish="stop"), DONE_FRAME), "empty", 200, id="no-content"),
        pytest.param(sse_reply(ROLE, Broken()), "connect", None, id="reset-before-content"),
    ],
)
async def test_a_stream_failing_before_content_falls_over_at_once(
    autojump_clock: trio.abc.Clock, failing: Reply, kind: str, status: int | None
) -> None:
    async with running({"local/a": failing, "alt/x": OK_STREAM}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", "alt/x", stream=True))
        timed = await collect(handle)
        await gw.settle()

        assert items_of(timed) == [Routed("alt/x", 2), *OK_STREAM.body]
        assert all(t == pytest.approx(0, abs=1e-9) for t, _ in timed)
        failed = only(gw.events(AttemptFailed))
        assert (failed.model, failed.kind, failed.status, failed.mid_stream) == ("a", kind, status, False)


@pytest.mark.parametrize("interval", [0.5, 4.9])
async def test_a_slow_drip_streams_to_the_end_without_a_stall(
    autojump_clock: trio.abc.Clock, interval: float
) -> None:
    words = [f"t{i} " for i in range(20)]
    drip = sse_reply(
        ROLE, *(step for w in words for step in (interval, chunk(w))), chunk(finish="stop"), DONE_FRAME
    )
    async with running({"local/a": drip}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", "local/b", stream=True))
        timed = await collect(handle)
        await gw.settle()

        items = items_of(timed)
        assert items[0] == Routed("local/a", 1)
        assert content_of(items) == "".join(words)
        assert items[-1] == DONE_FRAME and not error_payloads(items)
        assert timed[-1][0] == pytest.approx(20 * interval)  # well past first_byte_s and stall_s in total
        assert not gw.events(StreamStalled)
        assert only(gw.events(AttemptSucceeded)).model == "a"


async def test_a_slow_client_is_not_an_upstream_stall(autojump_clock: trio.abc.Clock) -> None:
    # More frames than the channel holds: the producer waits on the client, not on the upstream.
    words = [f"w{i} " for i in range(200)]
    async with running({"local/a": sse_reply(*answer(*words))}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", stream=True))
        assert await handle.items.receive() == Routed("local/a", 1)
        await trio.sleep(30)  # the client reads nothing for 30 s
        items = [piece async for item in handle.items for piece in wire(item)]
        await gw.settle()

        assert content_of(items) == "".join(words)
        assert items[-1] == DONE_FRAME and not error_payloads(items)
        assert not gw.events(StreamStalled)
        assert only(gw.events(AttemptSucceeded)).streamed


async def test_a_stream_cut_off_by_length_after_content_is_delivered_and_logged_as_truncated(
    autojump_clock: trio.abc.Clock,
) -> None:
    cut = answer("Half an ans", finish="length")
    async with running({"local/a": sse_reply(*cut), "local/b": OK_STREAM}) as gw:
        req = gw.request("local/a", "local/b", stream=True)
        handle = await gw.actor.open_stream(req)
        items = items_of(await collect(handle))
        await gw.settle()

        assert items == [Routed("local/a", 1), *cut]  # finish_reason "length" is forwarded as is
        assert b'"finish_reason":"length"' in items[-2]
        assert not error_payloads(items)
        assert gw.upstream.calls("local/b") == []
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.mid_stream) == ("truncated", True)
        assert not gw.events(AttemptSucceeded)
        done = only(gw.events(RequestCompleted, req.request_id))
        assert (done.outcome, done.model) == ("ok", "a")  # the client has the whole (cut) answer


async def test_a_stream_reset_after_content_ends_with_an_error_event(autojump_clock: trio.abc.Clock) -> None:
    async with running(
        {"local/a": sse_reply(ROLE, chunk("Hel"), Broken("reset")), "local/b": OK_STREAM}
    ) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", "local/b", stream=True))
        items = items_of(await collect(handle))
        await gw.settle()

        assert items[:3] == [Routed("local/a", 1), ROLE, chunk("Hel")]
        (error,) = error_payloads(items)
        assert (error["type"], error["code"]) == ("upstream_error", "connect")
        assert items[-1] == DONE_FRAME and len(items) == 5
        assert gw.upstream.calls("local/b") == []
        assert only(gw.events(AttemptFailed)).mid_stream


async def test_a_stream_whose_body_ends_mid_answer_is_not_given_a_normal_ending(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running(
        {"local/a": sse_reply(ROLE, chunk("Hel"), chunk("lo, I am")), "local/b": OK_STREAM}
    ) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", "local/b", stream=True))
        items = items_of(await collect(handle))
        await gw.settle()

        assert error_payloads(items), "the client must learn that the answer was cut"
        assert not gw.events(AttemptSucceeded)


async def test_the_clients_done_does_not_wait_for_the_upstream_to_end_its_body(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running({"local/a": sse_reply(*answer("Hello"), FOREVER)}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", stream=True))
        timed = await collect(handle)
        await gw.settle()

        done_at = next(t for t, item in timed if item == DONE_FRAME)
        assert done_at < DRAIN_S
        assert only(gw.events(AttemptSucceeded)).model == "a"


@pytest.mark.parametrize(
    ("scripts", "status", "code", "at"),
    [
        pytest.param(
            {"local/a": error_reply(500), "local/b": sse_reply(before=(FOREVER,))},
            502,
            "all_attempts_failed",
            DEADLINES.first_byte_s,
            id="all-failing",
        ),
        pytest.param(
            {
                "local/a": error_reply(429, headers={"retry-after": "9"}),
                "local/b": error_reply(429, headers={"retry-after": "9"}),
            },
            429,
            "rate_limit_exceeded",
            0,
            id="all-rate-limited",
        ),
    ],
)
async def test_a_stream_whose_candidates_all_fail_before_content_yields_one_failure(
    autojump_clock: trio.abc.Clock, scripts: dict[str, Reply], status: int, code: str, at: float
) -> None:
    async with running(scripts) as gw:
        req = gw.request("local/a", "local/b", stream=True)
        handle = await gw.actor.open_stream(req)
        timed = await collect(handle)
        await gw.settle()

        failure_at, failure = only(timed)
        assert isinstance(failure, Failure)
        assert (failure.status, failure.code, failure.attempts, failure.after_content) == (
            status,
            code,
            2,
            False,
        )
        assert failure_at == pytest.approx(at)
        assert "local/a (key k1)" in failure.message and "local/b (key k1)" in failure.message
        if status == 429:
            assert failure.retry_after_s == pytest.approx(9, abs=0.1)
        done = only(gw.events(RequestCompleted, req.request_id))
        assert (done.outcome, done.status) == ("error", status)


# ---- client disconnects ----------------------------------------------------------------------------------


async def test_a_client_gone_mid_stream_hangs_up_the_upstream_at_once_and_leaks_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    words = [f"t{i} " for i in range(400)]
    drip = sse_reply(
        ROLE, *(step for w in words for step in (0.5, chunk(w))), chunk(finish="stop"), DONE_FRAME
    )
    async with running({"local/a": drip}, start_actor=False) as gw:
        async with trio.open_nursery() as nursery:
            await nursery.start(gw.actor.run)
            req = gw.request("local/a", stream=True)
            handle = await gw.actor.open_stream(req)
            received = [await handle.items.receive() for _ in range(4)]  # Routed, role, t0, t1
            assert received[0] == Routed("local/a", 1)
            assert content_of(received) == "t0 t1 "

            gone_at = trio.current_time()
            handle.close(client_gone=True)
            handle.close(client_gone=True)  # idempotent
            await wait_until_idle(gw.actor)
            assert trio.current_time() == gone_at  # no virtual time passed: nothing waited on a timeout

            upstream = only(gw.upstream.calls())
            assert upstream.cancelled and upstream.hung_up and upstream.closed_at == gone_at
            assert upstream.chunks_sent < len(words)
            assert gw.actor.statistics() == RequestStatistics(
                in_flight=0, streams_open=0, requests=1, attempts=1, client_disconnects=1
            )
            # Nothing of the request outlives it: cancelling only the actor lets this nursery exit at once.
            nursery.cancel_scope.cancel()
        assert trio.current_time() == gone_at

        await gw.settle()
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.mid_stream, failed.status) == ("client_abort", True, None)
        disconnected = only(gw.events(ClientDisconnected))
        assert (disconnected.platform, disconnected.model, disconnected.content_forwarded) == (
            "local",
            "a",
            True,
        )
        done = only(gw.events(RequestCompleted, req.request_id))
        assert (done.outcome, done.status, done.platform, done.model) == ("client_abort", 499, "local", "a")
        assert not gw.events(StreamStalled) and not gw.events(AttemptSucceeded)
        assert gw.kinds(req.request_id)[-3:] == ["AttemptFailed", "ClientDisconnected", "RequestCompleted"]
        # A client going away says nothing about the model: no failure counted, no cooldown.
        assert gw.view.stats.models.get("local/a") is None or gw.view.stats.models["local/a"].failures == 0
        assert gw.view.cooldowns.cooling("local/a", gw.now()) is None
        # The reservation it held is released (also checked for every test on the way out).
        assert gw.view.quotas.usage("k1", "local/a", gw.now()).reserved_tokens == 0


async def test_a_client_gone_before_content_cancels_the_silent_upstream(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running({"local/a": sse_reply(before=(FOREVER,)), "local/b": OK_STREAM}) as gw:
        req = gw.request("local/a", "local/b", stream=True)
        handle = await gw.actor.open_stream(req)
        with trio.move_on_after(1.0):
            await handle.items.receive()
            raise AssertionError("nothing should arrive before the first-byte deadline")
        gone_at = trio.current_time()
        handle.close(client_gone=True)
        await wait_until_idle(gw.actor)
        assert trio.current_time() == gone_at
        await gw.settle()

        upstream = only(gw.upstream.calls())  # no fallover after the client left
        assert upstream.cancelled and upstream.closed_at == gone_at
        assert not gw.events(StreamStalled)
        assert only(gw.events(AttemptFailed)).kind == "client_abort"
        disconnected = only(gw.events(ClientDisconnected))
        assert not disconnected.content_forwarded
        assert only(gw.events(RequestCompleted, req.request_id)).outcome == "client_abort"


# ---- review fixes ----------------------------------------------------------------------------------------


async def test_token_counts_come_from_usage_and_odd_values_never_reach_the_log(
    autojump_clock: trio.abc.Clock,
) -> None:
    good = completion("Hello")
    odd = {**completion("Hello"), "usage": {"prompt_tokens": 12.5, "completion_tokens": "7"}}
    async with running({"local/a": [json_reply(good), json_reply(odd)]}) as gw:
        for _ in range(2):
            assert isinstance(await gw.actor.complete(gw.request("local/a")), Completion)
        await gw.settle()
        first, second = gw.events(AttemptSucceeded)
        assert (first.input_tokens, first.output_tokens) == (3, 2)  # the provider's usage
        assert (second.input_tokens, second.output_tokens) == (EST_TOKENS, len("Hello") // 4 + 1)
        assert all(isinstance(e.input_tokens, int) for e in gw.events(AttemptSucceeded))
        assert len(gw.store.read_after(0)) > 0  # the whole log still decodes


async def test_a_client_leaving_right_after_done_leaves_a_finished_answer(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The upstream keeps its body open after [DONE]: our drain is running when the client hangs up.
    async with running({"local/a": sse_reply(*answer("Hi"), FOREVER)}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", stream=True))
        async for item in handle.items:
            if DONE_FRAME in wire(item):
                break
        handle.close(client_gone=True)
        await trio.sleep(1)
        await gw.settle()
        assert only(gw.events(AttemptSucceeded)).model == "a"
        assert [e.outcome for e in gw.events(RequestCompleted)] == ["ok"]
        assert not gw.events(ClientDisconnected)


async def test_a_bad_request_on_a_later_attempt_still_gets_one_try_elsewhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    scripts = {"local/a": error_reply(503), "local/b": error_reply(400), "alt/x": OK_BODY}
    async with running(scripts) as gw:
        result = await gw.actor.complete(gw.request("local/a", "local/b", "alt/x"))
        assert isinstance(result, Completion)
        assert [e.ref for e in gw.upstream.calls()] == ["local/a", "local/b", "alt/x"]


async def test_a_stream_nobody_reads_gives_up_instead_of_holding_the_upstream(
    autojump_clock: trio.abc.Clock,
) -> None:
    long = sse_reply(ROLE, *(chunk(f"w{i} ") for i in range(200)), chunk(finish="stop"), DONE_FRAME)
    async with running({"local/a": long}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", stream=True))
        await trio.sleep(CONSUMER_GONE_S + 1)  # the channel filled up; nobody took anything since
        assert gw.actor.statistics().streams_open == 0
        handle.items.close()
        await gw.settle()
        assert [e.outcome for e in gw.events(RequestCompleted)] == ["client_abort"]


def test_a_failure_message_gives_the_reasons_not_the_models_the_pool_left_out() -> None:
    # In `auto` a third of the catalog is left out by pool; listed first, they pushed the reasons out.
    excluded = [Excluded(ref=f"smart/m{i}", reason=POOL_REASON) for i in range(30)]
    excluded.append(Excluded(ref="local/b", reason="key k1 invalid"))
    failure = _final_failure([], excluded, 0, None, 0, 0.0)
    assert failure.status == 503
    assert "local/b: skipped, key k1 invalid" in failure.message
    assert "smart/" not in failure.message and "more models skipped" not in failure.message
    assert f"30 models left out ({POOL_REASON})" in failure.message
    # Only the pool left models out (say, the only key is for a smart model, in `auto`): it says so.
    only_pool = _final_failure([], excluded[:2], 0, None, 0, 0.0)
    assert only_pool.message.endswith(f"2 models left out ({POOL_REASON})"), only_pool.message
    # No key at all: it says so first, with what to do.
    no_keys = _final_failure([], excluded[:2], 7, None, 0, 0.0)
    assert no_keys.message == (
        "No model can take this request right now: 7 models have no API key for their platform "
        f"(switchboard keys add PLATFORM); 2 models left out ({POOL_REASON})"
    )


# ---- regressions of issue 9 (each failed on the code before it) -------------------------------------------


def in_session(gw: Gateway, session: str, *models: str, stream: bool = False) -> ChatRequest:
    """A turn of a conversation the client names (X-Session-Id): pins and thread protection apply."""
    return dataclasses.replace(gw.request(*models, stream=stream, use_chain=True), session_header=session)


async def test_a_failure_after_content_bans_a_provider_ban_platform_for_the_session(
    autojump_clock: trio.abc.Clock,
) -> None:
    # It never reached thread protection: the next turn went back to the platform that just failed.
    stalls = sse_reply(ROLE, chunk("Hel"), FOREVER)
    policy = SessionPolicy(protection={"local": "provider-ban"})
    async with running({"local/a": stalls, "alt/x": OK_BODY}, session_policy=policy) as gw:
        first = await gw.actor.open_stream(in_session(gw, "thread-1", "local/a", stream=True))
        items = items_of(await collect(first))
        assert error_payloads(items) and content_of(items) == "Hel"
        await gw.settle()
        ban = only(gw.events(SessionBanned))
        assert (ban.platform, ban.reason) == ("local", "provider-ban: mid-stream stall_mid")

        # The next turn of that conversation names local/a again: the ban keeps it on another platform.
        again = await gw.actor.complete(in_session(gw, "thread-1", "local/a"))
        assert isinstance(again, Completion) and again.routed_via == "alt/x"
        assert len(gw.upstream.calls("local/a")) == 1


async def test_a_delivered_truncation_clears_the_pin_instead_of_re_pinning(
    autojump_clock: trio.abc.Clock,
) -> None:
    cut = sse_reply(ROLE, chunk("Half"), chunk(finish="length"), DONE_FRAME)
    async with running({"local/a": [OK_STREAM, cut]}) as gw:
        turn1 = await gw.actor.open_stream(in_session(gw, "thread-2", "local/a", stream=True))
        await collect(turn1)
        await gw.settle()
        pinned = only(gw.events(SessionPinned))
        assert (pinned.platform, pinned.model) == ("local", "a")

        turn2 = in_session(gw, "thread-2", "auto", stream=True)
        items = items_of(await collect(await gw.actor.open_stream(turn2)))
        assert content_of(items) == "Half" and items[-1] == DONE_FRAME  # delivered as the provider sent it
        await gw.settle()
        assert gw.events(SessionPinned, turn2.request_id) == []  # no re-pin to the model that cut it short
        cleared = only(gw.events(SessionPinCleared, turn2.request_id))
        assert cleared.reason == "model-skip: mid-stream truncated"


async def test_a_stall_before_the_first_byte_skips_the_models_other_keys(
    autojump_clock: trio.abc.Clock,
) -> None:
    # It waited first_byte_s once per key before trying another model: the stall is the provider's.
    silent = Reply(before=(FOREVER,))
    keys = (("k1", "local"), ("k1b", "local"), ("k2", "alt"))
    async with running({"local/a": silent, "alt/x": OK_BODY}, keys=keys) as gw:
        start = trio.current_time()
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        assert isinstance(result, Completion) and result.routed_via == "alt/x"
        assert trio.current_time() - start == pytest.approx(DEADLINES.first_byte_s)
        assert [e.ref for e in gw.upstream.calls()] == ["local/a", "alt/x"]


async def test_first_token_from_the_fallback_within_first_byte_s_when_a_two_key_model_stalls(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Acceptance of issue 9: first_byte_s = stall_s = 5, a model with two keys that never answers.
    silent = Reply(before=(FOREVER,))
    keys = (("k1", "local"), ("k1b", "local"), ("k2", "alt"))
    async with running({"local/a": silent, "alt/x": OK_STREAM}, keys=keys) as gw:
        start = trio.current_time()
        handle = await gw.actor.open_stream(gw.request("local/a", "alt/x", stream=True))
        timed = await collect(handle)
        first_content = next(t for t, item in timed if isinstance(item, bytes) and b'"content"' in item)
        assert first_content <= 5 + 1
        assert trio.current_time() - start <= 5 + 1


async def test_a_403_with_a_working_key_cools_only_that_key_for_that_model(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A 403 invalidated the key for every model of the platform, though 403s are often model-specific.
    scripts = {"local/a": error_reply(403, "model not allowed"), "alt/x": OK_BODY, "local/b": OK_BODY}
    async with running(scripts) as gw:
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        assert isinstance(result, Completion) and result.routed_via == "alt/x"
        await gw.settle()
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.status) == ("forbidden", 403)
        assert "the key works" in failed.message
        assert gw.events(KeyInvalidated) == []
        assert only(gw.events(KeyChecked)).ok
        # The key still serves the platform's other models; this model waits (long) on this key.
        later = await gw.actor.complete(gw.request("local/b"))
        assert isinstance(later, Completion) and later.routed_via == "local/b"
        assert gw.view.health.cooling_until("k1", "a", gw.now()) is not None
        assert gw.view.health.cooling_until("k1", "b", gw.now()) is None
        # Named alone, the model is not "rate-limited" (a 429 a client would retry): the key is forbidden.
        alone = await gw.actor.complete(gw.request("local/a"))
        assert isinstance(alone, Failure) and (alone.status, alone.code) == (503, "no_available_model")
        assert "key k1 may not use this model (403)" in alone.message


async def test_a_403_whose_key_check_fails_invalidates_the_key(autojump_clock: trio.abc.Clock) -> None:
    async with running({"local/a": error_reply(403, "forbidden"), "alt/x": OK_BODY}) as gw:
        gw.upstream.key_status["k1"] = 401
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        assert isinstance(result, Completion) and result.routed_via == "alt/x"
        await gw.settle()
        assert only(gw.events(AttemptFailed)).kind == "auth"
        assert only(gw.events(KeyInvalidated)).key_id == "k1"


async def test_a_403_whose_key_check_cannot_tell_keeps_the_key(autojump_clock: trio.abc.Clock) -> None:
    # A check answered 503 (or not at all) is no proof the key is bad: only this model cools.
    async with running({"local/a": error_reply(403, "forbidden"), "alt/x": OK_BODY}) as gw:
        gw.upstream.key_status["k1"] = 503
        req = gw.request("local/a", "alt/x")
        result = await gw.actor.complete(req)
        assert isinstance(result, Completion) and result.routed_via == "alt/x"
        await gw.settle()
        failed = only(gw.events(AttemptFailed))
        assert failed.kind == "forbidden" and "HTTP 503" in failed.message
        assert gw.events(KeyInvalidated) == []
        assert only(gw.events(KeyChecked)).request_id == req.request_id


async def test_every_attempt_stalling_before_content_is_a_504_stream_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    # It was a 502, as if the providers had answered with errors.
    silent = Reply(before=(FOREVER,))
    async with running({"local/a": silent, "alt/x": silent}) as gw:
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        assert isinstance(result, Failure)
        assert (result.status, result.code, result.attempts) == (504, "stream_timeout", 2)


async def test_a_named_model_that_cannot_be_used_is_reported_not_replaced_silently(
    autojump_clock: trio.abc.Clock,
) -> None:
    # It was replaced with X-Fallback-Attempts: 0 and no word of why.
    async with running({"alt/x": OK_BODY}, keys=(("k2", "alt"),)) as gw:
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        assert isinstance(result, Completion)
        assert (result.routed_via, result.attempts) == ("alt/x", 1)
        assert result.skipped == ("local/a (its platform has no API key)",)
        handle = await gw.actor.open_stream(gw.request("local/a", "alt/x", stream=True))
        routed = (await collect(handle))[0][1]
        assert routed == Routed("alt/x", 1, ("local/a (its platform has no API key)",))


# ---- regressions found by review (each failed before its fix) ----------------------------------------------


async def test_a_connection_that_breaks_after_done_leaves_the_answer_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    # It added an error event and a second [DONE] after the first, and logged a delivered answer as a failure.
    body = (
        *answer("Hello", " world"),
        Broken("peer closed connection without sending complete message body"),
    )
    async with running({"local/a": sse_reply(*body)}) as gw:
        handle = await gw.actor.open_stream(gw.request("local/a", stream=True))
        items = items_of(await collect(handle))
        await gw.settle()
        assert items.count(DONE_FRAME) == 1 and items[-1] == DONE_FRAME
        assert not error_payloads(items) and content_of(items) == "Hello world"
        assert only(gw.events(AttemptSucceeded)).model == "a" and gw.events(AttemptFailed) == []
        assert [(e.outcome, e.status) for e in gw.events(RequestCompleted)] == [("ok", 200)]


async def test_a_client_leaving_while_a_key_is_invalidated_leaves_one_end_event_and_the_invalidation(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running({"local/a": error_reply(401, "bad key"), "alt/x": OK_BODY}) as gw:
        req = gw.request("local/a", "alt/x")
        scope = trio.CancelScope()
        append = gw.log.append

        async def append_then_leave(event: Event) -> None:
            await append(event)
            if isinstance(event, AttemptFailed) and event.kind == "auth":
                scope.cancel()  # the client goes away right after the end event was queued

        gw.log.append = append_then_leave  # type: ignore[method-assign]
        with scope:
            await gw.actor.complete(req)
        gw.log.append = append  # type: ignore[method-assign]
        await gw.settle()
        assert [e.kind for e in gw.events(AttemptFailed, req.request_id)] == ["auth"]
        assert only(gw.events(KeyInvalidated)).key_id == "k1"


async def test_a_streamed_turn_is_pinned_before_the_client_has_its_done(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The pin was written after the upstream's body ended (up to DRAIN_S later): an agent sending its next
    # turn at [DONE] was routed without it.
    slow_end = sse_reply(*answer("Hello"), 0.4)
    async with running({"local/b": slow_end}) as gw:
        turn = in_session(gw, "thread-3", "local/b", stream=True)
        handle = await gw.actor.open_stream(turn)
        async for item in handle.items:
            if isinstance(item, StreamEnd):
                break
        assert only(gw.events(SessionPinned, turn.request_id)).model == "b"  # already committed
        handle.close(client_gone=True)
        await trio.sleep(1)


async def test_a_first_turns_ban_survives_a_delivered_truncation(autojump_clock: trio.abc.Clock) -> None:
    # Without X-Session-Id, a first turn's bans waited for a pin that a truncated answer never makes.
    policy = SessionPolicy(protection={"local": "provider-ban"})
    cut = sse_reply(*answer("Once", " upon", finish="length"))
    async with running({"local/a": cut}, session_policy=policy) as gw:
        handle = await gw.actor.open_stream(gw.request("auto-smart", "local/a", stream=True))
        assert content_of(items_of(await collect(handle))) == "Once upon"
        await gw.settle()
        ban = only(gw.events(SessionBanned))
        assert (ban.platform, ban.reason) == ("local", "provider-ban: mid-stream truncated")
        reply = ban.session
        assert reply.startswith("c-") and gw.events(SessionPinned) == []


async def test_a_grouped_cancellation_is_a_client_that_left() -> None:
    # A client leaving during the upstream's TCP connect (which runs in a nursery) reached the attempt as a
    # group: it was recorded as a gateway bug, and the request got no end.
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            caught.append(exc)
            raise
    assert caught and client_left(caught[0])
    assert not client_left(BaseExceptionGroup("bug", [ValueError("x")]))
    assert not client_left(ValueError("x"))


async def test_a_client_gone_before_the_first_append_still_leaves_the_requests_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    # From issue 10's list: completion events without a request_received when the client left that early.
    async with running({"local/a": OK_BODY}) as gw:
        req = gw.request("local/a")
        with trio.CancelScope() as scope:
            scope.cancel()  # gone before the request's first await
            await gw.actor.complete(req)
        await gw.settle()
        assert gw.kinds(req.request_id) == ["RequestReceived", "ClientDisconnected", "RequestCompleted"]


async def test_running_out_of_descriptors_is_the_gateways_failure_and_cools_no_model(
    autojump_clock: trio.abc.Clock,
) -> None:
    # From review: EMFILE on connect was a `connect` model fault, which cooled providers for a local limit.
    out_of_fds = Reply(before=(Broken("the gateway is out of file descriptors (EMFILE)", local=True),))
    async with running({"local/a": out_of_fds, "alt/x": OK_BODY}) as gw:
        result = await gw.actor.complete(gw.request("local/a", "alt/x"))
        await gw.settle()
        failed = only(gw.events(AttemptFailed))
        assert (failed.kind, failed.model, failed.message) == (
            "internal",
            "a",
            "the gateway is out of file descriptors (EMFILE)",
        )
        assert isinstance(result, Completion) and result.routed_via == "alt/x"  # the next model may get one
        models = {a.model.ref: a for a in await gw.health.models()}
        assert models["local/a"].usable_keys == 1  # not cooled: the provider did nothing wrong
        assert all(not view.cooling for view in await gw.health.keys())


async def test_a_request_cut_off_when_the_shutdown_grace_is_over_is_not_logged_as_its_clients_doing(
    autojump_clock: trio.abc.Clock,
) -> None:
    # From review: the connections closed at the end of the grace period were logged as client aborts (499).
    async with running({"local/a": Reply(before=(FOREVER,))}) as gw:
        with trio.move_on_after(1.0):
            gw.actor.cut_off_by_shutdown()  # as the HTTP server does just before it closes them
            await gw.actor.complete(gw.request("local/a"))
        await gw.settle()
        assert not gw.events(ClientDisconnected)
        done = only(gw.events(RequestCompleted))
        assert (done.outcome, done.status) == ("error", 503)
        assert done.error == "cut off by the gateway's shutdown (its grace period was over)"
        assert gw.actor.statistics().client_disconnects == 0
