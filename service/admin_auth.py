"""Who may use the operators' surface: `/admin/api/...`, `/admin/events` and `/metrics`.

Two ways in, both with the admin token only (a gateway key never grants admin):
- API clients send `Authorization: Bearer <admin token>` on every call;
- the console logs in once (`POST /admin/api/login` with the token in the body) and gets a session cookie:
  HttpOnly (scripts cannot read it), `SameSite=Strict` (other sites' pages do not send it), `Secure` under
  TLS, held server-side (in memory, by its hash) and expiring; `POST /admin/api/logout` ends it. A call that
  changes something with the cookie must also carry the session's CSRF token in `X-CSRF-Token` (given at
  login and by `GET /admin/api/session`), and an `Origin` header, when sent, must be this gateway's.

Failed attempts (a wrong token at login or as a bearer) are counted per client address
(service/edge.py: AuthThrottle): past the limit the address gets 429 until the window passes. Tokens never
travel in URLs: a query string is never read for them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
from quart import Response, current_app, request
from quart_trio import QuartTrio

from service.edge import Answer, AuthThrottle, error_answer, quart_response, quoted
from service.secrets import TokenCheck

COOKIE = "sb_admin"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_PATH = "/admin/api/login"
LOGOUT_PATH = "/admin/api/logout"

_encode = msgspec.json.encode


def is_guarded(path: str) -> bool:
    """Paths only an operator may use. The console's own files (`/admin/`, `/admin/static/...`) are not:
    they hold no data, and the page logs in through the API. Nor are login and logout, which judge their
    callers themselves (a logout clears the cookie even of a session that has expired)."""
    if path.startswith("/admin/api/"):
        return path not in {LOGIN_PATH, LOGOUT_PATH}
    return path in {"/admin/events", "/metrics"}


@dataclass(frozen=True)
class ConsoleSession:
    csrf_token: str
    expires_at: float  # wall seconds


@dataclass(frozen=True)
class Admitted:
    """The caller is an operator: by bearer token, or by a console session (which it names)."""

    via: str  # "bearer" or "cookie"
    session: ConsoleSession | None = None


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    token: str


class AdminAuth:
    def __init__(
        self,
        tokens: TokenCheck,
        *,
        ttl_s: float = SESSION_TTL_S,
        secure_cookie: bool = False,
        allowed_origins: tuple[str, ...] = (),
        throttle: AuthThrottle | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._ttl_s = ttl_s
        self._secure_cookie = secure_cookie  # [admin] secure_cookie: behind a TLS-terminating proxy
        # [admin] allowed_origins: the console's origins as browsers see them, when a proxy rewrites Host.
        self._allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.throttle = throttle or AuthThrottle(limit=10, window_s=60.0)
        self._now = now
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()  # by the hash of the cookie

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def login(self, token: str, address: str) -> tuple[str, ConsoleSession] | Answer:
        """A new console session (the cookie's value and the session), or the error to answer."""
        wait = self.throttle.blocked_for(address)
        if wait is not None:
            return _throttled(wait)
        if not self._tokens.ok(token):
            self.throttle.failed(address)
            return error_answer(
                401,
                "Wrong admin token. It was printed once when the gateway first started (or is [admin] token "
                "in the config); see README, Troubleshooting.",
                "authentication_error",
                "invalid_admin_token",
                param="token",
            )
        cookie = secrets.token_urlsafe(32)
        session = ConsoleSession(secrets.token_urlsafe(24), self._now() + self._ttl_s)
        self._sessions[_digest(cookie)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return cookie, session

    def logout(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_digest(cookie), None)

    def session_of(self, cookie: str | None) -> ConsoleSession | None:
        if not cookie:
            return None
        digest = _digest(cookie)
        session = self._sessions.get(digest)
        if session is None:
            return None
        if session.expires_at <= self._now():
            del self._sessions[digest]
            return None
        return session

    def origin_ok(self, origin: str | None, host: str) -> bool:
        """A browser's `Origin` names this gateway: its host as the request addressed it (whatever the
        scheme, so a TLS-terminating proxy in front is fine), or one of `[admin] allowed_origins`."""
        if origin is None:
            return True  # not a browser's cross-site request: browsers send Origin on every POST
        origin = origin.rstrip("/").lower()
        return origin in self._allowed_origins or urlsplit(origin).netloc == host.lower()

    def check(
        self,
        *,
        address: str,
        method: str,
        authorization: str,
        cookie: str | None,
        csrf: str | None,
        origin: str | None,
        host: str,
    ) -> Admitted | Answer:
        """May this request use a guarded path? A bearer token is judged first, then the cookie. Only a
        wrong bearer token counts as a failed attempt (another scheme, e.g. a proxy's Basic auth, is not
        ours and falls through to the cookie), and a valid session is let in even while its address is
        throttled: a cookie cannot be guessed, and one guesser behind a shared proxy must not lock the
        operators out."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            wait = self.throttle.blocked_for(address)
            if wait is not None:
                return _throttled(wait)
            if self._tokens.ok(token.strip()):
                return Admitted("bearer")
            self.throttle.failed(address)
            return _unauthorized(
                "The bearer token is not the admin token (a gateway key never grants admin)."
            )
        session = self.session_of(cookie)
        if session is None:
            return _unauthorized(
                "Admin access needs 'Authorization: Bearer <admin token>', or a console session: log in at "
                f"/admin/ (a session ends after {self._ttl_s / 3600:g} h or at logout)."
            )
        if method in UNSAFE_METHODS:
            refused = self.refuse_change(session, csrf, origin, host)
            if refused is not None:
                return refused
        return Admitted("cookie", session)

    def refuse_change(
        self, session: ConsoleSession, csrf: str | None, origin: str | None, host: str
    ) -> Answer | None:
        """Why a change made with this session's cookie is refused (a foreign Origin, no CSRF token)."""
        if not self.origin_ok(origin, host):
            return _forbidden(
                f"Origin {quoted(origin or '')!r} is not this gateway ({quoted(host)}); behind a proxy that "
                "rewrites Host, list the console's origin in [admin] allowed_origins.",
                "bad_origin",
            )
        if csrf is None or not hmac.compare_digest(csrf.encode(), session.csrf_token.encode()):
            return _forbidden(
                f"A change made with the console's session needs its {CSRF_HEADER} header (from "
                "POST /admin/api/login or GET /admin/api/session).",
                "csrf_failed",
            )
        return None

    def set_cookie(self, response: Response, cookie: str, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self._ttl_s),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure or self._secure_cookie,
        )


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def _unauthorized(message: str) -> Answer:
    return error_answer(401, message, "authentication_error", "admin_auth_required")


def _forbidden(message: str, code: str) -> Answer:
    return error_answer(403, message, "permission_error", code)


def _throttled(wait_s: float) -> Answer:
    return error_answer(
        429,
        "Too many wrong admin tokens from this address; wait before trying again (a console session "
        "already open still works).",
        "rate_limit_error",
        "too_many_failed_attempts",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


def guard() -> Response | None:
    """For the app's before_request: None when the path is not guarded or the caller is an operator, else
    the error response. The verdict is kept on the request (`request.admin`) for the routes."""
    if not is_guarded(request.path):
        return None
    auth: AdminAuth = current_app.config["SWITCHBOARD_ADMIN_AUTH"]
    verdict = auth.check(
        address=request.remote_addr or "unknown",
        method=request.method,
        authorization=request.headers.get("Authorization", ""),
        cookie=request.cookies.get(COOKIE),
        csrf=request.headers.get(CSRF_HEADER),
        origin=request.headers.get("Origin"),
        host=request.host,
    )
    if isinstance(verdict, Answer):
        return quart_response(verdict)
    request.admin = verdict  # type: ignore[attr-defined]  # ours, per request
    return None


def register(app: QuartTrio, auth: AdminAuth) -> None:
    """The login, logout and session routes; `guard` (called by the app) reads `auth` from the config."""
    app.config["SWITCHBOARD_ADMIN_AUTH"] = auth

    @app.post(LOGIN_PATH)
    async def login() -> Response:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            body = msgspec.json.decode(raw, type=LoginBody)
        except msgspec.ValidationError as exc:
            return quart_response(
                error_answer(400, f"Invalid login body: {exc}.", "invalid_request_error", param="token")
            )
        except msgspec.DecodeError:
            return quart_response(
                error_answer(
                    400,
                    'The login body must be JSON: {"token": "<admin token>"}.',
                    "invalid_request_error",
                    param="token",
                )
            )
        origin = request.headers.get("Origin")
        if not auth.origin_ok(origin, request.host):
            return quart_response(
                _forbidden(
                    f"Origin {quoted(origin or '')!r} is not this gateway ({quoted(request.host)}); behind a "
                    "proxy that rewrites Host, list the console's origin in [admin] allowed_origins.",
                    "bad_origin",
                )
            )
        result = auth.login(body.token, request.remote_addr or "unknown")
        if isinstance(result, Answer):
            return quart_response(result)
        cookie, session = result
        response = Response(
            _encode({"csrf_token": session.csrf_token, "expires_at": session.expires_at}),
            content_type="application/json",
        )
        auth.set_cookie(response, cookie, secure=request.scheme == "https")
        return response

    @app.post(LOGOUT_PATH)
    async def logout() -> Response:
        cookie = request.cookies.get(COOKIE)
        session = auth.session_of(cookie)
        if session is not None:  # a live session ends only by its own page (CSRF token, same origin)
            refused = auth.refuse_change(
                session, request.headers.get(CSRF_HEADER), request.headers.get("Origin"), request.host
            )
            if refused is not None:
                return quart_response(refused)
        auth.logout(cookie)
        response = Response(b"", status=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    @app.get("/admin/api/session")
    async def session() -> Response:
        admitted: Admitted = request.admin  # type: ignore[attr-defined]  # set by guard
        body: dict[str, object] = {"authenticated": True, "via": admitted.via}
        if admitted.session is not None:
            body["csrf_token"] = admitted.session.csrf_token
            body["expires_at"] = admitted.session.expires_at
        return Response(_encode(body), content_type="application/json")
