"""The admin API's analytics, from the stats actor (events/analytics.py): summary, by model / platform /
key, timeline, errors by kind, for a window ending now (`window` = 1h, 24h, 7d or 30d)."""

from __future__ import annotations

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from events.analytics import BUCKETS, DIMS, MINUTES_KEPT_S, WINDOWS, Analytics
from service.admin_context import AdminContext
from service.admin_requests import BadQuery, bad_query
from service.edge import quoted

DEFAULT_WINDOW = "24h"
_encode = msgspec.json.encode


def _window() -> str:
    raw = request.args.get("window") or DEFAULT_WINDOW
    if raw not in WINDOWS:
        raise BadQuery("window", f"'window' must be one of {', '.join(WINDOWS)}; got '{quoted(raw)}'.")
    return raw


def _bucket(window: str) -> str | None:
    raw = request.args.get("bucket") or None
    if raw is None:
        return None
    if raw not in BUCKETS:
        raise BadQuery("bucket", f"'bucket' must be one of {', '.join(BUCKETS)}; got '{quoted(raw)}'.")
    if raw == "minute" and WINDOWS[window] > MINUTES_KEPT_S:
        raise BadQuery("bucket", f"minute buckets are kept for 24 h: use bucket=hour for window={window}.")
    return raw


def _json(body: msgspec.Struct) -> Response:
    return Response(_encode(body), content_type="application/json")


def register(app: QuartTrio, admin: AdminContext) -> None:
    stats = admin.runtime.stats

    @app.get("/admin/api/analytics/summary")
    async def summary() -> Response:
        try:
            window = _window()
        except BadQuery as exc:
            return bad_query(exc)
        return _json(await stats.analytics(lambda a, now: a.summary(now, window)))

    @app.get("/admin/api/analytics/by/<dim>")
    async def by(dim: str) -> Response:
        try:
            window = _window()
            if dim not in DIMS:
                raise BadQuery("dim", f"'dim' must be one of {', '.join(DIMS)}; got '{quoted(dim)}'.")
        except BadQuery as exc:
            return bad_query(exc)

        def question(a: Analytics, now: float) -> msgspec.Struct:
            return a.by(now, window, dim)

        return _json(await stats.analytics(question))

    @app.get("/admin/api/analytics/timeline")
    async def timeline() -> Response:
        try:
            window = _window()
            bucket = _bucket(window)
        except BadQuery as exc:
            return bad_query(exc)
        return _json(await stats.analytics(lambda a, now: a.timeline(now, window, bucket)))

    @app.get("/admin/api/analytics/errors")
    async def errors() -> Response:
        try:
            window = _window()
        except BadQuery as exc:
            return bad_query(exc)
        return _json(await stats.analytics(lambda a, now: a.errors(now, window)))
