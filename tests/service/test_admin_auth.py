"""Who may use the operators' surface (service/admin_auth.py): the bearer admin token, or a console session
cookie (HttpOnly, SameSite=Strict, Secure under TLS; server-side, expiring, ended by logout) with its CSRF
token on every change and no foreign Origin; failed attempts throttled per address."""

from __future__ import annotations

from http.cookies import SimpleCookie

import msgspec
import pytest
from quart import Response
from quart_trio import QuartTrio

from service import admin_auth
from service.admin_auth import COOKIE, AdminAuth, is_guarded
from service.edge import AuthThrottle
from service.secrets import TokenCheck, hash_token

TOKEN = "sb-admin-test-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ORIGIN = "http://gateway.test"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def make_app(
    clock: Clock, *, ttl_s: float = 3600.0, secure_cookie: bool = False, limit: int = 3
) -> tuple[QuartTrio, AdminAuth]:
    auth = AdminAuth(
        TokenCheck([hash_token(TOKEN)]),
        ttl_s=ttl_s,
        secure_cookie=secure_cookie,
        throttle=AuthThrottle(limit=limit, window_s=60.0, now=clock),
        now=clock,
    )
    app = QuartTrio("test-admin-auth")

    @app.before_request
    async def guard() -> Response | None:
        return admin_auth.guard()

    admin_auth.register(app, auth)

    @app.route("/admin/api/thing", methods=["GET", "POST", "PATCH", "DELETE"])
    async def thing() -> Response:
        return Response(b"{}", content_type="application/json")

    @app.get("/admin/")
    async def console() -> Response:
        return Response(b"<html></html>", content_type="text/html")

    return app, auth


def error_code(body: bytes) -> str:
    code: str = msgspec.json.decode(body)["error"]["code"]
    return code


def set_cookie(headers: object) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for value in headers.getlist("Set-Cookie"):  # type: ignore[attr-defined]
        cookie.load(value)
    return cookie


async def login(client, token: str = TOKEN, **headers: str):  # type: ignore[no-untyped-def]
    return await client.post("/admin/api/login", json={"token": token}, headers=headers)


def test_what_is_guarded() -> None:
    assert is_guarded("/admin/api/keys") and is_guarded("/admin/api/session")
    assert is_guarded("/admin/events") and is_guarded("/metrics")
    assert not is_guarded("/admin/api/login")
    assert not is_guarded("/admin/") and not is_guarded("/admin/static/app.js")
    assert not is_guarded("/v1/models")


