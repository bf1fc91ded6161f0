"""`/admin/events`: the log's tail as server-sent events, resumable and filtered (docs/admin-api.md, "The
live feed"). The feed actor (actors/feed.py) does the work; this edge validates the query, writes the wire
format and serves it as a stream.

Each event is `id: <seq>`, `event: <type>`, `data: <its JSON as the log stores it>`; `Last-Event-ID` (what
a browser's EventSource sends when it reconnects) or `?after=SEQ` resumes after that seq. The stream ends
when the client goes away (Quart cancels the body generator and closes it) or the gateway shuts down (the
feed closes every subscription), so an open feed never holds the shutdown's grace period.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from quart import Response, request
from quart_trio import QuartTrio

from actors.feed import FeedEvent, FeedItem, FeedQuery, Heartbeat
from events.types import EVENT_TYPES, event_tag
from service.admin_context import AdminContext
from service.edge import Answer, error_answer, quart_response, quoted

RETRY = b"retry: 2000\n\n"  # a browser reconnects after 2 s (with Last-Event-ID)
HEARTBEAT = b": heartbeat\n\n"
MAX_SEQ = 2**63 - 1
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold the stream back


def parse(args: dict[str, str], last_event_id: str | None) -> tuple[FeedQuery, int | None] | Answer:
    """The feed's query and the seq to resume after, or the 400 naming what is wrong."""
    after: int | None = None
    for name, value in (("after", args.get("after")), ("Last-Event-ID", last_event_id)):
        if value is None:
            continue
        text = value.strip()
        # (A seq is a SQLite rowid: 19 digits at most, and int() of thousands of digits would raise.)
        if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_SEQ):
            return _invalid(
                f"{name} must be a non-negative integer (the seq of the last event received), "
                f"not {quoted(value)!r}.",
                name,
            )
        after = max(after or 0, int(text))  # both given: the later position (nothing is sent twice)
    types: frozenset[str] | None = None
    if (raw_types := args.get("types")) is not None:
        known = sorted(event_tag(t) for t in EVENT_TYPES)
        wanted = frozenset(t.strip() for t in raw_types.split(",") if t.strip())
        unknown = sorted(wanted - set(known))
        if unknown or not wanted:
            named = f"unknown event type(s) {quoted(', '.join(unknown))}" if unknown else "no event type"
            return _invalid(f"types names {named}; valid types: {', '.join(known)}.", "types")
        types = wanted
    for name in ("platform", "model", "request_id"):
        if args.get(name) == "":
            return _invalid(f"{name} is empty: give a value or leave it out.", name)
    query = FeedQuery(
        types=types, platform=args.get("platform"), model=args.get("model"), request_id=args.get("request_id")
    )
    return query, after


def _invalid(message: str, param: str) -> Answer:
    return error_answer(400, message, "invalid_request_error", "invalid_field", param=param)


def wire(items: Sequence[FeedItem]) -> bytes:
    """Items as they go on the wire, in one write."""
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, FeedEvent):
            parts.append(item.frame)
        elif isinstance(item, Heartbeat):
            parts.append(HEARTBEAT)
        else:
            parts.append(b'event: lagged\ndata: {"from": %d}\n\n' % item.from_seq)
    return b"".join(parts)


async def stream(items: AsyncGenerator[Sequence[FeedItem]]) -> AsyncGenerator[bytes]:
    async with aclosing(items):  # closing the body (client gone) ends the subscription at once
        yield RETRY
        async for ready in items:
            yield wire(ready)


MAX_SUBSCRIBERS = 64


def register(app: QuartTrio, admin: AdminContext) -> None:
    @app.get("/admin/events")
    async def events() -> Response:
        parsed = parse(request.args.to_dict(), request.headers.get("Last-Event-ID"))
        if isinstance(parsed, Answer):
            return quart_response(parsed)
        query, after = parsed
        if admin.runtime.feed.statistics().subscribers >= MAX_SUBSCRIBERS:
            # Each one costs a filter per committed batch on the request path's loop: bounded.
            return quart_response(
                error_answer(
                    503,
                    f"{MAX_SUBSCRIBERS} clients already follow the feed; close one (or share one).",
                    "server_error",
                    "too_many_subscribers",
                    headers={"Retry-After": "5"},
                )
            )
        body = stream(admin.runtime.feed.follow(query, after, admin.open_reader))
        return quart_response(Answer(200, body, dict(HEADERS), content_type="text/event-stream"))
