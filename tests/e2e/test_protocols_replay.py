"""One log, every client protocol and every provider kind: chat completions, Responses and Anthropic
Messages (streamed and not) routed across an OpenAI, a Gemini, a Cohere and a Cloudflare platform, with
failures that make them fall back, rate limits that cool keys and models, and sessions. `switchboard
replay` rebuilds each decision's view from the log and must reproduce every one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from custom_gateway import model_toml, read_log, server_toml, settled
from harness import GATEWAY_KEY, gateway_from

from events.config_applied import view_of
from events.types import AttemptStarted, ConfigApplied, RequestReceived, RouteDecided
from service.replay_runner import run_replay
from service.server import DB_NAME

CF_ACCOUNT = "0123456789abcdef0123456789abcdef"
KINDS = {  # platform name -> (kind, the key)
    "oa": ("openai", "sk-oa-0123456789"),
    "gm": ("gemini", "AIza-gm-0123456789"),
    "co": ("cohere", "co-key-0123456789"),
    "cf": ("cloudflare", f"{CF_ACCOUNT}:cf-token-0123456789"),
}
MODELS = ("ok", "fail:500", "rate-limit:30", "echo")


def four_kinds(upstream_url: str, data_dir: Path) -> str:
    text = server_toml(data_dir, gateway_key=GATEWAY_KEY)
    rank = 1
    for name, (kind, key) in KINDS.items():
        base_url = upstream_url.removesuffix("/v1") + "/v1beta" if kind == "gemini" else upstream_url
        text += f'\n[[platforms]]\nname = "{name}"\nkind = "{kind}"\nbase_url = "{base_url}"\n'
        text += f'keys = ["{key}"]\n'
        for model in MODELS:
            text += model_toml(name, model, rank)
            rank += 1
    return text


def chat_body(model: str, models: list[str] | None, stream: bool, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if models:
        body["models"] = models
    return body


def messages_body(model: str, models: list[str] | None, stream: bool, text: str) -> dict[str, Any]:
    return {**chat_body(model, models, stream, text), "max_tokens": 200}


def responses_body(model: str, models: list[str] | None, stream: bool, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": text, "stream": stream, "instructions": "Be brief."}
    if models:
        body["models"] = models
    return body


# (protocol path, the body for (model, models, stream, text), extra headers)
PROTOCOLS: list[tuple[str, Any, dict[str, str]]] = [
    ("/v1/chat/completions", chat_body, {}),
    ("/v1/messages", messages_body, {"anthropic-version": "2023-06-01"}),
    ("/v1/responses", responses_body, {}),
]

# What each request asks for: a named model that fails (falls back), a rate-limited one (cools), lists
# that cross kinds, and the auto modes.
ASKS: list[tuple[str, list[str] | None]] = [
    ("oa/fail:500", ["gm/ok"]),
    ("gm/rate-limit:30", ["co/ok"]),
    ("co/fail:500", ["cf/ok"]),
    ("cf/rate-limit:30", ["oa/ok"]),
    ("auto", None),
    ("auto-smart", None),
    ("auto-fast", None),
    ("gm/fail:500", ["cf/fail:500", "co/echo"]),
]


async def test_a_log_of_every_protocol_and_kind_replays_every_decision(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with gateway_from(tmp_path, four_kinds) as gw:
            headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
            async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=20) as client:
                n = 0
                for path, body_for, extra in PROTOCOLS:
                    for stream in (False, True):
                        for model, models in ASKS:
                            n += 1
                            session = {"X-Session-Id": f"s{n % 3}"} if model == "auto-smart" else {}
                            resp = await client.post(
                                path,
                                json=body_for(model, models, stream, f"question {n}"),
                                headers={**extra, **session},
                            )
                            assert resp.status_code == 200, (path, model, resp.text)
            await settled(gw)
    events = read_log(gw.data_dir)
    protocols = {e.protocol for e in events if isinstance(e, RequestReceived)}
    platforms = {e.platform for e in events if isinstance(e, AttemptStarted)}
    decisions = [e for e in events if isinstance(e, RouteDecided)]
    assert protocols == {path_protocol(path) for path, _, _ in PROTOCOLS}
    assert platforms == set(KINDS)
    assert len(decisions) > n  # fallbacks decided again
    [recorded] = [e for e in events if isinstance(e, ConfigApplied)]
    run = run_replay(gw.data_dir / DB_NAME, lambda: view_of(recorded), config_from_log=True, parallel=False)
    assert run.total == len(decisions)
    assert run.changed == 0


def path_protocol(path: str) -> str:
    return {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/messages": "messages"}[path]
