"""The request runner: each completion's attempt loop across models and keys, as I/O around the pure
request core (events/attempts.py decides what to avoid next and when to stop; actors/attempt.py runs one
attempt; the session actor applies thread protection and pins).

Streaming follows the commit contract (DESIGN.md section 5): neutral items go to the client protocol's
edge over a channel (actors/stream.py); until a chunk with content has gone out, a failing attempt falls
over silently to the next candidate; after that, the request ends with a `Failure(after_content=True)`
that the edge renders as its protocol's error event.

Error handling: expected upstream failures are outcomes (events/outcomes.py) and recorded; anything else
is a bug: one request's bug is a 500 for that client with the traceback in the log, an actor's ends the
process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import msgspec
import trio

from actors.attempt import Attempt, AttemptSpec, client_left
from actors.log_writer import LogOutage, LogWriter
from actors.model_health import ModelHealth
from actors.session import Conversation, SessionActor
from actors.stream import Emit, Routed, StreamHandle, StreamItem, produce
from actors.upstream import Operation, Upstream, UpstreamCall
from events.attempts import AttemptLoop, Completion, Failure
from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from events.decide import UnknownModel, WrongTask
from events.frames import Call, reply_text
from events.outcomes import Answered, Failed, Outcome, Stalled
from events.sessions import NO_ACTION
from events.types import ClientDisconnected, Protocol, RequestCompleted, RequestReceived, RouteInput


@dataclass(frozen=True)
class Deadlines:
    first_byte_s: float
    stall_s: float
    keepalive_s: float
    platform_first_byte_s: Mapping[str, float] = field(default_factory=dict)

    def first_byte_for(self, platform: str) -> float:
        return self.platform_first_byte_s.get(platform, self.first_byte_s)


@dataclass(frozen=True)
class ChatRequest:
    """A request in the neutral form, as a client protocol's edge parsed it."""

    request_id: str
    body: dict[str, Any]  # chat-completions shape, gateway fields removed
    requested: tuple[str, ...]
    stream: bool
    est_tokens: int
    use_chain: bool = True
    session_header: str | None = None  # X-Session-Id, as the client sent it
    protocol: Protocol = "chat"  # the client protocol it came in by (recorded in `request_received`)

    @cached_property
    def call(self) -> Call:
        return Call(self.body, self.stream)

    @property
    def operation(self) -> Operation:
        """What the upstream is asked: chat completions, or (from /v1/embeddings) embedding vectors, whose
        `body` is OpenAI's embeddings body and whose `requested` are one family's models."""
        return "embeddings" if self.protocol == "embeddings" else "chat"


@dataclass(frozen=True)
class RequestStatistics:
    in_flight: int
    streams_open: int
    requests: int
    attempts: int
    client_disconnects: int


@dataclass
class _Progress:
    attempts: int = 0
    current: str = ""  # the model of the attempt under way


