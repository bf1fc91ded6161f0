"""Every provider adapter (openai, gemini, cohere, cloudflare) behind a running gateway, with the official
openai SDK as the client and the fault upstream answering on each provider's own route in its own shapes
(scripts/fault_upstream.py says which route speaks which provider): answers and tool calls, stream and not;
a 429's retry delay in the provider's own form cooling the key x model for exactly that long; an error
inside a 200 judged as the status its code names; Gemini's mid-stream faults, its quota of limit 0 and its
bad-key 400 on the key check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from custom_gateway import gateway_from, model_toml, read_log, server_toml, settled
from harness import ADMIN_HEADERS, ADMIN_TOKEN, GATEWAY_KEY, Gateway

from events.types import AttemptFailed, KeyChecked, RouteDecided

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
)

ACCOUNT = "0123456789abcdef0123456789abcdef"
HELLO: Any = [{"role": "user", "content": "hi"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
FAST = "[timeouts]\nfirst_byte_s = 5\nstall_s = 5\nkeepalive_s = 2\n"


@dataclass(frozen=True)
class Kind:
    """How one adapter kind is set up against the fault upstream: its route, its key, what it sees."""

    name: str
    route: str  # appended to the fault upstream's root: the platform's base URL
    key: str  # as configured
    sent_key: str  # the credential the provider receives
    chat_path: Callable[[str], str]  # model -> the path a chat call goes to

    def base_url(self, upstream_url: str) -> str:
        return upstream_url.removesuffix("/v1") + self.route


KINDS = {
    k.name: k
    for k in (
        Kind(
            "openai",
            "/v1",
            "sk-e2e-openai-0123456789",
            "sk-e2e-openai-0123456789",
            lambda m: "/v1/chat/completions",
        ),
        Kind(
            "gemini",
            "/v1beta",
            "AIza-e2e-gemini-0123456789",
            "AIza-e2e-gemini-0123456789",
            lambda m: f"/v1beta/models/{m}:generateContent",
        ),
        Kind(
            "cohere",
            "/compatibility/v1",
            "co-e2e-cohere-0123456789",
            "co-e2e-cohere-0123456789",
            lambda m: "/compatibility/v1/chat/completions",
        ),
        Kind(
            "cloudflare",
            "/client/v4/accounts/{account_id}/ai/v1",
            f"{ACCOUNT}:cf-e2e-token-0123456789",
            "cf-e2e-token-0123456789",
            lambda m: f"/client/v4/accounts/{ACCOUNT}/ai/v1/chat/completions",
        ),
    )
}
ALL = pytest.mark.parametrize("kind", list(KINDS), ids=list(KINDS))
BOTH = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])


def platform(
    kind: Kind, *models: str, extra: str = "", fields: dict[str, dict[str, Any]] | None = None
) -> Any:
    """The config of one platform of `kind` serving `models` (ranked in order; `fields`: a model's own
    settings)."""

    def config_for(upstream_url: str, data_dir: Path) -> str:
        text = server_toml(
            data_dir, gateway_key=GATEWAY_KEY, extra=f'[admin]\ntoken = "{ADMIN_TOKEN}"\n' + extra
        )
        text += f'\n[[platforms]]\nname = "{kind.name}"\nkind = "{kind.name}"\n'
        text += f'base_url = "{kind.base_url(upstream_url)}"\nkeys = ["{kind.key}"]\n'
        return text + "".join(
            model_toml(kind.name, m, rank, **(fields or {}).get(m, {}))
            for rank, m in enumerate(models, start=1)
        )

    return config_for


def client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=30)


def chat_calls(gw: Gateway) -> list[Any]:
    return [r for r in gw.upstream.requests if r.method == "POST"]


def failures(gw: Gateway) -> list[AttemptFailed]:
    return [e for e in read_log(gw.data_dir) if isinstance(e, AttemptFailed)]


@dataclass(frozen=True)
class Call:
    index: int
    id: str | None
    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    raw: Any  # the SDK's raw response (its headers)
    text: str
    finish: str | None
    calls: list[Call]


async def ask(sdk: openai.AsyncOpenAI, model: str, stream: bool, **extra: Any) -> Reply:
    """One chat call through the SDK, stream or not; a stream's tool-call deltas are merged by `index`,
    the way the SDK's users merge them (so two calls given one index would come out as one)."""
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=stream, **extra
    )
    if not stream:
        choice = raw.parse().choices[0]
        calls = [
            Call(i, t.id, t.function.name, t.function.arguments)
            for i, t in enumerate(choice.message.tool_calls or [])
        ]
        return Reply(raw, choice.message.content or "", choice.finish_reason, calls)
    text, finish, merged = "", None, dict[int, Call]()
    async for chunk in raw.parse():
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for t in delta.tool_calls or []:
            was = merged.get(t.index, Call(t.index, None, "", ""))
            name = t.function.name if t.function and t.function.name else ""
            arguments = t.function.arguments if t.function and t.function.arguments else ""
            merged[t.index] = Call(t.index, t.id or was.id, was.name + name, was.arguments + arguments)
    return Reply(raw, text, finish, [merged[i] for i in sorted(merged)])


