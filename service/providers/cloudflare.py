"""The Cloudflare Workers AI adapter: its OpenAI-compatible endpoint
(`https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/v1`), which answers in OpenAI's shapes
except for its errors, and needs an account as well as a token.

The key: a platform key is given as `account_id:token` (split on the first `:`). The account id replaces the
`{account_id}` placeholder of the base URL (the catalog's URL has it); the token alone is the Bearer
credential. A base URL without the placeholder is used as it stands (one with the account written in, or an
AI Gateway URL), and a key without `:` is then the token alone. A key whose account is missing or wrong gets
Cloudflare's routing error (7000 / 7003), which is the key's fault: it is an `auth` failure saying how the
key must be written, so the key is set aside until it is fixed. Neither half of the key ever reaches an
error message or an event: the account appears in the URLs Cloudflare quotes in its errors, so every
`accounts/<id>` there is hidden (the request runner also redacts every piece of the whole key).

Errors: Cloudflare's envelope `{"success": false, "errors": [{"code", "message"}], ...}`, on an error status
and also on a 200 (whole answer or stream frame). Its internal codes name the failure better than the HTTP
status does (5007 "No such model" comes as a 400; 3036, the daily free allocation, as a 429 that lasts until
UTC midnight); codes not known here follow the HTTP status (a 200 counts as a 502).

Requests: a message with `null` (or no) content is sent with `""`, which Workers AI requires (an assistant
turn that only called tools has none). The key check lists one model of the account
(`GET .../accounts/{account_id}/ai/models/search?per_page=1`): it succeeds exactly when the account and the
token both work; a base URL that does not end in `/ai/v1` is checked with `GET {base_url}/models`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from actors.upstream import HttpRequest, UpstreamCall
from events import taxonomy
from events.frames import Chunk
from events.outcomes import Failed
from service.providers.openai import _UNREADABLE, OpenAIAdapter, _decode, _encode

PLACEHOLDER = "{account_id}"
_DAY_S = 86400.0
_ACCOUNT_IN_PATH = re.compile(r"(accounts/)[^/\s?#\"',]+")
KEY_FORMAT = "give the key as account_id:token (the account id is on the dashboard's Workers AI page)"

# Workers AI's internal error codes (developers.cloudflare.com/workers-ai/platform/errors) and the Cloudflare
# API's (10000, 7000, 7003): the HTTP status each is judged as.
_CODE_STATUS = {
    10000: 401,  # authentication error: a bad token, or one without the Workers AI permission
    7000: 401,  # no route for that URI: the account id in the key is missing
    7003: 401,  # could not route to the account: the account id in the key is wrong
    5007: 404,  # no such model
    3042: 404,  # invalid model id
    3006: 413,  # request too large
    3007: 504,  # request timeout (Cloudflare's, not the client's)
    3008: 504,  # request aborted
    3036: 429,  # the account's daily free allocation of neurons is used up
    3040: 429,  # out of capacity
}
_ROUTING = frozenset({7000, 7003})
_DAILY_ALLOCATION = 3036


def split_key(secret: str) -> tuple[str, str]:
    """(account id, token) of a key given as `account_id:token`; a key without `:` is a token alone."""
    account, sep, token = secret.partition(":")
    return (account.strip(), token.strip()) if sep else ("", secret.strip())


def account_url(base_url: str, account: str) -> str:
    return base_url.rstrip("/").replace(PLACEHOLDER, quote(account, safe=""))


def hide_account(text: str) -> str:
    return _ACCOUNT_IN_PATH.sub(r"\1[account]", text)


def _message(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "content": ""} if message.get("content") is None else message


class CloudflareAdapter(OpenAIAdapter):
    kind = "cloudflare"

    def request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        account, token = split_key(secret)
        messages = call.body.get("messages")
        if isinstance(messages, list):
            fixed = [_message(m) if isinstance(m, dict) else m for m in messages]
            call = replace(call, body={**call.body, "messages": fixed})
        return super().request(call, account_url(base_url, account), token)

    def key_check(self, base_url: str, secret: str) -> HttpRequest:
        account, token = split_key(secret)
        url = account_url(base_url, account)
        if url.endswith("/ai/v1"):
            headers = {"authorization": f"Bearer {token}", "accept-encoding": "gzip"}
            return HttpRequest("GET", url.removesuffix("/v1") + "/models/search?per_page=1", headers)
        return super().key_check(url, token)

    def completion(self, raw: bytes) -> Any:
        payload = super().completion(raw)
        failure = _envelope_failure(payload, 200)
        if failure is not None:
            return _wrapped(failure)
        if isinstance(payload, dict) and payload.get("success") is True and "choices" not in payload:
            # The native API's success envelope, should the endpoint ever answer with it.
            result = payload.get("result")
            if isinstance(result, dict) and "choices" in result:
                return result
        return payload

    def frame(self, payload: bytes) -> Chunk | None:
        chunk = super().frame(payload)
        failure = _envelope_failure(chunk.obj, 200) if chunk is not None else None
        if failure is None:
            return chunk
        obj = _wrapped(failure)
        return Chunk(_encode(obj), obj)

    def error(self, status: int, headers: Mapping[str, str], raw: bytes, now: float) -> Failed:
        try:
            payload = _decode(raw) if raw else None
        except _UNREADABLE:
            payload = None
        failure = _envelope_failure(payload, status)
        retry = taxonomy.retry_after_s(headers, now)
        if failure is None:
            failed = super().error(status, headers, raw, now)
            return replace(failed, message=hide_account(failed.message))
        code, effective, message = failure
        if retry is None and code == _DAILY_ALLOCATION:
            retry = _DAY_S - now % _DAY_S  # the free allocation is a UTC day's: back at midnight
        error = {"code": effective, "message": message}
        return Failed(taxonomy.kind_for_status(effective, error), message, effective, retry_after_s=retry)

    # ---- embeddings -----------------------------------------------------------------------------------

    def embeddings_request(self, call: UpstreamCall, base_url: str, secret: str) -> HttpRequest:
        """The OpenAI-compatible `.../ai/v1/embeddings` of the key's account, the token as the Bearer."""
        account, token = split_key(secret)
        return super().embeddings_request(call, account_url(base_url, account), token)

    def embeddings(self, raw: bytes) -> Any:
        """OpenAI's list; a `success: false` envelope in a 200 is a wrapped failure, and the native API's
        success envelope (`result: {"shape": [n, dim], "data": [[...], ...]}`) becomes OpenAI's list."""
        payload = super().embeddings(raw)
        failure = _envelope_failure(payload, 200)
        if failure is not None:
            return _wrapped(failure)
        if isinstance(payload, dict) and payload.get("success") is True and "data" not in payload:
            result = payload.get("result")
            vectors = result.get("data") if isinstance(result, dict) else None
            if isinstance(vectors, list):
                return {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": vector}
                        for i, vector in enumerate(vectors)
                    ],
                    "model": None,
                }
        return payload


def _envelope_failure(payload: Any, status: int) -> tuple[int | None, int, str] | None:
    """(Cloudflare code, the status it is judged as, a secret-free message) of a `success: false` envelope."""
    if not isinstance(payload, dict) or payload.get("success") is not False:
        return None
    errors = payload.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    if code in _ROUTING:
        return code, 401, f"Cloudflare found no account for the key (code {code}): {KEY_FORMAT}"
    effective = _CODE_STATUS.get(code, status) if code is not None else status
    if not 400 <= effective <= 599:
        effective = 502
    text = taxonomy.error_message({"message": first.get("message")}, f"HTTP {status}")
    return code, effective, hide_account(f"{text} (code {code})" if code is not None else text)


def _wrapped(failure: tuple[int | None, int, str]) -> dict[str, Any]:
    """The neutral form of a failure inside a 200: a root `error` whose code is the status it is judged as."""
    _, effective, message = failure
    return {"error": {"code": effective, "message": message}}
