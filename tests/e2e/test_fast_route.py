"""The chat route on raw ASGI (service/fast_route.py) keeps what Quart gave it: bounds on the body's size and
time, an answer to a bug, and nothing logged for a client that leaves before its body arrived."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from custom_gateway import read_log
from harness import GATEWAY_KEY, config_text, gateway_from, running_gateway

import service.app
from service import chat_completions

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


def with_server(settings: str):
    """The harness's config with `settings` added to its `[server]` table."""
    return lambda upstream_url, data_dir: config_text(upstream_url, data_dir, ["ok"]).replace(
        "[server]\n", f"[server]\n{settings}\n", 1
    )


async def test_a_body_without_a_length_is_still_bounded(tmp_path) -> None:

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 100  # chunked: no content-length to refuse it by

    with trio.fail_after(20):
        async with gateway_from(tmp_path, with_server("max_body_mb = 0.001")) as gw:  # 1,048 bytes
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                resp = await client.post("/v1/chat/completions", content=chunks())
                after = await client.post("/v1/chat/completions", json=HELLO)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    assert resp.headers["connection"] == "close" and resp.headers["x-request-id"].startswith("req_")
    assert after.status_code == 200


async def test_a_body_that_never_arrives_is_a_408_and_logs_nothing(tmp_path) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, with_server("body_timeout_s = 0.3")) as gw:
            where = urlsplit(gw.url)
            stream = await trio.open_tcp_stream(where.hostname or "127.0.0.1", where.port or 80)
            async with stream:
                await stream.send_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {GATEWAY_KEY}\r\n".encode()
                    + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model"'
                )
                answer = b""
                while b"request_timeout" not in answer:  # the whole answer, before hanging up
                    answer += await stream.receive_some(4096)
            data_dir = gw.data_dir
    assert answer.startswith(b"HTTP/1.1 408") and b"x-request-id: req_" in answer.lower()
    assert [e for e in read_log(data_dir) if type(e).__name__ == "RequestReceived"] == []


async def test_a_bug_on_the_chat_route_is_a_500_with_its_request_id(tmp_path, monkeypatch) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    protocol = dataclasses.replace(chat_completions.PROTOCOL, handle=broken)
    monkeypatch.setattr(service.app, "PROTOCOLS", (protocol,))
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                resp = await client.post("/v1/chat/completions", json=HELLO)
                alive = await client.get("/healthz")
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["code"] == "internal_error" and resp.headers["x-request-id"] in error["message"]
    assert alive.status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_other_methods_on_the_chat_path_are_still_405(tmp_path, method: str) -> None:
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                resp = await client.request(method, "/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


async def test_a_model_id_outside_latin1_is_answered_with_its_route(tmp_path) -> None:
    # The raw route encoded header values as latin-1: a model "m€" gave a bare 500 (logged as a success).
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["m€"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                for stream in (False, True):
                    body = {**HELLO, "model": "local/m€", "stream": stream}
                    resp = await client.post("/v1/chat/completions", json=body)
                    assert resp.status_code == 200, resp.text
                    assert resp.headers["x-routed-via"] == "local/m€"  # sent as UTF-8, as Quart did
                    assert resp.headers["x-request-id"].startswith("req_")


async def test_a_streams_handle_is_closed_even_if_its_body_never_ran() -> None:
    # aclose() on a generator that never started skips its `finally`: the stream's producer went on.
    from service.edge import Answer
    from service.fast_route import _answer

    closed: list[bool] = []

    async def body():  # type: ignore[no-untyped-def]
        yield b"never"

    async def send(message: object) -> None:
        raise OSError("the connection is gone")

    answer = Answer(200, body(), {}, "text/event-stream", lambda: closed.append(True))
    with pytest.raises(OSError):
        await _answer(send, "req_x", answer)
    assert closed == [True]


async def test_the_first_of_repeated_auth_headers_counts(tmp_path) -> None:
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                headers = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {GATEWAY_KEY}")]
                resp = await client.post("/v1/chat/completions", json=HELLO, headers=headers)
    assert resp.status_code == 401  # as under Quart


async def test_an_address_guessing_keys_is_refused_with_429(tmp_path, monkeypatch) -> None:
    # From issue 10's list: failed gateway-key attempts were unthrottled (1,300/s).
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                wrong = {"Authorization": "Bearer sk-guess"}
                statuses = [
                    (await client.post("/v1/chat/completions", json=HELLO, headers=wrong)).status_code
                    for _ in range(21)
                ]
                refused = await client.post("/v1/chat/completions", json=HELLO, headers=AUTH)
                models = await client.get("/v1/models", headers=AUTH)  # the Quart side refuses too
    assert statuses == [401] * 21
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"]["code"] == "too_many_failed_attempts"
    assert models.status_code == 429


async def test_errors_quote_only_a_prefix_of_a_clients_long_path_or_model_id(tmp_path) -> None:
    # From issue 10's list: error messages quote at most a prefix of what the client sent.
    long = "x" * 8000
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                missing = await client.get(f"/v1/models/{long}")
                unknown = await client.get(f"/{long}")
    for resp in (missing, unknown):
        assert resp.status_code == 404
        message = resp.json()["error"]["message"]
        # The 404 also lists every protocol's path: bounded, whatever the client sent.
        assert "x" * 70 in message and "x" * 80 not in message and len(message) < 300, message