# ---- answers and tool calls -------------------------------------------------------------------------------


@ALL
@BOTH
async def test_an_answer_reaches_the_sdk(tmp_path: Path, kind: str, stream: bool) -> None:
    k = KINDS[kind]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(k, "ok")) as gw, client(gw) as sdk:
            reply = await ask(sdk, "ok", stream)
            (seen,) = chat_calls(gw)
    assert (reply.text, reply.finish, reply.calls) == ("Hello from ok.", "stop", [])
    assert reply.raw.headers["x-routed-via"] == f"{kind}/ok"
    path = (
        k.chat_path("ok").replace(":generateContent", ":streamGenerateContent")
        if stream
        else k.chat_path("ok")
    )
    assert (seen.path, seen.api_key) == (path, k.sent_key)


@ALL
@BOTH
async def test_a_tool_call_reaches_the_sdk(tmp_path: Path, kind: str, stream: bool) -> None:
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(KINDS[kind], "ok")) as gw, client(gw) as sdk:
            reply = await ask(sdk, "ok", stream, tools=[WEATHER])
    assert (reply.text, reply.finish) == ("", "tool_calls")
    (call,) = reply.calls
    assert (call.index, call.name, call.arguments) == (0, "get_weather", "{}")
    assert call.id


@BOTH
async def test_gemini_calls_in_separate_frames_stay_separate_tool_calls(tmp_path: Path, stream: bool) -> None:
    # Each functionCall of a stream comes in its own frame: the second must get index 1 (and its own id),
    # or the SDK's users merge the two calls into one.
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(KINDS["gemini"], "tools-split")) as gw, client(gw) as sdk:
            reply = await ask(sdk, "tools-split", stream, tools=[WEATHER, TIME])
    assert reply.finish == "tool_calls"
    assert [(c.index, c.name, c.arguments) for c in reply.calls] == [
        (0, "get_weather", '{"n":0}'),
        (1, "get_time", '{"n":1}'),
    ]
    assert len({c.id for c in reply.calls}) == 2


# ---- a 429's retry delay ----------------------------------------------------------------------------------


@ALL
async def test_a_429_cools_the_key_x_model_for_exactly_its_retry_delay(tmp_path: Path, kind: str) -> None:
    # openai, cohere and cloudflare say it in Retry-After, Gemini in RetryInfo.retryDelay (its Retry-After
    # is absent): 30 s either way, not the 60 s default.
    models = ["rate-limit:30", "ok"]
    k = KINDS[kind]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(k, *models)) as gw, client(gw) as sdk:
            for _ in range(2):
                reply = await ask(sdk, "rate-limit:30", False, extra_body={"models": models})
                assert (reply.text, reply.raw.headers["x-routed-via"]) == ("Hello from ok.", f"{kind}/ok")
            await settled(gw)
            async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS) as admin:
                (key,) = (await admin.get("/admin/api/keys")).json()["data"]
            tried = [r.model for r in chat_calls(gw)]
    assert tried == ["rate-limit:30", "ok", "ok"]  # the second request does not try the cooled model
    (failed,) = failures(gw)
    assert (failed.kind, failed.status, failed.retry_after_s) == ("rate_limited", 429, 30.0)
    (cooldown,) = key["cooldowns"]
    assert (cooldown["model"], cooldown["kind"]) == ("rate-limit:30", "rate_limited")
    assert cooldown["until"] == pytest.approx(failed.ts + 30.0)
    second = [e for e in read_log(gw.data_dir) if isinstance(e, RouteDecided)][-1]
    assert [(x.ref, x.code) for x in second.excluded] == [(f"{kind}/rate-limit:30", "rate_limited")]
    assert second.excluded[0].until == pytest.approx(failed.ts + 30.0)


