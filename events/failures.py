"""Failure kinds: the one table of what each kind of failed attempt means (DESIGN.md section 5).

Every part of the gateway that reacts to a failure reads its traits here: the projections (does it count
against the model, cool the model, cool the key), the request core (is another candidate worth trying, does
thread protection apply, what does the next decision avoid). `AttemptFailed.kind` stays a plain string in
the log, so a kind this build does not know still decodes; it gets `UNKNOWN`'s traits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class FailureKind(StrEnum):
    CONNECT = "connect"  # connect error, reset, a body that ended mid-answer
    SERVER_ERROR = "server_error"  # 5xx, or an answer that is not a completion
    RATE_LIMITED = "rate_limited"  # 429
    AUTH = "auth"  # 401, or a 403 whose key check failed: the key is invalid
    FORBIDDEN = "forbidden"  # a 403 for a key that works: this key may not use this model
    MODEL_MISSING = "model_missing"  # 404
    CONTEXT_EXCEEDED = "context_exceeded"  # 413 or a context-length error
    BAD_REQUEST = "bad_request"  # 400 / 422: probably the client's fault
    TRUNCATED = "truncated"  # finish_reason length when the client set no (smaller) limit
    EMPTY = "empty"  # no content and no tool calls
    STALL_PRE = "stall_pre"  # no first byte in time
    STALL_MID = "stall_mid"  # silence after content began
    CLIENT_ABORT = "client_abort"  # the client went away: nobody's fault upstream
    INTERNAL = "internal"  # the gateway failed on this attempt (a bug, in its log): nobody's fault upstream


Scope = Literal["none", "key", "key_model", "model"]


@dataclass(frozen=True)
class Traits:
    """What a failure of this kind means.

    - `model_fault`: counts against the model's success rate (its bandit stats).
    - `transient`: the model cools for a short while once every usable key failed like this.
    - `scope`: what the failure is about: the key (invalidated), the key for this model (cooled), the model.
    - `retry`: another candidate may succeed ("limited": one more try on another platform).
    - `protected`: thread protection applies (ban the platform or skip the model for the conversation).
    - `skips_model`: the rest of this request does not try the model's other keys.
    """

    model_fault: bool
    transient: bool
    scope: Scope
    retry: Literal["yes", "limited", "no"]
    protected: bool
    skips_model: bool = False


_T = Traits
TRAITS: dict[str, Traits] = {
    FailureKind.CONNECT: _T(model_fault=True, transient=True, scope="model", retry="yes", protected=True),
    FailureKind.SERVER_ERROR: _T(
        model_fault=True, transient=True, scope="model", retry="yes", protected=True
    ),
    FailureKind.RATE_LIMITED: _T(
        model_fault=False, transient=False, scope="key_model", retry="yes", protected=True
    ),
    FailureKind.AUTH: _T(model_fault=False, transient=False, scope="key", retry="yes", protected=False),
    FailureKind.FORBIDDEN: _T(
        model_fault=False, transient=False, scope="key_model", retry="yes", protected=False
    ),
    # The provider says it does not serve the model: its other keys will say the same.
    FailureKind.MODEL_MISSING: _T(
        model_fault=True, transient=False, scope="model", retry="yes", protected=False, skips_model=True
    ),
    FailureKind.CONTEXT_EXCEEDED: _T(
        model_fault=False, transient=False, scope="none", retry="yes", protected=False
    ),
    FailureKind.BAD_REQUEST: _T(
        model_fault=False, transient=False, scope="none", retry="limited", protected=False
    ),
    FailureKind.TRUNCATED: _T(model_fault=True, transient=False, scope="model", retry="yes", protected=True),
    FailureKind.EMPTY: _T(model_fault=True, transient=False, scope="model", retry="yes", protected=True),
    # No first byte is the provider's, not the key's: another key of the model would wait as long again.
    FailureKind.STALL_PRE: _T(
        model_fault=True, transient=True, scope="model", retry="yes", protected=True, skips_model=True
    ),
    # After content the stream ends with an error event: nothing is retried.
    FailureKind.STALL_MID: _T(model_fault=True, transient=True, scope="model", retry="no", protected=True),
    FailureKind.CLIENT_ABORT: _T(
        model_fault=False, transient=False, scope="none", retry="no", protected=False
    ),
    FailureKind.INTERNAL: _T(model_fault=False, transient=False, scope="none", retry="no", protected=False),
}
UNKNOWN = Traits(model_fault=False, transient=False, scope="none", retry="yes", protected=False)


def traits(kind: str) -> Traits:
    return TRAITS.get(kind, UNKNOWN)


MODEL_FAULTS = frozenset(k for k, t in TRAITS.items() if t.model_fault)
TRANSIENT = frozenset(k for k, t in TRAITS.items() if t.transient)
PROTECTED = frozenset(k for k, t in TRAITS.items() if t.protected)
