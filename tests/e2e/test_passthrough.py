"""What the client sends reaches the provider unchanged (only `model` rewritten, gateway fields removed),
and what the provider answers reaches the client with nothing added."""

from __future__ import annotations

import copy

import httpx
import msgspec
import trio
from harness import GATEWAY_KEY, running_gateway

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
PNG = (
    "data:image/png;base64,"
    + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

RICH_REQUEST = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "png"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a 1x1 pixel"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
            },
        },
    },
    "stop": ["\n\n", "END"],
    "seed": 42,
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 64,
    "user": "user-123",
    "top_k": 40,  # a vendor parameter the gateway has never heard of
    "x_vendor_options": {"safe_mode": False, "nested": [1, 2.5, None, "x"]},
}


async def post(gw, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
        return await client.post("/v1/chat/completions", json=body)


async def test_every_field_reaches_the_upstream_unchanged_but_model(tmp_path):
    sent = {"model": "local/ok", **copy.deepcopy(RICH_REQUEST)}
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            resp = await post(gw, sent)
    assert resp.status_code == 200, resp.text
    forwarded = gw.upstream.requests[-1]
    assert forwarded.path == "/v1/chat/completions"
    assert forwarded.body == {**sent, "model": "ok"}  # the provider's id, not the gateway's `local/ok`
    assert list(forwarded.body) == list(sent)  # not even the key order changed
    assert forwarded.api_key == "up-1"
    # The client's gateway key never goes upstream.
    assert GATEWAY_KEY not in str(forwarded.headers)


async def test_streaming_request_fields_reach_the_upstream_unchanged(tmp_path):
    sent = {
        "model": "ok",
        "stream": True,
        "stream_options": {"include_usage": True},
        **copy.deepcopy(RICH_REQUEST),
    }
    del sent["tools"], sent["tool_choice"]  # a plain text answer this time
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            resp = await post(gw, sent)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert gw.upstream.requests[-1].body == sent
    assert gw.upstream.requests[-1].stream is True


async def test_gateway_fields_are_removed(tmp_path):
    sent = {
        "model": "auto",
        "models": ["echo"],
        "fallback": False,
        "messages": [{"role": "user", "content": "x"}],
    }
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok", "echo"]) as gw:
            resp = await post(gw, sent)
    assert resp.status_code == 200
    assert gw.upstream.requests[-1].body == {"model": "echo", "messages": sent["messages"]}


async def test_models_list_is_tried_in_order(tmp_path):
    """The list wins over catalog ranks (ok ranks first here) and is tried in the order given."""
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok", "echo", "fail:503", "fail:500", "fail:502"]) as gw:
            resp = await post(
                gw,
                {
                    "models": ["fail:500", "fail:503", "echo"],
                    "messages": [{"role": "user", "content": "in order"}],
                },
            )
            gw.upstream.requests.clear()
            # fail:502, not one of the above: a model whose every key just failed is cooling, and skipped.
            named = await post(
                gw,
                {
                    "model": "fail:502",
                    "models": ["echo"],
                    "fallback": False,
                    "messages": [{"role": "user", "content": "model first"}],
                },
            )
            named_models = [r.model for r in gw.upstream.requests]
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "in order"
    assert resp.headers["x-routed-via"] == "local/echo"
    assert resp.headers["x-fallback-attempts"] == "2"
    # `model` comes first, then the list; with fallback off the chain (ok) is not appended.
    assert named.status_code == 200
    assert named_models == ["fail:502", "echo"]
    assert named.headers["x-routed-via"] == "local/echo"


async def test_models_list_without_fallback_stops_at_the_list(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok", "fail:503"]) as gw:
            resp = await post(
                gw,
                {"models": ["fail:503"], "fallback": False, "messages": [{"role": "user", "content": "x"}]},
            )
            tried = [r.model for r in gw.upstream.requests]
    assert resp.status_code == 502
    assert tried == ["fail:503"]


async def direct(gw, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=gw.upstream_url, headers={"Authorization": "Bearer up-1"}
    ) as client:
        return await client.post("/chat/completions", json=body)


def without_volatile(obj):
    """The fault upstream numbers its answers (and tool calls) and stamps the time; the rest must match,
    key for key: a field the gateway added or dropped anywhere shows up here."""
    if isinstance(obj, dict):
        return {k: without_volatile(v) for k, v in obj.items() if k not in ("id", "created")}
    if isinstance(obj, list):
        return [without_volatile(v) for v in obj]
    return obj


async def test_response_body_is_what_the_upstream_sent(tmp_path):
    bodies = [
        {"model": "ok", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "ok", "messages": [{"role": "user", "content": "hi"}], "tools": RICH_REQUEST["tools"]},
    ]
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            pairs = [((await post(gw, body)).json(), (await direct(gw, body)).json()) for body in bodies]
    for via_gateway, upstream in pairs:
        assert without_volatile(via_gateway) == without_volatile(upstream)
        assert list(via_gateway) == list(upstream)
        assert list(via_gateway["choices"][0]["message"]) == list(upstream["choices"][0]["message"])


def sse_payloads(text: str) -> list[bytes]:
    return [line[6:].encode() for line in text.split("\n") if line.startswith("data: ")]


async def test_stream_frames_are_what_the_upstream_sent(tmp_path):
    body = {
        "model": "echo",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "a b c"}],
    }
    with trio.fail_after(10):
        async with running_gateway(tmp_path, ["echo"]) as gw:
            via_gateway = (await post(gw, body)).text
            upstream = (await direct(gw, body)).text
    ours, theirs = sse_payloads(via_gateway), sse_payloads(upstream)
    assert ours[-1] == theirs[-1] == b"[DONE]"
    assert len(ours) == len(theirs)
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        assert without_volatile(msgspec.json.decode(a)) == without_volatile(msgspec.json.decode(b))
    assert ": keep-alive" not in via_gateway  # a fast answer needs no keepalive
