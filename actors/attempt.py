"""One upstream attempt's I/O: open the call in a cancel scope, read the body or relay the stream, judge it
(events/judge.py), and record it. Every `AttemptStarted` gets exactly one end event, whatever happens
(cancellation included), or quota reservations and in-flight counts would leak.

Deadlines (DESIGN.md section 5) are one cancel scope: the first-byte deadline, then pushed forward by
`stall_s` on every frame (and every body chunk), and suspended while a frame is handed to the client (that
is not the upstream's time). Leaving the scope leaves the transport's context, which closes the upstream
connection: a stalled attempt really hangs up.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import TypedDict

import msgspec
import trio

from actors.key_checker import check_key
from actors.log_writer import LogWriter
from actors.sse import data_frames
from actors.stream import END, Emit, Routed
from actors.upstream import FrameParser, ProviderAdapter, TransportFailure, Upstream, UpstreamCall
from events import taxonomy
from events.failures import FailureKind, traits
from events.frames import completion_as_chunk
from events.judge import StreamJudge, judge_completion, judge_embeddings
from events.outcomes import Answered, ClientGone, Failed, Outcome, Stalled
from events.types import AttemptFailed, AttemptStarted, AttemptSucceeded, KeyInvalidated, StreamStalled

DRAIN_S = 0.5  # after [DONE], how long to wait for the upstream to end its body
_decode = msgspec.json.decode


@dataclass(frozen=True)
class AttemptSpec:
    """What one attempt is: the call, where it goes, its deadlines and its share of the quotas."""

    request_id: str
    attempt: int
    call: UpstreamCall
    reserved_tokens: int
    est_tokens: int
    client_max_tokens: int | None
    first_byte_s: float
    stall_s: float
    session: str | None = None
    keep_reply: bool = False  # collect the streamed reply (a first turn's session key comes from it)


class _Ids(TypedDict):
    request_id: str
    attempt: int
    platform: str
    model: str
    key_id: str


Settle = Callable[[Outcome], Awaitable[None]]


def client_left(exc: BaseException) -> bool:
    """Whether `exc` is a cancellation or a closed stream, the ways a client's leaving reaches a task; also
    when it comes grouped (trio's nurseries, e.g. the one a TCP connect runs in, raise groups)."""
    gone = (trio.Cancelled, trio.BrokenResourceError)
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(gone)[1] is None
    return isinstance(exc, gone)


class Attempt:
    """Runs one attempt. `emit` hands items to the client's stream; `routed` (streams only) is emitted right
    before the first content, so the client learns where the answer comes from before it sees any of it.

    `settle` is called exactly once with the final outcome (not for a client that went away), after the end
    event is recorded and, for a stream the client can finish, before its END: a turn's pin or a ban is
    committed before the client can send the next turn."""

    def __init__(
        self, spec: AttemptSpec, upstream: Upstream, log: LogWriter, now: Callable[[], float]
    ) -> None:
        self.spec = spec
        self._upstream = upstream
        self._log = log
        self._now = now
        self.judge = StreamJudge(spec.client_max_tokens, spec.keep_reply) if spec.call.stream else None
        self._start = trio.current_time()
        self._first: float | None = None
        self._last: float | None = None
        self._headers: Mapping[str, str] = {}
        self._ended = False  # the end event is recorded
        self._settled = False

    @property
    def content_sent(self) -> bool:
        return self.judge is not None and self.judge.sent

    async def run(self, emit: Emit, routed: Routed | None, settle: Settle) -> Outcome:
        s, call = self.spec, self.spec.call
        self._base: _Ids = {
            "request_id": s.request_id,
            "attempt": s.attempt,
            "platform": call.platform,
            "model": call.model,
            "key_id": call.key_id,
        }
        self._settle = settle
        await self._log.append(
            AttemptStarted(ts=self._now(), reserved_tokens=s.reserved_tokens, session=s.session, **self._base)
        )
        try:
            out = await self._call(emit, routed)
            return out if self._settled else await self._conclude(out)
        except BaseException as exc:
            if not self._ended:
                # A client that went away cancels us (or stops reading); anything else is a gateway bug, which
                # propagates, recorded as such rather than blamed on the client.
                end: Outcome = (
                    ClientGone(self.content_sent)
                    if client_left(exc)
                    else Failed(FailureKind.INTERNAL, f"gateway error: {type(exc).__name__}")
                )
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._record(end)
            raise

    async def _conclude(self, out: Outcome) -> Outcome:
        """The outcome is final: scrub it, check a 403's key, record it, settle it."""
        call = self.spec.call
        if isinstance(out, Failed):
            # Provider error text can echo the key (some 401s quote part of it): scrubbed before it goes
            # anywhere (events, the client's error).
            out = replace(out, message=self._upstream.redact(call.key_id, out.message))
            if out.kind == FailureKind.AUTH and out.status == 403:
                out = await self._check_forbidden(out)
        await self._record(out)
        self._settled = True
        await self._settle(out)
        return out

    async def _call(self, emit: Emit, routed: Routed | None) -> Outcome:
        s = self.spec
        deadline = trio.CancelScope(deadline=trio.current_time() + s.first_byte_s)
        out: Outcome
        try:
            with deadline:
                async with self._upstream.open(s.call) as resp:
                    self._headers = resp.headers
                    adapter = resp.adapter
                    json_answer = "json" in resp.headers.get("content-type", "")
                    if resp.status != 200 or self.judge is None or json_answer:
                        # (Asked to stream, a provider may still answer with one JSON document.)
                        raw = await self._read_body(resp.chunks(), deadline)
                        if resp.status != 200:
                            out = adapter.error(resp.status, resp.headers, raw, self._now())
                        else:
                            out = self._judge_whole(adapter, raw)
                        if self.judge is not None and isinstance(out, Answered) and out.body is not None:
                            deadline.deadline = math.inf
                            out = await self._send_whole(out, emit, routed)
                    else:
                        parser = adapter.stream_frames()  # one per stream: frames may depend on earlier ones
                        out = await self._relay(resp.chunks(), parser, deadline, emit, routed)
        except TransportFailure as exc:
            kind = FailureKind.INTERNAL if exc.local else FailureKind.CONNECT  # ours, not the provider's
            out = Failed(kind, str(exc), after_content=self.content_sent)
        if deadline.cancelled_caught:
            out = await self._stalled()
        return out

    def _judge_whole(self, adapter: ProviderAdapter, raw: bytes) -> Answered | Failed:
        """A whole 200 answer, judged by what the call asked for."""
        call = self.spec.call
        if call.operation == "embeddings":
            inputs, dimensions = len(call.body.get("input") or ()), call.body.get("dimensions")
            return judge_embeddings(adapter.embeddings(raw), inputs, dimensions)
        return judge_completion(adapter.completion(raw), self.spec.client_max_tokens)

    async def _read_body(self, chunks: AsyncGenerator[bytes], deadline: trio.CancelScope) -> bytes:
        raw = bytearray()
        async with aclosing(chunks):
            async for piece in chunks:
                self._byte()
                raw += piece
                deadline.deadline = trio.current_time() + self.spec.stall_s
        return bytes(raw)

    async def _send_whole(self, answer: Answered, emit: Emit, routed: Routed | None) -> Outcome:
        assert self.judge is not None and answer.body is not None and routed is not None
        chunk = completion_as_chunk(_decode(answer.body))
        self.judge.whole(answer, chunk)
        await emit(routed)
        await emit(chunk)
        out = await self._conclude(answer)
        await emit(END)
        return out

    async def _relay(
        self,
        chunks: AsyncGenerator[bytes],
        parser: FrameParser,
        deadline: trio.CancelScope,
        emit: Emit,
        routed: Routed | None,
    ) -> Outcome:
        judge, stall_s = self.judge, self.spec.stall_s
        assert judge is not None and routed is not None  # streams only
        done = False
        async with aclosing(data_frames(chunks)) as frames:
            async for payload in frames:
                self._byte()
                deadline.deadline = trio.current_time() + stall_s
                if payload == b"[DONE]":
                    done = True
                    if judge.sent:
                        deadline.deadline = math.inf
                        out = await self._conclude(judge.end(True))
                        await emit(END)
                        # The answer is settled. Let the body end (usually one more read) so the connection
                        # goes back to the pool; how it ends changes nothing now.
                        with trio.move_on_after(DRAIN_S):
                            try:
                                async for _ in frames:
                                    pass
                            except TransportFailure:
                                pass
                        return out
                    break
                first = not judge.sent
                verdict = judge.feed(parser.frame(payload))
                if verdict is None:
                    continue
                if isinstance(verdict, Failed):
                    return verdict
                # Handing frames to the client is not the upstream's time: the stall deadline waits meanwhile.
                deadline.deadline = math.inf
                if first:
                    await emit(routed)
                for chunk in verdict:
                    await emit(chunk)
                deadline.deadline = trio.current_time() + stall_s
        out = judge.end(done)
        deadline.deadline = math.inf
        if isinstance(out, Answered) or out.delivered:
            out = await self._conclude(out)
            await emit(END)
        return out

    async def _stalled(self) -> Stalled:
        s, mid = self.spec, self.content_sent
        silent = round(trio.current_time() - (self._last or self._start), 3)
        if self._first is None:
            what, limit = "sent no first byte", s.first_byte_s
        else:
            what, limit = "stopped sending", s.stall_s
        ref = f"{s.call.platform}/{s.call.model}"
        stalled = Stalled("mid" if mid else "pre", f"{ref} {what} within {limit:g}s", silent)
        await self._log.append(
            StreamStalled(
                ts=self._now(),
                request_id=s.request_id,
                platform=s.call.platform,
                model=s.call.model,
                key_id=s.call.key_id,
                phase=stalled.phase,
                silent_s=stalled.silent_s,
            )
        )
        return stalled

    async def _check_forbidden(self, out: Failed) -> Failed:
        """403s are often about a model or the content, not the key: the key is checked before it is
        believed invalid. A key that works is kept; only this key x model cools (events/key_health.py)."""
        call = self.spec.call
        checked = await check_key(self._upstream, call.platform, call.key_id, self._now)
        await self._log.append(msgspec.structs.replace(checked, request_id=self.spec.request_id))
        if checked.status in (401, 403):
            return out
        # A check that could not tell (a 5xx, no answer) is no proof the key is bad: only this model cools.
        said = "the key works" if checked.ok else f"the key check did not fail it ({checked.message})"
        return replace(
            out, kind=FailureKind.FORBIDDEN, message=f"{out.message} ({said}: this model is cooled)"
        )

    async def _record(self, out: Outcome) -> None:
        """The attempt's one end event (`_ended` once it is queued), and a bad key's invalidation."""
        now, latency, base = self._now(), (trio.current_time() - self._start) * 1000, self._base
        match out:
            case Answered(usage=usage):
                await self._log.append(
                    AttemptSucceeded(
                        ts=now,
                        latency_ms=latency,
                        ttfb_ms=((self._first or trio.current_time()) - self._start) * 1000,
                        input_tokens=usage.input_tokens or self.spec.est_tokens,
                        output_tokens=usage.output_tokens,
                        streamed=self.spec.call.stream,
                        exhausted_for_s=taxonomy.exhausted_for_s(self._headers, now),
                        **base,
                    )
                )
                self._ended = True
            case ClientGone(after_content=mid):
                await self._log.append(
                    AttemptFailed(
                        ts=now,
                        kind=FailureKind.CLIENT_ABORT,
                        message="abandoned: the client went away",
                        latency_ms=latency,
                        mid_stream=mid,
                        **base,
                    )
                )
                self._ended = True
            case Failed() | Stalled():
                await self._log.append(
                    AttemptFailed(
                        ts=now,
                        kind=out.kind,
                        status=out.status,
                        message=out.message,
                        retry_after_s=out.retry_after_s,
                        latency_ms=latency,
                        mid_stream=out.after_content,
                        **base,
                    )
                )
                self._ended = True
                if traits(out.kind).scope == "key" and out.status is not None:
                    # Durable: this request's next decision must not pick the key for another model. Shielded:
                    # a client leaving now must not keep a bad key in rotation.
                    invalidated = KeyInvalidated(
                        ts=now,
                        request_id=self.spec.request_id,
                        key_id=self.spec.call.key_id,
                        status=out.status,
                        message=out.message,
                    )
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await self._log.append_durable(invalidated)

    def _byte(self) -> None:
        self._last = trio.current_time()
        if self._first is None:
            self._first = self._last
