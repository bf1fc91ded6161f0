"""switchboard benchmark: requests/s and added latency of the gateway over a direct call to a local upstream.

Starts ``scripts/fault_upstream.py`` and ``switchboard serve`` as child processes, then drives both from this
process with a lean trio HTTP/1.1 keep-alive client (raw sockets, one connection per concurrent worker).

Scenarios: {direct upstream, through the gateway} x {non-stream, stream} x concurrency {1, 32}, each with a
short warm-up and a measured run; then the client protocols' cost over chat completions (the same request
by /v1/chat/completions, /v1/responses and /v1/messages at c=1, interleaved in rounds); then a soak (many
non-streaming requests at concurrency 32 through the gateway) and the gateway's memory (VmRSS, VmHWM).
The upstream's CPU use per scenario shows it is not the bottleneck. Prints a table, writes JSON (``--out``).

    scripts/bench                  # full run (5 s per scenario, soak 50000)
    scripts/bench --quick          # smoke run (1 s per scenario, soak 2000)
    scripts/bench --direct-only    # only the upstream scenarios (no gateway needed)

Then the routing benchmark (scripts/bench_routing.py): one decision at 100 models x 3 keys, and replay speed;
and the client protocols' edges in process (scripts/bench_protocols.py): each protocol's translation cost.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import msgspec
import trio

ROOT = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_CONTENT = re.compile(rb'"content":\s*"[^"]')
_REQUEST_TIMEOUT_S = 30.0

CONFIG_TEMPLATE = """\
[server]
host = "127.0.0.1"
port = 0
data_dir = "{data_dir}"

[gateway]
api_keys = ["sk-bench-0123456789abcdef"]

[admin]
token = "admin-bench-0123456789abc"

[catalog]
builtin = false

[[platforms]]
name = "local"
kind = "openai"
base_url = "{upstream}"
keys = ["sk-up-1", "sk-up-2"]

