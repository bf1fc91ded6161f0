"""schemathesis against /openapi.json: every operation of a real gateway in front of the fault upstream
(`/v1`, `/admin/api`, health, metrics, the console; all but the endless feed), with valid and invalid
inputs generated from the document. Every answer must be one the document gives for that operation (status,
content type, body schema), and none a server error but the documented 503s.

schemathesis's calls are synchronous (requests): they run in a worker thread while the gateway serves on
this trio loop. Path parameters are drawn both from the document and from what the gateway holds (its keys,
models, a session, a request), so operations on real resources answer their successes too, not only 404s.
"""

from __future__ import annotations

from typing import Any

import httpx
import requests
import schemathesis
import trio
from harness import ADMIN_HEADERS, GATEWAY_KEY, running_gateway
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.admin_console import load_files

GATEWAY_HEADERS = {"Authorization": f"Bearer {GATEWAY_KEY}"}
EXAMPLES = 20  # per operation, mode and source of path parameters: the whole run takes about 20 s
# Login last: every wrong token it sends counts against this address, and past the limit every admin call
# is answered 429 for a minute (documented, but it would hide what the other operations answer).
LAST = ("POST /admin/api/login", "POST /admin/api/logout")
# Upstream models that answer whatever they are sent (scripts/fault_upstream.py: unknown names behave as
# "ok"), one with a "/" in its id: a failure here is the gateway's, not one the upstream was told to make.
MODELS = ["ok", "also-ok", "vendor/nested-ok"]
# The feed never ends by itself (its own tests hold it to its contract).
UNFUZZED = {"/admin/events"}


def not_a_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """schemathesis's check, but for the 503s an operation documents (the log cannot be written, no model
    can take the request): the gateway's answer to its state, not a fault."""
    status = response.status_code
    documented = status == 503 and "503" in case.operation.definition.raw["responses"]
    if status >= 500 and not documented:
        raise ServerError(
            operation=case.operation.label, status_code=status, message=repr(response.content[:500])
        )
    return None


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _held(url: str) -> dict[str, list[str]]:
    """Path parameter values of resources the gateway holds: its keys, models and console files, and a
    conversation pinned by a chat turn made here (and that request)."""
    turn = requests.post(
        f"{url}/v1/chat/completions",
        headers={**GATEWAY_HEADERS, "X-Session-Id": "schemathesis"},
        json={"model": "local/ok", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert turn.status_code == 200, turn.text
    held: dict[str, list[str]] = {"request_id": [turn.headers["x-request-id"]]}
    for name, path in (("keys", "keys"), ("models", "models"), ("sessions", "sessions")):
        answer = requests.get(f"{url}/admin/api/{path}", headers=ADMIN_HEADERS, timeout=10)
        assert answer.status_code == 200, answer.text
        held[name] = answer.json()["data"]
    return {
        "request_id": held["request_id"],
        "key_id": [k["id"] for k in held["keys"]],
        "platform": sorted({m["platform"] for m in held["models"]}),
        "model_id": [m["id"] for m in held["models"]] + ["local/ok", "auto"],
        "session": [s["session"] for s in held["sessions"]],
        "name": sorted(load_files()),  # the console's files
    }


def _run(operation: Any, url: str, mode: GenerationMode, held: dict[str, list[str]] | None) -> str | None:
    """Fuzz one operation in one mode, its path parameters from the document or (`held`) from the gateway's
    resources; the first failure found, described, or None."""
    headers = GATEWAY_HEADERS if operation.path.startswith("/v1") else ADMIN_HEADERS
    if held is None:
        strategy = operation.as_strategy(mode)
    else:
        names = [p.name for p in operation.path_parameters]
        values = st.fixed_dictionaries({n: st.sampled_from(held[n]) for n in names})
        strategy = values.flatmap(lambda given: operation.as_strategy(mode, path_parameters=given))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # the first failure as found: shrinking costs minutes
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: Case) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=20)

    try:
        fuzz()
    except FailureGroup as exc:
        return f"{operation.label} ({mode.value}): {exc}"
    except Unsatisfiable:
        # Some inputs have no invalid form that survives the wire (a path parameter of any text: its
        # negations are other types, which a URL sends as text again).
        if mode is not GenerationMode.NEGATIVE:
            raise
    return None


def _operations(raw: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(raw)
    # The credentials are ours to send (valid ones): generated or mutated ones would only test the throttle,
    # which then answers every call 429 for a minute.
    schema.config.generation.update(with_security_parameters=False)
    operations = [result.ok() for result in schema.get_all_operations()]
    return [op for op in operations if op.path not in UNFUZZED]


def _fuzz_all(raw: dict[str, Any], url: str) -> tuple[list[str], list[str]]:
    """Every operation of `raw` (but the feed): the operations, and each failure found."""
    operations = _operations(raw)
    operations.sort(key=lambda op: op.label in LAST)
    held = _held(url)
    failures: list[str] = []
    for op in operations:
        raw_op = op.definition.raw
        # Invalid input needs some input to make invalid that still reaches the route: a body, a query or a
        # header (an invalid path parameter is a path no route serves).
        located = {p.get("in") for p in raw_op.get("parameters", ())}
        has_input = "requestBody" in raw_op or bool(located - {"path"})
        modes = (
            (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,)
        )
        names = [p.name for p in op.path_parameters]
        sources = [None, held] if names and all(held.get(n) for n in names) else [None]
        for mode in modes:
            for source in sources:
                found = _run(op, url, mode, source)
                if found is not None:
                    failures.append(found)
    return [op.label for op in operations], failures


async def test_every_operation_answers_as_its_document_says(tmp_path) -> None:
    async with running_gateway(tmp_path, MODELS, keys=("up-1", "up-2")) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            raw = (await client.get("/openapi.json")).json()
        covered, failures = await trio.to_thread.run_sync(_fuzz_all, raw, gw.url)
    documented = {
        f"{method.upper()} {path}"
        for path, item in raw["paths"].items()
        for method in item
        if path not in UNFUZZED
    }
    assert set(covered) == documented
    assert failures == [], "\n\n".join(failures)


async def test_an_answer_the_document_does_not_give_is_found(tmp_path) -> None:
    # The checks can fail: a document that leaves out the 404 of an unknown model is caught lying.
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            raw = (await client.get("/openapi.json")).json()
        del raw["paths"]["/v1/models/{model_id}"]["get"]["responses"]["404"]
        (operation,) = [op for op in _operations(raw) if op.label == "GET /v1/models/{model_id}"]
        found = await trio.to_thread.run_sync(_run, operation, gw.url, GenerationMode.POSITIVE, None)
    assert found is not None and "Undocumented status code" in found and "404" in found


async def test_a_cursor_past_sqlites_integers_is_a_400_not_a_500(tmp_path) -> None:
    # Found by the run above: `before=3588316172324585340928` reached SQLite and answered 500.
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS) as client:
            resp = await client.get("/admin/api/requests", params={"before": str(2**63)})
            last = await client.get("/admin/api/requests", params={"before": str(2**63 - 1)})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "before"
    assert last.status_code == 200
