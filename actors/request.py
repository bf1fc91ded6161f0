"""The request actor: runs each chat completion's attempt loop across models and keys.

Structured concurrency (DESIGN.md section 5): every upstream attempt runs in its own cancel scope whose
deadline is the first-byte deadline, then is pushed forward by `stall_s` on every frame. Cancelling the
scope leaves the adapter's context, which closes the upstream connection.

Streaming follows the commit contract: frames go to the HTTP side through a channel; until a frame with
content has been sent, a failing attempt falls over silently to the next candidate; after that, a failure
ends the stream with an error event. The producer of a stream runs in this actor's nursery so it can
outlive the handler's `return Response(...)`; the consumer cancels it when the client goes away.

Error handling: expected upstream failures are classified (events/taxonomy.py) and recorded; anything
else is a bug and propagates, taking the service down loudly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio

from actors.log_writer import LogWriter
from actors.model_health import ModelHealth
from actors.sse import DONE, data_frames, error_frame, frame
from actors.upstream import TransportFailure, Upstream, UpstreamCall
from events import taxonomy
from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from events.decide import UnknownModel
from events.sessions import conversation_opening, derived_session, header_session, message_text, protect
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ClientDisconnected,
    Excluded,
    KeyInvalidated,
    RequestCompleted,
    RequestReceived,
    RouteInput,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
    StreamStalled,
)
from events.view import POOL_REASON, SessionPolicy, split_pool

DRAIN_S = 0.5  # after [DONE], how long to wait for the upstream to end its body
CONSUMER_GONE_S = 120.0  # a stream's consumer that takes nothing for this long has gone

logger = logging.getLogger("switchboard.request")
_decode = msgspec.json.decode
_encode = msgspec.json.encode


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
    request_id: str
    body: dict[str, Any]  # what the client sent, gateway fields removed
    requested: tuple[str, ...]
    stream: bool
    est_tokens: int
    use_chain: bool = True
    session_header: str | None = None  # X-Session-Id, as the client sent it

    @property
    def client_max_tokens(self) -> int | None:
        value = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class Failure:
    """What the client gets when the request fails: an OpenAI-shaped error with a status."""

    status: int
    message: str
    type: str
    code: str | None
    retry_after_s: float | None = None
    attempts: int = 0
    sent: bool = False  # already sent to the client as an error event (the stream had content)


@dataclass(frozen=True)
class Completion:
    body: bytes
    routed_via: str
    attempts: int


@dataclass(frozen=True)
class Routed:
    """Sent on a stream's channel right before its first content frame."""

    routed_via: str
    attempts: int


@dataclass
class _Outcome:
    ok: bool
    kind: str = ""
    status: int | None = None
    message: str = ""
    retry_after_s: float | None = None
    body: bytes | None = None
    forwarded: bool = False  # a stream's content reached the client: no silent fallover any more
    delivered: bool = False  # the client has a whole answer, even though it counts as a failure


@dataclass
class _Tried:
    ref: str
    key_id: str
    kind: str
    status: int | None
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class RequestStatistics:
    in_flight: int
    streams_open: int
    requests: int
    attempts: int
    client_disconnects: int


StreamItem = bytes | Routed | Failure


class StreamHandle:
    """The HTTP side's view of a running stream: receive items, and close it when the client goes."""

    def __init__(self, recv: trio.MemoryReceiveChannel[StreamItem], scope: trio.CancelScope) -> None:
        self.items = recv
        self._scope = scope
        self.client_gone = False
        self.answered = False  # the producer sent [DONE]: what is left is bookkeeping, not to be cancelled

    def close(self, *, client_gone: bool) -> None:
        """Idempotent. Cancels the producer if it is still running and has not answered yet."""
        if not self.answered:
            if client_gone and not self._scope.cancel_called:
                self.client_gone = True
            self._scope.cancel()
        self.items.close()


