"""switchboard soak: a real gateway in front of the real fault-injecting upstream, under mixed traffic for a
given time, watched for leaks.

Starts ``scripts/fault_upstream.py`` and ``python -m service.cli serve`` (this checkout's code, a temp data
dir) as child processes, then runs, for ``--minutes``: streaming and non-streaming chat completions, each
with a fault the upstream injects (errors, wrapped errors, resets, stalls before and mid-stream, rate
limits, empty and truncated answers, slow and dripping answers); clients that hang up mid-stream or give up
waiting; slow readers; idle keep-alive connections; a few malformed requests. Every ~30 s it prints the
gateway's RSS (/proc), open descriptors (/proc/<pid>/fd), trio tasks (`GET /healthz` field ``tasks``, n/a
until the gateway reports it), responses by status and client-side errors.

Verdict (exit status 0 only when all hold):

- flat: after a warm-up (20% of the run, at least 30 s, at most 2 min), the samples (one every 5 s) are cut
  in thirds; RSS is flat when the last third's highest is within 10% of the first third's highest, the
  descriptors and tasks when it is within 10% + 16 (connections come and go with the traffic; a leak of one
  per failed or abandoned request grows far past that);
- no task left: once the traffic stops (clients gone), the task count comes back to what it was before the
  traffic began, within 30 s;
- explained: each request's injected fault (and what its client did) says which statuses and endings it
  may get; anything else, a 500, a transport error the client did not cause, a timeout, a traceback in the
  gateway's stderr, or a shutdown that does not exit 0, is unexplained and fails the run.

    scripts/soak                 # 10 minutes
    scripts/soak --minutes 3
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import secrets
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio
from bench import BenchError, Child, memory_kib, start_child

ROOT = Path(__file__).resolve().parents[1]
KEEPALIVE = b": keep-alive"  # the gateway's SSE comment while it waits (actors/sse.py)
SAMPLE_S = 5.0
REQUEST_TIMEOUT_S = 30.0  # far above any fault's delay: a request that takes this long is wedged
SETTLE_S = 30.0  # after the traffic, how long tasks may take to come back to the baseline
RSS_TOLERANCE = 0.10
COUNT_TOLERANCE, COUNT_SLACK = 0.10, 16
BAD_KEY_EVERY_S = 10.0  # the gateway refuses an address after 20 bad keys a minute: stay well below

# Stalls are on their own platform with the short global first-byte deadline; the others get a long one
# (the platform's timeout_s), so a busy machine never turns a healthy answer into a stall.
FIRST_BYTE_S, STALL_S, KEEPALIVE_S = 3, 4, 1


@dataclass(frozen=True)
class Fault:
    """An upstream behaviour (fault_upstream's spec, served as the model id) and what it may give."""

    spec: str
    platform: str
    plain: frozenset[int]  # statuses a non-streaming request may get
    stream: frozenset[int]  # ... and a streaming one
    mid_error: bool = False  # a stream may end with an error event after content
    weight: int = 1


def _codes(*codes: int) -> frozenset[int]:
    return frozenset(codes)


# A failure cools the model (every key failed) or, for a 404, takes it out for an hour: later requests to it
# get 503 "nothing available", which the fault explains as well as the first answer.
FAILS = _codes(502, 503)
FAULTS = (
    Fault("ok", "local", _codes(200), _codes(200), weight=12),
    Fault("drip:0.2:6", "local", _codes(200), _codes(200), weight=3),
    Fault("slow:1", "local", _codes(200), _codes(200), weight=2),
    Fault("truncated", "local", _codes(200), _codes(200)),  # delivered as the provider sent it
    Fault("fail:500", "local", FAILS, FAILS),
    Fault("fail:503", "local", FAILS, FAILS),
    Fault("fail:404", "local", FAILS, FAILS),
    Fault("wrapped-body:503", "local", FAILS, FAILS),
    Fault("wrapped-sse:503", "local", FAILS, FAILS),
    Fault("reset", "local", FAILS, FAILS),
    Fault("empty", "local", FAILS, FAILS),
    Fault("fail:400", "local", _codes(400), _codes(400)),
    Fault("context", "local", _codes(400), _codes(400)),
    Fault("rate-limit:1", "local", _codes(429), _codes(429)),
    Fault("fail-mid:503", "local", FAILS, FAILS | {200}, mid_error=True),
    Fault("reset-mid", "local", FAILS, FAILS | {200}, mid_error=True),
    Fault("stall-pre:6", "stalls", _codes(503, 504), _codes(503, 504)),
    Fault("stall-mid:6", "stalls", _codes(503, 504), _codes(200, 503, 504), mid_error=True),
)
HEALTHY = [f for f in FAULTS if f.plain == {200}]

# (method, path, body, expected status): the malformed requests, sent now and then.
MALFORMED: tuple[tuple[str, str, bytes, int], ...] = (
    ("POST", "/v1/chat/completions", b"{", 400),
    ("POST", "/v1/chat/completions", b"", 400),
    (
        "POST",
        "/v1/chat/completions",
        b'{"model": "local/ok", "messages": [{"role": "user", "content": "\xff"}]}',
        400,
    ),
    ("POST", "/v1/chat/completions", b'{"model": "local/ok"}', 400),
    (
        "POST",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        400,
    ),
    ("POST", "/v1/chat/completions", b"[" * 20000, 400),
    (
        "POST",
        "/v1/chat/completions",
        b'{"model": "' + b"m" * 5000 + b'", "messages": [{"role": "user"}]}',
        400,
    ),
    ("GET", "/v1/no-such-route", b"", 404),
    ("GET", "/v1/chat/completions", b"", 405),
)


def config_text(data_dir: Path, upstream: str, gateway_key: str) -> str:
    models = ""
    for f in FAULTS:
        # Only "ok" is in the automatic chain: whatever "auto" picks must answer.
        chain = "true" if f.spec == "ok" else "false"
        models += f'\n[[models]]\nplatform = "{f.platform}"\nid = "{f.spec}"\nfallback = {chain}\n'
    return f"""\
[server]
host = "127.0.0.1"
port = 0
data_dir = "{data_dir}"

[gateway]
api_keys = ["{gateway_key}"]

[catalog]
builtin = false

[timeouts]
first_byte_s = {FIRST_BYTE_S}
stall_s = {STALL_S}
keepalive_s = {KEEPALIVE_S}

[[platforms]]
name = "local"
base_url = "{upstream}"
keys = ["sk-soak-upstream-local"]
timeout_s = 30

[[platforms]]
name = "stalls"
base_url = "{upstream}"
keys = ["sk-soak-upstream-stalls"]
{models}"""


# ------------------------------------------------------------------------------------------- accounting


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "client-abort", ...
    client_errors: Counter[str] = field(default_factory=Counter)  # transport errors, by exception name
    unexplained: list[str] = field(default_factory=list)
    unexplained_total: int = 0
    requests: int = 0
    idle_closed: int = 0  # idle keep-alive connections the gateway closed
    idle_seconds: list[float] = field(default_factory=list)

    def seen(self, outcome: str) -> None:
        self.requests += 1
        self.statuses[outcome] += 1

    def wrong(self, what: str) -> None:
        self.unexplained_total += 1
        if len(self.unexplained) < 20:
            self.unexplained.append(" ".join(what.split()))  # (bodies quoted in it have line breaks)


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    tasks: int | None


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def flat(values: list[float], tolerance: float, slack: float) -> tuple[bool, str]:
    """The last third's highest within `tolerance` (and `slack`) of the first third's highest."""
    if len(values) < 3:
        return True, "too few samples to judge"
    third = len(values) // 3
    first, last = max(values[:third]), max(values[-third:])
    limit = first * (1 + tolerance) + slack
    return last <= limit, f"first third max {first:g}, last third max {last:g}, limit {limit:g}"


# ----------------------------------------------------------------------------------------------- traffic


class Traffic:
    """The clients. Each worker has its own httpx client (a shared pool slows down as requests pile up)."""

    def __init__(self, url: str, key: str, tally: Tally, rng: random.Random) -> None:
        self.url = url
        self.key = key
        self.tally = tally
        self.rng = rng
        self._last_bad_key = -math.inf

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=REQUEST_TIMEOUT_S
        )

    async def worker(self, n: int) -> None:
        rng = random.Random(self.rng.random())
        actions: list[tuple[int, Callable[[httpx.AsyncClient, random.Random], Any]]] = [
            (50, self.chat),
            (8, self.hang_up_mid_stream),
            (8, self.slow_reader),
            (5, self.give_up_waiting),
            (6, self.auto),
            (4, self.malformed),
        ]
        weights = [w for w, _ in actions]
        async with self.client() as client:
            while True:
                (_, action) = rng.choices(actions, weights)[0]
                try:
                    await action(client, rng)
                except httpx.TimeoutException as exc:
                    self.tally.seen("timeout")
                    self.tally.wrong(f"{action.__name__}: no answer within {REQUEST_TIMEOUT_S:g} s ({exc!r})")
                except httpx.TransportError as exc:
                    name = type(exc).__name__
                    self.tally.client_errors[name] += 1
                    self.tally.seen("transport-error")
                    self.tally.wrong(f"{action.__name__}: {name}: {str(exc)[:120]}")
                await trio.sleep(rng.uniform(0.02, 0.2))

    # -- the actions -----------------------------------------------------------------------------------

    @staticmethod
    def body(model: str, stream: bool) -> dict[str, Any]:
        return {
            "model": model,
            "stream": stream,
            "fallback": False,
            "messages": [{"role": "user", "content": "soak"}],
        }

    async def chat(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        fault = rng.choices(FAULTS, [f.weight for f in FAULTS])[0]
        stream = rng.random() < 0.5
        await self.ask(client, fault, stream, f"{fault.platform}/{fault.spec}")

    async def auto(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        # The automatic chain holds only healthy models: whatever it picks must answer.
        await self.ask(client, FAULTS[0], rng.random() < 0.5, "auto")

    async def ask(self, client: httpx.AsyncClient, fault: Fault, stream: bool, model: str) -> None:
        body = self.body(model, stream)
        if model == "auto":
            body.pop("fallback")
        where = f"{model} {'stream' if stream else 'plain'}"
        if not stream:
            resp = await client.post("/v1/chat/completions", json=body)
            self.tally.seen(str(resp.status_code))
            self.check_status(where, resp.status_code, fault.plain, resp.text)
            if resp.status_code == 200 and not _has_content(resp.content):
                self.tally.wrong(f"{where}: a 200 without content: {resp.text[:160]}")
            return
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = await resp.aread()
        if resp.status_code == 200 and raw.startswith(KEEPALIVE) and fault.stream - {200}:
            # Committed by a keep-alive before the outcome was known (the stream contract): a failure can
            # then only be an error event, and it is the same failure the fault explains as a status.
            self.tally.seen("200 (failed after keep-alive)" if _error_events(raw) else "200")
            self.check_stream(where, raw, mid_error=True, content=False)
            return
        self.tally.seen(str(resp.status_code))
        self.check_status(where, resp.status_code, fault.stream, raw.decode(errors="replace"))
        if resp.status_code == 200:
            self.check_stream(where, raw, fault.mid_error)

    def check_status(self, where: str, status: int, allowed: frozenset[int], text: str) -> None:
        if status not in allowed:
            self.tally.wrong(f"{where}: {status} (the fault allows {sorted(allowed)}): {text[:200]}")

    def check_stream(self, where: str, raw: bytes, mid_error: bool, content: bool = True) -> None:
        """A 200 stream ends with [DONE]; it has content (unless `content` is False: it may have failed
        first), and an error event only if the fault can fail mid-stream (`mid_error`)."""
        frames = _data(raw)
        if not frames or frames[-1] != b"[DONE]":
            self.tally.wrong(f"{where}: a stream that did not end with [DONE]: {raw[-200:]!r}")
            return
        errors = _error_events(raw)
        if errors and not mid_error:
            self.tally.wrong(f"{where}: an error event the fault does not explain: {errors[0][:200]!r}")
        has_content = any(_has_content(f) for f in frames[:-1])
        if content and not has_content:
            self.tally.wrong(f"{where}: a 200 stream without content")
        if not has_content and not errors:
            self.tally.wrong(f"{where}: a 200 stream with neither content nor an error event")

    async def hang_up_mid_stream(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        body = self.body("local/drip:0.2:6", True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            self.check_status("hang-up stream", resp.status_code, _codes(200), "")
            async for piece in resp.aiter_raw():
                if b'"content"' in piece:
                    break  # leaving the block unread closes the connection: the client is gone
        self.tally.seen("client-abort")

    async def slow_reader(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        fault = rng.choice(HEALTHY)
        body = self.body(f"{fault.platform}/{fault.spec}", True)
        raw = b""
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for piece in resp.aiter_raw(64):  # small reads, with pauses: the gateway waits on us
                raw += piece
                await trio.sleep(rng.uniform(0.05, 0.5))
        self.tally.seen(str(resp.status_code))
        self.check_status(
            f"slow reader {fault.spec}", resp.status_code, _codes(200), raw.decode(errors="replace")
        )
        if resp.status_code == 200:
            self.check_stream(f"slow reader {fault.spec}", raw, False)

    async def give_up_waiting(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        stream = rng.random() < 0.5
        body = self.body("local/slow:1", stream)
        with trio.move_on_after(rng.uniform(0.1, 0.8)) as waited:
            if stream:
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    await resp.aread()
            else:
                resp = await client.post("/v1/chat/completions", json=body)
        if waited.cancelled_caught:
            self.tally.seen("client-abort")
            return
        self.tally.seen(str(resp.status_code))
        self.check_status("give-up (answered first)", resp.status_code, _codes(200), resp.text[:200])

    async def malformed(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        now = trio.current_time()
        if now - self._last_bad_key >= BAD_KEY_EVERY_S:
            self._last_bad_key = now
            resp = await client.post(
                "/v1/chat/completions",
                json=self.body("local/ok", False),
                headers={"Authorization": "Bearer sk-not-a-key"},
            )
            self.tally.seen(str(resp.status_code))
            self.check_status("bad key", resp.status_code, _codes(401), resp.text)
            return
        method, path, content, expected = rng.choice(MALFORMED)
        resp = await client.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )
        self.tally.seen(str(resp.status_code))
        self.check_status(
            f"malformed {method} {path} {content[:30]!r}", resp.status_code, _codes(expected), resp.text
        )

    async def idle_connection(self, host: str, port: int) -> None:
        """A keep-alive connection that asks once, then says nothing; reopened when the gateway closes it."""
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:  # refused, or out of descriptors: the gateway is not taking clients
                self.tally.client_errors[type(exc).__name__] += 1
                self.tally.wrong(f"idle connection: cannot connect: {exc}")
                await trio.sleep(1)
                continue
            async with stream:
                await stream.send_all(request)
                opened = trio.current_time()
                got = b""
                while b"\r\n\r\n" not in got:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    got += data
                try:
                    while await stream.receive_some(65536):
                        pass  # (the rest of the response body)
                except trio.BrokenResourceError:
                    pass
            self.tally.idle_closed += 1
            self.tally.idle_seconds.append(trio.current_time() - opened)
            await trio.sleep(1)


def _data(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


def _error_events(raw: bytes) -> list[bytes]:
    return [f for f in _data(raw) if f.startswith(b'{"error"')]


def _has_content(payload: bytes) -> bool:
    try:
        obj = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    for choice in obj.get("choices") or ():
        part = (choice.get("message") or choice.get("delta") or {}) if isinstance(choice, dict) else {}
        if isinstance(part, dict) and (part.get("content") or part.get("tool_calls")):
            return True
    return False


# --------------------------------------------------------------------------------------------- the run


async def tasks_of(health: httpx.AsyncClient) -> int | None:
    try:
        resp = await health.get("/healthz")
        value = resp.json().get("tasks")
    except (httpx.HTTPError, ValueError):
        return None
    return value if isinstance(value, int) else None


def fmt_statuses(statuses: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"


async def soak(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-soak-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gateway_key = "sk-soak-" + secrets.token_urlsafe(24)
    rng = random.Random(args.seed)
    tally = Tally()
    samples: list[Sample] = []
    failures: list[str] = []
    duration = args.minutes * 60
    warmup = min(120.0, max(30.0, duration * 0.2))
    async with trio.open_nursery() as nursery:
        upstream = await start_child(
            nursery,
            "upstream",
            [sys.executable, str(ROOT / "scripts" / "fault_upstream.py"), "--port", "0"],
            pattern=re.compile(rb"listening on (http://\S+)"),
            tmp=tmp,
            env=env,
        )
        config = tmp / "soak.toml"
        config.write_text(config_text(tmp / "data", upstream.url, gateway_key))
        gateway: Child | None = None
        try:
            # This checkout's code: `-m` from its root (an installed console script may be another copy's).
            gateway = await start_child(
                nursery,
                "gateway",
                [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
                pattern=re.compile(rb"switchboard listening on (http://\S+)"),
                tmp=tmp,
                env=dict(env, SWITCHBOARD_SECRET_KEY=secrets.token_hex(32)),
            )
            host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
            print(f"upstream {upstream.url} (pid {upstream.pid}), gateway {gateway.url} (pid {gateway.pid})")
            print(
                f"soak: {args.minutes:g} min, {args.workers} workers, {args.idle} idle connections, warm-up "
                f"{warmup:.0f} s, seed {args.seed}; logs in {tmp}"
            )
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as health:
                base_tasks = await tasks_of(health)
                base_fds = count_fds(gateway.pid)
                base_rss = memory_kib(gateway.pid)["VmRSS"]
                print(
                    f"before traffic: rss {base_rss / 1024:.1f} MB, fds {base_fds}, "
                    f"tasks {'n/a' if base_tasks is None else base_tasks}"
                )
                traffic = Traffic(gateway.url, gateway_key, tally, rng)
                start = trio.current_time()
                async with trio.open_nursery() as clients:
                    for n in range(args.workers):
                        clients.start_soon(traffic.worker, n)
                    for _ in range(args.idle):
                        clients.start_soon(traffic.idle_connection, host, int(port))
                    next_report = start + args.report_every
                    while (now := trio.current_time()) - start < duration:
                        await trio.sleep(min(SAMPLE_S, max(0.0, start + duration - now)))
                        sample = Sample(
                            trio.current_time() - start,
                            memory_kib(gateway.pid)["VmRSS"],
                            count_fds(gateway.pid),
                            await tasks_of(health),
                        )
                        samples.append(sample)
                        if trio.current_time() >= next_report:
                            next_report += args.report_every
                            print(report_line(sample, tally), flush=True)
                    clients.cancel_scope.cancel()  # every client goes away at once, mid-request or not
                # After the traffic: the gateway notices the clients left; tasks must come back.
                settled_tasks = None
                deadline = trio.current_time() + SETTLE_S
                while trio.current_time() < deadline:
                    settled_tasks = await tasks_of(health)
                    if settled_tasks is None or base_tasks is None or settled_tasks <= base_tasks:
                        break
                    await trio.sleep(1)
                end_fds, end_rss = count_fds(gateway.pid), memory_kib(gateway.pid)["VmRSS"]
            code = await gateway.stop()
            if code != 0:
                failures.append(f"the gateway exited {code} on SIGTERM (see {gateway.stderr_log})")
            tracebacks = gateway.stderr_log.read_text(errors="replace").count("Traceback")
            if tracebacks:
                failures.append(f"{tracebacks} traceback(s) in the gateway's stderr ({gateway.stderr_log})")
        finally:
            if gateway is not None:
                await gateway.stop(5)
            await upstream.stop(5)
        nursery.cancel_scope.cancel()

    print()
    print(f"requests {tally.requests}: {fmt_statuses(tally.statuses)}")
    print(f"client-side errors: {fmt_statuses(tally.client_errors)}")
    idle = tally.idle_seconds
    print(
        f"idle keep-alive connections closed by the gateway: {tally.idle_closed}"
        + (f" (after {statistics.median(idle):.1f} s median, {max(idle):.1f} s longest)" if idle else "")
    )
    after = [s for s in samples if s.t >= warmup]
    verdict: list[tuple[str, bool, str]] = []
    ok, why = flat([s.rss_kib / 1024 for s in after], RSS_TOLERANCE, 0)
    verdict.append(("RSS flat after warm-up (MB)", ok, why))
    ok, why = flat([float(s.fds) for s in after], COUNT_TOLERANCE, COUNT_SLACK)
    verdict.append(("descriptors flat after warm-up", ok, why))
    task_values = [float(s.tasks) for s in after if s.tasks is not None]
    if task_values:
        ok, why = flat(task_values, COUNT_TOLERANCE, COUNT_SLACK)
        verdict.append(("tasks flat after warm-up", ok, why))
    if base_tasks is None or settled_tasks is None:
        verdict.append(("no task left after the traffic", True, "n/a: /healthz reports no `tasks` yet"))
    else:
        verdict.append(
            (
                "no task left after the traffic",
                settled_tasks <= base_tasks,
                f"{settled_tasks} tasks after, {base_tasks} before",
            )
        )
    verdict.append(
        (
            "every error explained by its fault",
            tally.unexplained_total == 0 and not failures,
            f"{tally.unexplained_total} unexplained response(s)" + "".join(f"; {f}" for f in failures),
        )
    )
    print(
        f"before traffic: rss {base_rss / 1024:.1f} MB, fds {base_fds}; after: rss {end_rss / 1024:.1f} MB, "
        f"fds {end_fds} (pooled upstream connections may still be open)"
    )
    print("verdict:")
    for name, ok, why in verdict:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {why}")
    for what in tally.unexplained:
        print(f"  unexplained: {what}")
    passed = all(ok for _, ok, _ in verdict)
    if passed and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"logs, config and data kept in {tmp}")
    print("soak PASSED" if passed else "soak FAILED")
    return 0 if passed else 1


def report_line(sample: Sample, tally: Tally) -> str:
    tasks = "n/a" if sample.tasks is None else str(sample.tasks)
    return (
        f"[{sample.t:5.0f}s] rss {sample.rss_kib / 1024:6.1f} MB  fds {sample.fds:4d}  tasks {tasks:>4}  "
        f"requests {tally.requests} ({fmt_statuses(tally.statuses)})  client errors "
        f"{sum(tally.client_errors.values())}  unexplained {tally.unexplained_total}  "
        f"idle closed {tally.idle_closed}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs (default 10)")
    parser.add_argument("--workers", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument(
        "--idle", type=int, default=8, help="idle keep-alive connections held open (default 8)"
    )
    parser.add_argument(
        "--report-every", type=float, default=30.0, help="seconds between reports (default 30)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config, data)")
    args = parser.parse_args(argv)
    if not args.minutes > 0 or args.workers < 1 or args.idle < 0 or not args.report_every > 0:
        parser.error("--minutes and --report-every must be positive, --workers at least 1, --idle at least 0")
    if args.seed is None:
        args.seed = secrets.randbelow(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status = 2
    try:
        status = trio.run(soak, args)
    except* BenchError as group:  # a child did not start: the message says why
        for exc in group.exceptions:
            print(exc, file=sys.stderr)
    except* KeyboardInterrupt:
        status = 130
    return status


if __name__ == "__main__":
    sys.exit(main())