[[models]]
platform = "local"
id = "bench-model"
pool = "balanced"
fallback = true
context_window = 131072
intelligence_rank = 10
"""


# ------------------------------------------------------------------------------------------ the client


@dataclass(frozen=True)
class Proto:
    """One client protocol as the benchmark speaks it: its path, body, and how its stream ends."""

    name: str
    path: str
    end: bytes  # in the last bytes of a whole stream
    error: bytes  # anywhere in a stream: it failed
    content: re.Pattern[bytes]  # the first content frame (time to first token)
    extra_headers: str = ""

    def body(self, stream: bool) -> dict:
        text = "Say hello in five words."
        if self.name == "responses":
            return {"model": "bench-model", "input": text, "stream": stream}
        if self.name == "messages":
            return {
                "model": "bench-model",
                "max_tokens": 256,
                "messages": [{"role": "user", "content": text}],
                "stream": stream,
            }
        return {"model": "bench-model", "messages": [{"role": "user", "content": text}], "stream": stream}


CHAT = Proto("chat", "/v1/chat/completions", b"data: [DONE]", b'{"error"', _CONTENT)
PROTOCOLS = (
    CHAT,
    Proto(
        "responses",
        "/v1/responses",
        b"response.completed",
        b"response.failed",
        re.compile(rb"response\.output_text\.delta"),
    ),
    Proto(
        "messages",
        "/v1/messages",
        b"message_stop",
        b"event: error",
        re.compile(rb"text_delta"),
        "anthropic-version: 2023-06-01\r\n",
    ),
)


class BenchError(Exception):
    """The benchmark cannot go on (a child failed to start); the message says why."""


class ResponseError(Exception):
    """The response was not a complete 200 (or the stream ended without ``[DONE]`` / with an error frame)."""


class HttpConn:
    """One keep-alive HTTP/1.1 connection: send a prebuilt request, read one response."""

    __slots__ = ("buf", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConn:
        return cls(await trio.open_tcp_stream(host, port))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ResponseError("server closed the connection")
        self.buf += data

    async def exchange(
        self, request: bytes, stream: bool, t0: float, proto: Proto = CHAT
    ) -> tuple[bool, float | None, int]:
        """Send ``request``; return (keep-alive, time to first content frame or None, SSE data frames)."""
        content = proto.content
        await self.stream.send_all(request)
        buf = self.buf
        while (hend := buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(buf[:hend]).split(b"\r\n")
        status = int(head[0].split(b" ", 2)[1])
        length = -1
        chunked = False
        keep = not head[0].startswith(b"HTTP/1.0")
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = b"close" not in value.lower()
        pos = hend + 4
        ttft = None
        if chunked:
            body = bytearray()
            checked = 0
            while True:
                while (nl := buf.find(b"\r\n", pos)) < 0:
                    await self._fill()
                size = int(bytes(buf[pos:nl]).split(b";", 1)[0], 16)
                if size == 0:
                    pos = nl + 2
                    while True:  # trailers, then the empty line
                        while (end := buf.find(b"\r\n", pos)) < 0:
                            await self._fill()
                        empty = end == pos
                        pos = end + 2
                        if empty:
                            break
                    break
                start = nl + 2
                while len(buf) < start + size + 2:
                    await self._fill()
                body += buf[start : start + size]
                pos = start + size + 2
                if stream and ttft is None and content.search(body, max(0, checked - 32)):
                    ttft = time.perf_counter() - t0
                checked = len(body)
        else:
            if length < 0:
                raise ResponseError("response has neither content-length nor chunked encoding")
            while len(buf) < pos + length:
                await self._fill()
            body = buf[pos : pos + length]
            pos += length
            if stream and content.search(body):
                ttft = time.perf_counter() - t0
        del buf[:pos]
        if status != 200:
            raise ResponseError(f"HTTP {status}: {bytes(body[:200])!r}")
        frames = 0
        if stream:
            if proto.end not in body[-2048:] or proto.error in body:
                raise ResponseError(f"bad stream ending: {bytes(body[-200:])!r}")
            frames = body.count(b"data:") - 1
        return keep, ttft, frames


def build_request(host: str, port: int, path: str, stream: bool, proto: Proto = CHAT) -> bytes:
    body = msgspec.json.encode(proto.body(stream))
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Authorization: Bearer sk-bench-0123456789abcdef\r\n"
        f"{proto.extra_headers}"
        "Content-Type: application/json\r\n"
        "Accept: */*\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Phase:
    """Samples of one run: latencies (s), times to first content (s), SSE frames, errors."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    elapsed: float = 0.0


async def run_phase(
    slots: list[HttpConn | None],
    host: str,
    port: int,
    request: bytes,
    stream: bool,
    *,
    seconds: float | None = None,
    requests: int | None = None,
    proto: Proto = CHAT,
) -> Phase:
    """Drive one worker per slot until ``seconds`` pass or ``requests`` are done. Slots keep connections."""
    phase = Phase()
    remaining = requests if requests is not None else -1
    end = time.perf_counter() + (seconds if seconds is not None else 1e9)

    async def worker(i: int) -> None:
        nonlocal remaining
        perf_counter = time.perf_counter
        while True:
            if remaining == 0 or perf_counter() >= end:
                return
            if remaining > 0:
                remaining -= 1
            conn = slots[i]
            t0 = perf_counter()
            try:
                with trio.fail_after(_REQUEST_TIMEOUT_S):
                    if conn is None:
                        conn = slots[i] = await HttpConn.open(host, port)
                    keep, ttft, frames = await conn.exchange(request, stream, t0, proto)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ResponseError, ValueError) as exc:
                phase.errors += 1
                if phase.first_error is None:
                    phase.first_error = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    await conn.aclose()
                slots[i] = None
                continue
            phase.latencies.append(perf_counter() - t0)
            if stream:
                if ttft is not None:
                    phase.ttfts.append(ttft)
                phase.frames.append(frames)
            if not keep:
                await conn.aclose()
                slots[i] = None

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(len(slots)):
            nursery.start_soon(worker, i)
    phase.elapsed = time.perf_counter() - start
    return phase


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