async def test_cloudflare_s_daily_allocation_cools_the_key_until_utc_midnight(tmp_path: Path) -> None:
    models = ["daily-quota", "ok"]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(KINDS["cloudflare"], *models)) as gw, client(gw) as sdk:
            text = (await ask(sdk, "daily-quota", False, extra_body={"models": models})).text
            await settled(gw)
            (view,) = await gw.runtime.health.keys()
    assert text == "Hello from ok."
    (failed,) = failures(gw)
    assert (failed.kind, failed.status) == ("rate_limited", 429)
    assert "(code 3036)" in failed.message
    midnight = (failed.ts // 86400 + 1) * 86400
    assert failed.retry_after_s == pytest.approx(midnight - failed.ts)
    assert dict(view.cooling)["daily-quota"] == pytest.approx(midnight)


async def test_a_gemini_quota_of_limit_zero_sets_the_key_x_model_aside_for_long(tmp_path: Path) -> None:
    # RetryInfo says 42 s, but no wait gives a key a quota its tier does not have: the long forbidden
    # cooldown for this key x model, and the key stays good for the other models.
    models = ["quota-zero:42", "ok"]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(KINDS["gemini"], *models)) as gw, client(gw) as sdk:
            for _ in range(2):
                text = (await ask(sdk, "quota-zero:42", False, extra_body={"models": models})).text
                assert text == "Hello from ok."
            await settled(gw)
            (view,) = await gw.runtime.health.keys()
            tried = [r.model for r in chat_calls(gw)]
    assert tried == ["quota-zero:42", "ok", "ok"]
    (failed,) = failures(gw)
    assert (failed.kind, failed.status, failed.retry_after_s) == ("forbidden", 429, None)
    assert "no access to model quota-zero:42" in failed.message
    assert view.info.status == "ok" and view.forbidden == frozenset({"quota-zero:42"})
    assert dict(view.cooling)["quota-zero:42"] == pytest.approx(failed.ts + 3600)


# ---- an error inside a 200 -------------------------------------------------------------------------------

# (kind, the model's spec, the failure kind and status it is judged as). `wrapped-body` is a 200 JSON error
# (also to a stream request), `wrapped-sse` a stream whose only frame is the error. Cloudflare's envelope
# names its own codes (3040: out of capacity, a 429; 5007: no such model, a 404); the others carry an HTTP
# status as the code.
WRAPPED = [
    (kind, f"{shape}:{code}", failure, status)
    for kind in KINDS
    for shape in ("wrapped-body", "wrapped-sse")
    for code, failure, status in (
        [(3040, "rate_limited", 429), (5007, "model_missing", 404)]
        if kind == "cloudflare"
        else [(503, "server_error", 503), (429, "rate_limited", 429)]
    )
]


@pytest.mark.parametrize(("kind", "spec", "failure", "status"), WRAPPED)
@BOTH
async def test_an_error_inside_a_200_counts_as_the_status_its_code_names(
    tmp_path: Path, kind: str, spec: str, failure: str, status: int, stream: bool
) -> None:
    models = [spec, "ok"]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(KINDS[kind], *models)) as gw, client(gw) as sdk:
            reply = await ask(sdk, spec, stream, extra_body={"models": models})
            await settled(gw)
    assert (reply.text, reply.raw.headers["x-routed-via"]) == ("Hello from ok.", f"{kind}/ok")
    (failed,) = failures(gw)
    assert (failed.model, failed.kind, failed.status, failed.mid_stream) == (spec, failure, status, False)


# ---- faults after content, and errors every kind names -------------------------------------------------

# A stream that breaks after two content frames: (spec, failure kind, what the client's error says) by kind.
# Cloudflare's error frame is its envelope (3040: out of capacity); the others carry an HTTP status.
MIDSTREAM = [
    (kind, spec, failure, said)
    for kind in KINDS
    for spec, failure, said in (
        ("stall-mid:30", "stall_mid", "stopped sending within 5s"),
        ("reset-mid", "connect", "connection"),
        (
            ("fail-mid:3040", "rate_limited", "(code 3040)")
            if kind == "cloudflare"
            else ("fail-mid:503", "server_error", "wrapped error 503")
        ),
    )
]


