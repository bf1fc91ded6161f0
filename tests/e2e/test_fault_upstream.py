"""The fault-injecting upstream: every behaviour, hang-up detection, keep-alive, the official SDK."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import trio
from fault_upstream import RecordedRequest, UpstreamState, parse_spec, serve_upstream

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_upstream.py"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something nice"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


@pytest.fixture
async def upstream(nursery) -> tuple[UpstreamState, str]:
    state = UpstreamState()
    base_url = await nursery.start(serve_upstream, state)
    return state, base_url


@pytest.fixture
async def client(upstream):
    async with httpx.AsyncClient(base_url=upstream[1], timeout=None) as c:
        yield c


def chat(model: str, stream: bool = False, **extra) -> dict:
    return {"model": model, "messages": MESSAGES, "stream": stream, **extra}


async def sse(response: httpx.Response) -> list[tuple[float, str]]:
    """(trio time of arrival, payload) for each ``data:`` frame, up to the end of the body."""
    frames = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            frames.append((trio.current_time(), line[6:]))
    return frames


async def stream_chat(client: httpx.AsyncClient, body: dict, **kw) -> tuple[httpx.Response, list]:
    async with client.stream("POST", "/chat/completions", json=body, **kw) as r:
        return r, await sse(r)


def chunks(frames: list[tuple[float, str]]) -> list[dict]:
    assert frames[-1][1] == "[DONE]"
    return [json.loads(payload) for _, payload in frames[:-1]]


def content_of(parsed: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed if c["choices"])


def raw_request(model: str, stream: bool = False) -> bytes:
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def open_raw(base_url: str) -> trio.SocketStream:
    parts = urlsplit(base_url)
    return await trio.open_tcp_stream(parts.hostname, parts.port)


# ------------------------------------------------------------------------------------------------ ok


async def test_ok_non_stream_is_a_full_chat_completion(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("ok"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "ok"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello from ok."}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_ok_stream_is_sse_chunks_then_done(client):
    with trio.fail_after(5):
        r, frames = await stream_chat(client, chat("gpt-4o-mini", stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["transfer-encoding"] == "chunked"
    parsed = chunks(frames)
    assert all(c["object"] == "chat.completion.chunk" for c in parsed)
    assert len({c["id"] for c in parsed}) == 1
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant"}
    pieces = [c["choices"][0]["delta"]["content"] for c in parsed[1:-1]]
    assert len(pieces) >= 3
    assert "".join(pieces) == "Hello from gpt-4o-mini."
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in parsed[:-1])


async def test_stream_usage_chunk_when_asked(client):
    with trio.fail_after(5):
        _, frames = await stream_chat(client, chat("ok", True, stream_options={"include_usage": True}))
    last = chunks(frames)[-1]
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] > 0


async def test_unknown_behaviour_names_answer_ok(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("llama-3.3:70b"))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello from llama-3.3:70b."


def test_parse_spec():
    assert parse_spec("drip:0.1:5") == ("drip", ["0.1", "5"])
    assert parse_spec("fail:503") == ("fail", ["503"])
    assert parse_spec("ok") == ("ok", [])
    assert parse_spec("meta/llama:8b") == ("ok", [])


async def test_echo_returns_last_user_message(client):
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "echo me back"},
    ]
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json={"model": "echo", "messages": messages})
        _, frames = await stream_chat(client, {"model": "echo", "messages": messages, "stream": True})
    assert r.json()["choices"][0]["message"]["content"] == "echo me back"
    assert content_of(chunks(frames)) == "echo me back"


async def test_tools_answer_with_a_call_to_the_first_tool(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("ok", tools=TOOLS))
        _, frames = await stream_chat(client, chat("ok", True, tools=TOOLS))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}

    parsed = chunks(frames)
    assert parsed[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert content_of(parsed) == ""
    deltas = [d for c in parsed for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"] and deltas[0]["type"] == "function"
    assert {d["index"] for d in deltas} == {0}
    assert "".join(d["function"].get("name") or "" for d in deltas) == "get_weather"
    assert "".join(d["function"].get("arguments") or "" for d in deltas) == "{}"


async def test_truncated_finishes_with_length(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("truncated"))
        _, frames = await stream_chat(client, chat("truncated", True))
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["choices"][0]["message"]["content"]
    parsed = chunks(frames)
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert content_of(parsed)


async def test_empty_has_no_content_and_no_tool_calls(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("empty", tools=TOOLS))
        _, frames = await stream_chat(client, chat("empty", True))
    message = r.json()["choices"][0]["message"]
    assert message["content"] == ""
    assert "tool_calls" not in message
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    parsed = chunks(frames)
    assert content_of(parsed) == ""
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in parsed)
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 500, 502, 503, 504])
async def test_fail_returns_status_with_openai_error_body(client, status):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat(f"fail:{status}"))
        rs = await client.post("/chat/completions", json=chat(f"fail:{status}", True))
    for resp in (r, rs):
        assert resp.status_code == status
        assert resp.headers["content-type"] == "application/json"
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "code"}
        assert error["message"]
    if status == 404:
        assert r.json()["error"]["code"] == "model_not_found"


async def test_rate_limit_with_and_without_retry_after(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("rate-limit:7"))
        bare = await client.post("/chat/completions", json=chat("rate-limit"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert bare.status_code == 429
    assert "retry-after" not in bare.headers


async def test_auth_is_401_for_chat_and_models(upstream, client):
    state, _ = upstream
    state.key_behaviours["sk-revoked"] = "auth"
    bad = {"Authorization": "Bearer sk-revoked"}
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("auth"))
        models_bad = await client.get("/models", headers=bad)
        models_ok = await client.get("/models", headers={"Authorization": "Bearer sk-fine"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert models_bad.status_code == 401
    assert models_ok.status_code == 200
    listing = models_ok.json()
    assert listing["object"] == "list"
    assert {"ok", "echo"} <= {m["id"] for m in listing["data"]}


async def test_context_length_error(client):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("context"))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 8192 tokens")


@pytest.mark.parametrize("stream", [False, True])
async def test_wrapped_body_is_a_200_json_error(client, stream):
    with trio.fail_after(5):
        r = await client.post("/chat/completions", json=chat("wrapped-body", stream))
        r429 = await client.post("/chat/completions", json=chat("wrapped-body:429", stream))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == 503
    assert r.json()["error"]["message"]
    assert r429.json()["error"]["code"] == 429


async def test_wrapped_sse_is_an_error_frame_then_done(client):
    with trio.fail_after(5):
        r, frames = await stream_chat(client, chat("wrapped-sse:500", True))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert [payload for _, payload in frames][1:] == ["[DONE]"]
    error = json.loads(frames[0][1])["error"]
    assert error["code"] == 500
    assert error["message"]


# ------------------------------------------------------------------------------------- timing (trio)


async def test_stall_pre_sends_nothing_then_answers(client, autojump_clock):
    with trio.fail_after(100):
        t0 = trio.current_time()
        r = await client.post("/chat/completions", json=chat("stall-pre:45"))
        assert trio.current_time() - t0 >= 45
        assert r.json()["choices"][0]["message"]["content"] == "Hello from stall-pre:45."

        t0 = trio.current_time()
        async with client.stream("POST", "/chat/completions", json=chat("stall-pre:30", True)) as rs:
            assert trio.current_time() - t0 >= 30  # not even the headers came earlier
            frames = await sse(rs)
    assert content_of(chunks(frames)) == "Hello from stall-pre:30."


async def test_stall_mid_goes_silent_after_two_content_chunks(client, autojump_clock):
    with trio.fail_after(100):
        t0 = trio.current_time()
        _, frames = await stream_chat(client, chat("stall-mid:20", True))
        # Non-streaming: like stall-pre.
        r = await client.post("/chat/completions", json=chat("stall-mid:5"))
    times = [t for t, _ in frames]
    assert times[2] - t0 < 1  # role + 2 content chunks straight away
    assert times[3] - times[2] >= 20
    assert content_of(chunks(frames)) == "Hello from stall-mid:20."
    assert chunks(frames)[-1]["choices"][0]["finish_reason"] == "stop"
    assert trio.current_time() - times[-1] >= 5
    assert r.status_code == 200


async def test_drip_spaces_chunks_by_interval(client, autojump_clock):
    with trio.fail_after(100):
        t0 = trio.current_time()
        _, frames = await stream_chat(client, chat("drip:2:4", True))
    parsed = chunks(frames)
    assert content_of(parsed) == "t0 t1 t2 t3 "
    assert frames[0][0] - t0 < 1  # the role chunk comes at once
    content_times = [
        t for (t, _), c in zip(frames, parsed, strict=False) if c["choices"][0]["delta"].get("content")
    ]
    assert len(content_times) == 4
    gaps = [b - a for a, b in zip([frames[0][0], *content_times], content_times, strict=False)]
    assert all(g >= 2 for g in gaps)
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"


async def test_slow_answers_normally_after_a_wait(client, autojump_clock):
    with trio.fail_after(100):
        t0 = trio.current_time()
        r = await client.post("/chat/completions", json=chat("slow:3"))
        elapsed = trio.current_time() - t0
        _, frames = await stream_chat(client, chat("slow:3", True))
    assert elapsed >= 3
    assert r.json()["choices"][0]["message"]["content"] == "Hello from slow:3."
    assert content_of(chunks(frames)) == "Hello from slow:3."


async def test_timing_with_the_real_clock(client):
    with trio.fail_after(5):
        t0 = trio.current_time()
        _, frames = await stream_chat(client, chat("drip:0.05:3", True))
        r = await client.post("/chat/completions", json=chat("slow:0.1"))
    assert trio.current_time() - t0 >= 0.25
    assert content_of(chunks(frames)) == "t0 t1 t2 "
    assert r.status_code == 200


# ------------------------------------------------------------------------------- hang-ups and resets


async def test_client_disconnect_during_stall_pre_is_noticed(upstream, client, autojump_clock):
    state, _ = upstream
    with trio.fail_after(100):
        with trio.move_on_after(1):
            await client.post("/chat/completions", json=chat("stall-pre:60"))
        await state.disconnected.wait()
        assert trio.current_time() < 60  # noticed at once, not at the end of the stall
    assert state.client_disconnects == 1
    assert state.open_connections == 0  # closed before the event woke us


async def test_client_disconnect_mid_stream_stops_the_drip(upstream, client):
    state, _ = upstream
    with trio.fail_after(5):
        async with client.stream("POST", "/chat/completions", json=chat("drip:0.05:1000", True)) as r:
            async for line in r.aiter_lines():
                if '"content"' in line:
                    break
        await state.disconnected.wait()
    assert state.client_disconnects == 1
    assert state.open_connections == 0


async def test_reset_state_replaces_the_event(upstream):
    state, _ = upstream
    state.behaviours["m"] = "fail:500"
    state.key_behaviours["k"] = "auth"
    state.client_disconnects = 3
    state.disconnected.set()
    state.requests.append(RecordedRequest("GET", "/v1/models", None, None, False, None, {}))
    state.reset()
    assert state.requests == []
    assert state.behaviours == {}
    assert state.key_behaviours == {}
    assert state.client_disconnects == 0
    assert not state.disconnected.is_set()


async def test_reset_closes_with_rst(upstream):
    _, base_url = upstream
    with trio.fail_after(5):
        s = await open_raw(base_url)
        await s.send_all(raw_request("reset"))
        with pytest.raises(trio.BrokenResourceError):  # ECONNRESET, not a clean EOF
            await s.receive_some()
        await s.aclose()


async def test_reset_is_a_connection_error_for_httpx(client):
    with trio.fail_after(5):
        with pytest.raises(httpx.TransportError):
            await client.post("/chat/completions", json=chat("reset"))
        # The server lives on.
        assert (await client.post("/chat/completions", json=chat("ok"))).status_code == 200


async def test_reset_mid_breaks_the_stream_after_two_content_chunks(client):
    seen = []
    with trio.fail_after(5):
        with pytest.raises(httpx.TransportError):
            async with client.stream("POST", "/chat/completions", json=chat("reset-mid", True)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
        with pytest.raises(httpx.TransportError):
            await client.post("/chat/completions", json=chat("reset-mid"))
    assert content_of(seen) == "Hello from"
    assert all(c["choices"][0]["finish_reason"] is None for c in seen)


# ---------------------------------------------------------------------------- protocol and recording


async def test_pipelined_request_behind_a_stall_is_answered_in_order(upstream, autojump_clock):
    # The hang-up watcher reads the socket during the stall; what it reads must not be lost.
    state, base_url = upstream
    with trio.fail_after(100):
        s = await open_raw(base_url)
        await s.send_all(raw_request("stall-pre:10") + raw_request("echo"))
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}"):
            received += await s.receive_some()
        await s.aclose()
    first, second = received.split(b"HTTP/1.1 200")[1:]
    assert b"Hello from stall-pre:10." in first
    assert b'"content":"say something nice"' in second
    assert state.total_connections == 1
    assert state.client_disconnects == 0


async def test_keep_alive_reuses_one_connection(upstream, client):
    state, _ = upstream
    with trio.fail_after(5):
        r1 = await client.post("/chat/completions", json=chat("ok"))
        _, frames = await stream_chat(client, chat("ok", True))
        r2 = await client.get("/models")
    assert r1.status_code == r2.status_code == 200
    assert frames[-1][1] == "[DONE]"
    assert state.total_connections == 1
    assert state.open_connections == 1
    assert len(state.requests) == 3


async def test_requests_are_recorded_with_the_bearer_key(upstream, client):
    state, _ = upstream
    with trio.fail_after(5):
        await client.post(
            "/chat/completions", json=chat("echo", True), headers={"Authorization": "Bearer sk-up-1"}
        )
        await client.get("/models?x=1")
    rec = state.requests[0]
    assert rec.method == "POST"
    assert rec.path == "/v1/chat/completions"
    assert rec.model == "echo"
    assert rec.api_key == "sk-up-1"
    assert rec.stream is True
    assert rec.body is not None
    assert rec.body["messages"] == MESSAGES
    assert rec.headers["authorization"] == "Bearer sk-up-1"
    assert rec.headers["content-type"] == "application/json"
    listing = state.requests[1]
    assert (listing.method, listing.path, listing.model, listing.api_key) == ("GET", "/v1/models", None, None)


async def test_key_behaviours_override_model_behaviours(upstream, client):
    state, _ = upstream
    state.behaviours["gpt-x"] = "fail:503"
    state.key_behaviours["sk-limited"] = "rate-limit:2"
    with trio.fail_after(5):
        by_model = await client.post("/chat/completions", json=chat("gpt-x"))
        by_key = await client.post(
            "/chat/completions", json=chat("gpt-x"), headers={"Authorization": "Bearer sk-limited"}
        )
        other_key = await client.post(
            "/chat/completions", json=chat("ok"), headers={"Authorization": "Bearer sk-other"}
        )
        state.behaviours["gpt-x"] = "ok"
        healed = await client.post("/chat/completions", json=chat("gpt-x"))
    assert by_model.status_code == 503
    assert by_key.status_code == 429
    assert by_key.headers["retry-after"] == "2"
    assert other_key.status_code == 200
    assert healed.status_code == 200
    assert healed.json()["model"] == "gpt-x"


async def test_bad_requests_and_unknown_routes(client):
    with trio.fail_after(5):
        not_json = await client.post("/chat/completions", content=b"{nope")
        no_route = await client.get("/nowhere")
        wrong_method = await client.get("/chat/completions")
    assert not_json.status_code == 400
    assert no_route.status_code == 404
    assert wrong_method.status_code == 405
    assert "error" in not_json.json()


# ----------------------------------------------------------------------------------- official SDK


@pytest.mark.filterwarnings(
    # The SDK breaks out of its SSE generators at [DONE] and leaves them to the garbage collector.
    r"ignore:Async generator '(openai|httpx2|httpcore2)\.:ResourceWarning"
)
async def test_openai_sdk_non_stream_stream_and_errors(upstream):
    state, base_url = upstream
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-sdk", max_retries=0, timeout=5)
    try:
        with trio.fail_after(10):
            completion = await client.chat.completions.create(model="ok", messages=MESSAGES)
            stream = await client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            tooled = await client.chat.completions.create(model="ok", messages=MESSAGES, tools=TOOLS)
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="fail:503", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="rate-limit:1", messages=MESSAGES)
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(model="reset", messages=MESSAGES)
            models = await client.models.list()
    finally:
        await client.close()
    assert completion.choices[0].message.content == "Hello from ok."
    assert completion.usage is not None
    assert "".join(pieces) == "say something nice"
    assert tooled.choices[0].finish_reason == "tool_calls"
    assert tooled.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert "ok" in {m.id for m in models.data}
    assert {r.api_key for r in state.requests} == {"sk-sdk"}


# ------------------------------------------------------------------------------------------- as a CLI


async def test_runs_as_a_script_and_stops_on_sigterm():
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(SCRIPT), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            out = b""
            while b"\n" not in out:
                data = await proc.stdout.receive_some()
                assert data, "the upstream exited before announcing itself"
                out += data
            line = out.decode().strip()
            assert line.startswith("listening on http://127.0.0.1:")
            assert line.endswith("/v1")
            base_url = line.removeprefix("listening on ")
            async with httpx.AsyncClient(base_url=base_url) as c:
                r = await c.post("/chat/completions", json=chat("ok"))
            assert r.json()["choices"][0]["message"]["content"] == "Hello from ok."
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            assert await proc.stdout.receive_some() == b""  # exactly one line was printed
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    await pipe.aclose()
