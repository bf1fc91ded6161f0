"""The web console at `/admin/`: its static files (in the package, read once at start) and the Playground's
chat route.

The files are served from an allow-list made when the app is built: only the files present in
`service/console/` and `service/console/vendor/` with a known type, by their exact relative name. A request
names an entry of that list or gets a 404, so no path (`..`, an absolute path, a symlink, an encoded
separator) can reach anything else on the disk.

Every file goes out with a strict Content-Security-Policy (only this origin's scripts, styles and
connections; no inline script or style; no framing), `nosniff` and `X-Frame-Options: DENY`. Files are
revalidated on each load (`no-cache` with an ETag, answered 304 when unchanged): names carry no version,
so a browser must not keep an old `app.js` beside a new gateway.

The Playground (`POST /admin/api/playground/chat`) is `/v1/chat/completions` for the operator: the same
handler and answer, behind the admin session instead of a gateway key (service/admin_auth.py guards it,
with the CSRF token for the console's cookie). Its `X-Request-Id` names the request in the log, so the
page can open that request's story.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from quart import Response, request
from quart_trio import QuartTrio

from service import chat_completions as chat
from service.admin_context import AdminContext
from service.edge import error_answer, header_map, quart_response, quoted

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
SUBDIRS = ("", "vendor")  # what pyproject's package-data ships: console/* and console/vendor/*
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
INDEX = "index.html"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str  # quoted, as the header carries it


def load_files(root: Path = CONSOLE_DIR) -> dict[str, StaticFile]:
    """The console's files by relative name ("app.js", "vendor/x.js"): regular files of a known type only."""
    files: dict[str, StaticFile] = {}
    for sub in SUBDIRS:
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            content_type = CONTENT_TYPES.get(path.suffix)
            if content_type is None or not path.is_file() or path.is_symlink() or path.name.startswith("."):
                continue
            body = path.read_bytes()
            name = f"{sub}/{path.name}" if sub else path.name
            files[name] = StaticFile(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    if INDEX not in files:
        raise RuntimeError(
            f"The console's {INDEX} is missing from {root}: the package is incomplete; reinstall."
        )
    return files


def _serve(file: StaticFile) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": file.etag}
    if file.etag in _etags(request.headers.get("If-None-Match", "")):
        return Response(b"", status=304, headers=headers)
    return Response(file.body, content_type=file.content_type, headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def register(app: QuartTrio, admin: AdminContext) -> None:
    files = load_files()

    @app.get("/admin", strict_slashes=False)
    async def console_root() -> Response:
        # One address for the page (operators type it without the slash), so its links are one URL.
        return Response(b"", status=308, headers={**SECURITY_HEADERS, "Location": "/admin/"})

    @app.get("/admin/")
    async def console_index() -> Response:
        return _serve(files[INDEX])

    @app.get("/admin/static/<path:name>")
    async def console_static(name: str) -> Response:
        file = files.get(name)
        if file is None or name == INDEX:
            answer = error_answer(
                404,
                f"The console has no file {quoted(name)!r}.",
                "invalid_request_error",
                "not_found",
            )
            answer.headers.update(SECURITY_HEADERS)
            return quart_response(answer)
        return _serve(file)

    @app.post("/admin/api/playground/chat")
    async def playground_chat() -> Response:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        request_id: str = request.request_id  # type: ignore[attr-defined]  # set by the app's before_request
        answer = await chat.handle(admin.runtime, raw, request_id, header_map(request.headers.items()))
        return quart_response(answer)
