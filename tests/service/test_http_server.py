"""service/http_server.py through real sockets: connections end (keep-alive timeout, `Connection: close`,
HTTP/1.0, slow heads, clients that never read, the end of the shutdown grace), the connection cap answers
with 503, running out of descriptors is one warning, and the hypercorn internals it adapts keep their shape.

The app is quart-trio, as the gateway's is: it cancels its request on `http.disconnect`, which is what broke
hypercorn's own end of a response (the module's docstring, 1)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response
from quart_trio import QuartTrio

from service import http_server
from service.config import ConfigError, ServerLimits, load_config
from service.http_server import BUSY_RESPONSE, HEALTH_BUSY_RESPONSE, HttpLimits, check_hypercorn, serve
from service.server import ServeError, http_limits

CHUNK = b"x" * 65536
REFUSAL = b"n" * (256 * 1024)  # larger than a fresh socket's receive buffer: some waits in the server


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps when every task waits 2 ms of real time (the sockets are real)."""
    return trio.testing.MockClock(autojump_threshold=0.002)


class Probe:
    """What the app saw: requests that began and ended, and a gate that busy requests wait on."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self._began, self._beginnings = trio.open_memory_channel[None](100)
        self.ended = trio.Event()

    def began(self) -> None:
        self._began.send_nowait(None)

    async def wait_began(self, requests: int = 1) -> None:
        for _ in range(requests):
            await self._beginnings.receive()


def make_app(probe: Probe) -> QuartTrio:
    app = QuartTrio("test_http_server")

    @app.get("/")
    async def hello() -> str:
        return "ok"

    @app.get("/close")
    async def close() -> Response:
        return Response("bye", headers={"Connection": "close"})

    @app.get("/stream")
    async def stream() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"one ", b"two ", b"three"):
                yield part

        response = Response(chunks())
        response.timeout = None
        return response

    @app.get("/endless")
    async def endless() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            probe.began()
            try:
                while True:
                    yield CHUNK
            finally:
                probe.ended.set()

        response = Response(chunks())
        response.timeout = None
        return response

    @app.get("/wait")
    async def wait() -> str:
        probe.began()
        await probe.gate.wait()
        return "done"

    return app


def with_unread_route(app: QuartTrio, probe: Probe) -> ASGIFramework:
    """`POST /unread` on raw ASGI, as the gateway's chat route answers a 401: without reading the body (so
    hypercorn's queue of body chunks fills), once `probe.gate` opens."""

    async def asgi(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "http" and scope["path"] == "/unread":
            await probe.gate.wait()
            headers = [(b"content-length", str(len(REFUSAL)).encode()), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 401, "headers": headers, "trailers": False})
            await send({"type": "http.response.body", "body": REFUSAL, "more_body": False})
            return
        await app(scope, receive, send)

    return asgi


@asynccontextmanager
async def serving(probe: Probe | None = None, **limits: float) -> AsyncIterator[tuple[int, trio.Event]]:
    """The app served on port 0 with `limits`; yields (port, the shutdown trigger)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    stop = trio.Event()
    probe = probe or Probe()
    app = with_unread_route(make_app(probe), probe)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, app, sock, HttpLimits(**limits), shutdown_trigger=stop.wait))
            yield port, stop
            stop.set()
    finally:
        sock.close()


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def response(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """One whole response with a content-length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length")
    )
    while len(body) < length:
        chunk = await stream.receive_some()
        assert chunk, "closed inside the body"
        body += chunk
    return head, body


async def until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


def get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


# --- connections that end ------------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_closes_at_the_timeout(clock: trio.testing.MockClock) -> None:
    async with serving(keep_alive_timeout_s=75) as (port, _):
        async with await connect(port) as stream:
            await stream.send_all(get("/"))
            head, body = await response(stream)
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
            answered = trio.current_time()
            await stream.send_all(get("/"))  # still usable: keep-alive, and the timer restarts
            assert (await response(stream))[1] == b"ok"
            with trio.fail_after(80):
                assert await until_eof(stream) == b""
            assert 75 <= trio.current_time() - answered < 77


@pytest.mark.parametrize("then", [b"", get("/")], ids=["then-waits", "then-sends-more"])
async def test_a_connection_close_answer_is_followed_by_a_close_within_100ms(then: bytes) -> None:
    """`then`: what the client does after the answer; one that keeps sending (it did not notice the close)
    must see the close as soon as one that waits."""
    async with serving() as (port, _):
        for request in (get("/close"), get("/", extra="Connection: close\r\n"), get("/", "1.0")):
            for _ in range(5):
                async with await connect(port) as stream:
                    await stream.send_all(request)
                    head, _ = await response(stream)
                    assert head.startswith(b"HTTP/1.1 200"), head
                    if then:
                        await stream.send_all(then)
                    with trio.fail_after(0.1):
                        assert await stream.receive_some() == b""