class RequestActor:
    def __init__(
        self,
        *,
        log: LogWriter,
        health: ModelHealth,
        sessions: SessionActor,
        upstream: Upstream,
        deadlines: Deadlines,
        max_attempts: int,
        now: Callable[[], float],
        output_reserve: tuple[int, int] = (1000, 2000),
    ) -> None:
        self._log = log
        self._health = health
        self._sessions = sessions
        self._upstream = upstream
        self._deadlines = deadlines
        self._max_attempts = max_attempts
        self._now = now
        self._output_reserve = output_reserve  # (default, cap) of a request's output-token reservation
        self._nursery: trio.Nursery | None = None
        self._in_flight = self._streams = 0
        self._requests = self._attempts = self._disconnects = 0
        self._cut_off = False  # the shutdown's grace is over: connections still open are being closed

    @property
    def keepalive_s(self) -> float:
        return self._deadlines.keepalive_s

    def statistics(self) -> RequestStatistics:
        return RequestStatistics(
            self._in_flight, self._streams, self._requests, self._attempts, self._disconnects
        )

    async def run(self, *, task_status: trio.TaskStatus[RequestActor] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    # ---- entry points for the HTTP side -------------------------------------------------------------

    async def complete(self, req: ChatRequest) -> Completion | Failure:
        """A non-streaming completion, run in the caller's task (a disconnect cancels it)."""

        async def no_emit(_: StreamItem) -> None:
            raise AssertionError("non-streaming attempts do not emit")

        return await self._run(req, no_emit, _Progress(), None)

    async def open_stream(self, req: ChatRequest) -> StreamHandle:
        """Start a streaming completion in this actor's nursery; the caller consumes `handle.items`."""
        assert self._nursery is not None, "request actor not running"
        send, recv = trio.open_memory_channel[StreamItem](64)
        scope = trio.CancelScope()
        handle = StreamHandle(recv, scope)

        async def run(emit: Emit, handle: StreamHandle) -> Completion | Failure | None:
            self._streams += 1
            try:
                return await self._run(req, emit, _Progress(), handle)
            finally:
                self._streams -= 1

        self._nursery.start_soon(produce, req.request_id, run, send, scope, handle)
        return handle

    # ---- the request ----------------------------------------------------------------------------------

    async def _run(
        self, req: ChatRequest, emit: Emit, progress: _Progress, handle: StreamHandle | None
    ) -> Completion | Failure:
        outage = self._log.outage()
        if outage is not None:
            # Quotas, cooldowns and the audit trail are folds of the log: routing without recording would
            # overrun providers' quotas and leave answers the log never heard of (README: the disk).
            return unwritable_failure(outage)
        started = trio.current_time()
        received = RequestReceived(
            ts=self._now(),
            request_id=req.request_id,
            model=",".join(req.requested),
            stream=req.stream,
            messages=len(req.body.get("messages", ())),
            est_input_tokens=req.est_tokens,
            requested_models=req.requested,
            protocol=req.protocol,
        )
        with trio.CancelScope(shield=True):  # every request that gets an end event has its start
            await self._log.append(received)
        self._requests += 1
        self._in_flight += 1
        try:
            result = await self._loop(req, emit, progress)
        except BaseException as exc:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                if not client_left(exc):
                    # A bug met by this request (the traceback goes to the log above us): it still has an end.
                    latency = (trio.current_time() - started) * 1000
                    error = f"gateway error: {type(exc).__name__}"
                    first = _first_content_ms(handle, started)
                    await self._completed(req, "error", 500, progress.attempts, latency, "", error, first)
                elif handle is None or handle.client_gone:
                    await self._record_disconnect(req, progress, started, handle)
            raise
        finally:
            self._in_flight -= 1
        latency = (trio.current_time() - started) * 1000
        first = _first_content_ms(handle, started)
        if isinstance(result, Failure):
            await self._completed(
                req, "error", result.status, result.attempts, latency, "", result.message, first
            )
        else:
            await self._completed(req, "ok", 200, result.attempts, latency, result.routed_via, None, first)
        return result

    async def _loop(self, req: ChatRequest, emit: Emit, progress: _Progress) -> Completion | Failure:
        """Decide, try, learn, decide again: each attempt gets its own recorded decision, which knows what
        this request already tried and what it must now avoid."""
        # As decide reads it: the last virtual name the request gives.
        mode = next(
            (m for n in reversed(req.requested) if (m := ALIASES.get(n, n)) in VIRTUAL_MODELS), "auto"
        )
        embeddings = req.operation == "embeddings"
        if embeddings:
            # Not a conversation: no session key, no pins, no thread protection; nothing is generated,
            # so no output tokens are reserved.
            conv, reserve = Conversation(req.request_id, None, False), 0
        else:
            conv = self._sessions.conversation(
                req.request_id, req.body.get("messages", ()), req.session_header, mode
            )
            default, cap = self._output_reserve
            reserve = min(req.call.client_max_tokens or default, cap)
        loop = AttemptLoop(
            RouteInput(
                mode=mode,
                requested=req.requested,
                use_chain=req.use_chain,
                est_tokens=req.est_tokens,
                reserve_tokens=reserve,
                session=conv.session,
                use_pin=conv.pins,
                task="embedding" if embeddings else "chat",
            ),
            self._max_attempts,
        )
        while loop.more():
            try:
                decided = await self._health.decide(loop.route)
            except WrongTask as exc:
                return Failure(400, exc.message, "invalid_request_error", "model_not_supported")
            except UnknownModel as exc:
                return Failure(
                    404,
                    f"The model '{exc.args[0]}' does not exist or is disabled. "
                    "GET /v1/models lists the models you can use.",
                    "invalid_request_error",
                    "model_not_found",
                )
            decision = decided.decision
            loop.decided(decision)
            model, key_id = decision.chosen, decision.chosen_key
            platform = model.platform if model is not None else None
            async with self._sessions.admitted(platform, conv.session) as admitted:
                refused = None if admitted else f"single-flight: {platform} is in use by another session"
                await self._log.append(
                    decision.record(
                        ts=self._now(),
                        request_id=req.request_id,
                        attempt=loop.attempts + 1,
                        seed=decided.seed,
                        view_seq=decided.view_seq,
                        now=decided.now,
                        route=loop.route,
                        not_admitted=refused,
                    )
                )
                if decision.pin_cleared:
                    await self._sessions.pin_cleared(conv, decision.pin_cleared)
                if model is None or key_id is None:
                    break
                if refused is not None:
                    loop.skip_platform(model.platform, refused)
                    continue
                result = await self._attempt(
                    req, loop, conv, model, key_id, decision.pin_used, emit, progress
                )
            if result is not None:
                return result
        result = loop.finish(self._now())
        if isinstance(result, Completion) and result.body:
            # A truncated answer, the best there was: a first turn's bans go under the key it leads to.
            body = result.body
            await self._sessions.keep_bans(conv, lambda: reply_text(msgspec.json.decode(body)))
        return result

    async def _attempt(
        self,
        req: ChatRequest,
        loop: AttemptLoop,
        conv: Conversation,
        model: CatalogModel,
        key_id: str,
        pin_used: bool,
        emit: Emit,
        progress: _Progress,
    ) -> Completion | Failure | None:
        """One attempt and what it teaches; a result ends the request."""
        self._attempts += 1
        number = loop.start()
        progress.attempts, progress.current = number, model.ref
        route = loop.route
        spec = AttemptSpec(
            request_id=req.request_id,
            attempt=number,
            call=UpstreamCall(
                model.platform, model.id, key_id, req.call.for_model(model.id), req.stream, req.operation
            ),
            reserved_tokens=route.est_tokens + route.reserve_tokens,
            est_tokens=req.est_tokens,
            client_max_tokens=req.call.client_max_tokens,
            first_byte_s=self._deadlines.first_byte_for(model.platform),
            stall_s=self._deadlines.stall_s,
            session=conv.session,
            keep_reply=conv.pins and conv.session is None,
        )
        attempt = Attempt(spec, self._upstream, self._log, self._now)
        protection = NO_ACTION

        async def settle(out: Outcome) -> None:
            """The session side of the outcome, before a stream's client can send its next turn."""
            nonlocal protection
            if isinstance(out, Answered):
                await self._sessions.register_turn(conv, model, key_id, lambda: self._reply(attempt, out))
            elif isinstance(out, Failed | Stalled):
                # Every failure goes through protection, before or after content.
                protection = await self._sessions.protect(conv, model, out.kind, out.after_content, pin_used)
                if out.delivered:  # the client has the answer: a first turn's bans go under its next key
                    await self._sessions.keep_bans(conv, lambda: self._reply(attempt, out))

        routed = Routed(model.ref, number, loop.skipped(model.ref)) if req.stream else None
        out = await attempt.run(emit, routed, settle)
        if isinstance(out, Answered):
            return loop.answered(model, out.body or b"")
        assert isinstance(out, Failed | Stalled)  # a client that left cancels the attempt instead
        return loop.failed(model, key_id, out, protection)

    @staticmethod
    def _reply(attempt: Attempt, out: Answered | Failed | Stalled) -> str | None:
        """The reply the client got, which keys a first turn's session."""
        if attempt.judge is not None:
            return attempt.judge.reply_text
        return reply_text(msgspec.json.decode(out.body)) if out.body else None

    async def _completed(
        self,
        req: ChatRequest,
        outcome: Literal["ok", "error", "client_abort"],
        status: int,
        attempts: int,
        latency_ms: float,
        ref: str,
        error: str | None = None,
        first_content_ms: float | None = None,
    ) -> None:
        platform, _, model = ref.partition("/")
        await self._log.append(
            RequestCompleted(
                ts=self._now(),
                request_id=req.request_id,
                outcome=outcome,
                status=status,
                attempts=attempts,
                latency_ms=latency_ms,
                platform=platform or None,
                model=model or None,
                error=error[:300] if error is not None else None,
                first_content_ms=first_content_ms,
            )
        )

    def cut_off_by_shutdown(self) -> None:
        """The HTTP server is about to close the connections still open after the shutdown's grace period:
        the requests that end that way were cut by the gateway, not left by their clients."""
        self._cut_off = True

    async def _record_disconnect(
        self, req: ChatRequest, progress: _Progress, started: float, handle: StreamHandle | None
    ) -> None:
        if self._cut_off:
            latency = (trio.current_time() - started) * 1000
            error = "cut off by the gateway's shutdown (its grace period was over)"
            first = _first_content_ms(handle, started)
            await self._completed(
                req, "error", 503, progress.attempts, latency, progress.current, error, first
            )
            return
        self._disconnects += 1
        platform, _, model = progress.current.partition("/")
        await self._log.append(
            ClientDisconnected(
                ts=self._now(),
                request_id=req.request_id,
                platform=platform or None,
                model=model or None,
                content_forwarded=handle is not None and handle.content_sent,
            )
        )
        latency = (trio.current_time() - started) * 1000
        first = _first_content_ms(handle, started)
        await self._completed(
            req, "client_abort", 499, progress.attempts, latency, progress.current, None, first
        )


def _first_content_ms(handle: StreamHandle | None, started: float) -> float | None:
    if handle is None or handle.first_content_at is None:
        return None
    return (handle.first_content_at - started) * 1000


LOG_RETRY_AFTER_S = 5.0


def unwritable_failure(outage: LogOutage) -> Failure:
    return Failure(
        503,
        f"The gateway cannot write its event log ({outage.reason}), so it takes no new requests until it "
        "can; retry shortly. Its operator is told by its log and /healthz.",
        "server_error",
        "log_unwritable",
        retry_after_s=LOG_RETRY_AFTER_S,
    )