@pytest.mark.parametrize(("kind", "spec", "failure", "said"), MIDSTREAM)
async def test_a_stream_that_breaks_after_content_ends_honestly(
    tmp_path: Path, clock: Any, kind: str, spec: str, failure: str, said: str
) -> None:
    models = [spec, "ok"]
    async with (
        gateway_from(tmp_path, platform(KINDS[kind], *models, extra=FAST)) as gw,
        client(gw) as sdk,
    ):
        raw = await sdk.chat.completions.with_raw_response.create(
            model=spec, messages=HELLO, stream=True, extra_body={"models": models}
        )
        text = ""
        with pytest.raises(openai.APIError) as caught:
            async for chunk in raw.parse():
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        await settled(gw)
        tried = [r.model for r in chat_calls(gw)]
    assert text == "Hello from"  # what the first two frames said, and nothing made up after it
    assert raw.headers["x-routed-via"] == f"{kind}/{spec}"
    assert said in caught.value.message
    assert tried == [spec]  # after content, no fallback: the client has part of this model's answer
    (failed,) = failures(gw)
    assert (failed.model, failed.kind, failed.mid_stream) == (spec, failure, True)


@ALL
async def test_a_context_error_skips_to_a_larger_window_in_every_kind(tmp_path: Path, kind: str) -> None:
    models = ["context", "ok"]
    with trio.fail_after(20):
        windows = {"context": {"context_window": 8192}, "ok": {"context_window": 131072}}
        config = platform(KINDS[kind], *models, fields=windows)
        async with gateway_from(tmp_path, config) as gw, client(gw) as sdk:
            text = (await ask(sdk, "context", False, extra_body={"models": models})).text
            await settled(gw)
    assert text == "Hello from ok."
    (failed,) = failures(gw)
    assert (failed.kind, failed.status) == ("context_exceeded", 400)


@ALL
async def test_a_bad_key_is_set_aside_in_every_kind(tmp_path: Path, kind: str) -> None:
    # Gemini says it with a 400 API_KEY_INVALID, Cloudflare with code 10000, the others with a 401.
    k = KINDS[kind]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(k, "ok")) as gw, client(gw) as sdk:
            gw.upstream.key_behaviours[k.sent_key] = "auth"
            with pytest.raises(openai.APIStatusError):
                await sdk.chat.completions.create(model="ok", messages=HELLO)
            await settled(gw)
            (view,) = await gw.runtime.health.keys()
    (failed,) = failures(gw)
    assert failed.kind == "auth"
    assert view.info.status == "invalid"


# ---- the key check ----------------------------------------------------------------------------------------


async def test_gemini_s_bad_key_400_on_the_key_check_marks_the_key_invalid(tmp_path: Path) -> None:
    k = KINDS["gemini"]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(k, "ok")) as gw:
            ((key_id, _),) = [(v.info.key_id, v) for v in await gw.runtime.health.keys()]
            async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS) as admin:
                gw.upstream.key_behaviours[k.key] = "auth"
                bad = (await admin.post(f"/admin/api/keys/{key_id}/check")).json()
                gw.upstream.key_behaviours[k.key] = "fail:400"  # a 400 about something else is not a bad key
                other = (await admin.post(f"/admin/api/keys/{key_id}/check")).json()
                del gw.upstream.key_behaviours[k.key]
                good = (await admin.post(f"/admin/api/keys/{key_id}/check")).json()
            paths = [r.path for r in gw.upstream.requests]
    assert (bad["ok"], bad["key"]["status"]) == (False, "invalid")
    assert (other["ok"], other["key"]["status"]) == (False, "invalid")  # not restored, not condemned anew
    assert (good["ok"], good["key"]["status"]) == (True, "ok")
    assert paths == ["/v1beta/models"] * 3
    checks = [(e.ok, e.status) for e in read_log(gw.data_dir) if isinstance(e, KeyChecked)]
    assert checks == [(False, 401), (False, 400), (True, 200)]


