"""The error taxonomy (DESIGN.md section 5) as pure functions: status to kind, wrapped errors, messages and
how long a rate limit lasts."""

from __future__ import annotations

import email.utils
import math

import pytest

from events.failures import MODEL_FAULTS, TRAITS, FailureKind, traits
from events.taxonomy import (
    error_message,
    kind_for_status,
    retry_after_s,
    wrapped_error,
)

# -- kind_for_status: one row of the taxonomy table each


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "rate_limited"),
        (401, "auth"),
        (403, "auth"),
        (404, "model_missing"),
        (413, "context_exceeded"),
        (400, "bad_request"),
        (422, "bad_request"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_kind_for_status(status: int, kind: str) -> None:
    assert kind_for_status(status) == kind
    assert kind_for_status(status, {}) == kind


@pytest.mark.parametrize(
    "error",
    [
        {"code": "context_length_exceeded", "message": "too long"},
        {"message": "This model's maximum context length is 8192 tokens."},
        {"message": "Please reduce the length: the CONTEXT WINDOW is exceeded"},
        {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"},
        {"message": "Input is too long for requested model."},
        {"message": "Request has too many tokens"},
    ],
)
def test_400_with_a_context_length_error_is_context_exceeded(error: dict[str, str]) -> None:
    assert kind_for_status(400, error) == "context_exceeded"


@pytest.mark.parametrize(
    "error",
    [None, {}, {"message": "messages[0].role is not valid"}, {"code": "invalid_value", "type": "bad"}],
)
def test_plain_400_is_bad_request(error: dict[str, str] | None) -> None:
    assert kind_for_status(400, error) == "bad_request"


def test_a_context_message_does_not_change_other_statuses() -> None:
    context = {"code": "context_length_exceeded"}
    assert kind_for_status(422, context) == "bad_request"
    assert kind_for_status(429, context) == "rate_limited"
    assert kind_for_status(500, context) == "server_error"
    assert kind_for_status(413, None) == "context_exceeded"


RETRYABLE = frozenset(k for k, t in TRAITS.items() if t.retry == "yes")


def test_retryable_and_model_fault_sets_follow_the_table() -> None:
    assert "bad_request" not in RETRYABLE
    assert "client_abort" not in RETRYABLE
    assert "stall_mid" not in RETRYABLE  # no: the stream ends with an error event
    assert {"connect", "server_error", "rate_limited", "auth", "stall_pre"} <= RETRYABLE
    # A client going away, a rate limit or a bad key say nothing about the model.
    assert not {"client_abort", "rate_limited", "auth", "bad_request"} & MODEL_FAULTS
    assert {"connect", "server_error", "stall_pre", "stall_mid"} <= MODEL_FAULTS


# -- wrapped_error


def test_wrapped_error_with_a_numeric_code_takes_that_status() -> None:
    error = {"code": 429, "message": "Rate limit exceeded"}
    assert wrapped_error({"error": error}) == (429, error)


def test_wrapped_error_with_a_numeric_string_code_takes_that_status() -> None:
    assert wrapped_error({"error": {"code": "503", "message": "busy"}}) == (
        503,
        {"code": "503", "message": "busy"},
    )


def test_wrapped_error_falls_back_to_a_numeric_status_field() -> None:
    status, _ = wrapped_error({"error": {"status": 401, "message": "bad key"}})  # type: ignore[misc]
    assert status == 401


@pytest.mark.parametrize(
    "error",
    [
        {"code": "rate_limit_exceeded", "message": "slow down"},  # a string code
        {"code": 200, "message": "odd"},  # a success code is not a failure status
        {"code": 302},
        {"code": 999},
        {"message": "no code at all"},
        {"status": "RESOURCE_EXHAUSTED", "message": "Gemini style status name"},
        {"code": None},
    ],
)
def test_wrapped_error_without_an_error_status_counts_as_502(error: dict[str, object]) -> None:
    assert wrapped_error({"error": error}) == (502, error)


def test_wrapped_error_as_a_string_becomes_its_message() -> None:
    assert wrapped_error({"error": "upstream exploded"}) == (502, {"message": "upstream exploded"})


def test_kind_of_a_wrapped_error_follows_its_status() -> None:
    status, error = wrapped_error({"error": {"code": 400, "message": "maximum context length is 4096"}})  # type: ignore[misc]
    assert kind_for_status(status, error) == "context_exceeded"


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "c1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]},
        {"choices": [{"delta": {"content": "x"}}], "error": {"code": 500, "message": "ignored"}},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        [{"error": {"code": 500}}],
        "error",
        None,
        {},
    ],
)
def test_not_wrapped(payload: object) -> None:
    assert wrapped_error(payload) is None


def test_a_null_error_field_is_not_an_error() -> None:
    # A final usage frame with an explicit `"error": null` is a normal frame, not a failure.
    assert wrapped_error({"choices": [], "usage": {"completion_tokens": 2}, "error": None}) is None


