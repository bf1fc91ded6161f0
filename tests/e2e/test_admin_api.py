"""The admin API's keys, models and fallback, sessions and config routes against a real gateway (port 0) in
front of the fault-injecting upstream (docs/admin-api.md): admin credentials only; bad input is a 400
naming the field and changes nothing; every change is in the log and in the next routing decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import apsw
import httpx
import pytest
import trio
from custom_gateway import read_log, settled
from harness import ADMIN_HEADERS, ADMIN_TOKEN, GATEWAY_KEY, SECRET_ENV, Gateway, config_text, gateway_from
from harness import running_gateway as _running_gateway
from test_disk import SmallDisk

from events.config_applied import view_of
from events.types import (
    ConfigApplied,
    CooldownsReset,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyRemoved,
    ModelUpdated,
    RouteDecided,
    SessionBanLifted,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
)
from service.replay_runner import run_replay
from service.secrets import key_id_for
from service.server import DB_NAME

pytestmark = pytest.mark.usefixtures("clean_env")

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
MASTER = bytes.fromhex(SECRET_ENV["SWITCHBOARD_SECRET_KEY"])
HI = [{"role": "user", "content": "hi"}]
E = TypeVar("E")


def key_id(secret: str) -> str:
    return key_id_for(MASTER, "local", secret)


@asynccontextmanager
async def gateway(tmp_path: Path, models: list[str], **options: Any) -> AsyncIterator[Gateway]:
    with trio.fail_after(60):
        async with _running_gateway(tmp_path, models, **options) as gw:
            yield gw


@asynccontextmanager
async def clients(gw: Gateway) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(admin client, gateway-key client)."""
    async with (
        httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS, timeout=30) as admin,
        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=30) as chat,
    ):
        yield admin, chat


