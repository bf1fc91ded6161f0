"""`/admin/events` on a real gateway: the wire format and headers, bad queries, resuming by Last-Event-ID
exactly across a restart, filters over the log's part and the live part, a subscriber that stops reading
(lagged, then every event once from the log, while chat requests go on unhindered), and a shutdown with
feeds open that does not wait for them."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio
from custom_gateway import gateway_from, settled
from harness import ADMIN_HEADERS, ADMIN_TOKEN, GATEWAY_KEY, Gateway, config_text, running_gateway

from actors.feed import BUFFER
from events.sqlite_store import SqliteStore
from events.types import EVENT_TYPES, KeyChecked, event_tag
from service.server import DB_NAME

HELLO = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True)
class Frame:
    """One SSE block: an event (id, type, data), `lagged`, a comment (the heartbeat) or `retry`."""

    id: int | None = None
    event: str | None = None
    data: bytes | None = None
    comment: bytes | None = None
    retry: int | None = None


def parse_block(block: bytes) -> Frame:
    fields: dict[str, bytes] = {}
    comment = None
    for line in block.split(b"\n"):
        if line.startswith(b":"):
            comment = line[1:].strip()
            continue
        name, _, value = line.partition(b":")
        fields[name.decode()] = value[1:] if value.startswith(b" ") else value
    return Frame(
        id=int(fields["id"]) if "id" in fields else None,
        event=fields["event"].decode() if "event" in fields else None,
        data=fields.get("data"),
        comment=comment,
        retry=int(fields["retry"]) if "retry" in fields else None,
    )


class Frames:
    """The frames of a byte stream, one at a time."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    async def next(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""
        while b"\n\n" not in self._buffer:
            try:
                self._buffer += await self._chunks.__anext__()
            except StopAsyncIteration:
                return None
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        return parse_block(block)

    async def events_until(self, seq: int) -> list[Frame]:
        """Every frame but heartbeats until the event with `seq` (or a later one) has come."""
        out: list[Frame] = []
        while True:
            frame = await self.next()
            assert frame is not None, f"the feed ended before seq {seq}"
            if frame.comment is None:
                out.append(frame)
            if frame.id is not None and frame.id >= seq:
                return out


@asynccontextmanager
async def feed(
    gw: Gateway, query: str = "", headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.Response, Frames]]:
    async with (
        httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS, timeout=10) as client,
        client.stream("GET", "/admin/events" + query, headers=headers) as response,
    ):
        yield response, Frames(response.aiter_raw())


async def chat(gw: Gateway) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=gw.url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=10
    ) as client:
        response = await client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200, response.text
    return response


def stored(data_dir: Path, after: int = 0) -> list[tuple[int, bytes]]:
    """The log's rows after `after`, as stored."""
    store = SqliteStore(data_dir / DB_NAME, read_only=True)
    try:
        return store.read_raw_after(after, 1_000_000)
    finally:
        store.close()


async def subscribed(gw: Gateway, count: int) -> None:
    """Until `count` feeds are subscribed to the gateway's feed actor."""
    with trio.fail_after(5):
        while True:
            if gw.runtime.feed.statistics().subscribers >= count:
                return
            await trio.sleep(0.01)


def sent_events(frames: list[Frame]) -> list[tuple[int, bytes]]:
    return [(f.id, f.data) for f in frames if f.id is not None and f.data is not None]


# -- The route


