"""Regressions of issue 9, end to end: the real gateway over HTTP in front of the real fault-injecting
upstream, one test per bug, each named after it. Each of them failed on the code before the issue's work
(commit 3eb0d1e) and passes since.

What a test checks is visible to a client (status, headers, SSE lines, where an answer came from) or in
the event log. Time-dependent tests use the MockClock-with-autojump pattern of test_streams.py: virtual
time jumps only when every task has been idle for a couple of real milliseconds, so loopback I/O is never
overtaken while a 30 s stall takes milliseconds. Times asserted below are virtual seconds.

Every platform points at the same upstream with its own key, so the upstream's recorded requests say which
platform served an attempt (by API key) and which model (by id; ids are unique across platforms here).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
import trio
import trio.testing
from custom_gateway import gateway_from, platform_toml, read_log, server_toml, settled
from fault_upstream import UpstreamState
from harness import GATEWAY_KEY

from events.types import (
    AttemptFailed,
    KeyChecked,
    KeyInvalidated,
    RouteDecided,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
)

pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
    ),
    pytest.mark.usefixtures("clean_env"),
]

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
CHAT = "/v1/chat/completions"


# ---- config -----------------------------------------------------------------------------------------------

Platform = tuple[str, dict, list[tuple[str, dict]]]  # (name, options, [(model id, model fields)])


def config(platforms: list[Platform], timeouts: str = ""):
    """A config function for `gateway_from`. Platform options: `keys` (default one key, `<name>-key`),
    `protection`, `single_flight`. Models get intelligence ranks in the order given (the first is the
    smartest), unless their fields say otherwise."""

    def make(url: str, data_dir: Path) -> str:
        text = server_toml(data_dir, gateway_key=GATEWAY_KEY, extra=f"[timeouts]\n{timeouts}\n")
        rank = 0
        for name, options, models in platforms:
            text += platform_toml(name, url, tuple(options.get("keys", (f"{name}-key",))))
            if "protection" in options:
                text += f'protection = "{options["protection"]}"\n'
            if options.get("single_flight"):
                text += "single_flight = true\n"
            for model_id, given in models:
                rank += 1
                text += f'\n[[models]]\nplatform = "{name}"\nid = "{model_id}"\n'
                for field, value in {"intelligence_rank": rank, **given}.items():
                    text += f"{field} = {msgspec.json.encode(value).decode()}\n"
        return text

    return make


FAST = "first_byte_s = 5\nstall_s = 5\nkeepalive_s = 2"


# ---- helpers ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def client_for(gw) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=120) as client:
        yield client


def chat(models: list[str] | None = None, *, mode: str = "auto", stream: bool = False, **extra) -> dict:
    body: dict = {"model": mode, "stream": stream, "messages": [{"role": "user", "content": "hi"}], **extra}
    if models:
        body["models"] = models
    return body


async def read_stream(
    client: httpx.AsyncClient, payload: dict, headers: dict | None = None
) -> tuple[httpx.Response, list[tuple[float, str]]]:
    """Lines of the SSE body (blank lines left out) with the virtual time each arrived."""
    start = trio.current_time()
    lines: list[tuple[float, str]] = []
    with trio.fail_after(120):
        async with client.stream("POST", CHAT, json=payload, headers=headers or {}) as resp:
            async for line in resp.aiter_lines():
                if line:
                    lines.append((trio.current_time() - start, line))
    return resp, lines


def contents(lines: list[tuple[float, str]]) -> str:
    out = ""
    for _, line in lines:
        if line.startswith("data: {"):
            choices = json.loads(line[6:]).get("choices") or [{}]
            out += choices[0].get("delta", {}).get("content") or ""
    return out


def errors(lines: list[tuple[float, str]]) -> list[dict]:
    return [json.loads(line[6:])["error"] for _, line in lines if line.startswith('data: {"error"')]


def comments_before_data(lines: list[tuple[float, str]]) -> list[str]:
    """The SSE comment lines sent before the first data frame, keep-alives left out."""
    out = []
    for _, line in lines:
        if line.startswith("data:"):
            break
        if line.startswith(":") and line != ": keep-alive":
            out.append(line)
    return out


def calls(state: UpstreamState, since: int = 0) -> list[tuple[str | None, str | None]]:
    """(API key, model) of each chat request the upstream received after index `since`."""
    return [(r.api_key, r.model) for r in state.requests[since:] if r.path == CHAT]


def of_type(data_dir: Path, kind: type, request_id: str | None = None) -> list:
    return [
        e
        for e in read_log(data_dir)
        if isinstance(e, kind) and (request_id is None or e.request_id == request_id)
    ]


# ---- 1. a failure after content goes through thread protection -------------------------------------------

BAN = config(
    [
        ("ban", {"protection": "provider-ban"}, [("b1", {}), ("b2", {})]),
        ("other", {"protection": "off"}, [("o1", {})]),
    ],
    timeouts=FAST,
)


AFTER_CONTENT = {  # a failure after content: (behaviour, failure kind, the error event's type)
    "stall": ("stall-mid:60", "stall_mid", "stream_timeout"),
    "reset": ("reset-mid", "connect", "upstream_error"),
    "error-frame": ("fail-mid:503", "server_error", "upstream_error"),
}


@pytest.mark.parametrize("failure", list(AFTER_CONTENT))
async def test_a_failure_after_content_bans_the_provider_ban_platform_for_the_session(
    tmp_path, clock, failure
):
    # It never reached thread protection: no ban, the pin kept, and the next turn went back to the model
    # (and the platform) that had just failed. The issue's case is the stall; a reset or an error frame
    # after content is the same path.
    behaviour, kind, error_type = AFTER_CONTENT[failure]
    state = UpstreamState()
    session = {"X-Session-Id": "issue9-thread"}
    with trio.fail_after(120):
        async with gateway_from(tmp_path, BAN, state=state) as gw, client_for(gw) as client:
            first = await client.post(CHAT, json=chat(["ban/b1"]), headers=session)
            assert first.headers["x-routed-via"] == "ban/b1"
            await settled(gw)

            state.behaviours["b1"] = behaviour  # the pinned model fails after some content
            resp, lines = await read_stream(client, chat(stream=True), session)
            assert resp.headers["x-routed-via"] == "ban/b1"  # the pin took the turn
            assert contents(lines) == "Hello from"
            assert [(e["type"], e["code"]) for e in errors(lines)] == [(error_type, kind)]
            assert lines[-1][1] == "data: [DONE]"
            await settled(gw)

            # b1 recovers and its transient cooldown runs out; the session names it again: the ban holds.
            del state.behaviours["b1"]
            await trio.sleep(30)
            before = len(state.requests)
            again = await client.post(CHAT, json=chat(["ban/b1"]), headers=session)
            assert again.status_code == 200, again.text
            assert again.headers["x-routed-via"] == "other/o1"
            assert again.headers["x-skipped-models"].startswith(
                "ban/b1 (banned for this session: provider-ban"
            )
            assert calls(state, before) == [("other-key", "o1")]

            # The ban is that session's: another one still gets the platform.
            fresh = await client.post(CHAT, json=chat(["ban/b1"]), headers={"X-Session-Id": "another"})
            assert fresh.headers["x-routed-via"] == "ban/b1"
    [ban] = of_type(gw.data_dir, SessionBanned)
    assert (ban.platform, ban.reason) == ("ban", f"provider-ban: mid-stream {kind}")
    assert ban.request_id == resp.headers["x-request-id"]
    [cleared] = of_type(gw.data_dir, SessionPinCleared)
    assert cleared.request_id == resp.headers["x-request-id"]
    [retry] = of_type(gw.data_dir, RouteDecided, again.headers["x-request-id"])
    reasons = {e.ref: e.reason for e in retry.excluded}
    assert reasons["ban/b1"].startswith("banned for this session")


async def test_a_delivered_truncated_stream_clears_the_pin_instead_of_re_pinning(tmp_path, clock):
    state = UpstreamState()
    session = {"X-Session-Id": "issue9-truncated"}
    platforms = config([("local", {}, [("a", {}), ("b", {})])], timeouts=FAST)
    with trio.fail_after(120):
        async with gateway_from(tmp_path, platforms, state=state) as gw, client_for(gw) as client:
            first = await client.post(CHAT, json=chat(["local/a"]), headers=session)
            assert first.headers["x-routed-via"] == "local/a"
            await settled(gw)

            state.behaviours["a"] = "truncated"  # finish_reason "length", and the client set no limit
            resp, lines = await read_stream(client, chat(stream=True), session)
            cut = resp.headers["x-request-id"]
            assert resp.headers["x-routed-via"] == "local/a"
            assert contents(lines) == "Hello from a." and not errors(lines)  # delivered as the model sent it
            assert '"finish_reason":"length"' in "".join(line for _, line in lines)
            assert lines[-1][1] == "data: [DONE]"
            await settled(gw)
    assert of_type(gw.data_dir, SessionPinned, cut) == []  # no re-pin to the model that cut it short
    [cleared] = of_type(gw.data_dir, SessionPinCleared, cut)
    assert cleared.reason == "model-skip: mid-stream truncated"


# ---- 2. a stall before the first byte skips the model's other keys ----------------------------------------


async def test_a_stall_before_the_first_byte_skips_the_models_other_keys(tmp_path, clock):
    # Acceptance of issue 9: first_byte_s = stall_s = 5 and a model with two keys that never sends a first
    # byte; the first token comes from the fallback within 5 s + 1 s (it waited 5 s per key: 10 s).
    state = UpstreamState()
    platforms = config(
        [("local", {"keys": ("up-1", "up-2")}, [("stall-pre:60", {}), ("ok", {})])],
        timeouts="first_byte_s = 5\nstall_s = 5\nkeepalive_s = 2",
    )
    with trio.fail_after(120):
        async with gateway_from(tmp_path, platforms, state=state) as gw, client_for(gw) as client:
            resp, lines = await read_stream(client, chat(["local/stall-pre:60", "local/ok"], stream=True))
    assert resp.status_code == 200
    first_token = next(t for t, line in lines if '"content":"Hello' in line)
    assert 5 <= first_token <= 5 + 1
    assert contents(lines) == "Hello from ok." and not errors(lines)
    assert [model for _, model in calls(state)] == ["stall-pre:60", "ok"]  # the second key was not tried


# ---- 3. a 403 checks the key before believing it invalid --------------------------------------------------


async def test_a_403_with_a_working_key_cools_only_that_key_for_that_model(tmp_path):
    # A 403 invalidated the key for every model of the platform, though 403s are often about one model.
    # (Real clock: the key checker, every 300 s, must not check the cooled key meanwhile.)
    state = UpstreamState()
    state.behaviours["forbidden"] = "fail:403"
    platforms = config([("local", {"keys": ("up-1",)}, [("forbidden", {}), ("ok", {}), ("echo", {})])])
    with trio.fail_after(60):
        async with gateway_from(tmp_path, platforms, state=state) as gw, client_for(gw) as client:
            first = await client.post(CHAT, json=chat(["local/forbidden", "local/ok"]))
            assert first.status_code == 200, first.text
            assert first.headers["x-routed-via"] == "local/ok"  # the same key, for another model
            assert [(r.method, r.path, r.api_key) for r in state.requests if r.path == "/v1/models"] == [
                ("GET", "/v1/models", "up-1")
            ]  # the key was checked
            await settled(gw)
            before = len(state.requests)
            later = await client.post(CHAT, json=chat(["local/echo"]))
            assert later.status_code == 200, later.text
            assert later.headers["x-routed-via"] == "local/echo"
            assert calls(state, before) == [("up-1", "echo")]
            # The model that answered 403 waits on this key: asked for alone, it is not tried again.
            alone = await client.post(CHAT, json=chat(["local/forbidden"], fallback=False))
            assert alone.status_code != 200
            assert calls(state, before + 1) == []
    [failed] = of_type(gw.data_dir, AttemptFailed)
    assert (failed.kind, failed.status) == ("forbidden", 403)
    assert of_type(gw.data_dir, KeyInvalidated) == []
    assert [c.ok for c in of_type(gw.data_dir, KeyChecked)] == [True]

    # When the check fails too, the key is invalid (for every model of its platform).
    state = UpstreamState()
    (tmp_path / "second").mkdir()
    state.key_behaviours["up-1"] = "fail:403"  # chat and GET /models alike
    with trio.fail_after(60):
        async with (
            gateway_from(tmp_path / "second", platforms, state=state) as gw,
            client_for(gw) as client,
        ):
            first = await client.post(CHAT, json=chat(["local/ok"]))
            assert first.status_code != 200
            await settled(gw)
            before = len(state.requests)
            later = await client.post(CHAT, json=chat(["local/echo"]))
            assert later.status_code == 503, later.text
            assert calls(state, before) == []
    assert [k.key_id for k in of_type(gw.data_dir, KeyInvalidated)] == [
        c.key_id for c in of_type(gw.data_dir, KeyChecked)
    ]
    assert [c.ok for c in of_type(gw.data_dir, KeyChecked)] == [False]


# ---- 4. every attempt stalling before content is a 504 ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_every_attempt_stalling_before_content_is_a_504_stream_timeout(tmp_path, clock, stream):
    # It was a 502, as if the providers had answered with errors. (keepalive_s is longer than the whole
    # request, so the stream is not committed before it fails and the status is a real one.)
    platforms = config(
        [("local", {}, [("stall-pre:60", {}), ("stall-pre:61", {})])],
        timeouts="first_byte_s = 5\nstall_s = 5\nkeepalive_s = 60",
    )
    with trio.fail_after(120):
        async with gateway_from(tmp_path, platforms) as gw, client_for(gw) as client:
            start = trio.current_time()
            resp = await client.post(
                CHAT, json=chat(["local/stall-pre:60", "local/stall-pre:61"], stream=stream)
            )
            elapsed = trio.current_time() - start
    assert resp.status_code == 504, resp.text
    error = resp.json()["error"]
    assert error["code"] == "stream_timeout"
    assert resp.headers["x-fallback-attempts"] == "1"
    assert 10 <= elapsed <= 11


async def test_every_attempt_stalling_is_a_504_for_the_openai_sdk(tmp_path, clock):
    platforms = config([("local", {}, [("stall-pre:60", {})])], timeouts="first_byte_s = 5\nstall_s = 5")
    with trio.fail_after(120):
        async with gateway_from(tmp_path, platforms) as gw:
            client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=60)
            try:
                with pytest.raises(openai.APIStatusError) as caught:
                    await client.chat.completions.create(
                        model="local/stall-pre:60", messages=[{"role": "user", "content": "hi"}]
                    )
            finally:
                await client.close()
    assert caught.value.status_code == 504
    assert caught.value.code == "stream_timeout"


# ---- 5. a stream committed by a keep-alive still says where it was routed ---------------------------------


async def test_a_stream_committed_by_a_keepalive_reports_its_routing_in_sse_comments(tmp_path, clock):
    # The headers went out with the first keep-alive, before the model was known: X-Routed-Via was lost.
    platforms = config(
        [("local", {}, [("stall-pre:60", {}), ("stall-pre:3", {})])],
        timeouts="first_byte_s = 5\nstall_s = 5\nkeepalive_s = 1",
    )
    with trio.fail_after(120):
        async with gateway_from(tmp_path, platforms) as gw, client_for(gw) as client:
            payload = chat(["local/stall-pre:60", "local/stall-pre:3"], stream=True)
            resp, lines = await read_stream(client, payload)
            # The official SDK reads such a stream as usual (SSE comments are not events).
            sdk = openai.AsyncOpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=60)
            try:
                stream = await sdk.chat.completions.create(
                    model="auto",
                    messages=payload["messages"],
                    stream=True,
                    extra_body={"models": ["local/stall-pre:3"]},
                )
                sdk_text = ""
                async for chunk in stream:
                    if chunk.choices:
                        sdk_text += chunk.choices[0].delta.content or ""
            finally:
                await sdk.close()
    assert resp.status_code == 200
    assert resp.headers.get("x-routed-via") is None  # committed by the keep-alive tick
    assert lines[0][1] == ": keep-alive"
    assert comments_before_data(lines) == [": routed-via local/stall-pre:3", ": fallback-attempts 1"]
    first_data = next(i for i, (_, line) in enumerate(lines) if line.startswith("data:"))
    assert lines[first_data - 2][1] == ": routed-via local/stall-pre:3"  # right before the first data frame
    assert contents(lines) == "Hello from stall-pre:3." and lines[-1][1] == "data: [DONE]"
    assert sdk_text == "Hello from stall-pre:3."


# ---- 6. a named model that could not be used is reported ---------------------------------------------------

SKIPPED = config(
    [
        ("nokey", {"keys": ()}, [("x", {})]),
        ("local", {}, [("ok", {}), ("stall-pre:3", {})]),
    ],
    timeouts="first_byte_s = 5\nstall_s = 5\nkeepalive_s = 1",
)
NO_KEY = "nokey/x (its platform has no API key)"


async def test_a_named_model_that_cannot_be_used_is_reported_in_x_skipped_models(tmp_path, clock):
    # It was replaced silently, with X-Fallback-Attempts: 0.
    with trio.fail_after(120):
        async with gateway_from(tmp_path, SKIPPED) as gw, client_for(gw) as client:
            whole = await client.post(CHAT, json=chat(["nokey/x", "local/ok"]))
            fast, fast_lines = await read_stream(client, chat(["nokey/x", "local/ok"], stream=True))
            slow, slow_lines = await read_stream(client, chat(["nokey/x", "local/stall-pre:3"], stream=True))
    assert whole.status_code == 200, whole.text
    assert (whole.headers["x-routed-via"], whole.headers["x-fallback-attempts"]) == ("local/ok", "0")
    assert whole.headers["x-skipped-models"] == NO_KEY
    # A stream committed at its first content: a header too.
    assert fast.headers["x-routed-via"] == "local/ok"
    assert fast.headers["x-skipped-models"] == NO_KEY
    assert contents(fast_lines) == "Hello from ok."
    # A stream committed by a keep-alive: a comment before the first data frame.
    assert slow.headers.get("x-skipped-models") is None
    assert comments_before_data(slow_lines) == [
        ": routed-via local/stall-pre:3",
        ": fallback-attempts 0",
        f": skipped-models {NO_KEY}",
    ]
    assert contents(slow_lines) == "Hello from stall-pre:3."


async def test_a_named_model_that_is_cooling_is_reported_in_x_skipped_models(tmp_path):
    state = UpstreamState()
    platforms = config([("local", {}, [("flaky", {}), ("ok", {})])])
    with trio.fail_after(60):
        async with gateway_from(tmp_path, platforms, state=state) as gw, client_for(gw) as client:
            state.behaviours["flaky"] = "fail:503"
            first = await client.post(CHAT, json=chat(["local/flaky", "local/ok"]))
            assert (first.headers["x-routed-via"], first.headers["x-fallback-attempts"]) == ("local/ok", "1")
            assert "x-skipped-models" not in first.headers  # tried, not passed over
            await settled(gw)
            later = await client.post(CHAT, json=chat(["local/flaky", "local/ok"]))
    assert (later.headers["x-routed-via"], later.headers["x-fallback-attempts"]) == ("local/ok", "0")
    skipped = later.headers["x-skipped-models"]
    assert skipped.startswith("local/flaky (cooling for ") and skipped.endswith(")")


# ---- 7. single-flight: two sessions at once are never both on the platform --------------------------------

SINGLE_FLIGHT = config(
    [
        ("sf", {"protection": "provider-ban", "single_flight": True}, [("drip:2:30", {})]),
        ("other", {"protection": "off"}, [("o1", {})]),
    ],
    timeouts="first_byte_s = 20\nstall_s = 20\nkeepalive_s = 5",
)


async def test_two_sessions_at_once_are_never_both_on_a_single_flight_platform(tmp_path, clock):
    # The platform's in-flight entries are folded from the log: sessions deciding within one batch window
    # all saw it free, and all went there.
    sessions = [f"conversation-{n}" for n in range(4)]
    routed: dict[str, str] = {}
    skipped: dict[str, str | None] = {}
    with trio.fail_after(120):
        async with gateway_from(tmp_path, SINGLE_FLIGHT) as gw, client_for(gw) as client:

            async def turn(session: str) -> None:
                resp, lines = await read_stream(
                    client, chat(["sf/drip:2:30"], stream=True), {"X-Session-Id": session}
                )
                assert resp.status_code == 200 and lines[-1][1] == "data: [DONE]"
                routed[session] = resp.headers["x-routed-via"]
                skipped[session] = resp.headers.get("x-skipped-models")

            async with trio.open_nursery() as nursery:
                for session in sessions:
                    nursery.start_soon(turn, session)
    on_sf = [s for s, ref in routed.items() if ref == "sf/drip:2:30"]
    assert len(on_sf) == 1, routed
    assert all(ref == "other/o1" for s, ref in routed.items() if s not in on_sf)
    # The others were told why the model they named was passed over.
    assert skipped.pop(on_sf[0]) is None
    assert all(
        why and why.startswith("sf/drip:2:30 (") and "single-flight" in why for why in skipped.values()
    )
