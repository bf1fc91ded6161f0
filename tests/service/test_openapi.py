"""The OpenAPI document: valid OpenAPI 3.1 (its JSON Schemas valid 2020-12), served at /openapi.json without
credentials, and held to the app's routes both ways: every route the gateway serves is documented, and every
documented operation is a route."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
import trio
from schemathesis.specs.openapi.definitions import OPENAPI_31

import service.app
from service import __version__
from service.openapi import document

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # harness.py
from harness import ADMIN_HEADERS, GATEWAY_KEY, running_gateway

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    errors = [
        f"{e.instance_path}: {e.message}" for e in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(doc)
    ]
    assert errors == []
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"] == __version__
    assert "docs/admin-api.md" in doc["info"]["description"] and "README" in doc["info"]["description"]


def _under(node: Any, name: str) -> list[Any]:
    """Every value held under the key `name`, anywhere in `node`."""
    found: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += [value] if key == name else _under(value, name)
    elif isinstance(node, list):
        for item in node:
            found += _under(item, name)
    return found


def test_every_schema_in_it_is_valid_json_schema_2020_12() -> None:
    doc = document()
    # Those of components, and of parameters, bodies, responses and headers.
    schemas = [*doc["components"]["schemas"].values(), *_under(doc, "schema")]
    assert len(schemas) > 50
    for schema in schemas:
        jsonschema_rs.meta.validate(schema)  # raises, naming what is wrong


def test_every_reference_resolves() -> None:
    doc = document()
    refs = set(_under(doc, "$ref"))
    assert len(refs) > 30
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_every_error_answer_is_the_error_object() -> None:
    # /readyz says why it is not ready in its own body: a probe reads it as it reads a 200.
    paths = {path: item for path, item in document()["paths"].items() if path != "/readyz"}
    for path, item in paths.items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and "$ref" not in response:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


def _template(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path, parameters unnamed: `/v1/models/<path:id>` -> `/v1/models/{}`."""
    return re.sub(r"<[^>]+>", "{}", rule)


def _documented() -> set[tuple[str, str]]:
    return {
        (re.sub(r"\{[^}]+\}", "{}", path), method.upper())
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }


async def test_the_document_and_the_apps_routes_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps: list[Any] = []
    create_app = service.app.create_app

    def recording(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        apps.append(app)
        return app

    monkeypatch.setattr(service.app, "create_app", recording)  # service/server.py imports it when it serves
    async with running_gateway(tmp_path, ["ok"]):
        pass
    (chat_route,) = apps
    quart = chat_route._fallback  # the Quart app behind the chat route (service/fast_route.py)
    served = {(path, "POST") for path in chat_route.protocols}  # served before Quart sees them
    for rule in quart.url_map.iter_rules():
        served |= {(_template(rule.rule), m) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    documented = _documented()
    assert sorted(served - documented) == [], "served but not in the document"
    assert sorted(documented - served) == [], "in the document but not served"


async def test_it_is_served_without_credentials(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == document()


def _sse(text: str) -> list[dict[str, str]]:
    """Server-sent events as a client reads them: one dict of fields per event with data (comments and a
    bare `retry:` are no events)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append({"event": "message", **fields})
    return events


def _validator(component: str) -> jsonschema_rs.Validator:
    """A validator of one component schema, its references resolved in the document."""
    doc = document()
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    )


async def test_the_feeds_events_are_as_the_document_says(tmp_path: Path) -> None:
    # The feed never ends, so schemathesis leaves it out: its events are held to the document here.
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS) as client:
            chat = await client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
            assert chat.status_code == 200
            text = ""
            with trio.fail_after(10):
                async with client.stream("GET", "/admin/events", params={"after": "0"}) as resp:
                    assert resp.status_code == 200
                    assert resp.headers["content-type"].startswith("text/event-stream")
                    async for chunk in resp.aiter_text():
                        text += chunk
                        if "event: request_completed" in text and text.endswith("\n\n"):
                            break
            bad = await client.get("/admin/events", params={"types": "no_such_type"})
    events = _sse(text)
    assert {"service_started", "request_received", "request_completed"} <= {e["event"] for e in events}
    feed_event = _validator("FeedEvent")
    for event in events:
        feed_event.validate(event)
        msgspec.json.decode(event["data"])  # its data is JSON
    assert bad.status_code == 400
    doc = document()["paths"]["/admin/events"]["get"]
    assert "400" in doc["responses"]
    _validator("Error").validate(bad.json())


async def test_a_static_folder_in_the_working_directory_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found holding the routes to the document: Quart's default static route served `./static/*` to anyone.
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "notes.txt").write_text("not for the network")
    monkeypatch.chdir(tmp_path)
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            resp = await client.get("/static/notes.txt")
    assert resp.status_code == 404 and "not for the network" not in resp.text
