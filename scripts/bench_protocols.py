"""What each client protocol's translation costs per request over chat completions, in this process.

Each protocol's own handler (`PROTOCOL.handle`, as the HTTP edge calls it) runs against a runtime whose
runner answers at once with the same canned completion (or stream: a role chunk, three content chunks, a
finish chunk with usage), so what is timed is exactly the protocol's edge: parsing and validating its body,
translating it to the neutral chat request, and rendering the neutral answer (or stream) in its own form.
Chat completions is the baseline (its translation is the identity). Rounds interleave the protocols so
each sees the same moments of a machine whose speed drifts.

    .venv/bin/python scripts/bench_protocols.py [REQUESTS] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import msgspec
import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actors.request import ChatRequest  # noqa: E402
from actors.stream import END, Routed, StreamHandle, StreamItem  # noqa: E402
from actors.supervisor import Runtime  # noqa: E402
from events.attempts import Completion  # noqa: E402
from events.frames import Chunk  # noqa: E402
from service import chat_completions, messages, responses  # noqa: E402
from service.protocol import ClientProtocol  # noqa: E402

_encode = msgspec.json.encode
TEXT = "Say hello in five words."
COMPLETION = _encode(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from ok."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
    }
)


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> Chunk:
    obj: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        obj["usage"] = usage
    return Chunk(_encode(obj), obj)


STREAM: list[StreamItem] = [
    Routed("local/bench-model", 1),
    _chunk({"role": "assistant", "content": ""}),
    *(_chunk({"content": word}) for word in ("Hello ", "from ", "ok.")),
    _chunk({}, "stop", {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}),
    END,
]


class _Requests:
    keepalive_s = 15.0

    async def complete(self, req: ChatRequest) -> Completion:
        return Completion(COMPLETION, "local/bench-model", 1)

    async def open_stream(self, req: ChatRequest) -> StreamHandle:
        send, recv = trio.open_memory_channel[StreamItem](len(STREAM))
        for item in STREAM:
            send.send_nowait(item)
        send.close()
        return StreamHandle(recv, trio.CancelScope())


class _Responses:
    async def stored(self, *args: Any) -> None:
        return None


class _Clock:
    def now(self) -> float:
        return 1_800_000_000.0


class _Runtime:
    requests = _Requests()
    responses = _Responses()
    clock = _Clock()
    claude_model = "auto-smart"
    messages_max_tokens = 8192


def bodies(stream: bool) -> dict[str, tuple[ClientProtocol, bytes, dict[str, str]]]:
    chat = {"model": "bench-model", "messages": [{"role": "user", "content": TEXT}], "stream": stream}
    return {
        "chat": (chat_completions.PROTOCOL, _encode(chat), {}),
        "responses": (
            responses.PROTOCOL,
            _encode({"model": "bench-model", "input": TEXT, "stream": stream}),
            {},
        ),
        "messages": (
            messages.PROTOCOL,
            _encode({**chat, "max_tokens": 256}),
            {"anthropic-version": "2023-06-01"},
        ),
    }


async def _one(runtime: Runtime, protocol: ClientProtocol, raw: bytes, headers: dict[str, str]) -> int:
    answer = await protocol.handle(runtime, raw, "req_bench", headers)
    if answer.status != 200:
        raise SystemExit(f"{protocol.path}: {answer.status} {answer.body!r}")
    if isinstance(answer.body, bytes):
        return len(answer.body)
    size = 0
    async for data in answer.body:
        size += len(data)
    return size


async def _measure(requests: int, rounds: int) -> dict[str, Any]:
    runtime = cast(Runtime, _Runtime())
    per: dict[tuple[str, bool], list[float]] = {}
    for _ in range(rounds):
        for stream in (False, True):
            for name, (protocol, raw, headers) in bodies(stream).items():
                for _ in range(requests // 10):  # warm up
                    await _one(runtime, protocol, raw, headers)
                start = time.perf_counter()
                for _ in range(requests):
                    await _one(runtime, protocol, raw, headers)
                per.setdefault((name, stream), []).append((time.perf_counter() - start) / requests * 1e6)
    out: dict[str, Any] = {"requests": requests, "rounds": rounds, "protocols": []}
    for stream in (False, True):
        base = statistics.median(per[("chat", stream)])
        for name in ("chat", "responses", "messages"):
            us = statistics.median(per[(name, stream)])
            out["protocols"].append(
                {
                    "protocol": name,
                    "stream": stream,
                    "edge_us": round(us, 1),
                    "over_chat_us": round(us - base, 1),
                }
            )
    return out


def run(requests: int = 5000, rounds: int = 5) -> dict[str, Any]:
    return trio.run(_measure, requests, rounds)


def print_report(report: dict[str, Any]) -> None:
    runs = f"{report['requests']} requests x {report['rounds']} rounds"
    print(f"\nclient protocols' edge, in process ({runs}):")
    for p in report["protocols"]:
        mode = "stream" if p["stream"] else "non-stream"
        print(
            f"  {p['protocol']:<10} {mode:<10} {p['edge_us']:7.1f} us/request"
            f"  over chat completions {p['over_chat_us']:+6.1f} us"
        )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print_report(run(*args))
