"""The attempt loop's decisions, with no I/O: what the next decision must avoid after an outcome, when to
stop, and what the client is told in the end. The request runner (actors/request.py) does the I/O around
it: asking model-health to decide, calling the upstream, appending events.

One `AttemptLoop` per request:

    loop = AttemptLoop(route, max_attempts)
    while loop.more():
        decision = decide(loop.route)          # recorded as RouteDecided
        loop.decided(decision)
        if decision.chosen is None: break
        attempt = loop.start()
        outcome = ...                          # the attempt's I/O
        if answered: return loop.answered(model)
        step = loop.failed(model, key_id, outcome, protection)
        if step is not None: return step       # content had reached the client: the request ends here
    return loop.finish(now)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from events.catalog import CatalogModel
from events.decide import Decision
from events.failures import FailureKind, traits
from events.outcomes import Failing
from events.sessions import Protection
from events.types import Excluded, ExclusionCode, RouteInput
from events.view import POOL_REASON, split_pool

MAX_LISTED = 20  # exclusions listed in a failure message; the rest are counted


@dataclass(frozen=True)
class Failure:
    """What the client gets when the request fails: an OpenAI-shaped error with a status. `after_content`:
    the stream had content already, so the client protocol ends it with its own error event."""

    status: int
    message: str
    type: str
    code: str | None
    retry_after_s: float | None = None
    attempts: int = 0
    after_content: bool = False


@dataclass(frozen=True)
class Completion:
    """The request was answered (`body`: the whole completion when it was not streamed)."""

    body: bytes
    routed_via: str
    attempts: int
    skipped: tuple[str, ...] = ()  # named models that could not be used, each "ref (why)"


@dataclass(frozen=True)
class Tried:
    ref: str
    key_id: str
    kind: str
    status: int | None
    message: str
    retry_after_s: float | None = None


@dataclass
class AttemptLoop:
    route: RouteInput
    max_attempts: int
    attempts: int = 0
    tried: list[Tried] = field(default_factory=list)
    _excluded: tuple[Excluded, ...] = ()
    _no_key: int = 0
    _named: dict[str, str] = field(default_factory=dict)  # a named model passed over -> why
    _bad_request: int | None = None  # index in `tried` of the first bad request
    _fallback: tuple[bytes, str] | None = None  # a truncated whole answer and its model

    def more(self) -> bool:
        """Whether to decide again: attempts are left, and a bad request has not had its one try elsewhere."""
        if self._bad_request is not None and len(self.tried) > self._bad_request + 1:
            return False
        return self.attempts < self.max_attempts

    def decided(self, decision: Decision) -> None:
        self._excluded, self._no_key = decision.excluded, decision.no_key_models
        if decision.named_refs:
            named = set(decision.named_refs)
            for e in decision.excluded:
                if e.ref in named and e.code != ExclusionCode.TRIED:
                    self._named.setdefault(e.ref, e.reason)
            for ref in decision.named_no_key:
                self._named.setdefault(ref, "its platform has no API key")

    def start(self) -> int:
        self.attempts += 1
        return self.attempts

    def skip_platform(self, platform: str, why: str) -> None:
        """Leave a platform out of the rest of this request (a single-flight admission was refused)."""
        self.route = msgspec.structs.replace(
            self.route, skip_platforms=(*self.route.skip_platforms, (platform, why))
        )

    def answered(self, model: CatalogModel, body: bytes = b"") -> Completion:
        return Completion(body, model.ref, self.attempts, self.skipped(model.ref))

    def failed(
        self, model: CatalogModel, key_id: str, out: Failing, protection: Protection
    ) -> Completion | Failure | None:
        """Learn from a failed attempt. None: decide again. A Completion: the client got a whole (truncated)
        answer; a Failure: the stream had content and ended with an error. Either way the request ends."""
        self.tried.append(Tried(model.ref, key_id, out.kind, out.status, out.message, out.retry_after_s))
        self.route = learn(self.route, model, key_id, out, protection)
        if out.delivered:
            return self.answered(model)
        if out.after_content:
            return Failure(
                502,
                out.message,
                "stream_timeout" if out.kind == FailureKind.STALL_MID else "upstream_error",
                out.kind,
                attempts=self.attempts,
                after_content=True,
            )
        if out.kind == FailureKind.TRUNCATED and out.body is not None:
            self._fallback = (out.body, model.ref)
        if traits(out.kind).retry == "limited" and self._bad_request is None:  # one more try elsewhere
            self._bad_request = len(self.tried) - 1
        return None

    def finish(self, now: float) -> Completion | Failure:
        """No attempt answered: a truncated answer if one came, else the failure the client gets."""
        if self._fallback is not None:
            body, ref = self._fallback
            return Completion(body, ref, self.attempts, self.skipped(ref))
        return final_failure(
            self.tried,
            list(self._excluded),
            self._no_key,
            self.tried[self._bad_request] if self._bad_request is not None else None,
            self.attempts,
            now,
        )

    def skipped(self, answered_by: str) -> tuple[str, ...]:
        """The named models passed over, each "ref (why)", when `answered_by` answers."""
        tried = {t.ref for t in self.tried}
        return tuple(
            f"{ref} ({why})" for ref, why in self._named.items() if ref != answered_by and ref not in tried
        )


def learn(
    route: RouteInput, model: CatalogModel, key_id: str, out: Failing, protection: Protection
) -> RouteInput:
    """What the next decision of this request must avoid after a failed attempt."""
    changes: dict[str, Any] = {"tried": (*route.tried, (key_id, model.ref))}
    skip_models = list(route.skip_models)
    if traits(out.kind).skips_model:
        missing = out.kind == FailureKind.MODEL_MISSING
        skip_models.append(
            (model.ref, "the provider said the model does not exist" if missing else out.message)
        )
    if protection.skip_model:
        skip_models.append((model.ref, protection.reason))
    if len(skip_models) > len(route.skip_models):
        changes["skip_models"] = tuple(skip_models)
    skip_platforms = list(route.skip_platforms)
    if out.kind == FailureKind.BAD_REQUEST:
        skip_platforms.append((model.platform, f"rejected the request: {out.message}"))
    if protection.ban_platform:
        skip_platforms.append((model.platform, protection.reason))
    if len(skip_platforms) > len(route.skip_platforms):
        changes["skip_platforms"] = tuple(skip_platforms)
    if out.kind == FailureKind.CONTEXT_EXCEEDED:
        changes["min_context"] = max(route.min_context or 0, model.context_window or 0)
    return msgspec.structs.replace(route, **changes)


def final_failure(
    tried: list[Tried],
    excluded: list[Excluded],
    no_key: int,
    bad_request: Tried | None,
    attempts: int,
    now: float,
) -> Failure:
    """The error a client gets when no attempt answered: its status follows what went wrong; its message
    lists each attempt and why the other models were not tried."""
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
    pool, others = split_pool(excluded)
    # Tried models are listed above with what they did; their own "tried" and "skipped after failing here"
    # exclusions would only say it again.
    tried_refs = {t.ref for t in tried}
    skipped = [
        e
        for e in others
        if e.code != ExclusionCode.TRIED and not (e.code == ExclusionCode.SKIPPED and e.ref in tried_refs)
    ]
    parts += [f"{e.ref}: skipped, {e.reason}" for e in skipped[:MAX_LISTED]]
    if len(skipped) > MAX_LISTED:
        parts.append(f"... and {len(skipped) - MAX_LISTED} more models skipped")
    if no_key:
        parts.append(f"{no_key} models have no API key for their platform (switchboard keys add PLATFORM)")
    if pool:
        parts.append(f"{len(pool)} models left out ({POOL_REASON})")
    detail = "; ".join(parts) if parts else "no models are configured"
    kinds = {t.kind for t in tried}
    if tried and kinds == {FailureKind.CONTEXT_EXCEEDED}:
        return Failure(
            400,
            "The request is larger than every available model's context window. Tried: " + detail,
            "invalid_request_error",
            "context_length_exceeded",
            attempts=attempts,
        )
    limited = [e for e in excluded if e.code in (ExclusionCode.RATE_LIMITED, ExclusionCode.QUOTA)]
    if (tried and kinds == {FailureKind.RATE_LIMITED}) or (not tried and limited):
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
    if kinds == {FailureKind.STALL_PRE}:
        return Failure(
            504,
            f"Every attempt timed out before it sent an answer: {detail}",
            "timeout_error",
            "stream_timeout",
            attempts=attempts,
        )
    return Failure(
        502,
        f"All {len(tried)} attempts failed: {detail}",
        "upstream_error",
        "all_attempts_failed",
        attempts=attempts,
    )


def _soonest_retry(tried: list[Tried], limited: list[Excluded], now: float) -> float | None:
    waits = [t.retry_after_s for t in tried if t.retry_after_s is not None]
    waits += [e.until - now for e in limited if e.until is not None]
    return max(1.0, min(waits)) if waits else None
