"""The HTTP edge's request parsing: what it accepts, what it strips, what it refuses."""

from __future__ import annotations

import msgspec
import pytest

from service.chat_completions import parse_chat_request
from service.edge import BadRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def parse(**body: object) -> object:
    return parse_chat_request(msgspec.json.encode({"messages": MESSAGES, **body}), "req_1")


def test_a_virtual_model_with_a_models_list_keeps_its_mode() -> None:
    req = parse(model="auto-smart", models=["groq/a", "cerebras/b"])
    assert req.requested == ("auto-smart", "groq/a", "cerebras/b")
    assert "models" not in req.body  # gateway-only: never sent to a provider


def test_a_concrete_model_with_a_models_list_goes_first() -> None:
    assert parse(model="groq/a", models=["cerebras/b"]).requested == ("groq/a", "cerebras/b")


def test_model_defaults_to_auto_and_fallback_is_stripped() -> None:
    req = parse(fallback=False)
    assert (req.requested, req.use_chain, "fallback" in req.body) == (("auto",), False, False)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": MESSAGES, "models": []}, "models"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ],
)
def test_bad_fields_are_named(body: dict, param: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_chat_request(msgspec.json.encode(body), "req_1")
    assert err.value.param == param


def test_an_empty_session_header_is_refused() -> None:
    with pytest.raises(BadRequest):
        parse_chat_request(msgspec.json.encode({"messages": MESSAGES}), "req_1", "  ")


def test_provider_text_loses_the_key_and_any_piece_of_it() -> None:
    from service.upstream import redact

    secret = "gsk_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    text = f"Invalid API key {secret}; you sent gsk_ABCDEFGH...2345 and again {secret}"
    cleaned = redact(secret, text)
    assert secret not in cleaned and "gsk_ABCDEFGH" not in cleaned
    assert cleaned.startswith("Invalid API key [redacted];")
    assert redact(secret, "nothing to hide") == "nothing to hide"


def test_a_short_secret_is_hidden_as_a_word_without_mangling_the_rest() -> None:
    # A 1-character key was replaced inside every word: "incomplete chun[redacted]ed read".
    from service.upstream import redact

    assert (
        redact("k", "incomplete chunked read; key k rejected")
        == "incomplete chunked read; key [redacted] rejected"
    )
    assert redact("sk-1", "bad key sk-1, not ask-12") == "bad key [redacted], not ask-12"


def test_invalid_utf8_inside_a_string_is_a_400_not_a_500() -> None:
    raw = b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'
    with pytest.raises(BadRequest, match="not valid UTF-8") as caught:
        parse_chat_request(raw, "r1")
    assert caught.value.code == "invalid_json"


def test_model_names_stored_in_the_log_are_bounded() -> None:
    # A 20 MB `model` was stored in the log and echoed back whole.
    with pytest.raises(BadRequest, match="at most 256") as caught:
        parse_chat_request(
            b'{"model": "' + b"m" * 300 + b'", "messages": [{"role": "user", "content": "hi"}]}', "r"
        )
    assert (caught.value.param, caught.value.code) == ("model", "invalid_value")
    many = b'{"models": [' + b",".join([b'"m"'] * 33) + b'], "messages": [{"role": "user", "content": "hi"}]}'
    with pytest.raises(BadRequest, match="at most 32 model ids"):
        parse_chat_request(many, "r")
    ok = parse_chat_request(
        b'{"model": "' + b"m" * 256 + b'", "messages": [{"role": "user", "content": "x"}]}', "r"
    )
    assert ok.requested == ("m" * 256,)