# ------------------------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


class Child:
    """A child process whose stdout announces its URL; its output is kept in log files."""

    def __init__(self, name: str, process: trio.Process, stdout_log: Path, stderr_log: Path) -> None:
        self.name = name
        self.process = process
        self.stdout_log = stdout_log
        self.stderr_log = stderr_log
        self.url = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, n: int = 40) -> str:
        try:
            lines = self.stderr_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    async def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``grace_s``. Returns the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace_s):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
                print(f"!! {self.name} ignored SIGTERM for {grace_s:.0f} s; killed", file=sys.stderr)
        return self.process.returncode


def _open_logs(tmp: Path, name: str) -> tuple[Path, Path, BinaryIO, BinaryIO]:
    stdout_log = tmp / f"{name}.stdout.log"
    stderr_log = tmp / f"{name}.stderr.log"
    return stdout_log, stderr_log, open(stdout_log, "wb"), open(stderr_log, "wb")


async def start_child(
    nursery: trio.Nursery,
    name: str,
    argv: list[str],
    *,
    pattern: re.Pattern[bytes],
    tmp: Path,
    env: dict[str, str] | None = None,
    startup_s: float = 30.0,
) -> Child:
    """Start ``argv``; read stdout lines until ``pattern`` matches (its group 1 becomes ``child.url``).

    The rest of stdout keeps being copied to a log file, so a chatty child never blocks on a full pipe.
    """
    stdout_log, stderr_log, log, err = _open_logs(tmp, name)
    with err:  # the child holds its own copy of the descriptor
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(ROOT)
        )
    child = Child(name, process, stdout_log, stderr_log)
    assert process.stdout is not None
    out = process.stdout
    pending = b""
    try:
        with trio.fail_after(startup_s):
            while True:
                data = await out.receive_some(65536)
                if not data:
                    raise RuntimeError(f"{name} exited before announcing its URL")
                log.write(data)
                pending += data
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if m := pattern.search(line):
                        child.url = m.group(1).decode()
                        break
                if child.url:
                    break
    except (trio.TooSlowError, RuntimeError) as exc:
        log.close()
        await child.stop(5)
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        raise BenchError(
            f"!! {name} failed to start ({reason}); command: {' '.join(argv)}\n"
            f"-- {name} stderr (logs kept in {tmp}) --\n{child.stderr_tail()}"
        ) from None

    async def drain() -> None:
        try:
            while data := await out.receive_some(65536):
                log.write(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            log.close()

    nursery.start_soon(drain)
    return child


# -------------------------------------------------------------------------------------------- scenarios


@dataclass
class Result:
    target: str
    stream: bool
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    frames: float | None = None
    upstream_cpu_pct: float | None = None
    gateway_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    first_error: str | None = None


async def scenario(
    target: str,
    url: str,
    path: str,
    *,
    stream: bool,
    concurrency: int,
    args: argparse.Namespace,
    upstream: Child,
    gateway: Child | None,
) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, path, stream)
    slots: list[HttpConn | None] = [None] * concurrency
    try:
        await run_phase(slots, host, port, request, stream, seconds=args.warmup)
        up0 = cpu_seconds(upstream.pid)
        gw0 = cpu_seconds(gateway.pid) if gateway else 0.0
        me0 = time.process_time()
        if args.requests:
            phase = await run_phase(slots, host, port, request, stream, requests=args.requests)
        else:
            phase = await run_phase(slots, host, port, request, stream, seconds=args.seconds)
        wall = phase.elapsed or 1e-9
        up_cpu = 100 * (cpu_seconds(upstream.pid) - up0) / wall
        gw_cpu = 100 * (cpu_seconds(gateway.pid) - gw0) / wall if gateway else None
        me_cpu = 100 * (time.process_time() - me0) / wall
    finally:
        for conn in slots:
            if conn is not None:
                await conn.aclose()
    lat = phase.latencies
    return Result(
        target=target,
        stream=stream,
        concurrency=concurrency,
        requests=len(lat),
        errors=phase.errors,
        seconds=round(wall, 3),
        rps=round(len(lat) / wall, 1),
        p50_ms=ms(percentile(lat, 0.50)),
        p99_ms=ms(percentile(lat, 0.99)),
        mean_ms=ms(sum(lat) / len(lat)) if lat else None,
        ttft_p50_ms=ms(percentile(phase.ttfts, 0.50)) if stream else None,
        ttft_p99_ms=ms(percentile(phase.ttfts, 0.99)) if stream else None,
        frames=round(sum(phase.frames) / len(phase.frames), 2) if phase.frames else None,
        upstream_cpu_pct=round(up_cpu, 1),
        gateway_cpu_pct=round(gw_cpu, 1) if gw_cpu is not None else None,
        client_cpu_pct=round(me_cpu, 1),
        first_error=phase.first_error,
    )


