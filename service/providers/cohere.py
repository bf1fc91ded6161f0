"""The Cohere adapter: its OpenAI-compatible endpoint (`https://api.cohere.ai/compatibility/v1`), which
answers in OpenAI's shapes (so parsing answers and frames is the OpenAI adapter's) but differs on the way in
and on errors:

- tool schemas: Cohere rejects `additionalProperties` (a 400 for a schema any OpenAI client sends, e.g.
  pydantic's and the openai SDK's strict tools), so it is removed at every depth of `parameters`;
- `parallel_tool_calls` is not accepted, so it is not forwarded (Cohere decides on parallel calls itself);
- errors carry a root `message` string (`{"message": "invalid api token"}`), not OpenAI's `error` object;
  Cohere answers 400, 401, 402, 404, 429, 499 and 5xx (docs.cohere.com/reference/errors). A 402 is the key's
  billing limit, which resets at the start of the next month: it cools the key x model like a spent quota
  (for at most a day, the longest any cooldown lasts; the next attempt after it finds out again).

The key check lists one model through Cohere's own API (`GET https://api.cohere.ai/v1/models?page_size=1`,
the key as a Bearer token: docs.cohere.com/reference/list-models): the compatibility endpoint serves chat
completions and embeddings only, so its `/models` would answer 404 for every key. A base URL that does not
end in `/compatibility/v1` (a proxy speaking OpenAI's API) is checked with `GET {base_url}/models`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from actors.upstream import HttpRequest, UpstreamCall
from events import taxonomy
from events.failures import FailureKind
from events.judge import judge_error
from events.outcomes import Failed
from service.providers.openai import _UNREADABLE, OpenAIAdapter, _decode

_COMPATIBILITY = "/compatibility/v1"


def without_additional_properties(schema: Any) -> Any:
    """A copy of a JSON schema with every `additionalProperties` removed, at every depth (nested objects,
    `items`, `anyOf`, `$defs`...). A property *named* additionalProperties stays: it is a key of
    `properties`, not the keyword."""
    if isinstance(schema, list):
        return [without_additional_properties(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "additionalProperties":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: without_additional_properties(sub) for name, sub in value.items()}
        else:
            out[key] = without_additional_properties(value)
    return out


def _tool(tool: Any) -> Any:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or "parameters" not in fn:
        return tool
    return {**tool, "function": {**fn, "parameters": without_additional_properties(fn["parameters"])}}


class CohereAdapter(OpenAIAdapter):
    kind = "cohere"

    def request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        body = {k: v for k, v in call.body.items() if k != "parallel_tool_calls"}
        if isinstance(body.get("tools"), list):
            body["tools"] = [_tool(tool) for tool in body["tools"]]
        return super().request(replace(call, body=body), base_url, secret)

    def key_check(self, base_url: str, secret: str) -> HttpRequest:
        base = base_url.rstrip("/")
        if not base.endswith(_COMPATIBILITY):
            return super().key_check(base_url, secret)
        headers = {"authorization": f"Bearer {secret}", "accept-encoding": "gzip"}
        return HttpRequest("GET", base.removesuffix(_COMPATIBILITY) + "/v1/models?page_size=1", headers)

    def error(self, status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Failed:
        try:
            payload = _decode(raw) if raw else None
        except _UNREADABLE:
            payload = None
        if not isinstance(payload, dict) or "error" in payload or not isinstance(payload.get("message"), str):
            return judge_error(status, headers, raw, now)  # not Cohere's shape: OpenAI's, or none
        message: str = payload["message"]
        error = {"message": message}
        retry = taxonomy.retry_after_s(headers, now)
        if status == 402:
            # The key's billing limit (a missing payment method, or the monthly maximum set for the key):
            # a quota spent until the month turns, not a bad request to hand back to the client.
            wait = min(taxonomy.MAX_WAIT_S, _next_month_s(now))
            text = taxonomy.error_message(error, "HTTP 402")
            return Failed(
                FailureKind.RATE_LIMITED,
                f"this key reached its Cohere billing limit: {text}",
                status,
                retry_after_s=retry if retry is not None else wait,
            )
        return Failed(
            taxonomy.kind_for_status(status, error),
            taxonomy.error_message(error, f"HTTP {status}"),
            status,
            retry_after_s=retry,
        )

    # ---- embeddings -----------------------------------------------------------------------------------

    def embeddings_request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        """The compatibility API's `/embeddings`, which takes `model`, `input`, `encoding_format` and
        `dimensions` but not `user` (Cohere keeps no end-user ids), so that is not forwarded."""
        body = {k: v for k, v in call.body.items() if k != "user"}
        return super().embeddings_request(replace(call, body=body), base_url, secret)


def _next_month_s(now: float) -> float:
    """Seconds from `now` to the start of the next UTC month (when Cohere's billing capacity resets)."""
    today = datetime.fromtimestamp(now, UTC)
    start = datetime(today.year + today.month // 12, today.month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp() - now
