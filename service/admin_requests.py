"""The admin API's requests: recent ones with filters, and one request's whole story with its replay.

Both read the log on a read-only connection of their own in a worker thread (`AdminContext.open_reader`),
never on the event loop. The list pages back in time along the (type, ts) index of `request_received`
(newest first), looks up those requests' completions by request id, and filters; a page examines at most
`SCAN_LIMIT` requests, so a filter that matches little answers as fast as one that matches much (a short
page with a `next_before`: follow it). A story replays each decision on the view it was made on
(events/view_at.py: from a cached view or the newest fitting snapshot, plus the log up to it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from events.replay import Replayed, re_decide
from events.request_story import MODES, RequestSummary, Story, story, summarize
from events.store import LogStore
from events.types import (
    PROTOCOLS,
    AttemptStarted,
    RequestCompleted,
    RequestReceived,
    RouteDecided,
    event_tag,
)
from events.view_at import ViewsAt
from service.admin_context import AdminContext
from service.edge import error_answer, quart_response, quoted
from service.server import routing_settings

MAX_LIMIT, DEFAULT_LIMIT = 500, 50
MAX_SEQ = 2**63 - 1  # SQLite's largest integer: a larger cursor cannot be bound to a query
SCAN_LIMIT = 10_000  # requests examined by one page of a filtered list
CHUNK = 500  # requests read at once while filtering
OUTCOMES = ("ok", "error", "client_abort", "running")
_RECEIVED = event_tag(RequestReceived)
_RELATED = frozenset({event_tag(RequestCompleted), event_tag(AttemptStarted)})
_encode = msgspec.json.encode
T = TypeVar("T")


class BadQuery(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def bad_query(exc: BadQuery) -> Response:
    return quart_response(
        error_answer(400, str(exc), "invalid_request_error", "invalid_field", param=exc.param)
    )


def _number(name: str, cast: Callable[[str], T], what: str) -> T | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise BadQuery(name, f"'{name}' must be {what}; got '{quoted(raw)}'.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadQuery(name, f"'{name}' must be {what}; got '{quoted(raw)}'.")
    return value


def _choice(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise BadQuery(name, f"'{name}' must be one of {', '.join(choices)}; got '{quoted(raw)}'.")
    return raw


@dataclass(frozen=True)
class Query:
    outcome: str | None = None
    status: int | None = None
    platform: str | None = None
    model: str | None = None
    mode: str | None = None
    protocol: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    before: int | None = None

    @property
    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (self.outcome, self.status, self.platform, self.model, self.mode, self.protocol)
        )

    def matches(self, s: RequestSummary) -> bool:
        if self.outcome is not None and (s.outcome or "running") != self.outcome:
            return False
        if self.status is not None and s.status != self.status:
            return False
        if self.platform is not None and s.platform != self.platform:
            return False
        if self.model is not None and self.model not in (s.model, f"{s.platform}/{s.model}"):
            return False
        if self.protocol is not None and s.protocol != self.protocol:
            return False
        return self.mode is None or s.mode == self.mode


def parse_query() -> Query:
    limit = _number("limit", int, f"a whole number from 1 to {MAX_LIMIT}")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise BadQuery("limit", f"'limit' must be from 1 to {MAX_LIMIT}; got {limit}.")
    before = _number("before", int, "a seq (a whole number) from a previous page's next_before")
    if before is not None and not 1 <= before <= MAX_SEQ:
        raise BadQuery("before", f"'before' must be a seq from 1 to {MAX_SEQ}; got {quoted(str(before))}.")
    status = _number("status", int, "an HTTP status code, e.g. 502")
    if status is not None and not 100 <= status <= 599:
        raise BadQuery("status", f"'status' must be an HTTP status code from 100 to 599; got {status}.")
    since = _number("since", float, "a time in seconds since the epoch")
    until = _number("until", float, "a time in seconds since the epoch")
    if since is not None and until is not None and until < since:
        raise BadQuery("until", f"'until' ({until:g}) is before 'since' ({since:g}).")
    return Query(
        outcome=_choice("outcome", OUTCOMES),
        status=status,
        platform=request.args.get("platform") or None,
        model=request.args.get("model") or None,
        mode=_choice("mode", MODES),
        protocol=_choice("protocol", PROTOCOLS),
        since=since,
        until=until,
        limit=limit if limit is not None else DEFAULT_LIMIT,
        before=before,
    )


def list_requests(store: LogStore, q: Query) -> tuple[list[RequestSummary], int | None]:
    """A page of `q`'s requests, newest first, and the cursor of the next (None: there is none)."""
    out: list[RequestSummary] = []
    before, scanned = q.before, 0
    chunk = CHUNK if q.filtered else q.limit
    while scanned < SCAN_LIMIT:
        page = store.newest_of_type(_RECEIVED, chunk, since=q.since, until=q.until, before=before)
        related: dict[str, list[RequestCompleted | AttemptStarted]] = {}
        ids = [e.request_id for _, e in page if e.request_id is not None]
        for _, e in store.read_requests(ids, _RELATED):
            if e.request_id is not None and isinstance(e, RequestCompleted | AttemptStarted):
                related.setdefault(e.request_id, []).append(e)
        for seq, received in page:
            scanned += 1
            if not isinstance(received, RequestReceived) or received.request_id is None:
                continue
            summary = summarize(received.request_id, related.get(received.request_id, []), received)
            if q.matches(summary):
                out.append(summary)
                if len(out) == q.limit:
                    return out, seq
        if len(page) < chunk:
            return out, None
        before = page[-1][0]
    return out, before


def request_story(store: LogStore, views: ViewsAt, request_id: str) -> Story | None:
    entries = store.read_request(request_id)
    if not entries:
        return None
    replayed: dict[int, Replayed] = {}
    for seq, event in entries:
        if isinstance(event, RouteDecided):
            view = views.view_for(store, seq, event.view_seq)
            if view is not None:
                replayed[seq] = re_decide(view, seq, event)
    return story(request_id, entries, replayed)


def _reading(admin: AdminContext, read: Callable[[LogStore], T]) -> Callable[[], T]:
    def run() -> T:
        store = admin.open_reader()
        try:
            return read(store)
        finally:
            store.close()

    return run


def _json(body: object) -> Response:
    return Response(_encode(body), content_type="application/json")


ADMIN_READERS = 3


def register(app: QuartTrio, admin: AdminContext) -> None:
    # Decisions older than any recorded configuration replay under this one's (as `switchboard replay`).
    views = ViewsAt(routing_settings(admin.config).new_view)
    # Histories and stories can take a second or two each: a few at a time, so a burst of them cannot take
    # every worker thread from the feed's catch-up and the metrics' rendering (trio's default limiter).
    readers = trio.CapacityLimiter(ADMIN_READERS)

    @app.get("/admin/api/requests")
    async def recent_requests() -> Response:
        try:
            q = parse_query()
        except BadQuery as exc:
            return bad_query(exc)
        data, next_before = await trio.to_thread.run_sync(
            _reading(admin, lambda s: list_requests(s, q)), limiter=readers
        )
        return _json({"data": data, "next_before": next_before})

    @app.get("/admin/api/requests/<request_id>")
    async def one_request(request_id: str) -> Response:
        found = await trio.to_thread.run_sync(
            _reading(admin, lambda s: request_story(s, views, request_id)), limiter=readers
        )
        if found is None:
            return quart_response(
                error_answer(
                    404,
                    f"No request '{quoted(request_id)}' in the log (GET /admin/api/requests lists them).",
                    "invalid_request_error",
                    "not_found",
                    param="id",
                )
            )
        return _json(found)