async def protocol_costs(gateway: Child, args: argparse.Namespace) -> list[dict]:
    """What each client protocol's translation costs over chat completions at c=1: the same request
    through /v1/chat/completions, /v1/responses and /v1/messages, interleaved in rounds (the machine's
    speed drifts; each protocol sees the same moments), as p50 latency and gateway CPU per request."""
    parts = urlsplit(gateway.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    cell_s = max(args.seconds / 2, 0.3)
    samples: dict[tuple[str, bool], list[float]] = {}
    cpu: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.protocol_rounds):
        for stream in (False, True):
            for proto in PROTOCOLS:
                request = build_request(host, port, proto.path, stream, proto)
                slots: list[HttpConn | None] = [None]
                try:
                    await run_phase(slots, host, port, request, stream, seconds=args.warmup, proto=proto)
                    gw0 = cpu_seconds(gateway.pid)
                    phase = await run_phase(slots, host, port, request, stream, seconds=cell_s, proto=proto)
                    used = cpu_seconds(gateway.pid) - gw0
                finally:
                    for conn in slots:
                        if conn is not None:
                            await conn.aclose()
                if phase.errors:
                    raise BenchError(f"!! {proto.name} stream={stream}: {phase.first_error}")
                samples.setdefault((proto.name, stream), []).extend(phase.latencies)
                cpu.setdefault((proto.name, stream), []).append(used / max(len(phase.latencies), 1))
    out = []
    for stream in (False, True):
        base_p50 = percentile(samples[("chat", stream)], 0.5) or 0.0
        base_cpu = sum(cpu[("chat", stream)]) / len(cpu[("chat", stream)])
        for proto in PROTOCOLS:
            lat = samples[(proto.name, stream)]
            p50 = percentile(lat, 0.5) or 0.0
            per_request = sum(cpu[(proto.name, stream)]) / len(cpu[(proto.name, stream)])
            out.append(
                {
                    "protocol": proto.name,
                    "stream": stream,
                    "requests": len(lat),
                    "p50_ms": ms(p50),
                    "added_p50_ms": round((p50 - base_p50) * 1000, 3),
                    "cpu_us_per_request": round(per_request * 1e6, 1),
                    "added_cpu_us": round((per_request - base_cpu) * 1e6, 1),
                }
            )
    return out


def print_protocol_costs(costs: list[dict]) -> None:
    print("\nclient protocols at c=1 over chat completions (interleaved rounds):")
    for c in costs:
        mode = "stream" if c["stream"] else "non-stream"
        print(
            f"  {c['protocol']:<10} {mode:<10} n={c['requests']:<6} p50 {fmt(c['p50_ms'])} ms "
            f"({c['added_p50_ms']:+.3f})  gateway cpu {c['cpu_us_per_request']:.0f} us/request "
            f"({c['added_cpu_us']:+.0f})"
        )