async def test_the_bearer_token_and_nothing_else_opens_the_api() -> None:
    app, _ = make_app(Clock())
    client = app.test_client()
    assert (await client.get("/admin/api/thing", headers=BEARER)).status_code == 200
    assert (
        await client.patch("/admin/api/thing", headers=BEARER)
    ).status_code == 200  # no CSRF: not a cookie
    none = await client.get("/admin/api/thing")
    assert none.status_code == 401 and error_code(await none.get_data()) == "admin_auth_required"
    wrong = await client.get("/admin/api/thing", headers={"Authorization": "Bearer sk-gateway-key"})
    assert wrong.status_code == 401
    basic = await client.get("/admin/api/thing", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    in_url = await client.get(f"/admin/api/thing?token={TOKEN}")  # never read from a URL
    assert in_url.status_code == 401
    assert (await client.get("/admin/")).status_code == 200  # the console's page itself holds no data


async def test_login_gives_an_httponly_strict_cookie_and_a_csrf_token() -> None:
    app, auth = make_app(Clock())
    client = app.test_client()
    resp = await login(client)
    assert resp.status_code == 200
    body = msgspec.json.decode(await resp.get_data())
    assert set(body) == {"csrf_token", "expires_at"} and body["expires_at"] == 1_000_000.0 + 3600.0
    morsel = set_cookie(resp.headers)[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP: a Secure cookie would never come back
    assert TOKEN not in morsel.value and auth.sessions == 1
    session = await client.get("/admin/api/session")
    assert msgspec.json.decode(await session.get_data()) == {
        "authenticated": True,
        "via": "cookie",
        "csrf_token": body["csrf_token"],
        "expires_at": body["expires_at"],
    }
    bearer = await app.test_client().get("/admin/api/session", headers=BEARER)
    assert msgspec.json.decode(await bearer.get_data()) == {"authenticated": True, "via": "bearer"}


@pytest.mark.parametrize(("scheme", "secure_cookie"), [("https", False), ("http", True)])
async def test_the_cookie_is_secure_under_tls(scheme: str, secure_cookie: bool) -> None:
    app, _ = make_app(Clock(), secure_cookie=secure_cookie)
    client = app.test_client()
    resp = await client.post("/admin/api/login", json={"token": TOKEN}, scheme=scheme)
    assert resp.status_code == 200
    assert set_cookie(resp.headers)[COOKIE]["secure"]


async def test_a_cookie_change_needs_the_csrf_token_and_a_same_origin() -> None:
    app, _ = make_app(Clock())
    client = app.test_client()
    csrf = msgspec.json.decode(await (await login(client)).get_data())["csrf_token"]
    assert (await client.get("/admin/api/thing")).status_code == 200  # reads need no CSRF token
    for method in ("POST", "PATCH", "DELETE"):
        refused = await client.open("/admin/api/thing", method=method)
        assert refused.status_code == 403 and error_code(await refused.get_data()) == "csrf_failed"
        wrong = await client.open("/admin/api/thing", method=method, headers={"X-CSRF-Token": csrf + "x"})
        assert wrong.status_code == 403
        ok = await client.open("/admin/api/thing", method=method, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200
    foreign = await client.post(
        "/admin/api/thing", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and error_code(await foreign.get_data()) == "bad_origin"
    own = await client.post("/admin/api/thing", headers={"X-CSRF-Token": csrf, "Origin": "http://localhost"})
    assert own.status_code == 200


async def test_login_from_another_origin_is_refused() -> None:
    app, auth = make_app(Clock())
    resp = await login(app.test_client(), Origin="https://evil.example")
    assert resp.status_code == 403 and error_code(await resp.get_data()) == "bad_origin"
    assert auth.sessions == 0


async def test_a_session_expires_and_logout_ends_it() -> None:
    clock = Clock()
    app, auth = make_app(clock, ttl_s=600.0)
    client = app.test_client()
    await login(client)
    clock.t += 599.0
    assert (await client.get("/admin/api/thing")).status_code == 200
    clock.t += 1.0
    assert (await client.get("/admin/api/thing")).status_code == 401  # expired exactly at its end
    assert auth.sessions == 0

    csrf = msgspec.json.decode(await (await login(client)).get_data())["csrf_token"]
    assert (await client.get("/admin/api/thing")).status_code == 200
    kept = client.cookie_jar  # the cookie as it was, to replay after logout
    old = next(c for c in kept if c.name == COOKIE).value
    assert (await client.post("/admin/api/logout")).status_code == 403  # a change like any: its CSRF token
    out = await client.post("/admin/api/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204
    cleared = set_cookie(out.headers)[COOKIE]
    assert cleared.value == "" and cleared["httponly"] and cleared["samesite"] == "Strict"
    replayed = await app.test_client().get("/admin/api/thing", headers={"Cookie": f"{COOKIE}={old}"})
    assert replayed.status_code == 401  # ended server-side, not only in the browser
    assert auth.sessions == 0


async def test_failed_logins_are_throttled_per_address() -> None:
    clock = Clock()
    app, _ = make_app(clock, limit=3)
    client = app.test_client()
    for _ in range(3):
        resp = await login(client, "wrong-token")
        assert resp.status_code == 401 and error_code(await resp.get_data()) == "invalid_admin_token"
    fourth = await login(client, "wrong-token")
    assert fourth.status_code == 401
    blocked = await login(client)  # even the right token waits now
    assert blocked.status_code == 429 and error_code(await blocked.get_data()) == "too_many_failed_attempts"
    assert int(blocked.headers["Retry-After"]) >= 1
    assert (await client.get("/admin/api/thing", headers=BEARER)).status_code == 429
    clock.t += 61.0
    assert (await login(client)).status_code == 200


async def test_wrong_bearer_tokens_count_as_failed_attempts() -> None:
    clock = Clock()
    app, _ = make_app(clock, limit=2)
    client = app.test_client()
    for _ in range(3):
        assert (
            await client.get("/admin/api/thing", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
    assert (await client.get("/admin/api/thing", headers=BEARER)).status_code == 429


async def test_no_credentials_at_all_is_not_a_guess() -> None:
    app, _ = make_app(Clock(), limit=2)
    client = app.test_client()
    for _ in range(5):
        assert (await client.get("/admin/api/thing")).status_code == 401
    assert (await client.get("/admin/api/thing", headers=BEARER)).status_code == 200


async def test_a_bad_login_body_names_the_token() -> None:
    app, _ = make_app(Clock())
    client = app.test_client()
    for raw in (b"not json", b'{"token": 5}', b"{}", b'{"token": "x", "extra": 1}'):
        resp = await client.post("/admin/api/login", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400
        assert msgspec.json.decode(await resp.get_data())["error"]["param"] == "token"


async def test_behind_a_tls_proxy_an_https_origin_of_the_same_host_is_this_gateway() -> None:
    app, auth = make_app(Clock())
    client = app.test_client()
    resp = await login(client, Origin="https://localhost")  # the proxy speaks TLS; the gateway sees http
    assert resp.status_code == 200
    csrf = msgspec.json.decode(await resp.get_data())["csrf_token"]
    change = await client.post(
        "/admin/api/thing", headers={"X-CSRF-Token": csrf, "Origin": "https://localhost"}
    )
    assert change.status_code == 200
    assert auth.origin_ok("https://localhost/", "localhost")
    assert not auth.origin_ok("https://localhost.evil.example", "localhost")


async def test_a_proxy_that_rewrites_host_lists_the_consoles_origin() -> None:
    auth = AdminAuth(TokenCheck([hash_token(TOKEN)]), allowed_origins=("https://LLM.example.com/",))
    assert auth.origin_ok("https://llm.example.com", "127.0.0.1:8080")
    assert not auth.origin_ok("https://other.example.com", "127.0.0.1:8080")


async def test_another_authorization_scheme_is_not_a_guess_and_falls_through_to_the_cookie() -> None:
    """Behind a proxy's Basic auth every request carries `Authorization: Basic ...`: the console's cookie
    still works, and nothing is counted against the address."""
    app, _ = make_app(Clock(), limit=2)
    client = app.test_client()
    assert (await login(client)).status_code == 200
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    for _ in range(5):
        assert (await client.get("/admin/api/thing", headers=basic)).status_code == 200
    assert (await app.test_client().get("/admin/api/thing", headers=BEARER)).status_code == 200


async def test_a_session_already_open_still_works_while_its_address_is_throttled() -> None:
    """One guesser behind a shared proxy must not lock the operators out."""
    app, _ = make_app(Clock(), limit=2)
    operator = app.test_client()
    assert (await login(operator)).status_code == 200
    guesser = app.test_client()
    for _ in range(3):
        await login(guesser, "wrong-token")
    assert (await login(guesser)).status_code == 429  # the address is throttled...
    assert (await operator.get("/admin/api/thing")).status_code == 200  # ... but not an open session


async def test_logout_clears_the_cookie_of_a_session_that_has_expired() -> None:
    clock = Clock()
    app, _ = make_app(clock, ttl_s=60.0)
    client = app.test_client()
    await login(client)
    clock.t += 61.0
    out = await client.post("/admin/api/logout")  # no CSRF token: there is no live session to protect
    assert out.status_code == 204
    assert set_cookie(out.headers)[COOKIE].value == ""