async def test_the_feed_needs_the_admin_token_and_checks_its_query(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            for headers in ({}, {"Authorization": f"Bearer {GATEWAY_KEY}"}):
                response = await client.get("/admin/events", headers=headers)
                assert response.status_code == 401
            for query, headers, param in [
                ("?after=-1", {}, "after"),
                ("?after=abc", {}, "after"),
                ("?after=1.5", {}, "after"),
                ("?after=" + "9" * 5000, {}, "after"),
                ("?after=9223372036854775808", {}, "after"),
                ("", {"Last-Event-ID": "x7"}, "Last-Event-ID"),
                ("?types=request_completed,no_such_type", {}, "types"),
                ("?types=", {}, "types"),
                ("?platform=", {}, "platform"),
                ("?model=", {}, "model"),
                ("?request_id=", {}, "request_id"),
            ]:
                response = await client.get("/admin/events" + query, headers={**ADMIN_HEADERS, **headers})
                assert response.status_code == 400, query
                error = response.json()["error"]
                assert (error["param"], error["code"]) == (param, "invalid_field"), query
                assert param in error["message"]
            response = await client.get("/admin/events?types=bogus", headers=ADMIN_HEADERS)
            message = response.json()["error"]["message"]
            assert "bogus" in message
            assert all(event_tag(t) in message for t in EVENT_TYPES)  # the valid ones are listed


async def test_events_go_out_as_the_log_stores_them_with_the_stream_headers(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            await settled(gw)
            start = gw.runtime.log.statistics().last_seq
            async with feed(gw) as (response, frames):
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                assert await frames.next() == Frame(retry=2000)
                answered = await chat(gw)
                await settled(gw)
                end = gw.runtime.log.statistics().last_seq
                got = await frames.events_until(end)
            rows = stored(gw.data_dir, start)
            assert sent_events(got) == rows  # live: every event after the start, as stored
            assert [f.event for f in got] == [json.loads(data)["type"] for _, data in rows]
            request_id = answered.headers["x-request-id"]
            assert {json.loads(data).get("request_id") for _, data in rows} == {request_id}
            # (Events carry key ids, never key material or tokens.)
            text = b"".join(data for _, data in rows)
            assert (
                b"up-1" not in text and ADMIN_TOKEN.encode() not in text and GATEWAY_KEY.encode() not in text
            )


# -- Resume


async def test_resume_by_last_event_id_is_exact_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with trio.fail_after(40):
        async with running_gateway(tmp_path, ["ok"], data_dir=data_dir) as gw:
            async with feed(gw, "?after=0") as (_, frames):
                for _ in range(2):
                    await chat(gw)
                await settled(gw)
                end = gw.runtime.log.statistics().last_seq
                first_run = sent_events(await frames.events_until(end))
            assert first_run == stored(data_dir)  # from the start of the log: all of it, in order
        # The client saw up to a seq in the middle of the log before the gateway stopped.
        seen = first_run[len(first_run) // 2][0]
        async with running_gateway(tmp_path, ["ok"], data_dir=data_dir) as gw:
            async with feed(gw, headers={"Last-Event-ID": str(seen)}) as (_, frames):
                await chat(gw)
                await settled(gw)
                end = gw.runtime.log.statistics().last_seq
                resumed = await frames.events_until(end)
            rows = stored(data_dir, seen)
            # The first run's rest (its stop included), the restart, the new request: each once, in order.
            assert sent_events(resumed) == rows
            assert [f.event for f in resumed].count("service_stopped") == 1
            assert [f.event for f in resumed].count("service_started") == 1


# -- Filters


async def test_filters_select_the_same_events_from_the_log_and_live(tmp_path: Path) -> None:
    def config_for(upstream_url: str, data_dir: Path) -> str:
        text = config_text(upstream_url, data_dir, ["ok"])
        return text + '\n[[models]]\nplatform = "local"\nid = "other"\nintelligence_rank = 2\n'

    def expected(rows: list[tuple[int, bytes]], keep: object) -> list[tuple[int, bytes]]:
        return [(seq, data) for seq, data in rows if keep(json.loads(data))]  # type: ignore[operator]

    def model_is_ok(event: dict[str, object], named_as: str) -> bool:
        if event["type"] == "request_received":
            return event["model"] == named_as  # as the client named it (HELLO: "ok")
        return event.get("model") == "ok" or event.get("chosen_ref") == "local/ok"

    with trio.fail_after(40):
        async with gateway_from(tmp_path, config_for) as gw:
            earlier = (await chat(gw)).headers["x-request-id"]
            await settled(gw)
            cases = {
                "?after=0&types=request_completed,route_decided": lambda e: (
                    e["type"] in ("request_completed", "route_decided")
                ),
                f"?after=0&request_id={earlier}": lambda e: e.get("request_id") == earlier,
                "?after=0&model=local/ok": lambda e: model_is_ok(e, "local/ok"),
                "?after=0&model=ok&types=attempt_started": lambda e: (
                    model_is_ok(e, "ok") and e["type"] == "attempt_started"
                ),
                "?after=0&platform=local": lambda e: (
                    e.get("platform") == "local" or str(e.get("chosen_ref", "")).startswith("local/")
                ),
                "?after=0&platform=elsewhere": lambda e: False,
            }
            results: dict[str, list[Frame]] = {}

            async def follow(query: str) -> None:
                async with feed(gw, query) as (response, frames):
                    assert response.status_code == 200
                    got: list[Frame] = []
                    while (frame := await frames.next()) is not None:  # to the end: the shutdown below
                        if frame.comment is None and frame.retry is None:
                            got.append(frame)
                    results[query] = got

            async with trio.open_nursery() as nursery:
                for query in cases:
                    nursery.start_soon(follow, query)
                await subscribed(gw, len(cases))
                later = (await chat(gw)).headers["x-request-id"]  # live, for every feed
                await settled(gw)
                rows = stored(gw.data_dir)
                gw.runtime.shutting_down.set()  # every feed ends: what each sent is all it will send
            assert {json.loads(data).get("request_id") for _, data in rows} >= {earlier, later}
            for query, keep in cases.items():
                assert sent_events(results[query]) == expected(rows, keep), query


# -- A subscriber that stops reading


class RawFeed:
    """A feed client on a bare socket with a small receive buffer, that can stop reading: the server's
    writes then block once the socket's buffers are full, as with a client that hangs. HTTP/1.0, so the
    body is the stream's bytes as they are (no chunked framing) until the close."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.frames = Frames(self._chunks())

    async def _chunks(self) -> AsyncIterator[bytes]:
        while data := await self.sock.recv(65536):
            yield data

    @classmethod
    async def open(cls, gw: Gateway, query: str) -> RawFeed:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
        host, port = gw.url.removeprefix("http://").split(":")
        await sock.connect((host, int(port)))
        head = f"GET /admin/events{query} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        await sock.send(head.encode() + b"\r\n")
        feed = cls(sock)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await sock.recv(1)  # byte by byte: nothing of the body is read with the head
        assert head.startswith(b"HTTP/1.1 200"), head
        return feed


async def test_a_stuck_subscriber_is_lagged_and_recovers_while_requests_keep_flowing(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with running_gateway(tmp_path, ["ok"]) as gw:
            await settled(gw)
            log, the_feed = gw.runtime.log, gw.runtime.feed
            start = log.statistics().last_seq
            stuck = await RawFeed.open(gw, f"?after={start}")
            try:
                assert await stuck.frames.next() == Frame(retry=2000)
                # ... and it reads nothing more. Far more than its buffer and both sockets' buffers hold is
                # appended through the log writer, as fast as it commits (8 MB; it lags after ~1,400 here).
                padding = "x" * 1000
                for n in range(8_000):
                    await log.append(KeyChecked(ts=float(n), key_id="probe", ok=True, message=padding))
                await settled(gw)
                lagged = the_feed.statistics().lagged
                assert lagged >= 1
                # While it hangs: chat requests all succeed, the log writer's inbox never backs up, the
                # feed holds no more for it than its buffer.
                highest_queue = 0
                async with trio.open_nursery() as watching:

                    async def watch() -> None:
                        nonlocal highest_queue
                        while True:
                            highest_queue = max(highest_queue, log.statistics().queued)
                            await trio.sleep(0.001)

                    watching.start_soon(watch)
                    async with trio.open_nursery() as requests:
                        for _ in range(32):
                            requests.start_soon(chat, gw)
                    await settled(gw)
                    watching.cancel_scope.cancel()
                assert highest_queue < 1000  # of its 10,000: one batch or so
                stats = the_feed.statistics()
                assert stats.buffered <= BUFFER
                assert stats.lagged == lagged  # it was already lagged: nothing more was held for it
                end = log.statistics().last_seq

                # It reads again: told it lagged, then every event once, from the log and then live.
                got = await stuck.frames.events_until(end)
            finally:
                stuck.sock.close()
            marks = [n for n, f in enumerate(got) if f.event == "lagged"]
            assert len(marks) == 1
            before = [f.id for f in got[: marks[0]] if f.id is not None]
            assert json.loads(got[marks[0]].data or b"") == {"from": (before[-1] if before else start) + 1}
            ids = [f.id for f in got if f.id is not None]
            assert ids == list(range(start + 1, end + 1))
            assert sent_events(got) == stored(gw.data_dir, start)


# -- Shutdown


async def test_open_feeds_end_at_shutdown_and_do_not_hold_its_grace_period(tmp_path: Path) -> None:
    def config_for(upstream_url: str, data_dir: Path) -> str:
        # A grace period far longer than the test allows for the shutdown.
        return config_text(upstream_url, data_dir, ["ok"]).replace("[server]\n", "[server]\ngrace_s = 60\n")

    with trio.fail_after(30):
        async with gateway_from(tmp_path, config_for) as gw:
            async with feed(gw) as (_, live), feed(gw, "?after=0") as (_, resumed):
                assert await live.next() == Frame(retry=2000)
                assert await resumed.next() == Frame(retry=2000)
                await subscribed(gw, 2)
                await chat(gw)
                await settled(gw)
                gw.runtime.shutting_down.set()
                with trio.fail_after(5):
                    for frames in (live, resumed):
                        while await frames.next() is not None:
                            pass  # what was sent before the shutdown, then the end of the stream
            assert gw.runtime.feed.statistics().subscribers == 0
        # (Leaving the block waited for the gateway to stop: within the harness's 15 s, not the 60 s grace.)


async def test_a_feed_that_reads_nothing_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """Its last write is blocked on a full socket: the connection is cut a second into the shutdown, not
    at the end of the 60 s grace period (nor of the 30 s send timeout)."""

    def config_for(upstream_url: str, data_dir: Path) -> str:
        return config_text(upstream_url, data_dir, ["ok"]).replace("[server]\n", "[server]\ngrace_s = 60\n")

    with trio.fail_after(30):
        async with gateway_from(tmp_path, config_for) as gw:
            stuck = await RawFeed.open(gw, "?after=0")
            with stuck.sock:
                assert await stuck.frames.next() == Frame(retry=2000)
                padding = "x" * 1000
                for n in range(3_000):  # more than both sockets' buffers hold: its writes block
                    await gw.runtime.log.append(
                        KeyChecked(ts=float(n), key_id="probe", ok=True, message=padding)
                    )
                await settled(gw)
                started = trio.current_time()
                gw.runtime.shutting_down.set()
                # Leaving the block waits for the gateway to stop.
        stopped = trio.current_time() - started
    assert stopped < 10, f"the shutdown took {stopped:.1f} s"


async def test_past_the_subscriber_cap_a_new_feed_is_refused_with_503(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from service import admin_feed

    monkeypatch.setattr(admin_feed, "MAX_SUBSCRIBERS", 1)
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["ok"]) as gw, feed(gw) as (_, live):
            assert await live.next() == Frame(retry=2000)
            await subscribed(gw, 1)
            async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN_HEADERS) as client:
                resp = await client.get("/admin/events")
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "too_many_subscribers"
            assert resp.headers["retry-after"] == "5"