def overheads(results: list[Result]) -> list[dict]:
    """Gateway minus direct, per (stream, concurrency)."""
    direct = {(r.stream, r.concurrency): r for r in results if r.target == "direct"}
    out = []
    for r in results:
        d = direct.get((r.stream, r.concurrency))
        if r.target != "gateway" or d is None or r.p50_ms is None or d.p50_ms is None:
            continue
        entry = {
            "stream": r.stream,
            "concurrency": r.concurrency,
            "added_p50_ms": round(r.p50_ms - d.p50_ms, 3),
            "added_p99_ms": round((r.p99_ms or 0) - (d.p99_ms or 0), 3),
            "rps_ratio": round(r.rps / d.rps, 3) if d.rps else None,
        }
        if r.stream and r.frames:
            entry["relay_per_chunk_ms"] = round((r.p50_ms - d.p50_ms) / r.frames, 4)
            if r.ttft_p50_ms is not None and d.ttft_p50_ms is not None:
                entry["added_ttft_p50_ms"] = round(r.ttft_p50_ms - d.ttft_p50_ms, 3)
        out.append(entry)
    return out


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result], extra: list[dict]) -> None:
    print()
    header = (
        f"{'target':<8} {'mode':<10} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'ttft p50':>9} {'ttft p99':>9} {'frames':>6} {'up cpu%':>7} {'gw cpu%':>7} {'me cpu%':>7} "
        f"{'err':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.target:<8} {'stream' if r.stream else 'non-stream':<10} {r.concurrency:>3} "
            f"{r.rps:>9.1f} {fmt(r.p50_ms):>8} {fmt(r.p99_ms):>8} {fmt(r.ttft_p50_ms):>9} "
            f"{fmt(r.ttft_p99_ms):>9} {fmt(r.frames, '.0f'):>6} {fmt(r.upstream_cpu_pct, '.0f'):>7} "
            f"{fmt(r.gateway_cpu_pct, '.0f'):>7} {fmt(r.client_cpu_pct, '.0f'):>7} {r.errors:>5}"
        )
    if extra:
        print()
        print("gateway overhead over direct (ms):")
        for e in extra:
            mode = "stream" if e["stream"] else "non-stream"
            line = (
                f"  {mode:<10} c={e['concurrency']:<3} +p50 {e['added_p50_ms']:8.3f}  "
                f"+p99 {e['added_p99_ms']:8.3f}  throughput x{fmt(e['rps_ratio'], '.2f')}"
            )
            if "relay_per_chunk_ms" in e:
                line += f"  relay/chunk {e['relay_per_chunk_ms']:.4f}"
            if "added_ttft_p50_ms" in e:
                line += f"  +ttft p50 {e['added_ttft_p50_ms']:.3f}"
            print(line)
    for r in results:
        if r.first_error:
            print(f"  first error ({r.target}, stream={r.stream}, c={r.concurrency}): {r.first_error}")


# ------------------------------------------------------------------------------------------------ main


def gateway_command(template: str | None, config: Path) -> list[str]:
    """``--gateway-cmd`` with ``{config}`` filled in, else ``.venv/bin/switchboard serve --config CONFIG``."""
    if template:
        return [part.replace("{config}", str(config)) for part in shlex.split(template)]
    exe = ROOT / ".venv" / "bin" / "switchboard"
    found = str(exe) if exe.exists() else shutil.which("switchboard")
    if not found:
        raise BenchError("!! switchboard executable not found (.venv/bin/switchboard); try --direct-only")
    return [found, "serve", "--config", str(config)]