async def ask(
    chat: httpx.AsyncClient, *, model: str = "auto", headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return await chat.post(
        "/v1/chat/completions", json={"model": model, "messages": HI, **body}, headers=headers or {}
    )


def of_type(gw: Gateway, cls: type[E]) -> list[E]:
    return [e for e in read_log(gw.data_dir) if isinstance(e, cls)]


def upstream_keys(gw: Gateway, since: int) -> list[str | None]:
    return [r.api_key for r in gw.upstream.requests[since:] if r.path == "/v1/chat/completions"]


def assert_error(resp: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
        assert param.split(".")[-1] in error["message"], error


# ---- auth: every route wants the admin token -------------------------------------------------------------

ROUTES = {
    "keys": [
        ("GET", "/admin/api/keys"),
        ("POST", "/admin/api/keys"),
        ("POST", "/admin/api/keys/local.x/disable"),
        ("POST", "/admin/api/keys/local.x/enable"),
        ("DELETE", "/admin/api/keys/local.x"),
        ("POST", "/admin/api/keys/local.x/check"),
        ("POST", "/admin/api/keys/local.x/reset-cooldowns"),
    ],
    "models": [
        ("GET", "/admin/api/models"),
        ("GET", "/admin/api/models/local/m-a"),
        ("PATCH", "/admin/api/models/local/m-a"),
    ],
    "sessions": [
        ("GET", "/admin/api/sessions"),
        ("GET", "/admin/api/sessions/h-x"),
        ("DELETE", "/admin/api/sessions/h-x/pin"),
        ("DELETE", "/admin/api/sessions/h-x/bans/local"),
    ],
    "config": [("GET", "/admin/api/config")],
}


# One gateway per group: a wrong bearer counts against the address (10 a minute), a missing one does not.
@pytest.mark.parametrize("group", sorted(ROUTES))
async def test_every_route_refuses_no_credentials_and_a_gateway_key(tmp_path, group):
    async with gateway(tmp_path, ["m-a"]) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        for method, path in ROUTES[group]:
            body = b'{"enabled": false}' if method == "PATCH" else None
            resp = await client.request(method, path, content=body)
            assert_error(resp, 401, "admin_auth_required")
            resp = await client.request(method, path, content=body, headers=AUTH)
            assert_error(resp, 401, "admin_auth_required")
            assert "gateway key never grants admin" in resp.json()["error"]["message"]
        await settled(gw)
    changes = (ModelUpdated, KeyDisabled, KeyEnabled, KeyRemoved, CooldownsReset, SessionPinCleared)
    assert not [e for e in read_log(gw.data_dir) if isinstance(e, changes)]


async def test_a_console_change_needs_its_csrf_token(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b"]) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        login = await c.post("/admin/api/login", json={"token": ADMIN_TOKEN})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        assert (await c.get("/admin/api/models")).status_code == 200  # a read needs only the cookie
        refused = await c.patch("/admin/api/models/local/m-b", json={"enabled": False})
        assert_error(refused, 403, "csrf_failed")
        assert not of_type(gw, ModelUpdated)
        done = await c.patch(
            "/admin/api/models/local/m-b", json={"enabled": False}, headers={"X-CSRF-Token": csrf}
        )
        assert done.status_code == 200, done.text
        assert done.json()["enabled"] is False
        assert [e.enabled for e in of_type(gw, ModelUpdated)] == [False]


# ---- bad input: a 400 naming the field, and nothing changed ----------------------------------------------

BAD_MODEL_PATCHES = [
    ({"pool": "huge"}, "pool"),
    ({"pool": 3}, "pool"),
    ({"enabled": "no"}, "enabled"),
    ({"enabled": None}, "enabled"),
    ({"in_chain": 1}, "in_chain"),
    ({"intelligence_rank": 0}, "intelligence_rank"),
    ({"intelligence_rank": True}, "intelligence_rank"),
    ({"intelligence_rank": 2.5}, "intelligence_rank"),
    ({"limits": {"rpm": 0}}, "limits.rpm"),
    # Past 64 bits a snapshot could not hold it (schemathesis found the shutdown's snapshot failing).
    ({"limits": {"tpd": 2**64}}, "limits.tpd"),
    ({"intelligence_rank": 2**53 + 1}, "intelligence_rank"),
    ({"limits": {"tpd": "many"}}, "limits.tpd"),
    ({"limits": {"rpx": 5}}, "limits.rpx"),
    ({"limits": 5}, "limits"),
    ({"speed_rank": 1}, "speed_rank"),
]


async def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b"]) as gw, clients(gw) as (admin, _):
        kid = key_id("up-1")
        for body, field in BAD_MODEL_PATCHES:
            resp = await admin.patch("/admin/api/models/local/m-a", json=body)
            assert_error(resp, 400, "invalid_field", field)
        assert_error(
            await admin.patch("/admin/api/models/local/m-a", content=b"{not json"), 400, "invalid_json"
        )
        assert_error(await admin.patch("/admin/api/models/local/m-a", json={}), 400, "invalid_field")
        assert_error(
            await admin.patch("/admin/api/models/local/nope", json={"enabled": False}), 404, "not_found"
        )
        assert_error(await admin.get("/admin/api/models/nowhere/m-a"), 404, "not_found", "model")

        for body, field in [
            ({"platform": "nowhere", "key": "sk-abcdefghijklmnop"}, "platform"),
            ({"platform": "local"}, "key"),
            ({"platform": "local", "key": "sk-abc defghijklmnop"}, "key"),
            ({"platform": "local", "key": "sk-abc\u200bdefghijklmnop"}, "key"),
            ({"platform": "local", "key": "   "}, "key"),
            ({"platform": "local", "key": "sk-abcdefghijklmnop", "label": 7}, "label"),
            ({"platform": "local", "key": "sk-abcdefghijklmnop", "label": " "}, "label"),
            ({"platform": "local", "key": "sk-abcdefghijklmnop", "secret": "x"}, "secret"),
        ]:
            assert_error(await admin.post("/admin/api/keys", json=body), 400, "invalid_field", field)
        assert_error(
            await admin.post(f"/admin/api/keys/{kid}/disable", json={"reason": 5}),
            400,
            "invalid_field",
            "reason",
        )
        assert_error(
            await admin.post(f"/admin/api/keys/{kid}/enable", json={"now": True}), 400, "invalid_field", "now"
        )
        assert_error(
            await admin.post(f"/admin/api/keys/{kid}/reset-cooldowns", json={"model": "nope"}),
            400,
            "invalid_field",
            "model",
        )
        assert_error(
            await admin.post(f"/admin/api/keys/{kid}/reset-cooldowns", json={"model": 1}),
            400,
            "invalid_field",
            "model",
        )
        for method, path in [
            ("POST", "/admin/api/keys/local.nope/disable"),
            ("POST", "/admin/api/keys/local.nope/enable"),
            ("DELETE", "/admin/api/keys/local.nope"),
            ("POST", "/admin/api/keys/local.nope/check"),
            ("POST", "/admin/api/keys/local.nope/reset-cooldowns"),
        ]:
            assert_error(await admin.request(method, path), 404, "not_found", "id")
        for method, path in [
            ("GET", "/admin/api/sessions/h-nope"),
            ("DELETE", "/admin/api/sessions/h-nope/pin"),
            ("DELETE", "/admin/api/sessions/h-nope/bans/local"),
        ]:
            assert_error(await admin.request(method, path), 404, "not_found", "session")
        keys = (await admin.get("/admin/api/keys")).json()["data"]
        assert [k["status"] for k in keys] == ["ok"]
        await settled(gw)
    changes = (ModelUpdated, KeyAdded, KeyDisabled, KeyEnabled, KeyRemoved, CooldownsReset)
    assert [type(e) for e in read_log(gw.data_dir) if isinstance(e, changes)] == [KeyAdded]  # at start


async def test_a_change_while_the_log_cannot_be_written_is_refused_with_503(tmp_path):
    disks: list[SmallDisk] = []

    def small_disk(path: Path) -> SmallDisk:
        disks.append(SmallDisk(path))
        return disks[0]

    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["m-a", "m-b"])

    with trio.fail_after(60):
        async with gateway_from(tmp_path, config_for, store=small_disk) as gw, clients(gw) as (admin, _):
            disks[0].full = True
            resp = await admin.patch(
                "/admin/api/models/local/m-b", json={"enabled": False}
            )  # the outage starts
            assert_error(resp, 503, "log_unwritable")
            assert resp.headers["retry-after"] == "5"
            resp = await admin.post(f"/admin/api/keys/{key_id('up-1')}/disable")  # refused outright
            assert_error(resp, 503, "log_unwritable")
            assert "nothing was changed" in resp.json()["error"]["message"]
            resp = await admin.post("/admin/api/keys", json={"platform": "local", "key": "up-9-0123456789"})
            assert_error(resp, 503, "log_unwritable")
            keys = (await admin.get("/admin/api/keys")).json()["data"]
            assert [k["status"] for k in keys] == ["ok"]
            disks[0].free()
    assert not of_type(gw, KeyDisabled) and not of_type(gw, KeyAdded)[1:]
    db = apsw.Connection(str(gw.data_dir / DB_NAME))
    try:
        assert db.execute("SELECT count(*) FROM vault").get == 0  # nothing stored the log does not know
    finally:
        db.close()


# ---- keys --------------------------------------------------------------------------------------------------


async def test_a_disabled_key_gets_no_traffic_until_it_is_enabled(tmp_path):
    async with gateway(tmp_path, ["m-a"], keys=("up-1", "up-2")) as gw, clients(gw) as (admin, chat):
        one = key_id("up-1")
        resp = await admin.post(f"/admin/api/keys/{one}/disable", json={"reason": "rotating it"})
        assert resp.status_code == 200, resp.text
        assert (resp.json()["status"], resp.json()["reason"]) == ("disabled", "rotating it")
        since = len(gw.upstream.requests)
        for _ in range(4):
            assert (await ask(chat)).status_code == 200
        assert upstream_keys(gw, since) == ["up-2"] * 4
        [disabled] = of_type(gw, KeyDisabled)
        assert (disabled.key_id, disabled.reason) == (one, "rotating it")

        resp = await admin.post(f"/admin/api/keys/{one}/enable")
        assert resp.status_code == 200 and resp.json()["status"] == "ok"
        since = len(gw.upstream.requests)
        for _ in range(4):
            assert (await ask(chat)).status_code == 200
        assert upstream_keys(gw, since)[0] == "up-1"  # back, and the least used this minute
        assert [e.key_id for e in of_type(gw, KeyEnabled)] == [one]
        await settled(gw)
    decisions = of_type(gw, RouteDecided)
    assert any(x.code == "key_unusable" and one in x.reason for d in decisions[:4] for x in d.excluded)


async def test_a_key_added_over_http_is_used_at_once_kept_secret_and_removable(tmp_path):
    secret = "up-new-0123456789abcd"
    async with gateway(tmp_path, ["m-a"]) as gw, clients(gw) as (admin, chat):
        old = key_id("up-1")
        await admin.post(f"/admin/api/keys/{old}/disable")
        assert (await ask(chat)).status_code == 503  # no usable key

        resp = await admin.post(
            "/admin/api/keys", json={"platform": "local", "key": f" {secret}\n", "label": "ci"}
        )
        assert resp.status_code == 201, resp.text
        added = resp.json()
        assert added == {
            "id": key_id(secret),
            "platform": "local",
            "label": "ci",
            "source": "vault",
            "status": "ok",
            "reason": "",
            "cooldowns": [],
        }
        again = await admin.post("/admin/api/keys", json={"platform": "local", "key": secret})
        assert again.status_code == 200 and again.json()["id"] == added["id"]
        configured = await admin.post("/admin/api/keys", json={"platform": "local", "key": "up-1"})
        assert configured.status_code == 200 and configured.json()["source"] == "config"  # not stored twice
        since = len(gw.upstream.requests)
        resp = await ask(chat)
        assert resp.status_code == 200, resp.text
        assert upstream_keys(gw, since) == [secret]
        listing = await admin.get("/admin/api/keys")
        assert secret not in listing.text and secret[-4:] not in listing.text.replace("ci", "")

        assert_error(await admin.delete(f"/admin/api/keys/{old}"), 409, "conflict")
        assert (await admin.delete(f"/admin/api/keys/{added['id']}")).status_code == 204
        assert [k["id"] for k in (await admin.get("/admin/api/keys")).json()["data"]] == [old]
        assert (await ask(chat)).status_code == 503
        await settled(gw)
    events = read_log(gw.data_dir)
    assert [e.key_id for e in events if isinstance(e, KeyAdded)] == [old, added["id"]]
    assert [(e.key_id, e.reason) for e in events if isinstance(e, KeyRemoved)] == [
        (added["id"], "removed by operator")
    ]
    raw = (gw.data_dir / DB_NAME).read_bytes()
    assert secret.encode() not in raw  # encrypted at rest, and never in an event


async def test_check_now_calls_the_provider_and_records_what_it_said(tmp_path):
    async with gateway(tmp_path, ["m-a"]) as gw, clients(gw) as (admin, _):
        one = key_id("up-1")
        gw.upstream.key_behaviours["up-1"] = "auth"
        resp = await admin.post(f"/admin/api/keys/{one}/check")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["ok"], body["status"], body["key"]["status"]) == (False, "invalid", "invalid")
        assert "401" in body["message"]
        del gw.upstream.key_behaviours["up-1"]
        resp = await admin.post(f"/admin/api/keys/{one}/check")
        assert (resp.json()["ok"], resp.json()["status"]) == (True, "ok")
        assert [r.path for r in gw.upstream.requests] == ["/v1/models", "/v1/models"]
    assert [(e.key_id, e.ok, e.status) for e in of_type(gw, KeyChecked)] == [
        (one, False, 401),
        (one, True, 200),
    ]


async def test_reset_cooldowns_puts_a_cooling_key_back_at_once(tmp_path):
    async with gateway(tmp_path, ["m-a"]) as gw, clients(gw) as (admin, chat):
        one = key_id("up-1")
        gw.upstream.key_behaviours["up-1"] = "rate-limit:3600"
        assert (await ask(chat)).status_code == 429
        del gw.upstream.key_behaviours["up-1"]
        await settled(gw)
        since = len(gw.upstream.requests)
        assert (await ask(chat)).status_code == 429  # cooling for an hour: not even tried
        assert upstream_keys(gw, since) == []
        [key] = (await admin.get("/admin/api/keys")).json()["data"]
        [cooldown] = key["cooldowns"]
        assert (cooldown["model"], cooldown["kind"]) == ("m-a", "rate_limited")
        model = (await admin.get("/admin/api/models/local/m-a")).json()
        assert model["usable_keys"] == 0 and model["cooldown_until"] == pytest.approx(cooldown["until"])

        resp = await admin.post(f"/admin/api/keys/{one}/reset-cooldowns", json={"model": "m-a"})
        assert resp.status_code == 200 and resp.json()["cooldowns"] == []
        resp = await ask(chat)
        assert resp.status_code == 200, resp.text
        assert upstream_keys(gw, since) == ["up-1"]
    [reset] = of_type(gw, CooldownsReset)
    assert (reset.key_id, reset.model) == (one, "m-a")


async def test_reset_cooldowns_of_a_model_lifts_its_own_cooldown_too(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b"]) as gw, clients(gw) as (admin, chat):
        gw.upstream.behaviours["m-a"] = "fail:503"  # every key of m-a fails: the model cools (15 s)
        await ask(chat, model="local/m-a", fallback=False)
        await settled(gw)
        cooling = (await admin.get("/admin/api/models/local/m-a")).json()
        assert cooling["cooldown_until"] is not None and cooling["usable_keys"] == 1
        del gw.upstream.behaviours["m-a"]
        resp = await admin.post(f"/admin/api/keys/{key_id('up-1')}/reset-cooldowns", json={"model": "m-a"})
        assert resp.status_code == 200
        assert (await admin.get("/admin/api/models/local/m-a")).json()["cooldown_until"] is None
        resp = await ask(chat, model="local/m-a")
        assert resp.headers["x-routed-via"] == "local/m-a"


# ---- models and fallback -----------------------------------------------------------------------------------


async def test_models_are_listed_in_chain_order_with_their_parts(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b", "m-c"]) as gw, clients(gw) as (admin, chat):
        for _ in range(3):
            assert (await ask(chat, model="local/m-b")).status_code == 200
        await settled(gw)
        data = (await admin.get("/admin/api/models")).json()["data"]
        assert [(m["ref"], m["chain_position"]) for m in data] == [
            ("local/m-a", 1),
            ("local/m-b", 2),
            ("local/m-c", 3),
        ]
        b = data[1]
        assert b["stats"]["successes"] == 3 and b["stats"]["failures"] == 0
        assert b["stats"]["decayed_successes"] == pytest.approx(3, abs=0.01)
        assert b["stats"]["ttfb_ms"] is not None
        # theta's mean under the Beta(s + 2, f + 2) prior, and the parts add up to each mode's score
        assert b["score"]["theta_mean"] == pytest.approx(5 / 7, abs=1e-3)
        assert data[0]["score"]["theta_mean"] == 0.5
        for m in data:
            s = m["score"]
            assert s["balanced"] == pytest.approx(
                s["theta_mean"] + s["ttfb"] + 0.1 * s["intelligence"] + s["speed"] - s["penalty"], abs=1e-5
            )
        assert [m["score"]["intelligence"] for m in data] == [1.0, 0.5, 0.0]

        resp = await admin.patch("/admin/api/models/local/m-c", json={"intelligence_rank": 1})
        assert resp.status_code == 200 and resp.json()["intelligence_rank"] == 1
        moved = (await admin.get("/admin/api/models")).json()["data"]
        assert [m["ref"] for m in moved] == ["local/m-a", "local/m-c", "local/m-b"]
        resp = await admin.patch("/admin/api/models/local/m-a", json={"in_chain": False})
        assert resp.json()["chain_position"] is None
        moved = (await admin.get("/admin/api/models")).json()["data"]
        assert [(m["ref"], m["chain_position"]) for m in moved] == [
            ("local/m-c", 1),
            ("local/m-b", 2),
            ("local/m-a", None),
        ]
        before = len(of_type(gw, RouteDecided))
        assert (await ask(chat, model="auto-smart")).status_code == 200
        await settled(gw)
    [decision] = of_type(gw, RouteDecided)[before:]
    parts = {c.ref: c.intelligence for c in decision.candidates}
    assert parts.get("local/m-c", 1.0) == 1.0 and "local/m-a" not in parts  # re-ranked, out of the chain


async def test_a_disabled_model_gets_no_traffic(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b"]) as gw, clients(gw) as (admin, chat):
        resp = await admin.patch("/admin/api/models/local/m-a", json={"enabled": False})
        assert resp.status_code == 200 and resp.json()["enabled"] is False
        before = len(of_type(gw, RouteDecided))
        for mode in ["auto", "auto-smart", "auto-fast", "auto", "auto-smart"]:
            resp = await ask(chat, model=mode)
            assert resp.headers["x-routed-via"] == "local/m-b"
        assert_error(await ask(chat, model="local/m-a"), 404, "model_not_found")
        assert (await admin.patch("/admin/api/models/local/m-a", json={"enabled": True})).status_code == 200
        assert (await ask(chat, model="local/m-a")).headers["x-routed-via"] == "local/m-a"
        await settled(gw)
    [update, back] = of_type(gw, ModelUpdated)
    assert (update.model, update.enabled, back.enabled) == ("m-a", False, True)
    decisions = of_type(gw, RouteDecided)[before:]
    assert all(d.chosen_ref == "local/m-b" for d in decisions[:5])
    assert all("local/m-a" not in {c.ref for c in d.candidates} for d in decisions[:5])


async def test_out_of_the_chain_and_pool_changes_reach_the_next_decision(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b"]) as gw, clients(gw) as (admin, chat):
        assert (await admin.patch("/admin/api/models/local/m-a", json={"in_chain": False})).status_code == 200
        for _ in range(3):
            assert (await ask(chat)).headers["x-routed-via"] == "local/m-b"
        assert (await ask(chat, model="local/m-a")).headers["x-routed-via"] == "local/m-a"  # still named
        resp = await admin.patch("/admin/api/models/local/m-a", json={"in_chain": True, "pool": "smart"})
        assert (resp.json()["pool"], resp.json()["in_chain"]) == ("smart", True)
        before = len(of_type(gw, RouteDecided))
        for _ in range(3):
            assert (await ask(chat)).headers["x-routed-via"] == "local/m-b"  # auto leaves smart models out
        await settled(gw)
    decisions = of_type(gw, RouteDecided)[before:]
    assert all(d.pool_excluded == ("local/m-a",) for d in decisions)
    [first, second] = of_type(gw, ModelUpdated)
    assert (first.fallback, second.fallback, second.pool) == (False, True, "smart")


async def test_limits_are_set_and_lifted(tmp_path):
    async with gateway(tmp_path, ["m-a"]) as gw, clients(gw) as (admin, chat):
        resp = await admin.patch("/admin/api/models/local/m-a", json={"limits": {"rpm": 1, "tpd": 100000}})
        assert resp.json()["limits"] == {"rpm": 1, "rpd": None, "tpm": None, "tpd": 100000}
        assert (await ask(chat)).status_code == 200
        await settled(gw)
        assert (await ask(chat)).status_code == 429  # the key is over its one request a minute
        resp = await admin.patch("/admin/api/models/local/m-a", json={"limits": {"rpm": None}})
        assert resp.json()["limits"] == {"rpm": None, "rpd": None, "tpm": None, "tpd": 100000}
        assert (await ask(chat)).status_code == 200
        await settled(gw)
    decisions = of_type(gw, RouteDecided)
    assert [x.code for x in decisions[1].excluded] == ["quota"]
    assert not decisions[2].excluded
    first, second = of_type(gw, ModelUpdated)
    assert first.limits is not None and first.limits.given() == (("rpm", 1), ("tpd", 100000))
    assert second.limits is not None and second.limits.given() == (("rpm", None),)


# ---- sessions ----------------------------------------------------------------------------------------------


async def test_a_pin_is_listed_inspected_and_cleared(tmp_path):
    async with gateway(tmp_path, ["m-a", "m-b"]) as gw, clients(gw) as (admin, chat):
        headers = {"X-Session-Id": "thread-1"}
        first = await ask(chat, model="auto-smart", headers=headers)
        assert first.status_code == 200
        await settled(gw)
        [session] = (await admin.get("/admin/api/sessions")).json()["data"]
        assert session["pin"]["model"] == first.headers["x-routed-via"].split("/", 1)[1]
        assert session["pin"]["key_id"] == key_id("up-1") and session["bans"] == []
        name = session["session"]
        assert (await admin.get(f"/admin/api/sessions/{name}")).json() == session

        resp = await admin.delete(f"/admin/api/sessions/{name}/pin")
        assert resp.status_code == 200 and resp.json()["pin"] is None
        before = len(of_type(gw, RouteDecided))
        assert (await ask(chat, model="auto-smart", headers=headers)).status_code == 200
        await settled(gw)
    [cleared] = of_type(gw, SessionPinCleared)
    assert (cleared.session, cleared.reason) == (name, "cleared by operator")
    [after] = of_type(gw, RouteDecided)[before:]
    assert after.input.session == name and not after.pin_used
    assert len(of_type(gw, SessionPinned)) == 2


async def test_a_ban_is_lifted(tmp_path, clock):
    async with (
        gateway(tmp_path, ["m-a"], extra='protection = "provider-ban"') as gw,
        clients(gw) as (admin, chat),
    ):
        headers = {"X-Session-Id": "thread-2"}
        gw.upstream.behaviours["m-a"] = "fail:503"
        assert (await ask(chat, headers=headers)).status_code != 200
        del gw.upstream.behaviours["m-a"]
        await settled(gw)
        [session] = (await admin.get("/admin/api/sessions")).json()["data"]
        assert [b["platform"] for b in session["bans"]] == ["local"]
        await trio.sleep(16)  # the model's own cooldown after its failure ends: only the ban is left
        assert (await ask(chat, headers=headers)).status_code == 503  # banned for this session
        resp = await admin.delete(f"/admin/api/sessions/{session['session']}/bans/local")
        assert resp.status_code == 200 and resp.json()["bans"] == []
        assert_error(
            await admin.delete(f"/admin/api/sessions/{session['session']}/bans/local"),
            404,
            "not_found",
            "platform",
        )
        before = len(of_type(gw, RouteDecided))
        resp = await ask(chat, headers=headers)
        assert resp.status_code == 200, resp.text
        await settled(gw)
    assert [e.platform for e in of_type(gw, SessionBanned)] == ["local"]
    [lifted] = of_type(gw, SessionBanLifted)
    assert (lifted.session, lifted.platform) == (session["session"], "local")
    banned, decision = of_type(gw, RouteDecided)[before - 1 :]
    assert [x.code for x in banned.excluded] == ["banned"]
    assert decision.chosen_ref == "local/m-a" and not decision.excluded


# ---- config ------------------------------------------------------------------------------------------------


async def test_the_config_is_shown_without_secrets_with_its_hash(tmp_path):
    extra = '[platforms.headers]\nX-Api-Token = "header-secret-123"'
    async with (
        gateway(tmp_path, ["m-a"], keys=("up-1-secret", "up-2-secret"), extra=extra) as gw,
        clients(gw) as (
            admin,
            _,
        ),
    ):
        resp = await admin.get("/admin/api/config")
        assert resp.status_code == 200
    text = resp.text
    for secret in ("up-1-secret", "up-2-secret", "header-secret-123", ADMIN_TOKEN, GATEWAY_KEY):
        assert secret not in text
    body = resp.json()
    [recorded] = of_type(gw, ConfigApplied)
    assert (body["hash"], body["applied_at"]) == (recorded.hash, recorded.ts)
    [platform] = body["config"]["platforms"]
    assert platform["keys"] == {"config": 2, "env": 0} and platform["headers"] == ["X-Api-Token"]
    assert body["config"]["gateway"] == {"api_keys": 1}
    assert [m["ref"] for m in body["config"]["models"]] == ["local/m-a"]
    assert body["config"]["routing"]["max_attempts"] == 5


# ---- replay: admin changes are part of the history decisions are rebuilt from ------------------------------


async def test_a_log_with_admin_changes_replays_every_decision(tmp_path, clock):
    async with (
        gateway(tmp_path, ["m-a", "m-b", "m-c"], keys=("up-1", "up-2")) as gw,
        clients(gw) as (admin, chat),
    ):
        one, two = key_id("up-1"), key_id("up-2")
        changes = [
            ("PATCH", "/admin/api/models/local/m-a", {"intelligence_rank": 9}),
            ("POST", f"/admin/api/keys/{one}/disable", {}),
            ("PATCH", "/admin/api/models/local/m-b", {"limits": {"rpm": 2}}),
            ("PATCH", "/admin/api/models/local/m-c", {"pool": "smart"}),
            ("POST", f"/admin/api/keys/{one}/enable", None),
            ("POST", f"/admin/api/keys/{two}/reset-cooldowns", {"model": "m-b"}),
            ("PATCH", "/admin/api/models/local/m-b", {"enabled": False, "limits": {"rpm": None}}),
            ("POST", f"/admin/api/keys/{one}/reset-cooldowns", None),
        ]
        gw.upstream.key_behaviours["up-2"] = "rate-limit:30"
        for method, path, body in changes:
            resp = await admin.request(method, path, json=body)
            assert resp.status_code == 200, resp.text
            for mode in ("auto", "auto-smart", "local/m-b"):
                await ask(chat, model=mode, headers={"X-Session-Id": "s"} if mode == "auto-smart" else None)
            await trio.sleep(7)
        await settled(gw)
    [recorded] = of_type(gw, ConfigApplied)
    run = run_replay(gw.data_dir / DB_NAME, lambda: view_of(recorded), config_from_log=True, parallel=False)
    assert run.total >= 24 and run.changed == 0


async def test_a_removal_the_log_holds_does_not_bring_the_key_back_at_the_next_start(tmp_path):
    """The disk fills while the removal is being committed: the event is held (503, "held"), the vault row is
    already gone, so the next start announces the key removed instead of routing to it again."""
    disks: list[SmallDisk] = []

    def small_disk(path: Path) -> SmallDisk:
        disks.append(SmallDisk(path))
        return disks[-1]

    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["m-a"])

    added = key_id("up-9-0123456789")
    with trio.fail_after(60):
        async with gateway_from(tmp_path, config_for, store=small_disk) as gw, clients(gw) as (admin, _):
            resp = await admin.post("/admin/api/keys", json={"platform": "local", "key": "up-9-0123456789"})
            assert resp.status_code == 201
            real = gw.runtime.log.append_durable

            async def fill_then_append(event: Any) -> int | None:  # the disk fills as this one is written
                disks[0].full = True
                return await real(event)

            gw.runtime.log.append_durable = fill_then_append  # type: ignore[method-assign]
            resp = await admin.delete(f"/admin/api/keys/{added}")
            assert_error(resp, 503, "log_unwritable")
            assert "held" in resp.json()["error"]["message"]
            gw.runtime.log.append_durable = real  # type: ignore[method-assign]
            disks[0].free()
        data_dir = gw.data_dir
    async with gateway_from(tmp_path, config_for, data_dir=data_dir) as gw, clients(gw) as (admin, _):
        keys = {k["id"] for k in (await admin.get("/admin/api/keys")).json()["data"]}
        assert added not in keys
