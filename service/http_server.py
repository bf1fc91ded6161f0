"""HTTP/1.1 on hypercorn's protocol layer (h11, its HTTP stream, its lifespan), with connections that end.

hypercorn 0.18's trio worker (`hypercorn/trio/run.py`, `tcp_server.py`, `protocol/h11.py`) gets these
wrong; this module replaces its connection and accept loop and keeps the rest:

1. **The end of a response is handled inside the app's task, and the app cancels it.** The app's last
   `send` runs, in that same call, `H11Protocol._maybe_recycle`: it hands the app `http.disconnect`, then
   restarts the keep-alive timer (`Updated(idle=True)`) or closes the connection (`Closed`, for
   `Connection: close` and HTTP/1.0). quart-trio cancels its request on `http.disconnect`, and so does our
   chat route while it streams, so the bookkeeping is cancelled at its first checkpoint: the keep-alive
   timer never restarts (idle connections live for ever) and the close never happens (a `Connection:
   close` answer, an HTTP/1.0 stream, never ends). Here `_maybe_recycle` runs shielded (`_H11`); nothing
   in it can wait long, because of 2.
2. **`http.disconnect` is put on the app's bounded queue with a blocking send.** An app that answered
   without reading the body (a 401) leaves the queue full of body chunks: the put, the reading task and
   the connection then wait for ever. `_AppQueue` delivers it without waiting.
3. **Writes are shielded with no deadline** (`TCPServer.protocol_send`): a client that never reads holds its
   connection, and the shutdown, for as long as TCP keeps the socket. Here each write must complete within
   `send_timeout_s` (the connection is dropped otherwise), and when the shutdown grace is over the
   connections still open are closed, with one log line counting them.
4. **`trio.serve_listeners` logs EMFILE with a traceback ten times a second, and nothing caps connections.**
   Here connections are counted: at `max_connections` the longest-idle keep-alive connection makes room,
   and when none is idle a newcomer gets a short 503 and a close. Running out of descriptors closes an idle
   connection too, and is one warning per WARN_EVERY_S, not a traceback each time.
5. **Only the keep-alive timer bounds a request head** (and 1 broke it). Here a new connection, and a head
   that starts on an idle one, must complete the head within `header_timeout_s` (the head itself is
   bounded by h11 to 16 KB).
6. **A close with unread input is a reset** (`_close` shuts down writing, then closes at once): a client
   still sending a body it was refused loses the answer. Here the close lingers: our FIN goes out at once
   (the client sees the end), input is read and dropped until the client closes or LINGER_S.

Only HTTP/1.1 and 1.0 over plain TCP: the gateway serves no TLS, and h2c upgrades are answered in
HTTP/1.1. `check_hypercorn()` checks that the internals this relies on still have the shape it expects;
tests/service/test_http_server.py runs it and pins each behaviour above through real sockets.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import math
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import _handle
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    AppWrapper,
    ASGIFramework,
    ASGIReceiveEvent,
    ASGISendEvent,
    ConnectionState,
    LifespanState,
    Scope,
)
from hypercorn.utils import parse_socket_addr, repr_socket_addr, wrap_app

logger = logging.getLogger("switchboard.http")

MAX_RECV = 2**16
LINGER_S = 2.0  # after our FIN: how long a client's leftover input is read and dropped before the close
REFUSE_S = 1.0  # how long a refused connection may take to read its 503
REFUSALS_AT_ONCE = 32  # 503s in flight beyond the cap; past that an excess connection is just closed
DESCRIPTOR_RESERVE = 64  # the log, the lock, the listener, epoll, pipes, threads' files
# Responses that never end by themselves: at a shutdown the feed ends its streams, but a client that reads
# nothing leaves its last write blocked (for up to send_timeout_s); such connections are cut after this.
ENDLESS_PATHS = frozenset({b"/admin/events"})
ENDLESS_GRACE_S = 1.0
ACCEPT_BACKOFF_S = 0.1  # out of descriptors and nothing idle to close: wait this long before accepting
WARN_EVERY_S = 10.0

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BUSY_BODY = msgspec.json.encode(
    {
        "error": {
            "message": "The gateway is at its connection limit; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "too_many_connections",
        }
    }
)
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


# At the cap a liveness probe must still hear that the process lives: a 503 to it would get a busy gateway
# restarted (and its streams cut). The probe's request line is peeked for this long.
HEALTH_PEEK_S = 0.1
_HEALTH_BUSY_BODY = msgspec.json.encode(
    {
        "status": "busy",
        "reason": "at its client connection limit ([server] max_connections): new connections get 503",
    }
)
HEALTH_BUSY_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_HEALTH_BUSY_BODY), _HEALTH_BUSY_BODY)
)


@dataclass(frozen=True)
class HttpLimits:
    """How long and how much a client connection may take (the `[server]` table's settings)."""

    keep_alive_timeout_s: float = 75.0
    header_timeout_s: float = 20.0
    send_timeout_s: float = 30.0
    max_connections: int = 1024
    grace_s: float = 10.0


def default_max_connections() -> int:
    """Half of what the descriptor limit leaves after DESCRIPTOR_RESERVE and the refusals: the other half
    is for upstream connections, which are at most one per request in flight plus the idle pool."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - DESCRIPTOR_RESERVE - REFUSALS_AT_ONCE) // 2)


class _Warning:
    """One log line per WARN_EVERY_S for a condition that may recur thousands of times a second."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._next = -math.inf
        self._count = 0

    def __call__(self, *args: object) -> None:
        self._count += 1
        now = trio.current_time()
        if now >= self._next:
            logger.warning(self._message + " (%d in the last %g s)", *args, self._count, WARN_EVERY_S)
            self._next = now + WARN_EVERY_S
            self._count = 0


class _AppQueue:
    """The app's receive side. Body messages wait for room (the bounded queue is what bounds a body in
    flight); `http.disconnect` never waits: it ends the queue, so an app still reading gets its queued body
    and then the disconnect, and a put blocked behind a full queue returns."""

    def __init__(self, size: int) -> None:
        self._send, self._receive = trio.open_memory_channel[ASGIReceiveEvent](size)
        self._ended = False

    async def put(self, message: ASGIReceiveEvent) -> None:
        if message["type"] == "http.disconnect":
            if not self._ended:
                self._ended = True
                # When the queue is full the app is not reading: it gets the disconnect after the queue.
                with contextlib.suppress(trio.WouldBlock):
                    self._send.send_nowait(message)
                self._send.close()
            return
        with contextlib.suppress(trio.ClosedResourceError):  # the client left; the app was not reading
            await self._send.send(message)

    async def get(self) -> ASGIReceiveEvent:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return {"type": "http.disconnect"}


class _Tasks:
    """hypercorn's TaskGroup protocol on the connection's nursery, with `_AppQueue` for the app."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def spawn_app(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        queue = _AppQueue(config.max_app_queue_size)
        self._nursery.start_soon(
            _handle, app, config, scope, queue.get, send, trio.to_thread.run_sync, trio.from_thread.run
        )
        return queue.put

    def spawn(self, func: Callable[..., Awaitable[None]], *args: object) -> None:
        self._nursery.start_soon(func, *args)

    async def __aenter__(self) -> _Tasks:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _H11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, with the end of a response out of the app's cancellation (1 above)
    and no switch to HTTP/2."""

    async def _maybe_recycle(self) -> None:
        with trio.CancelScope(shield=True):
            await super()._maybe_recycle()

    endless = False  # the request being answered is an endless stream (the admin feed)

    async def _check_protocol(self, event: h11.Request) -> None:
        # Not hypercorn's check: h2c upgrades and prior-knowledge HTTP/2 are answered in HTTP/1.1. Called
        # for every request head: a connection that asked for the feed is cut soon after a shutdown
        # begins rather than at the grace period's end (see `serve`).
        self.endless = event.target.partition(b"?")[0] in ENDLESS_PATHS


class _Registry:
    """The open client connections, and the idle ones oldest first (the ones that make room)."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open: set[_Connection] = set()
        self.idle: dict[_Connection, None] = {}  # insertion order: the longest idle first
        self.refusing = 0
        self.shutting_down = False
        self.empty = trio.Event()
        self.not_reading = _Warning(
            "dropped a client connection that took none of its answer for %g s ([server] send_timeout_s)"
        )

    def idle_now(self, connection: _Connection) -> None:
        self.idle.pop(connection, None)
        self.idle[connection] = None

    def busy_now(self, connection: _Connection) -> None:
        self.idle.pop(connection, None)

    def remove(self, connection: _Connection) -> None:
        self.open.discard(connection)
        self.idle.pop(connection, None)
        if self.shutting_down and not self.open:
            self.empty.set()

    def close_one_idle(self) -> bool:
        for connection in self.idle:
            del self.idle[connection]
            connection.expire()
            return True
        return False

    def close_idle(self) -> None:
        while self.close_one_idle():
            pass


class _Connection:
    """One client connection: reads into the protocol, writes what it sends (each write within the send
    timeout), a watchdog for the idle and header deadlines, and a lingering close.

    Resource handling: the socket is closed when `run` ends, on every path; the app's tasks run in the
    connection's nursery, and closing the socket (the client left, a deadline, the end of the grace period)
    tells them so through the protocol (`http.disconnect`)."""

    def __init__(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        context: WorkerContext,
        state: LifespanState,
        registry: _Registry,
        stream: trio.SocketStream,
    ) -> None:
        self.app, self.config, self.context, self.state = app, config, context, state
        self.registry = registry
        self.stream = stream
        self.protocol: _H11
        self.send_lock = trio.Lock()
        limits = registry.limits
        self._send_timeout_s = limits.send_timeout_s
        self._header_timeout_s = limits.header_timeout_s
        self._keep_alive_timeout_s = limits.keep_alive_timeout_s
        self._idle = True  # between requests (or before the first)
        self._head_started = True  # a new connection's first head is bounded from the accept
        self._closing = False
        # The watchdog's deadline: the idle or header deadline while idle, none while a request runs.
        self._timer = trio.CancelScope(deadline=trio.current_time() + limits.header_timeout_s)
        self._watching = trio.CancelScope()
        self._reading = trio.CancelScope()

    async def run(self) -> None:
        self.registry.open.add(self)
        self.registry.idle_now(self)
        try:
            sock = self.stream.socket
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with trio.open_nursery() as nursery:
                self.protocol = _H11(
                    self.app,
                    self.config,
                    self.context,
                    _Tasks(nursery),
                    ConnectionState(self.state.copy()),
                    False,
                    client,
                    server,
                    self.protocol_send,
                )
                nursery.start_soon(self._watch)
                await self._read()
                self._watching.cancel()
                # Whatever is still writing (to a client that left, or stopped reading) ends now.
                await self.stream.aclose()
        except OSError:
            pass  # the client reset the connection before it could be served
        finally:
            self.registry.remove(self)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            broken = False
            async with self.send_lock:
                # Shielded, as hypercorn does, so a cancelled app never leaves half a message on the wire;
                # with a deadline of its own, so a client that never reads cannot hold it.
                deadline = trio.current_time() + self._send_timeout_s
                with trio.CancelScope(shield=True, deadline=deadline) as writing:
                    try:
                        await self.stream.send_all(event.data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        broken = True
                if writing.cancelled_caught:
                    self.registry.not_reading(self._send_timeout_s)
                    await self.stream.aclose()
                    broken = True
            if broken:
                await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            if event.idle:
                self._idle = True
                self._head_started = False
                self._timer.deadline = trio.current_time() + self._keep_alive_timeout_s
                self.registry.idle_now(self)
            else:
                self._idle = False
                self._timer.deadline = math.inf
                self.registry.busy_now(self)

    def expire(self) -> None:
        """Close this connection now if it is idle (to make room, or because the gateway is stopping)."""
        self._timer.deadline = -math.inf

    @property
    def endless(self) -> bool:
        protocol: _H11 | None = getattr(self, "protocol", None)  # set once `run` has begun
        return protocol is not None and protocol.endless

    def cut_off(self) -> None:
        """Close the socket now, whatever it is doing (the end of the shutdown grace period)."""
        self.stream.socket.close()

    async def _read(self) -> None:
        with self._reading:
            while True:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if self._closing:
                    if not data:
                        break
                    continue  # the answer went out; what else the client sends is of no use
                if self._idle and not self._head_started:
                    self._head_started = True
                    self._timer.deadline = trio.current_time() + self._header_timeout_s
                await self.protocol.handle(RawData(bytes(data)))
                if not data:
                    break
        await self.protocol.handle(Closed())

    async def _watch(self) -> None:
        with self._watching:
            while True:
                with self._timer:
                    await trio.sleep_forever()
                if self._idle and not self._closing:
                    break
                self._timer = trio.CancelScope()  # it fired as a request began: wait for the next idle
            # Idle (or a head too slow): nothing to answer, so the connection just ends.
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _close(self) -> None:
        """Our side is done: FIN now (the client sees the end of the answer), then read and drop what the
        client still sends until it closes or LINGER_S, so that it reads the answer rather than a reset."""
        if self._closing:
            return
        self._closing = True
        self._idle = False
        self._timer.deadline = math.inf
        self.registry.busy_now(self)
        # After the write in progress, if any (bounded by its send timeout): the FIN follows the answer.
        async with self.send_lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_eof()
        self._reading.deadline = trio.current_time() + LINGER_S


async def _refuse(stream: trio.SocketStream, registry: _Registry) -> None:
    """A 503 and a close, for a connection past the cap: short, complete, read or not within REFUSE_S. A
    liveness probe (`GET /healthz`) gets a 200 saying "busy" instead."""
    registry.refusing += 1
    try:
        with trio.move_on_after(REFUSE_S):
            head = b""
            with trio.move_on_after(HEALTH_PEEK_S):
                while b"\r\n" not in head and len(head) < 64:
                    chunk = await stream.receive_some(MAX_RECV)
                    if not chunk:
                        break
                    head += chunk
            liveness = head.startswith((b"GET /healthz ", b"GET /healthz?", b"HEAD /healthz "))
            await stream.send_all(HEALTH_BUSY_RESPONSE if liveness else BUSY_RESPONSE)
            await stream.send_eof()
            while await stream.receive_some(MAX_RECV):
                pass  # the request, unread: closing with it unread would reset the 503 away
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        registry.refusing -= 1
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _accept(
    listener: trio.SocketListener,
    connections: trio.Nursery,
    connection: Callable[[trio.SocketStream], _Connection],
    registry: _Registry,
) -> None:
    out_of_descriptors = _Warning(
        "out of file descriptors accepting a connection (%s): closing idle connections and retrying; "
        "raise the limit (ulimit -n) or lower [server] max_connections"
    )
    at_cap = _Warning(
        "%d client connections open, none idle ([server] max_connections): answering new ones with 503"
    )
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_DESCRIPTORS:
                raise
            out_of_descriptors(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
            if not registry.close_one_idle():
                await trio.sleep(ACCEPT_BACKOFF_S)
            continue
        if len(registry.open) < registry.limits.max_connections or registry.close_one_idle():
            connections.start_soon(connection(stream).run)
        elif registry.refusing < REFUSALS_AT_ONCE:
            at_cap(len(registry.open))
            connections.start_soon(_refuse, stream, registry)
        else:
            at_cap(len(registry.open))
            await stream.aclose()


async def serve(
    app: ASGIFramework,
    sock: socket.socket,
    limits: HttpLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_cut_off: Callable[[], None] = lambda: None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the bound, listening `sock` until `shutdown_trigger` returns, then stop accepting,
    close idle connections, let requests in flight finish within `limits.grace_s`, and close the rest
    (calling `on_cut_off` first, so the app can tell that cut from a client leaving).
    Reports the URL it serves with `task_status.started`."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = "-"
    config.keep_alive_timeout = limits.keep_alive_timeout_s
    config.graceful_timeout = limits.grace_s
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, state)
    registry = _Registry(limits)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    def connection(stream: trio.SocketStream) -> _Connection:
        return _Connection(wrapped, config, context, state, registry, stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(_accept, listener, connections, connection, registry)
                task_status.started(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await listener.aclose()  # new connections are refused by the kernel, not left waiting
            registry.shutting_down = True
            await context.terminated.set()  # a response that ends now closes its connection
            registry.close_idle()
            if not registry.open:
                registry.empty.set()
            connections.start_soon(_cut_endless, registry, min(ENDLESS_GRACE_S, limits.grace_s))
            with trio.move_on_after(limits.grace_s):
                await registry.empty.wait()
            if registry.open:
                logger.warning(
                    "shutdown: closing %d client connection(s) still open after the %g s grace period",
                    len(registry.open),
                    limits.grace_s,
                )
                on_cut_off()
                for open_connection in list(registry.open):
                    open_connection.cut_off()
            connections.cancel_scope.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _cut_endless(registry: _Registry, after_s: float) -> None:
    """Cut the feeds' connections still open `after_s` into a shutdown: they would hold its grace."""
    await trio.sleep(after_s)
    for connection in list(registry.open):
        if connection.endless:
            connection.cut_off()


def check_hypercorn() -> None:
    """Raise RuntimeError if a hypercorn internal this module builds on changed shape (an upgrade)."""
    problems = []
    expected: dict[str, tuple[Callable[..., object], str]] = {
        "H11Protocol.__init__": (
            H11Protocol.__init__,
            "self app config context task_group connection_state ssl client server send",
        ),
        "H11Protocol._maybe_recycle": (H11Protocol._maybe_recycle, "self"),
        "H11Protocol._check_protocol": (H11Protocol._check_protocol, "self event"),
        "H11Protocol.stream_send": (H11Protocol.stream_send, "self event"),
        "hypercorn.trio.task_group._handle": (
            _handle,
            "app config scope receive send sync_spawn call_soon",
        ),
        "HTTPStream.__init__": (
            HTTPStream.__init__,
            "self app config context task_group ssl client server send stream_id",
        ),
        "Lifespan.__init__": (Lifespan.__init__, "self app config state"),
        "WorkerContext.__init__": (WorkerContext.__init__, "self max_requests"),
    }
    for name, (function, parameters) in expected.items():
        found = " ".join(inspect.signature(function).parameters)
        if found != parameters:
            problems.append(f"{name}({found}), expected ({parameters})")
    recycle = inspect.getsource(H11Protocol._maybe_recycle)
    for needed in ("_close_stream", "Updated(idle=True)", "Closed()", "start_next_cycle"):
        if needed not in recycle:
            problems.append(f"H11Protocol._maybe_recycle no longer calls {needed}")
    if "task_group.spawn_app" not in inspect.getsource(HTTPStream.handle):
        problems.append("HTTPStream no longer spawns the app through task_group.spawn_app")
    for name in ("terminated", "event_class"):
        if not hasattr(WorkerContext(None), name):
            problems.append(f"WorkerContext has no {name}")
    if problems:
        raise RuntimeError("hypercorn changed under service/http_server.py: " + "; ".join(problems))
