"""The gateway end to end over HTTP: answers, fallback, errors, headers."""

from __future__ import annotations

import httpx
from harness import GATEWAY_KEY, running_gateway

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


async def test_falls_back_from_a_failing_model_to_a_healthy_one(tmp_path):
    async with running_gateway(tmp_path, ["fail:503", "ok"], keys=("up-1", "up-2")) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as client:
            resp = await client.post(
                "/v1/chat/completions", json={"models": ["local/fail:503", "local/ok"], **HELLO}
            )
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Hello from ok."
    assert resp.headers["x-routed-via"] == "local/ok"
    assert resp.headers["x-fallback-attempts"] == "2"  # both keys of fail:503 first
    assert resp.headers["x-request-id"].startswith("req_")