# -- error_message


def test_error_message_is_one_line() -> None:
    assert error_message({"message": "  line one\n\tline   two\r\n"}, "fallback") == "line one line two"


def test_error_message_is_bounded() -> None:
    message = error_message({"message": "x" * 500}, "fallback", limit=50)
    assert len(message) == 50
    assert message == "x" * 49 + "…"
    exactly = "y" * 50
    assert error_message({"message": exactly}, "fallback", limit=50) == exactly
    assert len(error_message({"message": "z" * 1000}, "fallback")) == 200


@pytest.mark.parametrize("error", [None, {}, {"message": ""}, {"message": " \n "}, {"code": 500}])
def test_error_message_falls_back_when_there_is_no_message(error: dict[str, object] | None) -> None:
    assert error_message(error, "HTTP 500") == "HTTP 500"


def test_error_message_stringifies_a_non_string_message() -> None:
    assert error_message({"message": ["a", "b"]}, "fallback") == "['a', 'b']"


# -- retry_after_s

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("30", 30.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("-5", 0.0)]
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert retry_after_s({"retry-after": value}, NOW) == seconds


def test_retry_after_as_an_http_date() -> None:
    date = email.utils.formatdate(NOW + 120, usegmt=True)
    assert retry_after_s({"retry-after": date}, NOW) == pytest.approx(120.0)


def test_retry_after_as_a_past_http_date_is_zero() -> None:
    date = email.utils.formatdate(NOW - 3600, usegmt=True)
    assert retry_after_s({"retry-after": date}, NOW) == 0.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("12", 12.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("2m59.56s", 179.56),
        ("1h", 3600.0),
        ("1h2m3s", 3723.0),
        ("1m", 60.0),
        (" 2S ", 2.0),
    ],
)
def test_reset_header_forms(value: str, seconds: float) -> None:
    assert retry_after_s({"x-ratelimit-reset-requests": value}, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "5x", "s", "1m30", "ms", "10 s", "1,5s"])
def test_garbage_reset_header_is_ignored(value: str) -> None:
    assert retry_after_s({"x-ratelimit-reset-requests": value}, NOW) is None


@pytest.mark.parametrize("value", ["1.2.3s", ".s", "1..5m"])
def test_garbage_reset_header_with_bad_numbers_is_ignored(value: str) -> None:
    assert retry_after_s({"x-ratelimit-reset-requests": value}, NOW) is None


def test_reset_headers_in_order_requests_then_tokens_then_plain() -> None:
    headers = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "7s", "x-ratelimit-reset": "9"}
    assert retry_after_s(headers, NOW) == 2.0
    assert retry_after_s({"x-ratelimit-reset-tokens": "7s", "x-ratelimit-reset": "9"}, NOW) == 7.0
    assert retry_after_s({"x-ratelimit-reset": "9"}, NOW) == 9.0
    # An unreadable header does not hide a readable one after it.
    assert (
        retry_after_s({"x-ratelimit-reset-requests": "later", "x-ratelimit-reset-tokens": "3s"}, NOW) == 3.0
    )


def test_retry_after_wins_over_reset_headers() -> None:
    assert retry_after_s({"retry-after": "4", "x-ratelimit-reset-requests": "60s"}, NOW) == 4.0


def test_garbage_retry_after_falls_back_to_reset_headers() -> None:
    assert retry_after_s({"retry-after": "whenever", "x-ratelimit-reset-tokens": "250ms"}, NOW) == 0.25
    assert retry_after_s({"retry-after": "whenever"}, NOW) is None
    assert retry_after_s({"retry-after": ""}, NOW) is None


def test_no_headers_no_wait() -> None:
    assert retry_after_s({}, NOW) is None
    assert retry_after_s({"content-type": "application/json"}, NOW) is None


@pytest.mark.parametrize("value", [str(int(NOW + 30)), str(int((NOW + 30) * 1000))])
def test_an_epoch_reset_header_is_not_a_wait_of_decades(value: str) -> None:
    wait = retry_after_s({"x-ratelimit-reset": value}, NOW)
    assert wait is None or wait <= 86_400


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999"])
def test_a_non_finite_retry_after_is_not_a_wait(value: str) -> None:
    wait = retry_after_s({"retry-after": value}, NOW)
    assert wait is None or math.isfinite(wait)


def test_every_kind_has_traits_and_unknown_kinds_decode_harmlessly() -> None:
    assert set(TRAITS) == set(FailureKind)
    unknown = traits("a_kind_from_a_newer_build")
    assert not (unknown.model_fault or unknown.transient or unknown.protected)


def test_a_stall_before_the_first_byte_skips_the_model_not_just_the_key() -> None:
    assert traits(FailureKind.STALL_PRE).skips_model
    assert not traits(FailureKind.CONNECT).skips_model  # a reset may be one key's connection
    assert traits(FailureKind.FORBIDDEN).scope == "key_model"
    assert traits(FailureKind.AUTH).scope == "key"
