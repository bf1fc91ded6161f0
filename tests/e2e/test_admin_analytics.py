"""The admin API's analytics on a real gateway: the counts after some requests, their rebuild from the log
at the next start, bad windows, and the admin token."""

from __future__ import annotations

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


async def analytics(gw: Gateway, path: str, **params: str) -> dict:
    async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS, timeout=10) as client:
        resp = await client.get(f"/admin/api/analytics/{path}", params=params)
    assert resp.status_code == 200, resp.text
    body: dict = resp.json()
    return body


async def some_traffic(gw: Gateway) -> None:
    """Three requests: one answered at once, one after a fallback, one that fails (no fallback)."""
    assert (await chat(gw, {"model": "local/ok"})).status_code == 200
    assert (await chat(gw, {"model": "local/fail:500", "models": ["local/ok"]})).status_code == 200
    gw.upstream.behaviours["ok"] = "fail:429"  # the next attempt of local/ok is rate limited
    assert (await chat(gw, {"model": "local/ok", "fallback": False})).status_code == 429
    await settled(gw)


def check_counts(summary: dict, by_model: dict, errors: dict) -> None:
    assert (summary["requests"], summary["ok"], summary["errors"], summary["client_aborts"]) == (3, 2, 1, 0)
    assert summary["fallbacks"] == 1 and summary["success_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["latency_ms"]["p50"] is not None and summary["ttfb_ms"]["p95"] is not None
    assert summary["tokens"]["output"] > 0
    rows = {r["name"]: r for r in by_model["data"]}
    assert (rows["local/ok"]["attempts"], rows["local/ok"]["ok"], rows["local/ok"]["failed"]) == (3, 2, 1)
    assert (rows["local/fail:500"]["attempts"], rows["local/fail:500"]["failed"]) == (1, 1)
    assert rows["local/fail:500"]["success_rate"] == 0.0
    assert {e["kind"]: e["count"] for e in errors["data"]} == {"server_error": 1, "rate_limited": 1}


async def test_analytics_count_the_traffic_and_are_rebuilt_from_the_log_at_start(tmp_path):
    data_dir = tmp_path / "data"
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["ok", "fail:500"], data_dir=data_dir) as gw:
            await some_traffic(gw)
            live = [
                await analytics(gw, "summary", window="1h"),
                await analytics(gw, "by/model", window="1h"),
                await analytics(gw, "errors"),
            ]
            timeline = await analytics(gw, "timeline", window="1h")
            keys = await analytics(gw, "by/key", window="30d")
            platforms = await analytics(gw, "by/platform", window="7d")
            hourly = await analytics(gw, "timeline", window="24h", bucket="hour")
        async with running_gateway(tmp_path, ["ok", "fail:500"], data_dir=data_dir) as gw:
            rebuilt = [
                await analytics(gw, "summary", window="1h"),
                await analytics(gw, "by/model", window="1h"),
                await analytics(gw, "errors"),
            ]
    check_counts(*live)
    assert live[0]["window"] == "1h" and live[2]["window"] == "24h"  # the default window
    assert rebuilt == live
    assert timeline["bucket_s"] == 60 and sum(p["requests"] for p in timeline["points"]) == 3
    assert sum(sum(p["errors_by_kind"].values()) for p in timeline["points"]) == 2
    assert [r["attempts"] for r in keys["data"]] == [4] and keys["data"][0]["name"].startswith("local.")
    assert [(r["name"], r["attempts"]) for r in platforms["data"]] == [("local", 4)]
    assert hourly["bucket_s"] == 3600 and sum(p["requests"] for p in hourly["points"]) == 3


async def test_bad_questions_name_the_field_and_strangers_get_401(tmp_path):
    bad = [
        ("summary", {"window": "2h"}, "window"),
        ("by/model", {"window": "1y"}, "window"),
        ("by/colour", {}, "dim"),
        ("timeline", {"bucket": "second"}, "bucket"),
        ("timeline", {"window": "7d", "bucket": "minute"}, "bucket"),
        ("errors", {"window": ""}, None),  # empty: the default window
    ]
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                answers = [
                    await client.get(f"/admin/api/analytics/{path}", params=params, headers=ADMIN_HEADERS)
                    for path, params, _ in bad
                ]
                strangers = [
                    await client.get(f"/admin/api/analytics/{path}", headers=headers)
                    for path in ("summary", "by/model", "timeline", "errors")
                    for headers in ({}, AUTH)
                ]
    for resp, (_, _, param) in zip(answers, bad, strict=True):
        if param is None:
            assert resp.status_code == 200, resp.text
            continue
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert (error["param"], error["code"]) == (param, "invalid_field")
        assert param in error["message"]
    assert [r.status_code for r in strangers] == [401] * 8
