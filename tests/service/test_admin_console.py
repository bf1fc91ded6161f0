"""The console's files at /admin/ (types, caching, the strict CSP, nothing outside the allow-list) and the
Playground's chat route (the chat completions handler behind the admin session), on a real gateway."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from harness import ADMIN_HEADERS, ADMIN_TOKEN, GATEWAY_KEY, running_gateway

from events.sqlite_store import SqliteStore
from events.types import EVENT_TYPES, RequestCompleted, event_tag
from service.admin_console import CONSOLE_DIR, CSP, load_files
from service.server import DB_NAME

CHAT = {"model": "local/ok", "messages": [{"role": "user", "content": "hi"}]}


async def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET with the target sent byte for byte (httpx would resolve `..` before sending)."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_console_is_served_with_its_types_and_strict_headers(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            root = await client.get("/admin")
            assert root.status_code == 308 and root.headers["location"].endswith("/admin/")
            index = await client.get("/admin/")  # no credentials: the page holds no data
            assert index.status_code == 200
            assert index.headers["content-type"] == "text/html; charset=utf-8"
            assert b'<script type="module" src="/admin/static/app.js">' in index.content
            for name, content_type in [
                ("app.js", "text/javascript; charset=utf-8"),
                ("style.css", "text/css; charset=utf-8"),
                ("favicon.svg", "image/svg+xml"),
            ]:
                answer = await client.get(f"/admin/static/{name}")
                assert answer.status_code == 200, name
                assert answer.headers["content-type"] == content_type
                assert answer.content == (CONSOLE_DIR / name).read_bytes()
            for answer in (index, await client.get("/admin/static/app.js")):
                headers = answer.headers
                assert headers["content-security-policy"] == CSP
                assert "default-src 'self'" in CSP and "script-src 'self'" in CSP
                assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
                assert headers["x-content-type-options"] == "nosniff"
                assert headers["x-frame-options"] == "DENY"
                assert headers["cache-control"] == "no-cache"
            again = await client.get(
                "/admin/static/app.js", headers={"If-None-Match": answer.headers["etag"]}
            )
            assert again.status_code == 304 and again.content == b""


async def test_no_path_reaches_outside_the_consoles_files(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, ["ok"]) as gw:
        for target in [
            "/admin/static/../admin_console.py",
            "/admin/static/%2e%2e/admin_console.py",
            "/admin/static/..%2fadmin_console.py",
            "/admin/static/vendor/../../server.py",
            "/admin/static//etc/passwd",
            "/admin/static/%2fetc%2fpasswd",
            "/admin/static/..%5c..%5cserver.py",
            "/admin/static/nothing.js",
            "/admin/static/index.html",
            "/admin/static/",
        ]:
            status, body = await raw_get(gw.url, target)
            # 308: the router merged a doubled slash and points back under /admin/static/.
            assert status in (404, 400, 308), target
            assert b"import" not in body and b"root:" not in body, target


def test_the_page_runs_no_inline_script_and_every_module_it_imports_is_shipped() -> None:
    files = load_files()
    index = files["index.html"].body.decode()
    assert re.findall(r"<script\b[^>]*>", index) == ['<script type="module" src="/admin/static/app.js">']
    assert not re.search(r"\son\w+\s*=", index) and " style=" not in index
    for name, file in files.items():
        if name.endswith(".js"):
            text = file.body.decode()
            for target in re.findall(r'from "\./([^"]+)"', text):
                assert target in files, f"{name} imports {target}, which is not shipped"
            assert not re.search(r"\.innerHTML\s*=|\beval\(|new Function\(", text), name


def test_the_console_listens_for_every_event_type_the_log_has() -> None:
    # EventSource delivers a named event only to a listener for that name: a type missing from feed.js
    # would never reach the Live page.
    text = load_files()["feed.js"].body.decode()
    listed = re.search(r"EVENT_TYPES = \[(.*?)\];", text, re.S)
    assert listed is not None
    assert set(re.findall(r'"([a-z_]+)"', listed.group(1))) == {event_tag(t) for t in EVENT_TYPES}


async def test_the_playground_answers_as_chat_completions_behind_the_admin_session(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, ["ok"]) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            path = "/admin/api/playground/chat"
            assert (await client.post(path, json=CHAT)).status_code == 401
            gateway_key = {"Authorization": f"Bearer {GATEWAY_KEY}"}
            assert (await client.post(path, json=CHAT, headers=gateway_key)).status_code == 401

            answer = await client.post(path, json=CHAT, headers=ADMIN_HEADERS)
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["message"]["content"] == "Hello from ok."
            assert answer.headers["x-routed-via"] == "local/ok"
            assert answer.headers["x-request-id"]

            bad = await client.post(path, json={"model": "auto"}, headers=ADMIN_HEADERS)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"

            # The console's way in: the cookie, and the CSRF token on the change.
            login = await client.post("/admin/api/login", json={"token": ADMIN_TOKEN})
            csrf = login.json()["csrf_token"]
            assert (await client.post(path, json=CHAT)).status_code == 403
            async with client.stream(
                "POST", path, json={**CHAT, "stream": True}, headers={"X-CSRF-Token": csrf}
            ) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                request_id = stream.headers["x-request-id"]
                text = (await stream.aread()).decode()
            assert "Hello" in text and text.rstrip().endswith("data: [DONE]")
    # The page opens the request's story by this id: it is the request the log recorded.
    store = SqliteStore(gw.data_dir / DB_NAME)
    try:
        done = [e for _, e in store.read_after(0) if isinstance(e, RequestCompleted)]
    finally:
        store.close()
    assert [(e.request_id, e.outcome) for e in done][-1] == (request_id, "ok")
