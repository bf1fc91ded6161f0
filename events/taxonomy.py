"""The error taxonomy of DESIGN.md section 5 as pure functions: from what an upstream said to a failure kind.

What each kind means (retried, cools what, protected) is events/failures.py's table. Nothing here looks at a
platform's name.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from typing import Any

from events.failures import FailureKind

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "maximum context",
    "too many tokens",
    "context window",
    "prompt is too long",
    "input is too long",
)


def kind_for_status(status: int, error: Mapping[str, Any] | None = None) -> FailureKind:
    """Classify an HTTP error status (and the provider's error object, if any). A 403 is `auth` here; the
    request runner checks the key before it believes that (a working key makes it `forbidden`)."""
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status in (401, 403):
        return FailureKind.AUTH
    if status == 413 or (status == 400 and _is_context_error(error)):
        return FailureKind.CONTEXT_EXCEEDED
    if status == 404:
        return FailureKind.MODEL_MISSING
    if 400 <= status < 500:
        return FailureKind.BAD_REQUEST
    return FailureKind.SERVER_ERROR


def _is_context_error(error: Mapping[str, Any] | None) -> bool:
    if not error:
        return False
    text = f"{error.get('code', '')} {error.get('type', '')} {error.get('message', '')}".lower()
    return any(marker in text for marker in _CONTEXT_MARKERS)


def wrapped_error(payload: Any) -> tuple[int, Mapping[str, Any]] | None:
    """A 200 body (or SSE frame) with a root-level `error` is a failure: (status its code names, error).

    A code that is not an HTTP error status (a string, 200, absent) counts as 502.
    """
    if not isinstance(payload, dict) or payload.get("error") is None or payload.get("choices"):
        return None
    error = payload["error"]
    if not isinstance(error, dict):
        error = {"message": str(error)}
    code = error.get("code", error.get("status"))
    try:
        status = int(code) if isinstance(code, int | float | str) else 502
    except ValueError:
        status = 502
    if not 400 <= status <= 599:
        status = 502
    return status, error


def error_message(error: Mapping[str, Any] | None, fallback: str, limit: int = 200) -> str:
    """The provider's message, shortened for an event: one line, bounded, never the request body."""
    raw = error.get("message") if error else None
    message = "" if raw is None else str(raw)
    # Whitespace runs (line breaks included, of every kind str.split knows) become one space: a log line
    # and an error message stay one line whatever the provider put in its text, or its plain-text body.
    message = " ".join(message.split()) or " ".join(fallback.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


MAX_WAIT_S = 86400.0  # no provider quota window is longer than a day; anything more is a misreading
_EPOCH_S = 1e9  # a "duration" this large is a Unix time (some providers send the reset instant)


def retry_after_s(headers: Mapping[str, str], now_wall: float) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date), else from `x-ratelimit-reset-*`
    (a duration, or a Unix time in seconds or milliseconds). Always finite, at most a day."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        wait = _bounded(_number(value), now_wall)
        if wait is not None:
            return wait
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return _bounded(when - now_wall, now_wall)
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"):
        parsed = _bounded(_duration_s(headers.get(name)), now_wall)
        if parsed is not None:
            return parsed
    return None


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _bounded(wait: float | None, now_wall: float) -> float | None:
    if wait is None:
        return None
    if wait > _EPOCH_S * 1000:
        wait = wait / 1000 - now_wall
    elif wait > _EPOCH_S:
        wait -= now_wall
    return min(MAX_WAIT_S, max(0.0, wait))


def _duration_s(value: str | None) -> float | None:
    """Provider reset headers come as '12', '1.5s', '250ms' or '1m30s'."""
    if not value:
        return None
    value = value.strip().lower()
    plain = _number(value)
    if plain is not None:
        return max(0.0, plain)
    total, number = 0.0, ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
        elif value.startswith("ms", i) and number:
            if (part := _number(number)) is None:
                return None
            total += part / 1000
            number, i = "", i + 1
        elif ch in "hms" and number:
            if (part := _number(number)) is None:
                return None
            total += part * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
        else:
            return None
        i += 1
    if number:
        return None
    return total


def exhausted_for_s(headers: Mapping[str, str], now_wall: float, default_s: float = 60.0) -> float | None:
    """After a success: if `x-ratelimit-remaining-requests` or `-tokens` says 0, the key is spent until the
    matching reset (else `default_s`). None when the provider says nothing or has quota left."""
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            reset = _bounded(_duration_s(headers.get(f"x-ratelimit-reset-{kind}")), now_wall)
            return reset if reset is not None else default_s
    return None
