"""Property tests on a stream from a provider: the SSE frame parser (actors/sse.py: `data_frames`), the
adapter's frame parsing and the frame-by-frame judge (events/judge.py: `StreamJudge`), and our own SSE
framing of what goes to the client.

Properties: framing round-trips whatever the chunking and line endings; any bytes parse without an
exception, to the same frames however they are split; every frame a client is handed reads back, through
a client's SSE parser, as exactly its JSON; the judge's verdicts are lists, failures or nothing, with
one-line messages, and the frames it hands out are the ones it was fed, in order, each once.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

from fuzz_strategies import FUZZ, any_bytes, assert_message, encodes, json_bytes, json_values, shaped
from hypothesis import example, given
from hypothesis import strategies as st

from actors.sse import KEEPALIVE, data_frames, frame
from events.frames import Chunk
from events.judge import StreamJudge
from events.outcomes import Answered, Failed
from service.providers import ADAPTERS

ADAPTER = ADAPTERS["openai"]


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never waits on anything (the chunks below are all ready) without a loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the parser waited on something other than its input")


async def _chunks(pieces: list[bytes]) -> AsyncGenerator[bytes]:
    for piece in pieces:
        yield piece


async def _collect(pieces: list[bytes]) -> list[bytes]:
    return [payload async for payload in data_frames(_chunks(pieces))]


def parse(pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = run(_collect(pieces))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def client_sees(stream: bytes) -> list[bytes]:
    """What a client's SSE parser (the WHATWG algorithm) reads: CR, LF and CRLF all end a line; one space
    after the colon is dropped; a blank line dispatches the data lines gathered so far."""
    events, data = [], None
    for line in re.split(rb"\r\n|\r|\n", stream):
        if not line:
            if data is not None:
                events.append(b"\n".join(data))
            data = None
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data = [*(data or []), value[1:] if value.startswith(b" ") else value]
    return events


# Payloads as providers send them: no line breaks and no leading blank (our parser, like most, strips the
# blanks after "data:").
payloads = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b and not b.startswith(b" ")),
    json_values.map(encodes),
)
noise = st.sampled_from([KEEPALIVE, b": comment\n\n", b"event: message\n", b"id: 7\n", b"retry: 10\n"])


@FUZZ
@given(
    frames=st.lists(st.tuples(payloads, st.lists(noise, max_size=2)), max_size=8),
    line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_frames_round_trip_through_any_chunking_and_line_ending(
    frames: list[tuple[bytes, list[bytes]]], line_end: bytes, cuts: list[int]
) -> None:
    stream = b""
    for payload, extra in frames:
        # Comments and other fields go before a frame's data (or as their own blocks): never lost data.
        stream += b"".join(extra) + frame(payload)
    stream = stream.replace(b"\n", line_end)
    assert parse(split(stream, cuts)) == [payload for payload, _ in frames]


@FUZZ
@given(
    data=st.one_of(
        any_bytes,
        st.lists(
            st.sampled_from([b"data:", b"data: x", b"\n", b"\r\n", b"\r", b":c", b" ", b"{}", b"[DONE]"]),
            max_size=20,
        ).map(b"".join),
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
@example(data=b"data: a\ndata: b", cuts=[])  # the last frame unterminated, with two data lines
@example(data=b"data: a\n", cuts=[])
@example(data=b"data:\r\r\n", cuts=[])  # a lone CR, then a CRLF
def test_any_bytes_parse_to_the_same_frames_however_split_and_whether_the_last_frame_is_terminated(
    data: bytes, cuts: list[int]
) -> None:
    whole = parse([data])
    assert parse(split(data, cuts)) == whole
    assert all(isinstance(p, bytes) for p in whole)
    if not data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").endswith(b"\n\n"):
        # A body cut off before its last blank line: that frame counts as if it had been terminated.
        assert parse([data, b"\n\n"]) == whole


frame_objects = st.one_of(
    shaped(
        {
            "id": st.text(max_size=5),
            "choices": st.lists(
                shaped(
                    {
                        "index": st.integers(0, 2),
                        "delta": shaped(
                            {
                                "role": st.just("assistant"),
                                "content": st.one_of(st.text(max_size=8), st.none()),
                                "reasoning_content": st.text(max_size=4),
                                "tool_calls": st.lists(
                                    shaped(
                                        {
                                            "index": st.integers(0, 2),
                                            "function": shaped(
                                                {
                                                    "name": st.text(max_size=4),
                                                    "arguments": st.text(max_size=6),
                                                }
                                            ),
                                        }
                                    ),
                                    max_size=2,
                                ),
                            }
                        ),
                        "finish_reason": st.sampled_from([None, "stop", "length", "tool_calls"]),
                    }
                ),
                max_size=2,
            ),
            "usage": shaped(
                {"prompt_tokens": st.integers(-1, 10**5), "completion_tokens": st.integers(-1, 10**5)}
            ),
        }
    ),
    st.builds(lambda e: {"error": e}, shaped({"message": st.text(max_size=300), "code": json_values})),
)
frame_payloads = st.one_of(
    frame_objects.map(encodes),
    json_bytes(frame_objects),
    any_bytes,
    # Multi-line data: a provider may pretty-print its JSON over several `data:` lines.
    frame_objects.map(lambda o: json.dumps(o, indent=1).encode()),
)


@FUZZ
@given(
    stream=st.lists(frame_payloads, max_size=8),
    done=st.booleans(),
    max_tokens=st.one_of(st.none(), st.integers(1, 100)),
    keep_reply=st.booleans(),
)
@example(
    stream=[b"0", b'{"choices":[{"delta":{"content":"0"}}]}'], done=False, max_tokens=None, keep_reply=False
)
@example(
    stream=[b'{"choices":[{"delta":{"content":"hi"}}]}'.replace(b":", b":\r")],
    done=True,
    max_tokens=None,
    keep_reply=False,
)  # a lone CR inside the JSON: a line break to a client
def test_a_stream_is_judged_frame_by_frame_and_every_frame_sent_reads_back_whole(
    stream: list[bytes], done: bool, max_tokens: int | None, keep_reply: bool
) -> None:
    wire = b"".join(frame(p) for p in stream)
    judge = StreamJudge(max_tokens, keep_reply)
    fed: list[Chunk] = []
    sent: list[Chunk] = []
    failed: Failed | None = None
    for payload in parse([wire]):
        chunk = ADAPTER.frame(payload)
        if chunk is not None and isinstance(chunk.obj, dict):
            fed.append(chunk)  # (JSON that is not an object is no chunk: dropped, never forwarded)
        verdict = judge.feed(chunk)
        assert verdict is None or isinstance(verdict, list | Failed)
        if isinstance(verdict, Failed):
            failed = verdict
            break
        if verdict:
            assert judge.sent
            sent.extend(verdict)
    # Handed out in the order fed, each once (held frames go out with the first content).
    assert sent == fed[: len(sent)]
    for chunk in sent:
        # As the client reads it: our framing of the chunk's bytes, through an SSE parser, is its JSON.
        assert client_sees(frame(chunk.raw)) == [chunk.raw]
        assert ADAPTER.frame(chunk.raw) == chunk
    out = failed or judge.end(done)
    assert isinstance(out, Answered | Failed)
    if isinstance(out, Failed):
        assert_message(out.message, 250)
    assert judge.usage.output_tokens >= 0
    if keep_reply:
        assert judge.reply_text is None or isinstance(judge.reply_text, str)


# ---- regressions: what the properties above found -------------------------------------------------------


def test_an_unterminated_last_frame_with_two_data_lines_gives_their_data_not_the_second_field_name() -> None:
    # It gave b"a\ndata: b": the end of the body was read as one line.
    assert parse([b"data: a\ndata: b"]) == parse([b"data: a\ndata: b\n\n"]) == [b"a\nb"]
    assert parse([b": keep-alive\n\ndata: x\r"]) == [b"x"]


def test_a_lone_cr_ends_a_line_even_before_a_crlf() -> None:
    # A CR then a CRLF became CR LF after one pass, so the frame depended on where the body ended.
    assert (
        parse([b"data:\r\r\n"]) == parse([b"data:\r\r\n", b"\n\n"]) == parse([b"data:\r", b"\r\n"]) == [b""]
    )
    assert parse([b"data: a\rdata: b\r\r"]) == [b"a\nb"]


def test_a_frame_spread_over_lines_goes_to_the_client_on_one_data_line() -> None:
    # Its bytes were relayed as they came: a client's SSE parser then read a frame cut at the first line.
    for payload in (b'{"choices":\n[]}', b'{"choices":\r[]}'):
        chunk = ADAPTER.frame(payload)
        assert chunk is not None and chunk.obj == {"choices": []}
        assert client_sees(frame(chunk.raw)) == [b'{"choices":[]}']
