"""The gateway's connections end, in front of the real upstream: its early answers (401, 404) and HTTP/1.0
streams close at once; as a process it keeps answering at a 256-descriptor limit with 300 idle sockets,
closes idle keep-alive connections at the timeout (descriptors back to where they were), and a SIGTERM ends
within the grace period while clients never read their answers."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import trio
from fault_upstream import UpstreamState, serve_upstream
from harness import GATEWAY_KEY, SECRET_ENV, config_text, gateway_from

ROOT = Path(__file__).resolve().parents[2]


def with_server(models: list[str], settings: str):
    """The harness's config for `models`, with `settings` added to its `[server]` table."""
    return lambda upstream_url, data_dir: config_text(upstream_url, data_dir, models).replace(
        "[server]\n", f"[server]\n{settings}\n", 1
    )


def chat(body: dict[str, object], version: str = "1.1", key: str = GATEWAY_KEY) -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: g\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw


async def connect(url: str) -> trio.SocketStream:
    where = urlsplit(url)
    return await trio.open_tcp_stream(where.hostname or "127.0.0.1", where.port or 80)


async def answer_then_close(url: str, request: bytes, marker: bytes) -> tuple[bytes, float]:
    """Send `request`, read until `marker` is in (the end of the answer), then the time until the close."""
    async with await connect(url) as stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(10):
            while marker not in data:
                chunk = await stream.receive_some()
                assert chunk, f"closed before the whole answer: {data[:300]!r}"
                data += chunk
        answered = trio.current_time()
        with trio.fail_after(1):
            while chunk := await stream.receive_some():
                data += chunk
        return data, trio.current_time() - answered


async def test_early_answers_and_http10_streams_are_followed_by_a_close_within_100ms(tmp_path: Path) -> None:
    hello = {"model": "local/ok", "messages": [{"role": "user", "content": "hi"}]}
    async with gateway_from(tmp_path, with_server(["ok"], "")) as gw:
        unread = chat(hello, key="sk-wrong").replace(b"Content-Length: ", b"Content-Length: 9")  # never sent
        cases = [
            (unread, b'"invalid_api_key"}}'),
            (b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n", b'"invalid_api_key"}}'),
            (b"GET /nowhere HTTP/1.1\r\nHost: g\r\n\r\n", b'"not_found"}}'),
            (chat(hello, version="1.0"), b'"ok"'),  # HTTP/1.0, not streamed
            (chat({**hello, "stream": True}, version="1.0"), b"data: [DONE]\n\n"),
        ]
        results = [await answer_then_close(gw.url, request, marker) for request, marker in cases]
    for data, closed_after in results:
        assert closed_after < 0.1, (closed_after, data[:200])
    head, _, body = results[-1][0].partition(b"\r\n\r\n")
    # To an HTTP/1.0 client a stream is delimited by the close: no chunked encoding.
    assert b"transfer-encoding" not in head.lower() and b"text/event-stream" in head
    assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")


# --- the gateway as a process ------------------------------------------------------------------------------


async def start(
    tmp_path: Path, upstream_url: str, models: list[str], settings: str, descriptors: int | None = None
) -> tuple[trio.Process, str]:
    config = tmp_path / "switchboard.toml"
    config.write_text(with_server(models, settings)(upstream_url, tmp_path / "data"))

    def limit() -> None:
        if descriptors is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **SECRET_ENV, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limit,
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(20):
        while b"switchboard listening on " not in buffer:
            chunk = await process.stdout.receive_some()
            assert chunk, "the gateway exited before listening"
            buffer += chunk
    return process, buffer.split(b"switchboard listening on ", 1)[1].split()[0].decode()


def descriptors_of(process: trio.Process) -> int:
    return len(os.listdir(f"/proc/{process.pid}/fd"))


async def stderr_of(process: trio.Process) -> str:
    assert process.stderr is not None
    data = b""
    while chunk := await process.stderr.receive_some():
        data += chunk
    return data.decode(errors="replace")


async def stop(process: trio.Process) -> tuple[int, float, str]:
    """SIGTERM; (exit code, seconds to exit, stderr)."""
    began = trio.current_time()
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        code = await process.wait()
    took = trio.current_time() - began
    return code, took, await stderr_of(process)


async def healthz(url: str) -> bytes:
    async with await connect(url) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def test_at_a_256_descriptor_limit_300_idle_sockets_leave_new_clients_answered(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, UpstreamState())
        process, url = await start(tmp_path, upstream_url, ["ok"], "", descriptors=256)
        idle = [await connect(url) for _ in range(300)]
        await trio.sleep(0.5)  # accepted (or refused) by now
        held = descriptors_of(process)
        answers = [await healthz(url) for _ in range(20)]
        for stream in idle:
            await stream.aclose()
        code, _, stderr = await stop(process)
        nursery.cancel_scope.cancel()
    assert held < 256
    assert all(a.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")) for a in answers), answers
    assert sum(a.startswith(b"HTTP/1.1 200") for a in answers) == 20  # idle connections made room
    assert code == 0
    assert "EMFILE" not in stderr and "Traceback" not in stderr, stderr


async def test_idle_keep_alive_connections_close_at_the_timeout_and_descriptors_come_back(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, UpstreamState())
        process, url = await start(tmp_path, upstream_url, ["ok"], "keep_alive_timeout_s = 1")
        baseline = descriptors_of(process)
        clients = []
        for _ in range(200):
            stream = await connect(url)
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: g\r\n\r\n")
            clients.append(stream)
        for stream in clients:
            with trio.fail_after(5):
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 200")
        held = descriptors_of(process)
        with trio.fail_after(5):
            for stream in clients:
                while await stream.receive_some():
                    pass  # the server's close
        await trio.sleep(0.2)
        after = descriptors_of(process)
        for stream in clients:
            await stream.aclose()
        code, _, _ = await stop(process)
        nursery.cancel_scope.cancel()
    assert held >= baseline + 200
    assert after <= baseline
    assert code == 0


async def test_sigterm_ends_within_the_grace_while_clients_never_read(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        upstream_url = await nursery.start(serve_upstream, UpstreamState())
        process, url = await start(tmp_path, upstream_url, ["echo"], "grace_s = 1")
        big = {"model": "local/echo", "messages": [{"role": "user", "content": "x" * 10_000_000}]}
        readers = []
        for _ in range(3):
            stream = await connect(url)
            await stream.send_all(chat(big))  # and never read the 10 MB answer
            readers.append(stream)
        await trio.sleep(3)  # the answers are being written, into full buffers
        code, took, stderr = await stop(process)
        for stream in readers:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert code == 0
    assert took < 1 + 2, took
    assert "closing 3 client connection(s) still open after the 1 s grace period" in stderr, stderr
