"""Streams that never hang: deadlines, keepalive, the commit contract and disconnects, end to end.

The clock is trio's MockClock with a small autojump threshold: virtual time jumps only when every task
has been idle for a couple of real milliseconds, so loopback I/O is never overtaken but a 30 s silence
takes milliseconds. Times asserted below are virtual seconds.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing
from custom_gateway import settled
from fault_upstream import UpstreamState
from harness import GATEWAY_KEY, running_gateway

from events.sqlite_store import SqliteStore

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
FAST = "first_byte_s = 5\nstall_s = 5\nkeepalive_s = 2"


def body(models: list[str], stream: bool = True, **extra: object) -> dict[str, object]:
    """The request names its models, so they are tried in this order (then the chain)."""
    return {
        "model": "auto",
        "models": [f"local/{m}" for m in models],
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


async def read_stream(client: httpx.AsyncClient, payload: dict[str, object]) -> tuple[httpx.Response, list]:
    """Lines of the SSE body with the virtual time each arrived (relative to the request)."""
    start = trio.current_time()
    lines: list[tuple[float, str]] = []
    async with client.stream("POST", "/v1/chat/completions", json=payload) as resp:
        async for line in resp.aiter_lines():
            if line:
                lines.append((trio.current_time() - start, line))
    return resp, lines


def contents(lines: list) -> str:
    out = ""
    for _, line in lines:
        if line.startswith("data: {"):
            delta = json.loads(line[6:]).get("choices", [{}])[0].get("delta", {})
            out += delta.get("content") or ""
    return out


def errors(lines: list) -> list[dict]:
    return [json.loads(line[6:])["error"] for _, line in lines if line.startswith('data: {"error"')]


def events_of(data_dir, kind: str) -> list:
    store = SqliteStore(data_dir / "switchboard.db")
    try:
        return [e for _, e in store.read_after(0) if type(e).__struct_config__.tag == kind]
    finally:
        store.close()


async def test_pre_stream_stall_falls_over_with_keepalives_meanwhile(tmp_path, clock):
    async with running_gateway(tmp_path, ["stall-pre:30", "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            resp, lines = await read_stream(client, body(["stall-pre:30", "ok"]))
    assert resp.status_code == 200
    first_content = next(t for t, line in lines if '"content":"Hello' in line)
    assert 5 <= first_content <= 6
    keepalives = [t for t, line in lines if line == ": keep-alive"]
    assert keepalives and keepalives[0] < 5  # the client heard from us before the first token
    assert contents(lines) == "Hello from ok."
    assert lines[-1][1] == "data: [DONE]"
    assert not errors(lines)
    stalls = events_of(gw.data_dir, "stream_stalled")
    assert [s.phase for s in stalls] == ["pre"]
    assert gw.upstream.client_disconnects == 1  # the deadline really hung up on the stalled upstream


async def test_thirty_seconds_of_silence_shows_keepalives_then_the_fallback(tmp_path, clock):
    async with (
        running_gateway(
            tmp_path, ["stall-pre:30", "ok"], timeouts="first_byte_s = 45\nkeepalive_s = 5"
        ) as gw,
        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=120) as client,
    ):
        resp, lines = await read_stream(client, body(["stall-pre:30", "ok"]))
    keepalives = [t for t, line in lines if line == ": keep-alive"]
    assert len(keepalives) >= 5
    # The stalled upstream answered after 30 s, before the 45 s deadline: its answer is the one used.
    assert contents(lines) == "Hello from stall-pre:30."
    assert resp.headers.get("x-routed-via") is None  # committed by a keepalive, before the model was known


async def test_mid_stream_stall_ends_with_an_error_event_and_keeps_the_partial_content(tmp_path, clock):
    async with running_gateway(tmp_path, ["stall-mid:30", "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            resp, lines = await read_stream(client, body(["stall-mid:30", "ok"]))
    assert resp.status_code == 200
    assert resp.headers["x-routed-via"] == "local/stall-mid:30"
    assert contents(lines)  # the partial answer is intact
    assert "Hello from ok." not in contents(lines)  # no silent switch once content was sent
    errs = errors(lines)
    assert len(errs) == 1 and errs[0]["type"] == "stream_timeout"
    last_content = max(t for t, line in lines if '"content"' in line)
    error_at = next(t for t, line in lines if line.startswith('data: {"error"'))
    assert 5 <= error_at - last_content <= 6
    assert lines[-1][1] == "data: [DONE]"
    assert [s.phase for s in events_of(gw.data_dir, "stream_stalled")] == ["mid"]


@pytest.mark.parametrize(
    "failing",
    ["fail:500", "fail:503", "wrapped-body", "wrapped-sse", "reset", "empty", "rate-limit:30"],
)
async def test_failures_before_content_fall_over_at_once(tmp_path, clock, failing):
    async with running_gateway(tmp_path, [failing, "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            start = trio.current_time()
            resp, lines = await read_stream(client, body([failing, "ok"]))
            elapsed = trio.current_time() - start
    assert resp.status_code == 200
    assert contents(lines) == "Hello from ok."
    assert not errors(lines)
    assert elapsed < 0.5
    assert resp.headers["x-routed-via"] == "local/ok"


async def test_a_rejected_key_falls_over_to_the_next_key_at_once(tmp_path, clock):
    # A 401 invalidates the key for every model of its platform, so the fallback is another key.
    state = UpstreamState()
    state.key_behaviours["up-1"] = "auth"
    async with running_gateway(tmp_path, ["ok"], state=state, keys=("up-1", "up-2"), timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            results = []
            for _ in range(2):  # the least-used key goes first (ties at random): up-1 is one of the two
                start = trio.current_time()
                resp, lines = await read_stream(client, body(["ok"]))
                results.append((resp, lines, trio.current_time() - start))
                await settled(gw)  # the next decision sees which key this one used
    assert "up-1" in [r.api_key for r in state.requests]
    for resp, lines, elapsed in results:
        assert resp.status_code == 200
        assert contents(lines) == "Hello from ok."
        assert elapsed < 0.5
    assert [r.api_key for r in state.requests].count("up-1") == 1  # invalid from then on


async def test_slow_drip_streams_to_the_end_without_a_false_stall(tmp_path, clock):
    async with (
        running_gateway(tmp_path, ["drip:0.5:20", "ok"], timeouts="first_byte_s = 5\nstall_s = 2") as gw,
        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client,
    ):
        resp, lines = await read_stream(client, body(["drip:0.5:20", "ok"]))
    assert resp.headers["x-routed-via"] == "local/drip:0.5:20"
    assert not errors(lines)
    assert lines[-1][1] == "data: [DONE]"
    assert not events_of(gw.data_dir, "stream_stalled")


async def test_reset_after_content_ends_with_an_error_event(tmp_path, clock):
    async with running_gateway(tmp_path, ["reset-mid", "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            resp, lines = await read_stream(client, body(["reset-mid", "ok"]))
    assert resp.status_code == 200
    errs = errors(lines)
    assert len(errs) == 1 and errs[0]["code"] == "connect"
    assert lines[-1][1] == "data: [DONE]"


async def test_truncated_stream_after_content_is_delivered_and_counted_as_a_failure(tmp_path, clock):
    async with running_gateway(tmp_path, ["truncated", "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            resp, lines = await read_stream(client, body(["truncated", "ok"]))
    assert resp.headers["x-routed-via"] == "local/truncated"
    assert '"finish_reason":"length"' in "".join(line for _, line in lines)
    assert not errors(lines)
    failed = events_of(gw.data_dir, "attempt_failed")
    assert [(f.model, f.kind, f.mid_stream) for f in failed] == [("truncated", "truncated", True)]


async def test_total_failure_before_commit_is_a_real_http_status(tmp_path, clock):
    async with running_gateway(tmp_path, ["rate-limit:7"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            resp = await client.post("/v1/chat/completions", json=body(["rate-limit:7"]))
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


async def test_non_streaming_requests_get_the_same_deadlines(tmp_path, clock):
    async with running_gateway(tmp_path, ["stall-pre:30", "truncated", "ok"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
            start = trio.current_time()
            resp = await client.post(
                "/v1/chat/completions", json=body(["stall-pre:30", "truncated", "ok"], stream=False)
            )
            elapsed = trio.current_time() - start
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Hello from ok."
    assert 5 <= elapsed <= 6
    kinds = [e.kind for e in events_of(gw.data_dir, "attempt_failed")]
    assert kinds == ["stall_pre", "truncated"]


async def test_client_disconnect_mid_stream_hangs_up_upstream_and_leaks_nothing(tmp_path):
    # Real clock: this measures how fast the upstream sees the hang-up.
    async with running_gateway(tmp_path, ["drip:0.05:400"], timeouts=FAST) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
            async with client.stream("POST", "/v1/chat/completions", json=body(["drip:0.05:400"])) as resp:
                async for line in resp.aiter_lines():
                    if '"content"' in line:
                        break
            hung_up = trio.current_time()
        with trio.fail_after(2):
            await gw.upstream.disconnected.wait()
        assert trio.current_time() - hung_up < 0.1
        with trio.fail_after(2):
            while gw.runtime.requests.statistics().in_flight or gw.runtime.requests.statistics().streams_open:  # noqa: ASYNC110 - polling the actor's statistics is the point
                await trio.sleep(0.005)
        counters = {c.ref: c for c in await gw.runtime.stats.snapshot()}
    assert gw.upstream.client_disconnects == 1
    assert len(events_of(gw.data_dir, "client_disconnected")) == 1
    assert counters.get("local/drip:0.05:400") is None or counters["local/drip:0.05:400"].failures == 0
    completed = events_of(gw.data_dir, "request_completed")
    assert [c.outcome for c in completed] == ["client_abort"]