async def bench(args: argparse.Namespace) -> tuple[int, dict]:
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    report: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "settings": {
            "seconds": args.seconds,
            "requests": args.requests,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "soak": args.soak,
            "direct_only": args.direct_only,
        },
    }
    status = 0
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        upstream = await start_child(
            nursery,
            "upstream",
            [sys.executable, str(ROOT / "scripts" / "fault_upstream.py"), "--port", "0"],
            pattern=re.compile(rb"listening on (http://\S+)"),
            tmp=tmp,
            env=env,
        )
        gateway: Child | None = None
        try:
            print(f"upstream  {upstream.url}  (pid {upstream.pid})")
            if not args.direct_only:
                data_dir = tmp / "data"
                config = tmp / "bench.toml"
                config.write_text(CONFIG_TEMPLATE.format(data_dir=data_dir, upstream=upstream.url))
                gw_env = dict(env, SWITCHBOARD_SECRET_KEY=secrets.token_hex(32))
                gateway = await start_child(
                    nursery,
                    "gateway",
                    gateway_command(args.gateway_cmd, config),
                    pattern=re.compile(rb"switchboard listening on (http://\S+)"),
                    tmp=tmp,
                    env=gw_env,
                )
                print(f"gateway   {gateway.url}  (pid {gateway.pid})")
                report["gateway_memory_start_kib"] = memory_kib(gateway.pid)

            upath = urlsplit(upstream.url).path.rstrip("/") + "/chat/completions"
            for stream in (False, True):
                for c in args.concurrency:
                    targets = [("direct", upstream.url, upath)]
                    if gateway is not None:
                        targets.append(("gateway", gateway.url, "/v1/chat/completions"))
                    for target, url, path in targets:
                        r = await scenario(
                            target,
                            url,
                            path,
                            stream=stream,
                            concurrency=c,
                            args=args,
                            upstream=upstream,
                            gateway=gateway,
                        )
                        results.append(r)
                        mode = "stream" if stream else "non-stream"
                        print(
                            f"  {target:<8} {mode:<10} c={c:<3} {r.rps:9.1f} req/s  p50 {fmt(r.p50_ms)} ms"
                            f"  p99 {fmt(r.p99_ms)} ms  upstream cpu {fmt(r.upstream_cpu_pct, '.0f')}%"
                            f"  errors {r.errors}",
                            flush=True,
                        )
            extra = overheads(results)
            print_table(results, extra)
            report["scenarios"] = [asdict(r) for r in results]
            report["overhead"] = extra

            if gateway is not None and args.protocol_rounds > 0:
                report["protocols"] = await protocol_costs(gateway, args)
                print_protocol_costs(report["protocols"])

            if gateway is not None and args.soak > 0:
                print(f"\nsoak: {args.soak} non-streaming requests, c=32, through the gateway", flush=True)
                parts = urlsplit(gateway.url)
                host, port = parts.hostname or "127.0.0.1", parts.port or 80
                request = build_request(host, port, "/v1/chat/completions", False)
                slots: list[HttpConn | None] = [None] * 32
                before = memory_kib(gateway.pid)
                try:
                    phase = await run_phase(slots, host, port, request, False, requests=args.soak)
                finally:
                    for conn in slots:
                        if conn is not None:
                            await conn.aclose()
                after = memory_kib(gateway.pid)
                soak = {
                    "requests": len(phase.latencies),
                    "errors": phase.errors,
                    "first_error": phase.first_error,
                    "seconds": round(phase.elapsed, 2),
                    "rps": round(len(phase.latencies) / (phase.elapsed or 1e-9), 1),
                    "p50_ms": ms(percentile(phase.latencies, 0.5)),
                    "p99_ms": ms(percentile(phase.latencies, 0.99)),
                    "rss_before_kib": before.get("VmRSS"),
                    "rss_after_kib": after.get("VmRSS"),
                    "peak_rss_kib": after.get("VmHWM"),
                }
                report["soak"] = soak
                print(
                    f"  {soak['requests']} ok, {soak['errors']} errors in {soak['seconds']} s "
                    f"({soak['rps']} req/s, p50 {fmt(soak['p50_ms'])} ms, p99 {fmt(soak['p99_ms'])} ms)\n"
                    f"  gateway RSS {before.get('VmRSS', 0) / 1024:.1f} MiB -> "
                    f"{after.get('VmRSS', 0) / 1024:.1f} MiB, peak {after.get('VmHWM', 0) / 1024:.1f} MiB"
                )
                if phase.errors:
                    status = 1
        finally:
            with trio.CancelScope(shield=True):
                if gateway is not None:
                    code = await gateway.stop()
                    report["gateway_exit"] = code
                    if code != 0:
                        status = 1
                        tail = gateway.stderr_tail()
                        print(f"!! gateway exited with status {code}\n{tail}", file=sys.stderr)
                    else:
                        print("gateway exited 0")
                code = await upstream.stop()
                report["upstream_exit"] = code
                if code != 0:
                    print(f"!! upstream exited with status {code}\n{upstream.stderr_tail()}", file=sys.stderr)
            nursery.cancel_scope.cancel()

    if any(r.errors for r in results):
        status = 1
    report["child_logs"] = str(tmp)
    report["gateway_data_bytes"] = sum(f.stat().st_size for f in (tmp / "data").rglob("*") if f.is_file())
    return status, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--requests", type=int, default=0, help="measured requests per scenario instead")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per scenario")
    parser.add_argument("--soak", type=int, default=50000, help="soak requests through the gateway (0: skip)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated concurrency levels")
    parser.add_argument("--quick", action="store_true", help="1 s per scenario and a 2000-request soak")
    parser.add_argument("--direct-only", action="store_true", help="only the direct upstream scenarios")
    parser.add_argument("--out", default="bench-results.json", help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config, data)")
    parser.add_argument("--no-routing", action="store_true", help="skip the routing benchmark")
    parser.add_argument(
        "--protocol-rounds",
        type=int,
        default=3,
        help="interleaved rounds of chat / Responses / Messages at c=1 (0: skip)",
    )
    parser.add_argument(
        "--gateway-cmd",
        default=None,
        help="command that starts the gateway ({config} is replaced by the config path); "
        "default: .venv/bin/switchboard serve --config {config}",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if args.seconds == parser.get_default("seconds"):
            args.seconds = 1.0
        if args.soak == parser.get_default("soak"):
            args.soak = 2000
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.5
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status = 2
    try:
        status, report = trio.run(bench, args)
        if not args.no_routing:
            # In this process, after the HTTP runs: the routing decision and replay, no sockets involved.
            import bench_routing

            requests, rounds = (2000, 300) if args.quick else (20000, 2000)
            report["routing"] = bench_routing.run(requests, rounds)
            bench_routing.print_report(report["routing"])
            routing = report["routing"]
            reproduced = {routing["replay_reproduced"], routing["replay_parallel_reproduced"]}
            if reproduced != {routing["replay_decisions"]}:  # each replay, one process or two, reproduced all
                status = 1
        if args.protocol_rounds > 0:
            # The client protocols' edges in this process, on a runner that answers at once: their
            # translation's own cost, which the HTTP runs above cannot resolve from the noise.
            import bench_protocols

            report["protocol_edges"] = bench_protocols.run(500 if args.quick else 5000, args.protocol_rounds)
            bench_protocols.print_report(report["protocol_edges"])
        Path(args.out).write_text(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
        print(f"results written to {args.out}")
        if status == 0 and not args.keep:
            shutil.rmtree(report["child_logs"], ignore_errors=True)
        else:
            print(f"child logs, config and gateway data kept in {report['child_logs']}")
    except* BenchError as group:
        for exc in group.exceptions:
            print(exc, file=sys.stderr)
    except* KeyboardInterrupt:
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