@pytest.mark.parametrize("kind", ["cohere", "cloudflare"])
async def test_the_key_check_reaches_the_provider_s_own_listing(tmp_path: Path, kind: str) -> None:
    k = KINDS[kind]
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(k, "ok")) as gw:
            ((key_id, _),) = [(v.info.key_id, v) for v in await gw.runtime.health.keys()]
            async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS) as admin:
                good = (await admin.post(f"/admin/api/keys/{key_id}/check")).json()
                gw.upstream.key_behaviours[k.sent_key] = "auth"
                bad = (await admin.post(f"/admin/api/keys/{key_id}/check")).json()
            seen = [(r.method, r.path, r.api_key) for r in gw.upstream.requests]
    assert (good["ok"], bad["ok"], bad["key"]["status"]) == (True, False, "invalid")
    listing = {"cohere": "/v1/models", "cloudflare": f"/client/v4/accounts/{ACCOUNT}/ai/models/search"}[kind]
    assert seen == [("GET", listing, k.sent_key)] * 2


def test_the_kinds_here_are_every_adapter_kind() -> None:
    from service.providers import ADAPTERS

    assert set(KINDS) == set(ADAPTERS)


# ---- the fault upstream's provider routes, as a client of them sees them ----------------------------------


async def test_each_provider_route_answers_errors_in_its_own_shape(tmp_path: Path) -> None:
    body = {"model": "fail:404", "messages": HELLO}
    with trio.fail_after(20):
        async with gateway_from(tmp_path, platform(KINDS["openai"], "ok")) as gw:
            root = gw.upstream_url.removesuffix("/v1")
            async with httpx.AsyncClient(base_url=root, headers={"authorization": "Bearer t"}) as http:
                cohere = await http.post("/compatibility/v1/chat/completions", json=body)
                cloudflare = await http.post(
                    f"/client/v4/accounts/{ACCOUNT}/ai/v1/chat/completions", json=body
                )
                wrapped = await http.post(
                    f"/client/v4/accounts/{ACCOUNT}/ai/v1/chat/completions",
                    json={**body, "model": "wrapped-body:3036"},
                )
                no_account = await http.post(
                    "/client/v4/accounts/{account_id}/ai/v1/chat/completions", json=body
                )
                gemini = await http.post(
                    "/v1beta/models/quota-zero:generateContent",
                    headers={"x-goog-api-key": "k"},
                    json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                )
    assert cohere.status_code == 404 and set(cohere.json()) == {"id", "message"}
    assert "model 'fail:404' not found" in cohere.json()["message"]
    assert cloudflare.status_code == 400  # Workers AI says "no such model" with a 400
    assert cloudflare.json()["success"] is False and cloudflare.json()["errors"][0]["code"] == 5007
    assert wrapped.status_code == 200 and wrapped.json()["errors"][0]["code"] == 3036
    assert (no_account.status_code, no_account.json()["errors"][0]["code"]) == (400, 7003)
    error = gemini.json()["error"]
    assert (gemini.status_code, error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert "limit: 0" in error["message"]
    kinds = [d["@type"].rsplit(".", 1)[1] for d in error["details"]]
    assert kinds == ["QuotaFailure", "RetryInfo"]
    assert all("quotaValue" not in v for v in error["details"][0]["violations"])


async def test_a_gemini_3_tool_loop_through_responses_continues_from_the_stored_call(tmp_path: Path) -> None:
    # The stored turn keeps the call as chat's tool call, without Gemini's extra_content: the adapter's
    # dummy signature is what lets Gemini 3 (the fault upstream's signed-tool-once) take the next turn.
    weather = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    with trio.fail_after(20):
        async with (
            gateway_from(tmp_path, platform(KINDS["gemini"], "signed-tool-once")) as gw,
            client(gw) as sdk,
        ):
            first = await sdk.responses.create(
                model="signed-tool-once", input="Weather in Oslo?", tools=[weather]
            )
            (call,) = first.output
            assert call.type == "function_call"
            output = {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"}
            answer = await sdk.responses.create(
                model="signed-tool-once", input=[output], tools=[weather], previous_response_id=first.id
            )
            sent = [r.body for r in chat_calls(gw)]
    assert answer.output_text == "The tool said: -3C."
    [step] = [c for c in sent[1]["contents"] if c["role"] == "model"]
    assert step["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
