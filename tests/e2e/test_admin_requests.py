"""The admin API's requests, on a real gateway in front of the fault upstream: the list with its filters and
cursor, and one request's story (its attempts as a waterfall, its decisions replayed)."""

from __future__ import annotations

import time

import httpx
import pytest
import trio
from custom_gateway import settled
from harness import ADMIN_HEADERS, GATEWAY_KEY, Gateway, running_gateway

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


async def chat(gw: Gateway, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
        return await client.post("/v1/chat/completions", json={**HELLO, **body})


async def admin_get(gw: Gateway, path: str, **params: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS, timeout=10) as client:
        return await client.get(path, params={k: str(v) for k, v in params.items()})


def assert_bad(resp: httpx.Response, param: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_field"
    assert param in error["message"]


async def test_a_fallback_tells_its_story_and_every_decision_reproduces(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["fail:500", "ok"]) as gw:
            resp = await chat(gw, {"model": "local/fail:500", "models": ["local/ok"]})
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-fallback-attempts"] == "1"
            request_id = resp.headers["x-request-id"]
            await settled(gw)
            listed = await admin_get(gw, "/admin/api/requests")
            got = await admin_get(gw, f"/admin/api/requests/{request_id}")
    assert listed.status_code == 200, listed.text
    first = listed.json()["data"][0]
    assert first["id"] == request_id
    assert (first["outcome"], first["status"], first["attempts"], first["mode"]) == ("ok", 200, 2, "named")
    assert (first["platform"], first["model"], first["requested"]) == (
        "local",
        "ok",
        "local/fail:500,local/ok",
    )

    assert got.status_code == 200, got.text
    story = got.json()
    assert story["request"] == first
    types = [e["type"] for e in story["events"]]
    assert types[0] == "request_received" and types[-1] == "request_completed"
    assert types.count("route_decided") == 2
    assert [e["seq"] for e in story["events"]] == sorted(e["seq"] for e in story["events"])
    failed, ok = story["attempts"]
    assert (failed["model"], failed["outcome"], failed["kind"], failed["status"]) == (
        "fail:500",
        "failed",
        "server_error",
        500,
    )
    assert (ok["model"], ok["outcome"], ok["kind"]) == ("ok", "ok", None)
    assert ok["ttfb_ms"] is not None and ok["duration_ms"] >= ok["ttfb_ms"]
    assert 0 <= failed["start_ms"] <= ok["start_ms"]  # the waterfall: the fallback starts after
    first_decision, second_decision = story["decisions"]
    assert first_decision["chosen_ref"] == "local/fail:500"
    assert second_decision["chosen_ref"] == "local/ok"
    assert all(d["reproduces"] is True for d in story["decisions"])
    assert all(d["replayed_ref"] == d["chosen_ref"] for d in story["decisions"])
    assert "reproduced" in first_decision["explanation"]
    assert any(c["ref"] == "local/ok" for c in second_decision["candidates"])
    assert story["reproduces"] is True


async def test_the_list_says_and_filters_by_the_protocol_each_request_came_by(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            ids = {"chat": (await chat(gw, {"model": "ok"})).headers["x-request-id"]}
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                bodies = {
                    "responses": ("/v1/responses", {"model": "ok", "input": "hi"}),
                    "messages": ("/v1/messages", {**HELLO, "model": "ok", "max_tokens": 50}),
                }
                for protocol, (path, body) in bodies.items():
                    resp = await client.post(path, json=body)
                    assert resp.status_code == 200, resp.text
                    ids[protocol] = resp.headers["x-request-id"]
            await settled(gw)
            listed = (await admin_get(gw, "/admin/api/requests")).json()["data"]
            assert {r["id"]: r["protocol"] for r in listed} == {v: k for k, v in ids.items()}
            for protocol, request_id in ids.items():
                resp = await admin_get(gw, "/admin/api/requests", protocol=protocol)
                assert [r["id"] for r in resp.json()["data"]] == [request_id]
            assert (await admin_get(gw, "/admin/api/requests", protocol="embeddings")).json()["data"] == []
            assert_bad(await admin_get(gw, "/admin/api/requests", protocol="fax"), "protocol")


async def test_the_list_filters_and_pages_back_in_time(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["ok", "fail:500"]) as gw:
            started = time.time()
            ids = {}
            failing = await chat(gw, {"model": "local/fail:500", "fallback": False})
            assert failing.status_code >= 500
            ids["error"] = failing.headers["x-request-id"]
            ids["auto"] = (await chat(gw, {"model": "auto"})).headers["x-request-id"]  # fail:500 cools
            ids["named"] = (await chat(gw, {"model": "local/ok"})).headers["x-request-id"]
            await settled(gw)

            async def listed(**params: object) -> list[str]:
                resp = await admin_get(gw, "/admin/api/requests", **params)
                assert resp.status_code == 200, resp.text
                return [r["id"] for r in resp.json()["data"]]

            assert await listed() == [ids["named"], ids["auto"], ids["error"]]  # newest first
            assert await listed(outcome="error") == [ids["error"]]
            assert await listed(outcome="ok") == [ids["named"], ids["auto"]]
            assert await listed(outcome="running") == []
            assert await listed(status=200) == [ids["named"], ids["auto"]]
            assert await listed(status=failing.status_code) == [ids["error"]]
            assert await listed(mode="auto") == [ids["auto"]]
            assert await listed(mode="named") == [ids["named"], ids["error"]]
            assert await listed(model="local/ok") == [ids["named"], ids["auto"]]
            assert await listed(model="ok", platform="local") == [ids["named"], ids["auto"]]
            assert await listed(platform="elsewhere") == []
            assert await listed(since=started - 60, until=time.time() + 60) == await listed()
            assert await listed(until=started - 60) == []

            # Page by page with the cursor: each request once, in order.
            seen, before = [], None
            while True:
                params: dict[str, object] = {"limit": 1}
                if before is not None:
                    params["before"] = before
                resp = (await admin_get(gw, "/admin/api/requests", **params)).json()
                seen += [r["id"] for r in resp["data"]]
                before = resp["next_before"]
                if before is None:
                    break
            assert seen == [ids["named"], ids["auto"], ids["error"]]

            failed = (await admin_get(gw, f"/admin/api/requests/{ids['error']}")).json()
            assert failed["request"]["outcome"] == "error"
            assert [a["outcome"] for a in failed["attempts"]] == ["failed"]
            assert failed["reproduces"] is True

            bad = {
                "limit": ["0", "501", "many"],
                "before": ["0", "x"],
                "outcome": ["fine"],
                "status": ["99", "600", "ok"],
                "mode": ["auto-best"],
                "since": ["yesterday", "nan"],
            }
            for param, values in bad.items():
                for value in values:
                    assert_bad(await admin_get(gw, "/admin/api/requests", **{param: value}), param)
            assert_bad(await admin_get(gw, "/admin/api/requests", since=10, until=5), "until")

            missing = await admin_get(gw, "/admin/api/requests/req_nobody")
            assert missing.status_code == 404
            assert (missing.json()["error"]["code"], missing.json()["error"]["param"]) == ("not_found", "id")


@pytest.mark.parametrize("path", ["/admin/api/requests", "/admin/api/requests/req_x"])
async def test_requests_need_the_admin_token(tmp_path, path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                anonymous = await client.get(path)
                gateway_key = await client.get(path, headers=AUTH)
    assert anonymous.status_code == 401 and gateway_key.status_code == 401


async def test_a_request_still_running_is_listed_without_an_outcome(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["slow:30"]) as gw:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat, gw, {"model": "local/slow:30"})
                while not gw.upstream.requests:  # noqa: ASYNC110 - until the attempt reaches the upstream
                    await trio.sleep(0.01)
                await settled(gw)
                running = (await admin_get(gw, "/admin/api/requests", outcome="running")).json()["data"]
                nursery.cancel_scope.cancel()  # the client goes away: no waiting for the slow answer
            await settled(gw)
            ended = (await admin_get(gw, "/admin/api/requests")).json()["data"]
            story = (await admin_get(gw, f"/admin/api/requests/{ended[0]['id']}")).json()
    assert [(r["outcome"], r["attempts"], r["platform"], r["model"]) for r in running] == [
        (None, 1, "local", "slow:30")
    ]
    assert [(r["id"], r["outcome"]) for r in ended] == [(running[0]["id"], "client_abort")]
    assert [a["outcome"] for a in story["attempts"]] == ["client_gone"]