class RequestActor:
    def __init__(
        self,
        *,
        log: LogWriter,
        health: ModelHealth,
        upstream: Upstream,
        deadlines: Deadlines,
        max_attempts: int,
        now: Callable[[], float],
        output_reserve: tuple[int, int] = (1000, 2000),
        sessions: SessionPolicy | None = None,
    ) -> None:
        self._log = log
        self._health = health
        self._upstream = upstream
        self._deadlines = deadlines
        self._max_attempts = max_attempts
        self._now = now
        self._output_reserve = output_reserve  # (default, cap) of a request's output-token reservation
        self._sessions = sessions or SessionPolicy()
        self._nursery: trio.Nursery | None = None
        self._in_flight = 0
        self._streams = 0
        self._requests = self._attempts = self._disconnects = 0

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

        return await self._run(req, no_emit, None)

    async def open_stream(self, req: ChatRequest) -> StreamHandle:
        """Start a streaming completion in this actor's nursery; the caller consumes `handle.items`."""
        assert self._nursery is not None, "request actor not running"
        send, recv = trio.open_memory_channel[StreamItem](64)
        scope = trio.CancelScope()
        handle = StreamHandle(recv, scope)
        self._nursery.start_soon(self._produce, req, send, scope, handle)
        return handle

    # ---- the attempt loop ---------------------------------------------------------------------------

    async def _produce(
        self,
        req: ChatRequest,
        send: trio.MemorySendChannel[StreamItem],
        scope: trio.CancelScope,
        handle: StreamHandle,
    ) -> None:
        self._streams += 1
        try:
            async with send:
                with scope:

                    async def emit(item: StreamItem) -> None:
                        # A consumer that takes nothing for this long is gone (e.g. the client left
                        # before the response body started, so its generator never ran).
                        if item is DONE:  # before sending: the consumer may close as soon as it has it
                            handle.answered = True
                        with trio.move_on_after(CONSUMER_GONE_S) as waited:
                            await send.send(item)
                        if waited.cancelled_caught:
                            handle.client_gone = True
                            raise trio.BrokenResourceError("the client stopped reading")

                    try:
                        result = await self._run(req, emit, handle)
                    except trio.BrokenResourceError:
                        result = None  # the consumer closed its end: the client went away
                    except Exception:
                        # A bug met by one request: loud in the log, a 500 for that client, as Quart does for
                        # a non-streaming handler; the other requests go on.
                        logger.exception("request %s failed", req.request_id)
                        result = Failure(
                            500,
                            f"The gateway failed on this request (see its log, request id {req.request_id}).",
                            "server_error",
                            "internal_error",
                        )
                    if isinstance(result, Failure) and not result.sent:
                        await send.send(result)
        finally:
            self._streams -= 1

    async def _run(
        self, req: ChatRequest, emit: Callable[[StreamItem], Awaitable[None]], handle: StreamHandle | None
    ) -> Completion | Failure | None:
        self._requests += 1
        self._in_flight += 1
        started = trio.current_time()
        progress = _Progress()
        try:
            await self._log.append(
                RequestReceived(
                    ts=self._now(),
                    request_id=req.request_id,
                    model=",".join(req.requested),
                    stream=req.stream,
                    messages=len(req.body.get("messages", ())),
                    est_input_tokens=req.est_tokens,
                    requested_models=req.requested,
                )
            )
            result = await self._attempt_loop(req, emit, progress)
        except (trio.Cancelled, trio.BrokenResourceError):
            client_gone = handle.client_gone if handle is not None else True
            if client_gone:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._record_disconnect(req, progress, started)
            raise
        finally:
            self._in_flight -= 1
        latency = (trio.current_time() - started) * 1000
        if isinstance(result, Failure):
            await self._completed(
                req, "error", result.status, result.attempts, latency, "", result.message[:300]
            )
        else:
            await self._completed(req, "ok", 200, progress.attempts, latency, progress.routed)
        return result

    async def _completed(
        self,
        req: ChatRequest,
        outcome: Literal["ok", "error", "client_abort"],
        status: int,
        attempts: int,
        latency_ms: float,
        ref: str,
        error: str | None = None,
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
                error=error,
            )
        )

    async def _record_disconnect(self, req: ChatRequest, progress: _Progress, started: float) -> None:
        self._disconnects += 1
        platform, _, model = progress.current.partition("/")
        await self._log.append(
            ClientDisconnected(
                ts=self._now(),
                request_id=req.request_id,
                platform=platform or None,
                model=model or None,
                content_forwarded=progress.forwarded,
            )
        )
        latency = (trio.current_time() - started) * 1000
        await self._completed(req, "client_abort", 499, progress.attempts, latency, progress.current)

    async def _attempt_loop(
        self, req: ChatRequest, emit: Callable[[StreamItem], Awaitable[None]], progress: _Progress
    ) -> Completion | Failure:
        """Decide, try, learn, decide again: each attempt gets its own recorded decision, which knows what
        this request already tried and what it must now avoid."""
        # As decide reads it: the last virtual name the request gives.
        mode = next(
            (m for n in reversed(req.requested) if (m := ALIASES.get(n, n)) in VIRTUAL_MODELS), "auto"
        )
        default, cap = self._output_reserve
        conversation = _Conversation.of(req, mode)
        route = RouteInput(
            mode=mode,
            requested=req.requested,
            use_chain=req.use_chain,
            est_tokens=req.est_tokens,
            reserve_tokens=min(req.client_max_tokens or default, cap),
            session=conversation.session,
            use_pin=conversation.pins,
        )
        progress.conversation = conversation
        tried: list[_Tried] = []
        excluded: tuple[Excluded, ...] = ()
        no_key = 0  # models of the last decision left out because their platform has no key
        bad_request: _Tried | None = None
        bad_request_at = (
            0  # its index in `tried`: one more attempt elsewhere, then it goes back to the client
        )
        fallback_body: bytes | None = None  # a truncated answer, better than nothing if all else fails
        fallback_ref = ""
        while progress.attempts < self._max_attempts and not (
            bad_request and len(tried) > bad_request_at + 1
        ):
            try:
                decided = await self._health.decide(route)
            except UnknownModel as exc:
                return Failure(
                    404,
                    f"The model '{exc.args[0]}' does not exist or is disabled. "
                    "GET /v1/models lists the models you can use.",
                    "invalid_request_error",
                    "model_not_found",
                )
            decision = decided.decision
            excluded, no_key = decision.excluded, decision.no_key_models
            attempt = progress.attempts + 1
            await self._log.append(
                decision.record(
                    ts=self._now(),
                    request_id=req.request_id,
                    attempt=attempt,
                    seed=decided.seed,
                    view_seq=decided.view_seq,
                    now=decided.now,
                    route=route,
                )
            )
            if decision.pin_cleared and conversation.session and not conversation.pin_cleared:
                conversation.pin_cleared = True
                await self._log.append_durable(
                    SessionPinCleared(
                        ts=self._now(),
                        request_id=req.request_id,
                        session=conversation.session,
                        reason=decision.pin_cleared,
                    )
                )
            model, key_id = decision.chosen, decision.chosen_key
            if model is None or key_id is None:
                break
            progress.attempts = attempt
            progress.current = model.ref
            out = await self._attempt(
                req, model, key_id, route.est_tokens + route.reserve_tokens, progress, emit
            )
            if out.ok or out.delivered:
                progress.routed = model.ref
                await self._register_turn(req, conversation, model, key_id, out, progress)
                return Completion(out.body or b"", model.ref, progress.attempts)
            tried.append(_Tried(model.ref, key_id, out.kind, out.status, out.message, out.retry_after_s))
            if out.forwarded:
                # Content already reached the client: the stream was ended with an error event.
                return Failure(
                    502, out.message, "upstream_error", out.kind, attempts=progress.attempts, sent=True
                )
            route = _learn(route, model, key_id, out)
            route = await self._protect(req, route, conversation, model, out, decision.pin_used)
            if out.kind == "truncated" and out.body is not None:
                fallback_body, fallback_ref = out.body, model.ref
            if out.kind == "bad_request" and bad_request is None:
                bad_request, bad_request_at = tried[-1], len(tried) - 1
        if fallback_body is not None:
            return Completion(fallback_body, fallback_ref, progress.attempts)
        return _final_failure(tried, list(excluded), no_key, bad_request, progress.attempts, self._now())

    async def _register_turn(
        self,
        req: ChatRequest,
        conversation: _Conversation,
        model: CatalogModel,
        key_id: str,
        out: _Outcome,
        progress: _Progress,
    ) -> None:
        """A successful turn pins the conversation (when pins apply) under the key its next turn will have."""
        if not conversation.pins:
            return
        session = conversation.session
        if session is None:  # a first turn: the next one is known by the reply served now
            reply = progress.reply_text if req.stream else _reply_text(out.body)
            if reply is None:
                return
            session = derived_session(conversation.system, conversation.first_user, reply)
            for platform, reason in conversation.banned:  # bans of this first turn, now that it has a key
                await self._log.append_durable(
                    SessionBanned(
                        ts=self._now(),
                        request_id=req.request_id,
                        session=session,
                        platform=platform,
                        reason=reason,
                    )
                )
        # Durable: the client's next turn may arrive as soon as this one ends, and must find its pin.
        await self._log.append_durable(
            SessionPinned(
                ts=self._now(),
                request_id=req.request_id,
                session=session,
                platform=model.platform,
                model=model.id,
                key_id=key_id,
            )
        )

    async def _protect(
        self,
        req: ChatRequest,
        route: RouteInput,
        conversation: _Conversation,
        model: CatalogModel,
        out: _Outcome,
        pin_used: bool,
    ) -> RouteInput:
        """Thread protection: the platform's level and the failure decide what this request and this
        session avoid from now on (events/sessions.py has the table). It guards conversations, so it acts
        only where pins apply; elsewhere a failure just moves on to the next key, then the next model."""
        if not conversation.pins:
            return route
        action = protect(self._sessions.level(model.platform), out.kind, out.forwarded)
        changes: dict[str, Any] = {}
        if action.skip_model:
            changes["skip_models"] = (*route.skip_models, (model.ref, action.reason))
        if action.ban_platform:
            changes["skip_platforms"] = (*route.skip_platforms, (model.platform, action.reason))
        session = conversation.session
        if session is None and action.ban_platform:
            conversation.banned.append((model.platform, action.reason))
        if session is not None:
            if action.ban_platform:
                await self._log.append_durable(
                    SessionBanned(
                        ts=self._now(),
                        request_id=req.request_id,
                        session=session,
                        platform=model.platform,
                        reason=action.reason,
                    )
                )
            if action.clear_pin and pin_used and not conversation.pin_cleared:
                conversation.pin_cleared = True
                await self._log.append_durable(
                    SessionPinCleared(
                        ts=self._now(), request_id=req.request_id, session=session, reason=action.reason
                    )
                )
        return msgspec.structs.replace(route, **changes) if changes else route

    async def _attempt(
        self,
        req: ChatRequest,
        model: CatalogModel,
        key_id: str,
        reserved_tokens: int,
        progress: _Progress,
        emit: Callable[[StreamItem], Awaitable[None]],
    ) -> _Outcome:
        self._attempts += 1
        base = {
            "request_id": req.request_id,
            "attempt": progress.attempts,
            "platform": model.platform,
            "model": model.id,
            "key_id": key_id,
        }
        await self._log.append(
            AttemptStarted(
                ts=self._now(), reserved_tokens=reserved_tokens, session=progress.conversation.session, **base
            )
        )
        body = dict(req.body)
        body["model"] = model.id
        call = UpstreamCall(model.platform, model.id, key_id, body, req.stream)
        first_byte_s = self._deadlines.first_byte_for(model.platform)
        timer = _Timer(trio.current_time())
        deadline = trio.CancelScope(deadline=trio.current_time() + first_byte_s)
        out = _Outcome(ok=False)
        stream_state = _StreamState()
        headers: Mapping[str, str] = {}
        ended = False  # every AttemptStarted gets an end event, or quotas and in-flight counts would leak
        try:
            try:
                with deadline:
                    async with self._upstream.open(call) as resp:
                        headers = resp.headers
                        json_answer = "json" in resp.headers.get("content-type", "")
                        if resp.status != 200 or not req.stream or json_answer:
                            # (Asked to stream, a provider may still answer with one JSON document.)
                            raw = await _read_body(resp.chunks(), deadline, timer, self._deadlines.stall_s)
                            out = self._judge_body(req, resp.status, resp.headers, raw, stream_state)
                            if req.stream and (out.ok or out.delivered) and out.body is not None:
                                deadline.deadline = math.inf
                                await self._send_as_stream(model.ref, out.body, stream_state, progress, emit)
                                out.forwarded = out.delivered = True
                        else:
                            out = await self._relay(
                                req, model.ref, resp.chunks(), deadline, timer, stream_state, progress, emit
                            )
            except TransportFailure as exc:
                out = _Outcome(False, "connect", None, str(exc), forwarded=stream_state.forwarded)
            if deadline.cancelled_caught:
                mid = stream_state.forwarded
                silent = trio.current_time() - (timer.last or timer.start)
                await self._log.append(
                    StreamStalled(
                        ts=self._now(),
                        request_id=req.request_id,
                        platform=model.platform,
                        model=model.id,
                        key_id=key_id,
                        phase="mid" if mid else "pre",
                        silent_s=round(silent, 3),
                    )
                )
                if timer.first is None:
                    what, limit = "sent no first byte", first_byte_s
                else:
                    what, limit = "stopped sending", self._deadlines.stall_s
                out = _Outcome(
                    False,
                    "stall_mid" if mid else "stall_pre",
                    None,
                    f"{model.ref} {what} within {limit:g}s",
                    forwarded=mid,
                )
            # Provider error text can echo the key (some 401s quote part of it): scrubbed before it goes
            # anywhere (events, the client's error).
            out.message = self._upstream.redact(key_id, out.message)
            if out.forwarded and not out.ok and not out.delivered:
                # Honest ending: the client already has content, so it gets an error event, never a fake stop.
                err_type = "stream_timeout" if out.kind == "stall_mid" else "upstream_error"
                await emit(error_frame(out.message, err_type, out.kind))
                await emit(DONE)
            latency = timer.elapsed_ms()
            if out.ok:
                await self._log.append(
                    AttemptSucceeded(
                        ts=self._now(),
                        latency_ms=latency,
                        ttfb_ms=timer.ttfb_ms(),
                        input_tokens=stream_state.input_tokens or req.est_tokens,
                        output_tokens=stream_state.output_tokens,
                        streamed=req.stream,
                        exhausted_for_s=taxonomy.exhausted_for_s(headers, self._now()),
                        **base,
                    )
                )
            else:
                await self._log.append(
                    AttemptFailed(
                        ts=self._now(),
                        kind=out.kind,
                        status=out.status,
                        message=out.message,
                        retry_after_s=out.retry_after_s,
                        latency_ms=latency,
                        mid_stream=out.forwarded,
                        **base,
                    )
                )
                if out.kind == "auth" and out.status is not None:
                    # Durable: this request's next decision must not pick the key for another model.
                    await self._log.append_durable(
                        KeyInvalidated(ts=self._now(), key_id=key_id, status=out.status, message=out.message)
                    )
            ended = True
        finally:
            if not ended:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._log.append(
                        AttemptFailed(
                            ts=self._now(),
                            kind="client_abort",
                            message="abandoned: the client went away",
                            latency_ms=timer.elapsed_ms(),
                            mid_stream=stream_state.forwarded,
                            **base,
                        )
                    )
        return out

    async def _send_as_stream(
        self,
        ref: str,
        body: bytes,
        state: _StreamState,
        progress: _Progress,
        emit: Callable[[StreamItem], Awaitable[None]],
    ) -> None:
        """A whole answer where a stream was asked for: sent as one chunk, a finish and [DONE]."""
        completion = _decode(body)
        choice = completion["choices"][0]
        message = {k: v for k, v in (choice.get("message") or {}).items() if v is not None}
        base = {k: completion.get(k) for k in ("id", "created", "model")}
        chunk = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": message, "finish_reason": choice.get("finish_reason")}],
        }
        state.forwarded = progress.forwarded = True
        progress.routed = ref
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                call.setdefault("index", 0)
        _inspect_chunk(chunk, state, progress)
        await emit(Routed(ref, progress.attempts))
        await emit(frame(_encode(chunk)))
        await emit(DONE)

    def _judge_body(
        self, req: ChatRequest, status: int, headers: Mapping[str, str], raw: bytes, state: _StreamState
    ) -> _Outcome:
        try:
            payload = _decode(raw) if raw else None
        except (msgspec.DecodeError, RecursionError):
            payload = None
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else None
            error = error if isinstance(error, dict) else ({"message": error} if error else None)
            kind = taxonomy.kind_for_status(status, error)
            fallback = raw[:200].decode("utf-8", "replace") or f"HTTP {status}"
            return _Outcome(
                False,
                kind,
                status,
                taxonomy.error_message(error, fallback),
                retry_after_s=taxonomy.retry_after_s(headers, self._now()),
            )
        wrapped = taxonomy.wrapped_error(payload)
        if wrapped is not None:
            code, error = wrapped
            return _Outcome(
                False,
                taxonomy.kind_for_status(code, error),
                code,
                "wrapped error: " + taxonomy.error_message(error, "error in a 200 response"),
            )
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("choices"), list)
            or not payload["choices"]
        ):
            return _Outcome(False, "server_error", 502, "the provider's answer is not a chat completion")
        choice = payload["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return _Outcome(False, "server_error", 502, "the provider's answer has no message")
        _normalise_message(message)
        if isinstance(payload.get("usage"), dict):
            state.take_usage(payload["usage"])
        if not state.output_tokens_reported:
            state.output_chars = len(message.get("content") or "")
        if not message.get("content") and not message.get("tool_calls"):
            return _Outcome(False, "empty", 200, "the answer has no content and no tool calls")
        body = _encode(payload)
        if _truncated(choice.get("finish_reason"), req, payload.get("usage")):
            return _Outcome(
                False, "truncated", 200, "the answer was cut off (finish_reason length)", body=body
            )
        return _Outcome(True, body=body)

    async def _relay(
        self,
        req: ChatRequest,
        ref: str,
        chunks: Any,
        deadline: trio.CancelScope,
        timer: _Timer,
        state: _StreamState,
        progress: _Progress,
        emit: Callable[[StreamItem], Awaitable[None]],
    ) -> _Outcome:
        async with aclosing(data_frames(chunks)) as frames:
            return await self._relay_frames(req, ref, frames, deadline, timer, state, progress, emit)

    async def _relay_frames(
        self,
        req: ChatRequest,
        ref: str,
        frames: AsyncIterator[bytes],
        deadline: trio.CancelScope,
        timer: _Timer,
        state: _StreamState,
        progress: _Progress,
        emit: Callable[[StreamItem], Awaitable[None]],
    ) -> _Outcome:
        stall_s = self._deadlines.stall_s
        pending: list[bytes] = []  # frames before the first content: held back so a failure can fall over
        finish: str | None = None
        done = False
        async for payload in frames:
            timer.first_byte()
            deadline.deadline = trio.current_time() + stall_s
            if payload == b"[DONE]":
                done = True
                if state.forwarded:
                    deadline.deadline = math.inf
                    await emit(DONE)
                    # Then let the body end (usually one more read) so the connection goes back to the pool.
                    with trio.move_on_after(DRAIN_S):
                        async for _ in frames:
                            pass
                break
            try:
                obj = _decode(payload)
            except msgspec.DecodeError:
                continue
            wrapped = taxonomy.wrapped_error(obj)
            if wrapped is not None:
                code, error = wrapped
                message = "wrapped error: " + taxonomy.error_message(error, "error frame in the stream")
                return _Outcome(
                    False, taxonomy.kind_for_status(code, error), code, message, forwarded=state.forwarded
                )
            has_content, finish_now, usage = _inspect_chunk(obj, state, progress)
            finish = finish_now or finish
            if usage:
                state.take_usage(usage)
            if not state.forwarded and not has_content:
                pending.append(payload)
                continue
            # Sending to the client is not the upstream's time: suspend the stall deadline meanwhile.
            deadline.deadline = math.inf
            if not state.forwarded:
                state.forwarded = progress.forwarded = True
                progress.routed = ref
                await emit(Routed(ref, progress.attempts))
                for held in pending:
                    await emit(frame(held))
                pending.clear()
            await emit(frame(payload))
            deadline.deadline = trio.current_time() + stall_s
        if not state.forwarded:
            return _Outcome(False, "empty", 200, "the stream ended with no content and no tool calls")
        if not done and finish is None:
            # The body ended mid-answer: an honest error event, never a normal-looking ending.
            return _Outcome(
                False, "connect", None, "the stream ended before the answer finished", forwarded=True
            )
        deadline.deadline = math.inf
        if not done:
            await emit(DONE)
        if _truncated(finish, req, None):
            # Delivered as the provider sent it (finish_reason says so); recorded as a model fault.
            return _Outcome(
                False,
                "truncated",
                200,
                "the answer was cut off (finish_reason length)",
                forwarded=True,
                delivered=True,
            )
        return _Outcome(True)


async def _read_body(
    chunks: AsyncGenerator[bytes], deadline: trio.CancelScope, timer: _Timer, stall_s: float
) -> bytes:
    raw = bytearray()
    async with aclosing(chunks):
        async for chunk in chunks:
            timer.first_byte()
            raw += chunk
            deadline.deadline = trio.current_time() + stall_s
    return bytes(raw)


@dataclass
class _Conversation:
    """The request's session: its key (None for a first turn without X-Session-Id) and whether pins apply
    (auto-smart, or any mode when the client names its session; balanced routing never pins)."""

    session: str | None
    pins: bool
    system: str = ""
    first_user: str = ""
    pin_cleared: bool = False
    banned: list[tuple[str, str]] = field(
        default_factory=list
    )  # a first turn's bans, logged once it has a key

    @classmethod
    def of(cls, req: ChatRequest, mode: str) -> _Conversation:
        if req.session_header:
            return cls(header_session(req.session_header), True)
        if mode != "auto-smart":
            return cls(None, False)
        system, first_user, first_reply = conversation_opening(req.body.get("messages", ()))
        session = derived_session(system, first_user, first_reply) if first_reply is not None else None
        return cls(session, True, system, first_user)


@dataclass
class _Progress:
    attempts: int = 0
    current: str = ""
    routed: str = ""
    forwarded: bool = False
    conversation: _Conversation = field(default_factory=lambda: _Conversation(None, False))
    reply_parts: list[str] = field(default_factory=list)  # streamed content, for the session key
    tool_calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [name, arguments...]

    @property
    def reply_text(self) -> str | None:
        calls = [
            {"function": {"name": parts[0], "arguments": "".join(parts[1:])}}
            for _, parts in sorted(self.tool_calls.items())
        ]
        return message_text({"content": "".join(self.reply_parts), "tool_calls": calls})


@dataclass
class _StreamState:
    forwarded: bool = False
    output_chars: int = 0
    input_tokens: int = 0
    output_tokens_reported: int = 0

    @property
    def output_tokens(self) -> int:
        return self.output_tokens_reported or (self.output_chars + 3) // 4

    @output_tokens.setter
    def output_tokens(self, value: int) -> None:
        self.output_tokens_reported = value

    def take_usage(self, usage: Mapping[str, Any]) -> None:
        """The provider's token counts, when they are counts (anything else would poison the log)."""
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        if prompt:
            self.input_tokens = prompt
        if completion:
            self.output_tokens = completion


class _Timer:
    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.last: float | None = None

    def first_byte(self) -> None:
        self.last = trio.current_time()
        if self.first is None:
            self.first = self.last

    def ttfb_ms(self) -> float:
        return ((self.first or trio.current_time()) - self.start) * 1000

    def elapsed_ms(self) -> float:
        return (trio.current_time() - self.start) * 1000


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _reply_text(body: bytes | None) -> str | None:
    try:
        message = _decode(body or b"")["choices"][0]["message"]
    except (msgspec.DecodeError, KeyError, IndexError, TypeError):
        return None
    return message_text(message) if isinstance(message, dict) else None


def _inspect_chunk(
    obj: Any, state: _StreamState, progress: _Progress
) -> tuple[bool, str | None, dict[str, Any] | None]:
    """(has content, finish_reason, usage) of one chunk. Content = text, reasoning or a tool call."""
    if not isinstance(obj, dict):
        return False, None, None
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    has_content = False
    finish = None
    choices = obj.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        finish = choice.get("finish_reason") or finish
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        content = delta.get("content")
        text = content or delta.get("reasoning_content") or delta.get("reasoning")
        if text:
            has_content = True
            state.output_chars += len(text) if isinstance(text, str) else 1
        if isinstance(content, str) and progress.conversation.pins:
            progress.reply_parts.append(content)
        calls = delta.get("tool_calls")
        if calls:
            has_content = True
            if progress.conversation.pins and isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    index = call.get("index", 0) if isinstance(call, dict) else 0
                    if not isinstance(fn, dict) or not isinstance(index, int):
                        continue
                    parts = progress.tool_calls.setdefault(index, [""])
                    parts[0] += fn.get("name") if isinstance(fn.get("name"), str) else ""
                    parts.append(fn.get("arguments") if isinstance(fn.get("arguments"), str) else "")
    return has_content, finish, usage


def _truncated(finish_reason: Any, req: ChatRequest, usage: Any) -> bool:
    """`length` is a failure when the client set no limit, or got fewer tokens than it asked for."""
    if finish_reason != "length":
        return False
    limit = req.client_max_tokens
    if limit is None:
        return True
    got = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return isinstance(got, int) and got < limit


def _normalise_message(message: dict[str, Any]) -> None:
    """Array content becomes text; a reasoning-only answer without tool calls becomes the content."""
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    if not message.get("content") and not message.get("tool_calls"):
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            message["content"] = reasoning


def _learn(route: RouteInput, model: CatalogModel, key_id: str, out: _Outcome) -> RouteInput:
    """What the next decision of this request must avoid after a failed attempt."""
    changes: dict[str, Any] = {"tried": (*route.tried, (key_id, model.ref))}
    if out.kind == "model_missing":
        changes["skip_models"] = (
            *route.skip_models,
            (model.ref, "the provider said the model does not exist"),
        )
    elif out.kind == "context_exceeded":
        changes["min_context"] = max(route.min_context or 0, model.context_window or 0)
    elif out.kind == "bad_request":
        changes["skip_platforms"] = (
            *route.skip_platforms,
            (model.platform, f"rejected the request: {out.message}"),
        )
    return msgspec.structs.replace(route, **changes)


def _final_failure(
    tried: list[_Tried],
    excluded: list[Excluded],
    no_key: int,
    bad_request: _Tried | None,
    attempts: int,
    now: float,
) -> Failure:
    if bad_request is not None:
        return Failure(
            bad_request.status or 400,
            f"{bad_request.ref}: {bad_request.message}",
            "invalid_request_error",
            "upstream_bad_request",
            attempts=attempts,
        )
    parts = [
        f"{t.ref} (key {t.key_id}): {t.kind}{f' {t.status}' if t.status else ''} {t.message}".rstrip()
        for t in tried
    ]
    # Models the mode's pool leaves out are counted, not listed: listed first, they crowded out the reasons.
    pool, skipped = split_pool(excluded)
    parts += [
        f"{e.ref}: skipped, {e.reason}"
        for e in skipped[:20]
        if not e.reason.endswith("already tried for this request")
    ]
    if len(skipped) > 20:
        parts.append(f"... and {len(skipped) - 20} more models skipped")
    if no_key:
        parts.append(f"{no_key} models have no API key for their platform (switchboard keys add PLATFORM)")
    if pool:
        parts.append(f"{len(pool)} models left out ({POOL_REASON})")
    detail = "; ".join(parts) if parts else "no models are configured"
    kinds = {t.kind for t in tried}
    if tried and kinds == {"context_exceeded"}:
        return Failure(
            400,
            "The request is larger than every available model's context window. Tried: " + detail,
            "invalid_request_error",
            "context_length_exceeded",
            attempts=attempts,
        )
    limited = [e for e in excluded if "rate-limited" in e.reason or "quota:" in e.reason]
    if (tried and kinds == {"rate_limited"}) or (not tried and limited):
        return Failure(
            429,
            "Every candidate is rate-limited. " + detail,
            "rate_limit_error",
            "rate_limit_exceeded",
            retry_after_s=_soonest_retry(tried, limited, now),
            attempts=attempts,
        )
    if not tried:
        return Failure(
            503,
            "No model can take this request right now: " + detail,
            "service_unavailable",
            "no_available_model",
            attempts=attempts,
        )
    return Failure(
        502,
        f"All {len(tried)} attempts failed: {detail}",
        "upstream_error",
        "all_attempts_failed",
        attempts=attempts,
    )


def _soonest_retry(tried: list[_Tried], limited: list[Excluded], now: float) -> float | None:
    waits = [t.retry_after_s for t in tried if t.retry_after_s is not None]
    waits += [e.until - now for e in limited if e.until is not None]
    return max(1.0, min(waits)) if waits else None
