"""What every client protocol's HTTP edge shares: the error it raises for a malformed request, the answer a
protocol handler gives (status, headers, a body or a stream of chunks), OpenAI-shaped errors, and the
routing headers (`X-Routed-Via`, `X-Fallback-Attempts`, `X-Skipped-Models`)."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from quart import Response

from actors.stream import Routed
from events.attempts import Completion, Failure
from service.secrets import TokenCheck

_encode = msgspec.json.encode
logger = logging.getLogger("switchboard.http")
CLOSE = {"Connection": "close"}


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


Headers = Mapping[str, str]  # a request's headers: lower-case names, latin-1 values, the first of a repeat


def header_map(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as every protocol handler takes them (`Headers`), from (name, value) pairs."""
    headers: dict[str, str] = {}
    for name, value in items:
        headers.setdefault(name.lower(), value)
    return headers


def bearer(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` value ("" for another scheme or none)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authorized(tokens: TokenCheck, authorization: str) -> bool:
    token = bearer(authorization)
    return bool(token) and tokens.ok(token)


class ErrorRender(Protocol):
    """A client protocol's error body: every error a protocol's route answers is made by its renderer, so
    a client always gets errors in the shape its SDK parses (OpenAI's `error_answer` by default)."""

    def __call__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> Answer: ...


class AuthThrottle:
    """Failed key attempts per client address. More than `limit` within `window_s` and that address is
    refused (429 with Retry-After) until its oldest failure in the window is `window_s` old: guessing keys
    costs a minute per `limit` guesses. One log line per burst; at most `max_addresses` are remembered."""

    def __init__(
        self,
        limit: int = 20,
        window_s: float = 60.0,
        max_addresses: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.max_addresses, self._now = limit, window_s, max_addresses, now
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, address: str) -> float | None:
        """Seconds the address must wait before its next attempt, or None."""
        failures = self._failures.get(address)
        if failures is None or len(failures) <= self.limit:
            return None
        wait = failures[0] + self.window_s - self._now()
        return wait if wait > 0 else None

    def failed(self, address: str) -> None:
        now = self._now()
        failures = self._failures.get(address)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=self.limit + 1)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        self._failures.move_to_end(address)
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        failures.append(now)
        if len(failures) == self.limit + 1:
            logger.warning(
                "%d failed API key attempts from %s within %gs: refusing it for a while",
                len(failures),
                address,
                self.window_s,
            )


def body_timeout(body_timeout_s: float, error: ErrorRender | None = None) -> Answer:
    return (error or error_answer)(
        408,
        f"The request body did not arrive within {body_timeout_s:g} s.",
        "invalid_request_error",
        "request_timeout",
        headers=dict(CLOSE),
    )


def throttled(wait_s: float, error: ErrorRender | None = None) -> Answer:
    return (error or error_answer)(
        429,
        "Too many requests with an invalid API key from this address; wait before trying again.",
        "rate_limit_error",
        "too_many_failed_attempts",
        headers={"Retry-After": str(max(1, math.ceil(wait_s))), **CLOSE},
    )


BEARER_HOW = "'Authorization: Bearer <key>'"


def unauthorized(error: ErrorRender | None = None, how: str = BEARER_HOW) -> Answer:
    """`how`: the header(s) this protocol takes the key in, as the message tells the client."""
    return (error or error_answer)(
        401,
        f"Invalid or missing API key. Send your gateway key as {how} "
        "(printed when the gateway first started; see README, Troubleshooting).",
        "invalid_request_error",
        "invalid_api_key",
        headers=dict(CLOSE),
    )


def too_large(max_body_bytes: int, error: ErrorRender | None = None) -> Answer:
    return (error or error_answer)(
        413,
        f"The request body is larger than {max_body_bytes / (1024 * 1024):g} MB ([server] max_body_mb).",
        "invalid_request_error",
        "request_too_large",
        headers=dict(CLOSE),
    )


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


_decode = msgspec.json.decode


def json_body(raw: bytes, needs: str) -> dict[str, Any]:
    """A request body as every protocol reads it: a JSON object (`needs` names what it must hold, for the
    message when it is empty), or a BadRequest saying what is wrong with it."""
    if not raw.strip():
        raise BadRequest(f"The request body is empty; send a JSON object with {needs}.", code="invalid_json")
    try:
        body = _decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
    except UnicodeDecodeError as exc:  # msgspec checks a string's UTF-8 as it decodes it
        raise BadRequest(
            f"The request body is not valid UTF-8 (byte {exc.start}); JSON must be UTF-8.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return body


@dataclass
class Answer:
    """What a protocol handler answers, served by whichever HTTP layer called it: a whole body, or chunks
    (a stream, each chunk sent as it comes)."""

    status: int
    body: bytes | AsyncGenerator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    close: Callable[[], None] | None = None  # run once the answer is sent or abandoned, on every path


def error_answer(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Answer:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Answer(status, _encode(body), headers or {})


def quart_response(answer: Answer) -> Response:
    response = Response(
        answer.body, status=answer.status, content_type=answer.content_type, headers=answer.headers
    )
    if not isinstance(answer.body, bytes):
        response.timeout = None  # streams end when they end; our deadlines bound them
    return response


MAX_SKIPPED_HEADER = 1000  # characters of X-Skipped-Models


def routing_headers(result: Completion | Routed) -> dict[str, str]:
    headers = {"X-Routed-Via": result.routed_via, "X-Fallback-Attempts": str(result.attempts - 1)}
    if result.skipped:
        headers["X-Skipped-Models"] = one_line(result.skipped)
    return headers


QUOTE_CHARS = 80  # of a client's own string echoed in an error message


def quoted(text: str) -> str:
    """A client-supplied string as an error message quotes it: a prefix at most, so a 16 KB path or id
    is not sent back (nor logged) whole."""
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"


def one_line(parts: tuple[str, ...]) -> str:
    """Printable ASCII on one line, bounded: safe as a header value and inside an SSE comment."""
    text = "; ".join(parts)[:MAX_SKIPPED_HEADER]
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def failure_answer(failure: Failure, error: ErrorRender | None = None) -> Answer:
    """A request that failed before anything was sent: an HTTP error in the protocol's shape."""
    headers = {"X-Fallback-Attempts": str(max(failure.attempts - 1, 0))}
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(failure.retry_after_s)))
    return (error or error_answer)(failure.status, failure.message, failure.type, failure.code, headers)
