"""The Gemini adapter (service/providers/gemini.py): the native request built from a neutral call (URL, the
key only in `x-goog-api-key`, contents, tools, tool choice, generation config), its key check, answers and
stream frames from Google's documented shapes (tests/service/fixtures/gemini) in the neutral forms as the
judge reads them, and each error kind."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.sse import data_frames
from actors.upstream import ProviderAdapter, UpstreamCall
from events.failures import FailureKind
from events.judge import StreamJudge, judge_completion
from events.outcomes import Answered, Failed
from service.providers import ADAPTERS
from service.providers.gemini import GeminiAdapter, clean_schema

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
SECRET = "AIzaSyD-SECRET_0123456789abcdefghijklm"
BASE = "https://generativelanguage.googleapis.com/v1beta"
NOW = 1_700_000_000.0
ADAPTER = GeminiAdapter()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def call(body: dict[str, Any], stream: bool = False) -> UpstreamCall:
    return UpstreamCall("gemini", "gemini-2.5-flash", "k1", {"model": "gemini-2.5-flash", **body}, stream)


def sent(body: dict[str, Any]) -> Any:
    built = ADAPTER.request(call(body), BASE, SECRET)
    assert built.body is not None
    return msgspec.json.decode(built.body)


def test_the_gemini_kind_is_registered() -> None:
    assert isinstance(ADAPTERS["gemini"], GeminiAdapter)
    adapter: ProviderAdapter = GeminiAdapter()  # it satisfies the protocol
    assert adapter.kind == "gemini"


# ---- the request -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "url"),
    [
        (False, f"{BASE}/models/gemini-2.5-flash:generateContent"),
        (True, f"{BASE}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ],
)
def test_a_call_posts_to_the_models_method_under_the_base_url(stream: bool, url: str) -> None:
    built = ADAPTER.request(call({"messages": []}, stream), BASE + "/", SECRET)
    assert (built.method, built.url) == ("POST", url)


def test_a_models_prefix_in_the_model_id_is_not_doubled() -> None:
    built = ADAPTER.request(call({"model": "models/gemma-3-27b-it"}), BASE, SECRET)
    assert built.url == f"{BASE}/models/gemma-3-27b-it:generateContent"


def test_the_key_travels_only_in_the_goog_api_key_header() -> None:
    built = ADAPTER.request(call({"messages": [{"role": "user", "content": "hi"}]}), BASE, SECRET)
    assert SECRET not in built.url and "key=" not in built.url
    assert built.body is not None and SECRET.encode() not in built.body
    assert [name for name, value in built.headers.items() if SECRET in value] == ["x-goog-api-key"]
    assert built.headers["content-type"] == "application/json"


def test_the_key_check_lists_one_model_with_the_key_in_the_header() -> None:
    built = ADAPTER.key_check(BASE, SECRET)
    assert (built.method, built.url, built.body) == ("GET", f"{BASE}/models?pageSize=1", None)
    assert built.headers["x-goog-api-key"] == SECRET
    assert SECRET not in built.url


def test_system_messages_become_the_system_instruction_and_roles_user_and_model() -> None:
    body = sent(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "héllo"},
                {"role": "assistant", "content": "Bonjour."},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
            ]
        }
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in French."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "héllo"}]},
        {"role": "model", "parts": [{"text": "Bonjour."}]},
        {"role": "user", "parts": [{"text": "again"}]},
    ]
    assert "generationConfig" not in body and "tools" not in body and "toolConfig" not in body


def test_tool_calls_become_function_calls_and_tool_results_function_responses() -> None:
    body = sent(
        {
            "messages": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 18}'},
                {"role": "tool", "tool_call_id": "call_b", "content": "14:05"},
            ]
        }
    )
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            # Parallel results are one turn; the name comes from the call the id names, and a result that is
            # not a JSON object is wrapped in one.
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}},
            ],
        },
    ]


def test_a_thought_signature_on_a_tool_call_goes_back_on_its_function_call() -> None:
    completion = ADAPTER.completion(fixture("generate_tool_calls.json"))
    message = completion["choices"][0]["message"]
    first, second = message["tool_calls"]
    assert first["extra_content"] == {"google": {"thought_signature": "CiQBVKhc7g3PaHVVFsR9fHD5v0n7d1cM"}}
    assert "extra_content" not in second
    # The client sends the message back as it got it (with the results): the signature is on its call.
    body = sent(
        {
            "messages": [
                {"role": "user", "content": "Weather and time in Paris?"},
                message,
                {"role": "tool", "tool_call_id": first["id"], "content": "{}"},
                {"role": "tool", "tool_call_id": second["id"], "content": "{}"},
            ]
        }
    )
    model_parts = body["contents"][1]["parts"]
    assert model_parts[0]["thoughtSignature"] == "CiQBVKhc7g3PaHVVFsR9fHD5v0n7d1cM"
    assert "thoughtSignature" not in model_parts[1]
    assert [p["functionResponse"]["name"] for p in body["contents"][2]["parts"]] == [
        "get_weather",
        "get_time",
    ]


def _unsigned_history(model: str) -> Any:
    def calls(*names: str) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": f"c_{n}", "type": "function", "function": {"name": n, "arguments": "{}"}}
                for n in names
            ],
        }

    signed = calls("signed")
    signed["tool_calls"][0]["extra_content"] = {"google": {"thought_signature": "CiQBVKhc7g3P"}}
    messages = [
        {"role": "user", "content": "look around"},
        calls("ls", "pwd"),  # parallel calls whose signature the client dropped (Messages, Responses)
        {"role": "tool", "tool_call_id": "c_ls", "content": "a b"},
        {"role": "tool", "tool_call_id": "c_pwd", "content": "/"},
        signed,
        {"role": "tool", "tool_call_id": "c_signed", "content": "ok"},
    ]
    return [
        c["parts"] for c in sent({"model": model, "messages": messages})["contents"] if c["role"] == "model"
    ]


@pytest.mark.parametrize("model", ["gemini-3-flash-preview", "gemini-3.1-pro-preview", "gemini-flash-latest"])
def test_a_step_of_unsigned_calls_gets_googles_dummy_signature_on_its_first_call(model: str) -> None:
    # Gemini 3 refuses a current-turn functionCall without a signature (400 "Function call is missing a
    # thought_signature"); Google's documented dummy skips the check. Parallel calls carry one, on the
    # first; a real signature is kept as it came.
    unsigned, signed = _unsigned_history(model)
    assert [p.get("thoughtSignature") for p in unsigned] == ["skip_thought_signature_validator", None]
    assert [p.get("thoughtSignature") for p in signed] == ["CiQBVKhc7g3P"]


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-2.0-flash", "gemma-3-27b-it"])
def test_families_that_never_check_signatures_get_no_dummy(model: str) -> None:
    unsigned, signed = _unsigned_history(model)
    assert [p.get("thoughtSignature") for p in unsigned] == [None, None]
    assert [p.get("thoughtSignature") for p in signed] == ["CiQBVKhc7g3P"]


def test_made_up_call_ids_are_unique_per_answer_and_distinct_within_it() -> None:
    # Gemini's calls have no id: ids from the position alone (call_0_0) would repeat every turn, and an
    # agent's history would hold one id for two calls.
    answers = [ADAPTER.completion(fixture("generate_tool_calls.json")) for _ in range(2)]
    ids = [[c["id"] for c in a["choices"][0]["message"]["tool_calls"]] for a in answers]
    assert len(set(ids[0])) == 2 and not set(ids[0]) & set(ids[1])
    first, second = fixture("stream_tool_calls_split.sse").split(b"\r\n\r\n")[:2]
    streams = []
    for parser in (ADAPTER.stream_frames(), ADAPTER.stream_frames()):
        frames = [parser.frame(f.removeprefix(b"data: ")) for f in (first, second)]
        streams.append([c["id"] for f in frames if f for c in f.obj["choices"][0]["delta"]["tool_calls"]])
    assert len(set(streams[0])) == 2 and not set(streams[0]) & set(streams[1])
    # Within one stream the calls share the answer's prefix: one answer, one id family.
    assert len({i.rsplit("_", 2)[0] for i in streams[0]}) == 1


def test_gemma_gets_its_system_messages_inlined_in_the_first_user_turn() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    body = sent({"model": "gemma-3-27b-it", "messages": messages})
    assert "systemInstruction" not in body
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Be brief."}, {"text": "hi"}]}]
    alone = sent({"model": "gemma-3-27b-it", "messages": messages[:1]})
    assert alone["contents"] == [{"role": "user", "parts": [{"text": "Be brief."}]}]


def test_images_become_inline_data_or_file_data() -> None:
    body = sent(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?x=1"}},
                    ],
                }
            ]
        }
    )
    assert body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?x=1"}},
    ]


def test_tools_become_function_declarations_without_the_keywords_gemini_rejects() -> None:
    parameters = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "City name", "default": "Paris"},
            # A property may be called like a keyword: its name stays.
            "default": {"type": ["integer", "null"], "exclusiveMinimum": 0},
            "tags": {
                "type": "array",
                "items": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "mode": {"oneOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "integer", "const": 1}]},
        },
        "required": ["city"],
    }
    body = sent(
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "description": "Weather", "parameters": parameters},
                },
                {
                    "type": "function",
                    "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
                },
            ]
        }
    )
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "City name"},
                            "default": {"type": "integer", "nullable": True},
                            "tags": {"type": "array", "items": {"type": "object"}},
                            "mode": {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "integer"}]},
                        },
                        "required": ["city"],
                    },
                },
                {"name": "now"},  # no arguments: no parameters (an empty object schema is rejected)
            ]
        }
    ]


def test_clean_schema_leaves_what_gemini_accepts_alone() -> None:
    schema = {"type": "string", "enum": ["x"], "description": "d", "format": "date-time", "maxLength": 3}
    assert clean_schema(schema) == schema


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("none", {"mode": "NONE"}),
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_becomes_the_function_calling_config(choice: Any, config: dict[str, Any]) -> None:
    assert sent({"tool_choice": choice})["toolConfig"] == {"functionCallingConfig": config}


def test_sampling_parameters_become_the_generation_config() -> None:
    body = sent({"max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": "END", "seed": 7})
    assert body["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.2,
        "topP": 0.9,
        "seed": 7,
        "stopSequences": ["END"],
    }
    both = sent({"max_completion_tokens": 10, "max_tokens": 99, "stop": ["a", "b"]})
    assert both["generationConfig"] == {"maxOutputTokens": 10, "stopSequences": ["a", "b"]}


def test_a_json_schema_response_format_asks_for_json_with_the_cleaned_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    body = sent({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }


# ---- whole answers -----------------------------------------------------------------------------------------


def test_a_text_answer_is_a_chat_completion_with_its_usage() -> None:
    completion = ADAPTER.completion(fixture("generate_text.json"))
    assert completion["object"] == "chat.completion"
    assert completion["id"] == "chatcmpl-mO4uaLjTKZ6vz7IPlpf1uAQ"
    assert completion["model"] == "gemini-2.0-flash"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ]
    assert completion["usage"] == {"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17}
    verdict = judge_completion(completion, None)
    assert isinstance(verdict, Answered)
    assert (verdict.usage.input_tokens, verdict.usage.output_tokens) == (8, 9)


def test_function_calls_are_tool_calls_and_finish_as_tool_calls() -> None:
    completion = ADAPTER.completion(fixture("generate_tool_calls.json"))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert msgspec.json.decode(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert all(c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == 2  # distinct ids, so each result finds its call
    # Thinking tokens are output tokens: they are billed and count against the output quota.
    assert completion["usage"] == {"prompt_tokens": 71, "completion_tokens": 89, "total_tokens": 160}
    assert isinstance(judge_completion(completion, None), Answered)


def test_max_tokens_is_length_and_truncated_when_the_client_set_no_limit() -> None:
    completion = ADAPTER.completion(fixture("generate_max_tokens.json"))
    assert completion["choices"][0]["finish_reason"] == "length"
    verdict = judge_completion(completion, None)
    assert isinstance(verdict, Failed) and verdict.kind == FailureKind.TRUNCATED
    assert isinstance(judge_completion(ADAPTER.completion(fixture("generate_max_tokens.json")), 10), Answered)


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"])
def test_a_filtered_finish_is_content_filter(reason: str) -> None:
    raw = fixture("generate_safety.json").replace(b'"SAFETY"', f'"{reason}"'.encode())
    completion = ADAPTER.completion(raw)
    assert completion["choices"][0]["finish_reason"] == "content_filter"
    verdict = judge_completion(completion, None)
    assert isinstance(verdict, Failed) and verdict.kind == FailureKind.EMPTY


def test_a_blocked_prompt_is_an_empty_filtered_answer() -> None:
    completion = ADAPTER.completion(fixture("generate_prompt_blocked.json"))
    assert completion["choices"][0]["finish_reason"] == "content_filter"
    verdict = judge_completion(completion, None)
    assert isinstance(verdict, Failed) and verdict.kind == FailureKind.EMPTY


def test_thought_parts_are_reasoning_not_content() -> None:
    completion = ADAPTER.completion(fixture("generate_thinking.json"))
    message = completion["choices"][0]["message"]
    assert message["content"] == "2 + 2 = 4."
    assert message["reasoning_content"].startswith("**Adding the numbers**")
    assert completion["usage"]["completion_tokens"] == 31


def test_an_unreadable_answer_is_none_and_a_root_error_is_a_wrapped_failure() -> None:
    assert ADAPTER.completion(b"<html>oops</html>") is None
    assert ADAPTER.completion(b"") is None
    verdict = judge_completion(ADAPTER.completion(fixture("error_503_unavailable.json")), None)
    assert isinstance(verdict, Failed) and verdict.kind == FailureKind.SERVER_ERROR


# ---- streams -----------------------------------------------------------------------------------------------


async def _pieces(raw: bytes, size: int) -> AsyncGenerator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i : i + size]


async def relay(name: str, client_max_tokens: int | None = None) -> tuple[list[Any], Answered | Failed]:
    """The fixture's SSE body through the transport's frame splitter, the adapter and the stream judge, as
    the attempt runs it (Gemini sends no `[DONE]`: the body's end is the stream's)."""
    judge, parser = StreamJudge(client_max_tokens, keep_reply=True), ADAPTER.stream_frames()
    out: list[Any] = []
    async for payload in data_frames(_pieces(fixture(name), 7)):
        verdict = judge.feed(parser.frame(payload))
        assert not isinstance(verdict, Failed)
        for chunk in verdict or ():
            assert msgspec.json.decode(chunk.raw) == chunk.obj
            out.append(chunk.obj)
    return out, judge.end(False)


async def test_a_text_stream_is_chat_chunks_with_the_usage_on_the_last() -> None:
    chunks, end = await relay("stream_text.sse")
    assert isinstance(end, Answered)
    assert end.usage.input_tokens == 7 and end.usage.output_reported == 11
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["id"] for c in chunks} == {"chatcmpl-1O8uaKuYDpmDz7IPgL3nqQY"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "The sky is blue because of Rayleigh scattering."
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert ["usage" in c for c in chunks] == [False, False, True]


async def test_streamed_function_calls_are_tool_call_deltas_with_an_index() -> None:
    chunks, end = await relay("stream_tool_calls.sse")
    assert isinstance(end, Answered)
    (chunk,) = chunks
    choice = chunk["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert "content" not in choice["delta"]
    calls = choice["delta"]["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert [msgspec.json.decode(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert end.usage.output_reported == 56
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "CiQBVKhc7g3PaHVVFsR9fHD5v0n7d1cM"}}


async def test_function_calls_in_separate_frames_are_numbered_across_the_stream() -> None:
    # Each frame holds whole functionCall parts; the second call comes in a later frame and must be the
    # second tool call (index 1, its own id), or a client merges its name and arguments into the first.
    chunks, end = await relay("stream_tool_calls_split.sse")
    assert isinstance(end, Answered)
    calls = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(t["index"], t["function"]["name"]) for t in calls] == [(0, "get_weather"), (1, "get_time")]
    assert len({t["id"] for t in calls}) == 2
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "tool_calls"]


def test_each_stream_gets_its_own_parser_and_counts_from_zero() -> None:
    first, second = fixture("stream_tool_calls_split.sse").split(b"\r\n\r\n")[:2]
    parser = ADAPTER.stream_frames()
    assert parser is not ADAPTER.stream_frames()
    indexes = []
    for p in (parser, parser, ADAPTER.stream_frames()):
        chunk = p.frame((first if not indexes else second).removeprefix(b"data: "))
        assert chunk is not None
        indexes.append(chunk.obj["choices"][0]["delta"]["tool_calls"][0]["index"])
    assert indexes == [0, 1, 0]
    chunk = ADAPTER.frame(second.removeprefix(b"data: "))  # one frame alone: the first of its stream
    assert chunk is not None and chunk.obj["choices"][0]["delta"]["tool_calls"][0]["index"] == 0


async def test_an_error_frame_after_content_ends_the_stream_honestly() -> None:
    judge, parser = StreamJudge(None, keep_reply=False), ADAPTER.stream_frames()
    verdicts = [
        judge.feed(parser.frame(p))
        async for p in data_frames(_pieces(fixture("stream_error_midway.sse"), 64))
    ]
    assert isinstance(verdicts[0], list) and verdicts[0]  # the content went out
    failed = verdicts[-1]
    assert isinstance(failed, Failed)
    assert (failed.kind, failed.status, failed.after_content) == (FailureKind.SERVER_ERROR, 500, True)
    assert failed.message.startswith("wrapped error: An internal error has occurred")


async def test_a_stream_cut_before_its_finish_is_an_honest_failure() -> None:
    raw = fixture("stream_text.sse")
    cut = raw[: raw.rindex(b"data:")]  # the last frame, the one with the finish, never came
    judge = StreamJudge(None, keep_reply=False)
    async for payload in data_frames(_pieces(cut, 64)):
        judge.feed(ADAPTER.frame(payload))
    end = judge.end(False)
    assert isinstance(end, Failed) and end.kind == FailureKind.CONNECT and end.after_content


def test_an_error_frame_is_a_wrapped_failure_and_junk_carries_nothing() -> None:
    judge = StreamJudge(None, keep_reply=False)
    verdict = judge.feed(ADAPTER.frame(fixture("error_503_unavailable.json")))
    assert isinstance(verdict, Failed) and verdict.kind == FailureKind.SERVER_ERROR
    assert ADAPTER.frame(b"not json") is None
    assert ADAPTER.frame(b"[1, 2]") is None


# ---- errors ------------------------------------------------------------------------------------------------


def test_resource_exhausted_is_rate_limited_for_exactly_the_retry_delay() -> None:
    failed = ADAPTER.error(429, {"retry-after": "5"}, fixture("error_429_retry.json"), NOW)
    assert failed.kind == FailureKind.RATE_LIMITED
    assert failed.retry_after_s == 17.0  # RetryInfo over a header: it is the quota's own word
    assert failed.status == 429
    assert failed.message.startswith("You exceeded your current quota")


def test_a_fractional_retry_delay_is_kept_and_a_missing_one_falls_back_to_the_headers() -> None:
    raw = fixture("error_429_retry.json").replace(b'"17s"', b'"0.5s"')
    assert ADAPTER.error(429, {}, raw, NOW).retry_after_s == 0.5
    bare = b'{"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}}'
    assert ADAPTER.error(429, {"retry-after": "9"}, bare, NOW).retry_after_s == 9.0
    assert ADAPTER.error(429, {}, bare, NOW).retry_after_s is None


def test_a_quota_with_limit_zero_means_the_key_has_no_access_to_the_model() -> None:
    failed = ADAPTER.error(429, {}, fixture("error_429_limit_zero.json"), NOW)
    assert failed.kind == FailureKind.FORBIDDEN  # the long key x model cooldown, not a retry in 42 s
    assert failed.message.startswith("this key has no access to model gemini-2.5-pro (its Gemini quota limit")
    assert failed.retry_after_s is None


def test_a_zero_quota_value_is_a_limit_of_zero_too_but_a_real_limit_is_not() -> None:
    raw = fixture("error_429_retry.json")
    assert ADAPTER.error(429, {}, raw.replace(b'"quotaValue": "15"', b'"quotaValue": "0"'), NOW).kind == (
        FailureKind.FORBIDDEN
    )
    assert ADAPTER.error(429, {}, raw.replace(b"rate-limits.", b"rate-limits, limit: 0.5"), NOW).kind == (
        FailureKind.RATE_LIMITED
    )


@pytest.mark.parametrize(
    ("status", "name", "kind"),
    [
        (503, "error_503_unavailable.json", FailureKind.SERVER_ERROR),
        (500, "error_500_internal_array.json", FailureKind.SERVER_ERROR),
        (400, "error_400_invalid_argument.json", FailureKind.BAD_REQUEST),
        (400, "error_400_api_key_invalid.json", FailureKind.AUTH),
        (403, "error_403_permission_denied.json", FailureKind.AUTH),
        (400, "error_400_context.json", FailureKind.CONTEXT_EXCEEDED),
        (404, "error_404_not_found.json", FailureKind.MODEL_MISSING),
        (401, "error_401_unauthenticated.json", FailureKind.AUTH),
    ],
)
def test_each_error_status_is_its_failure_kind(status: int, name: str, kind: FailureKind) -> None:
    failed = ADAPTER.error(status, {}, fixture(name), NOW)
    assert (failed.kind, failed.status) == (kind, status)
    assert failed.message and "\n" not in failed.message


def test_an_error_body_that_is_not_json_is_classified_by_its_status() -> None:
    failed = ADAPTER.error(502, {}, b"<html>\n<body>Bad Gateway</body></html>", NOW)
    assert failed.kind == FailureKind.SERVER_ERROR
    assert failed.message == "<html> <body>Bad Gateway</body></html>"
    assert ADAPTER.error(401, {}, b"", NOW).kind == FailureKind.AUTH


# ---- the key check's answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "read_as"),
    [
        (400, "error_400_api_key_invalid.json", 401),  # Google's bad key: a 400 whose reason says so
        (400, "error_400_invalid_argument.json", 400),  # any other 400 is no verdict on the key
        (403, "error_403_permission_denied.json", 403),
        (429, "error_429_retry.json", 429),
        (503, "error_503_unavailable.json", 503),
    ],
)
def test_a_key_check_s_answer_says_bad_key_only_when_google_does(
    status: int, name: str, read_as: int
) -> None:
    assert ADAPTER.key_check_status(status, fixture(name)) == read_as


def test_a_key_check_s_answer_without_a_readable_body_is_its_status() -> None:
    assert ADAPTER.key_check_status(200, b'{"models": []}') == 200
    assert ADAPTER.key_check_status(400, b"<html>Bad Request</html>") == 400
    assert ADAPTER.key_check_status(400, b"") == 400