async def test_a_stream_to_an_http10_client_is_close_delimited_and_ends() -> None:
    async with serving() as (port, _):
        async with await connect(port) as stream:
            await stream.send_all(get("/stream", "1.0"))
            with trio.fail_after(2):
                data = await until_eof(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert body == b"one two three"


async def test_a_request_pipelined_after_a_keep_alive_answer_is_answered() -> None:
    async with serving() as (port, _):
        async with await connect(port) as stream:
            await stream.send_all(get("/stream") + get("/"))
            with trio.fail_after(2):
                data = b""
                while not data.endswith(b"ok"):
                    data += await stream.receive_some()
    assert data.count(b"HTTP/1.1 200") == 2


async def test_an_answer_sent_without_reading_the_body_reaches_the_client_whole_and_the_connection_ends() -> (
    None
):
    """The app answers (as a 401 does) without reading the body: hypercorn's queue of body chunks fills and
    its reader waits on it; the client is still sending and not yet reading. hypercorn's disconnect waited
    on that full queue for ever, and closing with input unread is a reset that discards the tail of the
    answer still in the server's send buffer."""
    probe = Probe()
    async with serving(probe) as (port, _):
        async with await connect(port) as stream:
            size = 8 * 1024 * 1024
            await stream.send_all(
                f"POST /unread HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            uploaded = trio.Event()

            async def upload() -> None:
                for _ in range(size // len(CHUNK)):
                    await stream.send_all(CHUNK)  # a reset would break this; a lingering close reads it
                uploaded.set()

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(upload)
                    await trio.sleep(0.2)  # the server's queue and buffers are full
                    probe.gate.set()
                    await trio.sleep(0.2)  # the answer is written, partly still in the server's buffer
                    head, body = await response(stream)
                    assert await until_eof(stream) == b""
                    await uploaded.wait()
    assert head.startswith(b"HTTP/1.1 401") and body == REFUSAL


async def test_a_fresh_connection_that_sends_nothing_closes_at_the_header_timeout(
    clock: trio.testing.MockClock,
) -> None:
    async with serving(header_timeout_s=20) as (port, _):
        async with await connect(port) as stream:
            opened = trio.current_time()
            with trio.fail_after(25):
                assert await until_eof(stream) == b""
            assert 20 <= trio.current_time() - opened < 21


async def test_a_dribbled_request_head_is_cut_off_at_the_header_timeout(
    clock: trio.testing.MockClock,
) -> None:
    async with serving(header_timeout_s=20, keep_alive_timeout_s=75) as (port, _):
        async with await connect(port) as stream:
            await stream.send_all(get("/"))
            await response(stream)
            await trio.sleep(30)  # idle, within the keep-alive timeout
            began = trio.current_time()
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(40):  # a header byte a second: never a whole head
                    await trio.sleep(1)
                    await stream.send_all(b"X")
            # The server closed at the header deadline; writing into a closed connection then fails.
            assert 20 <= trio.current_time() - began < 23


async def test_a_client_that_never_reads_is_dropped_after_the_send_timeout(
    clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    async with serving(probe, send_timeout_s=30) as (port, _):
        async with await connect(port) as stream:
            await stream.send_all(get("/endless"))
            began = trio.current_time()
            with trio.fail_after(40):
                await probe.ended.wait()  # the app's stream was ended: the connection is gone
            assert 30 <= trio.current_time() - began < 35


async def test_shutdown_ends_within_the_grace_whatever_the_clients_do(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()
    caplog.set_level(logging.WARNING, "switchboard.http")
    async with trio.open_nursery() as nursery:
        async with serving(probe, grace_s=2, send_timeout_s=300) as (port, stop):
            idle = await connect(port)  # idle connections close as the shutdown begins
            reader = await connect(port)
            await reader.send_all(get("/endless"))  # and never reads
            await probe.wait_began()
            nursery.start_soon(until_eof, idle)
            began = trio.current_time()
            stop.set()
        ended = trio.current_time() - began
        await idle.aclose()
        await reader.aclose()
    assert 1.99 <= ended < 2.5
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["shutdown: closing 1 client connection(s) still open after the 2 s grace period"]


# --- the connection cap and descriptors ------------------------------------------------------------------


async def test_at_the_cap_with_nothing_idle_a_new_client_gets_a_503_and_a_close() -> None:
    probe = Probe()
    async with serving(probe, max_connections=2) as (port, _):
        busy = [await connect(port) for _ in range(2)]
        for stream in busy:
            await stream.send_all(get("/wait"))
        await probe.wait_began(2)
        async with await connect(port) as extra:
            await extra.send_all(get("/"))
            with trio.fail_after(2):
                assert await until_eof(extra) == BUSY_RESPONSE
        probe.gate.set()
        for stream in busy:
            assert (await response(stream))[1] == b"done"
            await stream.aclose()
    assert BUSY_RESPONSE.startswith(b"HTTP/1.1 503 ") and b"connection: close" in BUSY_RESPONSE


async def test_at_the_cap_a_liveness_probe_still_hears_the_process_is_alive() -> None:
    # From review: a 503 to /healthz at the cap would get a busy gateway restarted, cutting its streams.
    probe = Probe()
    async with serving(probe, max_connections=1) as (port, _):
        busy = await connect(port)
        await busy.send_all(get("/wait"))
        await probe.wait_began(1)
        async with await connect(port) as health:
            await health.send_all(get("/healthz"))
            with trio.fail_after(2):
                assert await until_eof(health) == HEALTH_BUSY_RESPONSE
        probe.gate.set()
        assert (await response(busy))[1] == b"done"
        await busy.aclose()
    assert HEALTH_BUSY_RESPONSE.startswith(b"HTTP/1.1 200 OK") and b'"status":"busy"' in HEALTH_BUSY_RESPONSE


async def test_at_the_cap_the_longest_idle_connection_makes_room() -> None:
    probe = Probe()
    async with serving(probe, max_connections=2) as (port, _):
        async with await connect(port) as oldest, await connect(port) as busy:
            await oldest.send_all(get("/"))
            await response(oldest)  # idle now, kept alive
            await busy.send_all(get("/wait"))
            await probe.wait_began()
            async with await connect(port) as newcomer:
                await newcomer.send_all(get("/"))
                with trio.fail_after(2):
                    assert (await response(newcomer))[1] == b"ok"
                    assert await oldest.receive_some() == b""  # closed to make room
            probe.gate.set()
            assert (await response(busy))[1] == b"done"


class OutOfDescriptors:
    """A listener whose accept fails with EMFILE `failures` times, then accepts for real."""

    def __init__(self, real: trio.SocketListener, failures: int) -> None:
        self.real = real
        self.failures = failures

    async def accept(self) -> trio.SocketStream:
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.real.accept()


async def test_running_out_of_descriptors_is_one_warning_and_accepting_resumes(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "switchboard.http")
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    listener = OutOfDescriptors(trio.SocketListener(sock), failures=50)
    registry = http_server._Registry(HttpLimits())
    served: list[trio.SocketStream] = []

    class Served:
        def __init__(self, stream: trio.SocketStream) -> None:
            self.stream = stream

        async def run(self) -> None:
            served.append(self.stream)
            await self.stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(http_server._accept, listener, nursery, Served, registry)  # type: ignore[arg-type]
        async with await connect(port) as stream:
            with trio.fail_after(10):  # 50 failures, 0.1 s apart
                assert await stream.receive_some() == b""
        nursery.cancel_scope.cancel()
    await sock.aclose() if hasattr(sock, "aclose") else sock.close()
    assert len(served) == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "out of file descriptors accepting a connection (EMFILE)" in warnings[0]


def test_the_default_cap_leaves_room_for_upstream_connections_and_the_database() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = http_server.default_max_connections()
    assert cap >= 16 and (soft == resource.RLIM_INFINITY or cap < soft / 2)


# --- the adapted internals -------------------------------------------------------------------------------


def test_the_hypercorn_internals_the_adaptation_relies_on_keep_their_shape() -> None:
    check_hypercorn()


def test_a_changed_hypercorn_internal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _maybe_recycle(self: H11Protocol, now: bool) -> None:
        return None

    monkeypatch.setattr(H11Protocol, "_maybe_recycle", _maybe_recycle)
    with pytest.raises(
        RuntimeError, match=r"hypercorn changed under service/http_server.py: .*_maybe_recycle"
    ):
        check_hypercorn()


# --- the [server] settings -------------------------------------------------------------------------------


def test_the_server_limits_have_defaults_and_are_read_from_the_server_table(tmp_path: Path) -> None:
    defaults = load_config(None, {})
    assert defaults.limits == ServerLimits()
    assert (defaults.limits.max_body_bytes, defaults.limits.grace_s) == (32 * 1024 * 1024, 10.0)
    assert http_limits(defaults).max_connections == http_server.default_max_connections()
    path = tmp_path / "switchboard.toml"
    path.write_text(
        "[server]\nport = 0\nkeep_alive_timeout_s = 5\nheader_timeout_s = 2\nbody_timeout_s = 3\n"
        "send_timeout_s = 4\nmax_connections = 7\nmax_body_mb = 0.5\ngrace_s = 1.5\n"
    )
    config = load_config(path, {})
    assert config.limits.max_body_bytes == 512 * 1024 and config.limits.body_timeout_s == 3
    assert http_limits(config) == HttpLimits(
        keep_alive_timeout_s=5, header_timeout_s=2, send_timeout_s=4, max_connections=7, grace_s=1.5
    )


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        (
            "max_connections = 0",
            "server.max_connections: expected an integer from 1 to 2**53, found an integer (0)",
        ),
        ("max_body_mb = 0", "server.max_body_mb: expected a positive number of megabytes"),
        ("send_timeout_s = -1", "server.send_timeout_s: expected a positive number of seconds"),
    ],
)
def test_a_bad_server_limit_is_one_line_naming_it(tmp_path: Path, setting: str, words: str) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(f"[server]\n{setting}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_changed_hypercorn_stops_the_start_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H11Protocol, "_check_protocol", lambda self: None)
    with pytest.raises(ServeError, match=r"^hypercorn changed under .*_check_protocol.*constraints.txt\)$"):
        http_limits(load_config(None, {}))
