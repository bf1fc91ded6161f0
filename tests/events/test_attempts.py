"""The attempt loop's decisions with no I/O (events/attempts.py): what the next decision must avoid after a
failed attempt (`learn`), when the loop stops and how the request ends (`AttemptLoop`), and the error a
client gets when no attempt answered (`final_failure`)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from builders import model
from hypothesis import given
from hypothesis import strategies as st

from events.attempts import MAX_LISTED, AttemptLoop, Completion, Failure, Tried, final_failure, learn
from events.catalog import CatalogModel
from events.decide import Decision
from events.failures import TRAITS, FailureKind
from events.outcomes import Failed, Failing, Stalled
from events.sessions import NO_ACTION, Protection
from events.types import Excluded, ExclusionCode, RouteInput
from events.view import POOL_REASON

NOW = 1_700_000_000.0

LLAMA = model("groq", "llama", context_window=8_000)
MIXTRAL = model("groq", "mixtral", context_window=32_000)
QWEN = model("cerebras", "qwen", context_window=128_000)
UNSIZED = model("mistral", "small")  # no known context window

ROUTE = RouteInput(mode="auto", requested=("auto",), est_tokens=100, reserve_tokens=1000)
SKIP = Protection(ban_platform=False, skip_model=True, clear_pin=True, reason="model-skip: server_error")
BAN = Protection(ban_platform=True, skip_model=True, clear_pin=True, reason="provider-ban: server_error")


def failed(kind: FailureKind, message: str = "boom", status: int | None = None, **kw: Any) -> Failed:
    return Failed(kind, message, status, **kw)


def decision(
    *excluded: Excluded,
    chosen: CatalogModel | None = None,
    no_key: int = 0,
    named: tuple[str, ...] = (),
    named_no_key: tuple[str, ...] = (),
) -> Decision:
    return Decision(
        ranked=(),
        excluded=excluded,
        chosen=chosen,
        chosen_key="k" if chosen else None,
        candidates_total=0,
        no_key_models=no_key,
        named_refs=named,
        named_no_key=named_no_key,
    )


def excl(ref: str, code: ExclusionCode, reason: str | None = None, until: float | None = None) -> Excluded:
    return Excluded(ref=ref, reason=reason or f"{code} reason", until=until, code=code)


# ---- learn: what the next decision of this request must avoid -----------------------------------------


def test_every_failure_adds_the_key_and_model_to_tried() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.CONNECT), NO_ACTION)
    assert route.tried == (("g1", "groq/llama"),)
    route = learn(route, LLAMA, "g2", failed(FailureKind.SERVER_ERROR, status=503), NO_ACTION)
    route = learn(route, QWEN, "c1", failed(FailureKind.RATE_LIMITED, status=429), NO_ACTION)
    assert route.tried == (("g1", "groq/llama"), ("g2", "groq/llama"), ("c1", "cerebras/qwen"))


@pytest.mark.parametrize(
    "kind",
    [
        FailureKind.CONNECT,
        FailureKind.SERVER_ERROR,
        FailureKind.RATE_LIMITED,
        FailureKind.AUTH,
        FailureKind.FORBIDDEN,
        FailureKind.TRUNCATED,
        FailureKind.EMPTY,
        FailureKind.STALL_MID,
    ],
)
def test_an_unprotected_failure_of_one_key_leaves_the_models_other_keys(kind: FailureKind) -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(kind), NO_ACTION)
    assert route == msgspec.structs.replace(ROUTE, tried=(("g1", "groq/llama"),))


def test_a_stall_before_the_first_byte_skips_the_models_other_keys() -> None:
    out = Stalled("pre", "groq/llama sent no first byte within 5s", 5.0)
    route = learn(ROUTE, LLAMA, "g1", out, NO_ACTION)
    assert route.skip_models == (("groq/llama", "groq/llama sent no first byte within 5s"),)
    assert route.skip_platforms == ()


def test_a_stall_mid_stream_does_not_skip_the_model_by_itself() -> None:
    route = learn(ROUTE, LLAMA, "g1", Stalled("mid", "stopped sending", 5.0), NO_ACTION)
    assert route.skip_models == ()


def test_a_missing_model_skips_the_model() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.MODEL_MISSING, "model not found", 404), NO_ACTION)
    assert route.skip_models == (("groq/llama", "the provider said the model does not exist"),)


def test_a_context_error_asks_for_a_larger_window_than_the_models() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.CONTEXT_EXCEEDED, status=413), NO_ACTION)
    assert route.min_context == 8_000
    route = learn(route, QWEN, "c1", failed(FailureKind.CONTEXT_EXCEEDED, status=400), NO_ACTION)
    assert route.min_context == 128_000


def test_a_context_error_never_lowers_the_window_asked_for() -> None:
    route = msgspec.structs.replace(ROUTE, min_context=32_000)
    route = learn(route, LLAMA, "g1", failed(FailureKind.CONTEXT_EXCEEDED), NO_ACTION)
    assert route.min_context == 32_000
    route = learn(route, UNSIZED, "m1", failed(FailureKind.CONTEXT_EXCEEDED), NO_ACTION)
    assert route.min_context == 32_000


def test_a_context_error_of_a_model_with_no_known_window_asks_for_any_known_window() -> None:
    route = learn(ROUTE, UNSIZED, "m1", failed(FailureKind.CONTEXT_EXCEEDED), NO_ACTION)
    assert route.min_context == 0


def test_other_failures_leave_the_window_alone() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.SERVER_ERROR), NO_ACTION)
    assert route.min_context is None


def test_a_bad_request_skips_the_platform() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.BAD_REQUEST, "tools not supported", 400), NO_ACTION)
    assert route.skip_platforms == (("groq", "rejected the request: tools not supported"),)
    assert route.skip_models == ()


def test_model_skip_protection_skips_the_model_for_the_request() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.SERVER_ERROR), SKIP)
    assert route.skip_models == (("groq/llama", "model-skip: server_error"),)
    assert route.skip_platforms == ()


def test_provider_ban_protection_skips_the_platform_and_the_model() -> None:
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.SERVER_ERROR), BAN)
    assert route.skip_models == (("groq/llama", "provider-ban: server_error"),)
    assert route.skip_platforms == (("groq", "provider-ban: server_error"),)


def test_a_ban_without_a_model_skip_bans_only_the_platform() -> None:
    ban_only = Protection(ban_platform=True, skip_model=False, clear_pin=False, reason="ban")
    route = learn(ROUTE, LLAMA, "g1", failed(FailureKind.SERVER_ERROR), ban_only)
    assert (route.skip_models, route.skip_platforms) == ((), (("groq", "ban"),))


def test_a_stall_under_protection_is_skipped_for_both_reasons() -> None:
    out = Stalled("pre", "no first byte", 5.0)
    route = learn(ROUTE, LLAMA, "g1", out, SKIP)
    assert route.skip_models == (("groq/llama", "no first byte"), ("groq/llama", "model-skip: server_error"))


def test_learn_keeps_what_the_route_already_avoids() -> None:
    before = msgspec.structs.replace(
        ROUTE,
        tried=(("c1", "cerebras/qwen"),),
        skip_models=(("cerebras/qwen", "earlier"),),
        skip_platforms=(("cerebras", "earlier"),),
        min_context=4_000,
        session="c-abc",
        use_pin=True,
    )
    route = learn(before, LLAMA, "g1", failed(FailureKind.BAD_REQUEST), BAN)
    assert route.tried == (("c1", "cerebras/qwen"), ("g1", "groq/llama"))
    assert route.skip_models == (("cerebras/qwen", "earlier"), ("groq/llama", "provider-ban: server_error"))
    assert route.skip_platforms == (
        ("cerebras", "earlier"),
        ("groq", "rejected the request: boom"),
        ("groq", "provider-ban: server_error"),
    )
    assert (route.min_context, route.session, route.use_pin) == (4_000, "c-abc", True)


KINDS = st.sampled_from(list(FailureKind))
PROTECTIONS = st.sampled_from([NO_ACTION, SKIP, BAN])
MODELS = st.sampled_from([LLAMA, MIXTRAL, QWEN, UNSIZED])
PAIRS = st.lists(st.tuples(st.text(max_size=5), st.text(max_size=10)), max_size=4).map(tuple)
ROUTES = st.builds(
    RouteInput,
    mode=st.sampled_from(["auto", "auto-smart", "auto-fast"]),
    requested=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    use_chain=st.booleans(),
    est_tokens=st.integers(0, 10**6),
    reserve_tokens=st.integers(0, 10**5),
    tried=PAIRS,
    skip_models=PAIRS,
    skip_platforms=PAIRS,
    min_context=st.none() | st.integers(0, 10**6),
    session=st.none() | st.text(max_size=10),
    use_pin=st.booleans(),
)


def outcome(kind: FailureKind) -> Failing:
    if kind == FailureKind.STALL_PRE:
        return Stalled("pre", "silent", 1.0)
    if kind == FailureKind.STALL_MID:
        return Stalled("mid", "silent", 1.0)
    return failed(kind)


@given(route=ROUTES, m=MODELS, kind=KINDS, protection=PROTECTIONS, key=st.text(max_size=5))
def test_learn_never_removes_what_the_route_already_avoids(
    route: RouteInput, m: CatalogModel, kind: FailureKind, protection: Protection, key: str
) -> None:
    after = learn(route, m, key, outcome(kind), protection)
    assert after.tried == (*route.tried, (key, m.ref))
    assert after.skip_models[: len(route.skip_models)] == route.skip_models
    assert after.skip_platforms[: len(route.skip_platforms)] == route.skip_platforms
    if route.min_context is not None:
        assert after.min_context is not None and after.min_context >= route.min_context
    # Nothing about the request itself changes.
    for name in ("mode", "requested", "use_chain", "est_tokens", "reserve_tokens", "session", "use_pin"):
        assert getattr(after, name) == getattr(route, name)
    # What is added is about this model and its platform only.
    assert {ref for ref, _ in after.skip_models[len(route.skip_models) :]} <= {m.ref}
    assert {p for p, _ in after.skip_platforms[len(route.skip_platforms) :]} <= {m.platform}


@given(m=MODELS, kind=KINDS, protection=PROTECTIONS)
def test_learn_skips_the_model_exactly_when_its_kind_or_protection_says_so(
    m: CatalogModel, kind: FailureKind, protection: Protection
) -> None:
    after = learn(ROUTE, m, "k", outcome(kind), protection)
    skips = TRAITS[kind].skips_model or protection.skip_model
    assert bool(after.skip_models) == skips
    assert bool(after.skip_platforms) == (kind == FailureKind.BAD_REQUEST or protection.ban_platform)
    assert (after.min_context is not None) == (kind == FailureKind.CONTEXT_EXCEEDED)


# ---- AttemptLoop: how many attempts, and how the request ends -----------------------------------------


def test_more_until_max_attempts_have_started() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=3)
    starts = []
    while loop.more():
        starts.append(loop.start())
        loop.failed(LLAMA, f"g{len(starts)}", failed(FailureKind.CONNECT), NO_ACTION)
    assert starts == [1, 2, 3]
    assert loop.attempts == 3
    assert [t.key_id for t in loop.tried] == ["g1", "g2", "g3"]


def test_a_loop_with_no_attempts_allowed_never_decides() -> None:
    assert not AttemptLoop(ROUTE, max_attempts=0).more()


def test_a_failure_updates_the_route_the_next_decision_reads() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    assert loop.failed(LLAMA, "g1", failed(FailureKind.MODEL_MISSING, status=404), NO_ACTION) is None
    assert loop.route.tried == (("g1", "groq/llama"),)
    assert loop.route.skip_models == (("groq/llama", "the provider said the model does not exist"),)


def test_a_refused_admission_skips_the_platform_without_an_attempt() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=1)
    loop.skip_platform("longcat", "single-flight: longcat is in use")
    assert loop.route.skip_platforms == (("longcat", "single-flight: longcat is in use"),)
    assert loop.attempts == 0 and loop.more()


def test_a_bad_request_gets_one_more_try_elsewhere_then_goes_back_to_the_client() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    bad = failed(FailureKind.BAD_REQUEST, "'tools' is not supported", 400)
    assert loop.failed(LLAMA, "g1", bad, NO_ACTION) is None
    assert loop.more()  # one more try, on another platform
    assert loop.route.skip_platforms == (("groq", "rejected the request: 'tools' is not supported"),)
    loop.start()
    assert loop.failed(QWEN, "c1", failed(FailureKind.SERVER_ERROR, status=500), NO_ACTION) is None
    assert not loop.more()
    assert loop.finish(NOW) == Failure(
        400,
        "groq/llama: 'tools' is not supported",
        "invalid_request_error",
        "upstream_bad_request",
        attempts=2,
    )


def test_a_bad_request_keeps_its_status() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.BAD_REQUEST, "unprocessable", 422), NO_ACTION)
    result = loop.finish(NOW)
    assert isinstance(result, Failure) and result.status == 422


def test_a_wrapped_bad_request_without_a_status_is_a_400() -> None:
    failure = final_failure([], [], 0, Tried("groq/llama", "g1", "bad_request", None, "bad"), 1, NOW)
    assert failure.status == 400


def test_the_first_bad_request_is_the_one_the_client_gets() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.BAD_REQUEST, "first", 400), NO_ACTION)
    loop.start()
    loop.failed(QWEN, "c1", failed(FailureKind.BAD_REQUEST, "second", 400), NO_ACTION)
    assert not loop.more()
    result = loop.finish(NOW)
    assert isinstance(result, Failure) and result.message == "groq/llama: first"


def test_a_bad_request_on_the_last_allowed_attempt_stops_the_loop() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=1)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.BAD_REQUEST, "no", 400), NO_ACTION)
    assert not loop.more()


def test_failures_before_a_bad_request_do_not_use_up_its_one_more_try() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    for key in ("g1", "g2"):
        loop.start()
        loop.failed(LLAMA, key, failed(FailureKind.CONNECT), NO_ACTION)
    loop.start()
    loop.failed(MIXTRAL, "g3", failed(FailureKind.BAD_REQUEST, "no", 400), NO_ACTION)
    assert loop.more()
    loop.start()
    loop.failed(QWEN, "c1", failed(FailureKind.CONNECT), NO_ACTION)
    assert not loop.more()


def test_an_answer_after_a_bad_request_is_the_answer() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.BAD_REQUEST, "no", 400), NO_ACTION)
    loop.start()
    assert loop.answered(QWEN, b"{}") == Completion(b"{}", "cerebras/qwen", 2)


def test_a_truncated_whole_answer_is_the_fallback_when_nothing_else_answers() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=2)
    loop.start()
    cut = failed(FailureKind.TRUNCATED, "cut off", 200, body=b'{"cut": true}')
    assert loop.failed(LLAMA, "g1", cut, NO_ACTION) is None  # another model may answer whole
    loop.start()
    loop.failed(QWEN, "c1", failed(FailureKind.SERVER_ERROR, status=503), NO_ACTION)
    assert not loop.more()
    assert loop.finish(NOW) == Completion(b'{"cut": true}', "groq/llama", 2)


def test_a_truncation_without_a_body_is_no_fallback() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=1)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.TRUNCATED, "cut off", 200), NO_ACTION)
    assert isinstance(loop.finish(NOW), Failure)


def test_an_answer_after_a_truncation_is_the_answer() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=2)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.TRUNCATED, "cut", 200, body=b"cut"), NO_ACTION)
    loop.start()
    assert loop.answered(QWEN, b"whole") == Completion(b"whole", "cerebras/qwen", 2)


def test_a_stall_after_content_ends_the_request_with_a_stream_timeout() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.CONNECT), NO_ACTION)
    loop.start()
    out = Stalled("mid", "cerebras/qwen stopped sending within 5s", 5.0)
    step = loop.failed(QWEN, "c1", out, SKIP)
    assert step == Failure(
        502,
        "cerebras/qwen stopped sending within 5s",
        "stream_timeout",
        "stall_mid",
        attempts=2,
        after_content=True,
    )
    # Protection still applies after content.
    assert loop.route.skip_models == (("cerebras/qwen", "model-skip: server_error"),)


@pytest.mark.parametrize(
    "kind", [FailureKind.CONNECT, FailureKind.SERVER_ERROR, FailureKind.RATE_LIMITED, FailureKind.EMPTY]
)
def test_another_failure_after_content_ends_the_request_as_an_upstream_error(kind: FailureKind) -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    step = loop.failed(LLAMA, "g1", failed(kind, "gone", after_content=True), NO_ACTION)
    assert step == Failure(502, "gone", "upstream_error", kind, attempts=1, after_content=True)


def test_a_delivered_truncation_ends_the_request_as_a_completion() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(excl("cerebras/qwen", ExclusionCode.COOLING, "cooling"), named=("cerebras/qwen",)))
    loop.start()
    cut = failed(FailureKind.TRUNCATED, "cut off", 200, after_content=True, delivered=True)
    step = loop.failed(LLAMA, "g1", cut, SKIP)
    assert step == Completion(b"", "groq/llama", 1, ("cerebras/qwen (cooling)",))
    assert loop.tried[-1].kind == FailureKind.TRUNCATED  # still recorded as what it was
    assert loop.route.skip_models == (("groq/llama", "model-skip: server_error"),)


def test_tried_records_each_failure_as_it_came() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.RATE_LIMITED, "slow", 429, retry_after_s=7.0), NO_ACTION)
    loop.start()
    loop.failed(QWEN, "c1", Stalled("pre", "silent", 5.0), NO_ACTION)
    assert loop.tried == [
        Tried("groq/llama", "g1", "rate_limited", 429, "slow", 7.0),
        Tried("cerebras/qwen", "c1", "stall_pre", None, "silent", None),
    ]


def test_finish_reports_the_last_decisions_exclusions() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(excl("a/one", ExclusionCode.COOLING, "first decision")))
    loop.decided(decision(excl("a/two", ExclusionCode.COOLING, "cooling for 30s"), no_key=4))
    result = loop.finish(NOW)
    assert isinstance(result, Failure)
    assert result.status == 503
    assert "a/two: skipped, cooling for 30s" in result.message
    assert "first decision" not in result.message
    assert "4 models have no API key" in result.message


# ---- named models passed over ------------------------------------------------------------------------------

NAMED = ("groq/llama", "cerebras/qwen", "mistral/small", "nvidia/nemo")


def test_named_models_passed_over_are_reported_with_their_reasons() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(
        decision(
            excl("cerebras/qwen", ExclusionCode.COOLING, "cooling for 40s (server_error)"),
            excl("mistral/small", ExclusionCode.CONTEXT, "context window 8000 < 9000 estimated tokens"),
            excl("other/unnamed", ExclusionCode.COOLING, "cooling"),
            named=NAMED,
            named_no_key=("nvidia/nemo",),
            chosen=LLAMA,
        )
    )
    loop.start()
    assert loop.answered(LLAMA).skipped == (
        "cerebras/qwen (cooling for 40s (server_error))",
        "mistral/small (context window 8000 < 9000 estimated tokens)",
        "nvidia/nemo (its platform has no API key)",
    )


def test_exclusions_are_not_reported_when_the_request_named_no_model() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(excl("cerebras/qwen", ExclusionCode.COOLING, "cooling")))
    loop.start()
    assert loop.answered(LLAMA).skipped == ()


def test_a_named_model_already_tried_by_the_request_is_not_reported_as_skipped() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(named=NAMED, chosen=QWEN))
    loop.start()
    loop.failed(QWEN, "c1", failed(FailureKind.SERVER_ERROR, status=500), SKIP)
    # The next decision excludes it for the key it tried and for the protection skip.
    loop.decided(
        decision(
            excl("cerebras/qwen", ExclusionCode.TRIED, "key c1 already tried for this request"),
            excl("cerebras/qwen", ExclusionCode.SKIPPED, "skipped for this request: model-skip"),
            named=NAMED,
            chosen=LLAMA,
        )
    )
    loop.start()
    assert loop.answered(LLAMA).skipped == ()


def test_a_tried_exclusion_of_a_named_model_is_not_a_reason() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(excl("mistral/small", ExclusionCode.TRIED, "key m1 already tried"), named=NAMED))
    loop.start()
    assert loop.answered(LLAMA).skipped == ()


def test_the_named_model_that_answered_is_not_reported() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(excl("groq/llama", ExclusionCode.COOLING, "cooling"), named=NAMED))
    loop.start()
    assert loop.answered(LLAMA).skipped == ()
    assert loop.skipped("cerebras/qwen") == ("groq/llama (cooling)",)


def test_the_first_reason_a_named_model_was_passed_over_is_kept() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=5)
    loop.decided(decision(excl("cerebras/qwen", ExclusionCode.COOLING, "cooling"), named=NAMED))
    loop.decided(decision(excl("cerebras/qwen", ExclusionCode.QUOTA, "over rpm"), named=NAMED))
    assert loop.skipped("groq/llama") == ("cerebras/qwen (cooling)",)


def test_a_truncated_fallback_reports_the_named_models_passed_over() -> None:
    loop = AttemptLoop(ROUTE, max_attempts=1)
    loop.decided(decision(excl("cerebras/qwen", ExclusionCode.COOLING, "cooling"), named=NAMED))
    loop.start()
    loop.failed(LLAMA, "g1", failed(FailureKind.TRUNCATED, "cut", 200, body=b"cut"), NO_ACTION)
    assert loop.finish(NOW) == Completion(b"cut", "groq/llama", 1, ("cerebras/qwen (cooling)",))


# ---- final_failure: what the client gets when no attempt answered ------------------------------------------


def tried(ref: str, kind: str, status: int | None = None, message: str = "boom", **kw: Any) -> Tried:
    return Tried(ref, "k-" + ref.split("/")[1], kind, status, message, **kw)


def test_each_attempt_is_listed_with_its_key_kind_status_and_message() -> None:
    failure = final_failure(
        [
            tried("groq/llama", "server_error", 503, "overloaded"),
            tried("cerebras/qwen", "connect", None, "connection reset"),
        ],
        [],
        0,
        None,
        2,
        NOW,
    )
    assert failure == Failure(
        502,
        "All 2 attempts failed: groq/llama (key k-llama): server_error 503 overloaded; "
        "cerebras/qwen (key k-qwen): connect connection reset",
        "upstream_error",
        "all_attempts_failed",
        attempts=2,
    )


def test_every_attempt_over_the_context_window_is_a_400() -> None:
    failure = final_failure(
        [
            tried("groq/llama", "context_exceeded", 413, "too large"),
            tried("cerebras/qwen", "context_exceeded", 400),
        ],
        [excl("mistral/small", ExclusionCode.CONTEXT, "context window 8000 not larger than 128000")],
        0,
        None,
        2,
        NOW,
    )
    assert (failure.status, failure.type, failure.code) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
    )
    assert failure.message.startswith("The request is larger than every available model's context window.")
    assert "groq/llama (key k-llama): context_exceeded 413 too large" in failure.message
    assert "mistral/small: skipped, context window 8000 not larger than 128000" in failure.message
    assert failure.retry_after_s is None


def test_a_context_error_among_other_failures_is_a_502() -> None:
    failure = final_failure(
        [tried("groq/llama", "context_exceeded", 413), tried("cerebras/qwen", "server_error", 500)],
        [],
        0,
        None,
        2,
        NOW,
    )
    assert failure.status == 502


def test_every_attempt_rate_limited_is_a_429_with_the_soonest_retry() -> None:
    failure = final_failure(
        [
            tried("groq/llama", "rate_limited", 429, "slow down", retry_after_s=30.0),
            tried("cerebras/qwen", "rate_limited", 429, "quota", retry_after_s=12.0),
            tried("mistral/small", "rate_limited", 429, "no retry time"),
        ],
        [],
        0,
        None,
        3,
        NOW,
    )
    assert (failure.status, failure.type, failure.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert failure.retry_after_s == 12.0
    assert failure.message.startswith("Every candidate is rate-limited. groq/llama (key k-llama)")


def test_the_soonest_retry_also_counts_rate_limited_and_quota_exclusions() -> None:
    failure = final_failure(
        [tried("groq/llama", "rate_limited", 429, retry_after_s=30.0)],
        [
            excl("cerebras/qwen", ExclusionCode.RATE_LIMITED, "key c1 rate-limited for 20s", until=NOW + 20),
            excl("mistral/small", ExclusionCode.QUOTA, "key m1 over rpm", until=NOW + 8),
            excl("nvidia/nemo", ExclusionCode.COOLING, "cooling for 2s", until=NOW + 2),  # not a rate limit
            excl("x/y", ExclusionCode.QUOTA, "key over rpd"),  # no known end
        ],
        0,
        None,
        1,
        NOW,
    )
    assert failure.status == 429
    assert failure.retry_after_s == pytest.approx(8.0)


def test_when_nothing_was_tried_rate_limited_exclusions_make_a_429() -> None:
    failure = final_failure(
        [],
        [
            excl("groq/llama", ExclusionCode.RATE_LIMITED, "key g1 rate-limited for 45s", until=NOW + 45),
            excl("cerebras/qwen", ExclusionCode.QUOTA, "key c1 over tpm", until=NOW + 50),
        ],
        0,
        None,
        0,
        NOW,
    )
    assert (failure.status, failure.code, failure.attempts) == (429, "rate_limit_exceeded", 0)
    assert failure.retry_after_s == pytest.approx(45.0)
    assert "groq/llama: skipped, key g1 rate-limited for 45s" in failure.message


def test_a_retry_time_is_at_least_a_second() -> None:
    failure = final_failure(
        [tried("groq/llama", "rate_limited", 429, retry_after_s=0.0)],
        [excl("cerebras/qwen", ExclusionCode.RATE_LIMITED, "ended", until=NOW - 10)],
        0,
        None,
        1,
        NOW,
    )
    assert failure.retry_after_s == 1.0


def test_a_429_with_no_known_retry_time_has_none() -> None:
    failure = final_failure([tried("groq/llama", "rate_limited", 429)], [], 0, None, 1, NOW)
    assert (failure.status, failure.retry_after_s) == (429, None)


def test_rate_limits_among_other_failures_are_a_502() -> None:
    failure = final_failure(
        [tried("groq/llama", "rate_limited", 429, retry_after_s=5.0), tried("cerebras/qwen", "connect")],
        [excl("mistral/small", ExclusionCode.RATE_LIMITED, "limited", until=NOW + 5)],
        0,
        None,
        2,
        NOW,
    )
    assert (failure.status, failure.retry_after_s) == (502, None)


def test_nothing_tried_and_nothing_limited_is_a_503_that_counts_no_key_and_pool() -> None:
    failure = final_failure(
        [],
        [
            excl("groq/llama", ExclusionCode.COOLING, "cooling for 30s (connect)", until=NOW + 30),
            excl("a/smart1", ExclusionCode.POOL, POOL_REASON),
            excl("a/smart2", ExclusionCode.POOL, POOL_REASON),
            Excluded(ref="a/legacy", reason=POOL_REASON),  # logged before exclusion codes
        ],
        5,
        None,
        0,
        NOW,
    )
    assert failure == Failure(
        503,
        "No model can take this request right now: groq/llama: skipped, cooling for 30s (connect); "
        "5 models have no API key for their platform (switchboard keys add PLATFORM); "
        f"3 models left out ({POOL_REASON})",
        "service_unavailable",
        "no_available_model",
        attempts=0,
    )
    assert "a/smart1" not in failure.message


def test_nothing_at_all_is_no_models_configured() -> None:
    failure = final_failure([], [], 0, None, 0, NOW)
    assert failure == Failure(
        503,
        "No model can take this request right now: no models are configured",
        "service_unavailable",
        "no_available_model",
    )


def test_every_attempt_stalled_before_content_is_a_504_stream_timeout() -> None:
    failure = final_failure(
        [
            tried("groq/llama", "stall_pre", None, "groq/llama sent no first byte within 5s"),
            tried("cerebras/qwen", "stall_pre", None, "cerebras/qwen sent no first byte within 5s"),
        ],
        [],
        0,
        None,
        2,
        NOW,
    )
    assert (failure.status, failure.type, failure.code, failure.attempts) == (
        504,
        "timeout_error",
        "stream_timeout",
        2,
    )
    assert failure.message == (
        "Every attempt timed out before it sent an answer: "
        "groq/llama (key k-llama): stall_pre groq/llama sent no first byte within 5s; "
        "cerebras/qwen (key k-qwen): stall_pre cerebras/qwen sent no first byte within 5s"
    )


def test_a_stall_among_other_failures_is_a_502() -> None:
    failure = final_failure(
        [tried("groq/llama", "stall_pre"), tried("cerebras/qwen", "server_error", 500)], [], 0, None, 2, NOW
    )
    assert (failure.status, failure.code) == (502, "all_attempts_failed")


def test_a_bad_request_wins_over_everything_else() -> None:
    bad = tried("groq/llama", "bad_request", 400, "unknown field 'foo'")
    failure = final_failure(
        [bad, tried("cerebras/qwen", "rate_limited", 429, retry_after_s=3.0)],
        [excl("x/y", ExclusionCode.RATE_LIMITED, "limited", until=NOW + 3)],
        2,
        bad,
        2,
        NOW,
    )
    assert failure == Failure(
        400, "groq/llama: unknown field 'foo'", "invalid_request_error", "upstream_bad_request", attempts=2
    )


def test_tried_exclusions_are_not_listed() -> None:
    failure = final_failure(
        [tried("groq/llama", "server_error", 500, "oops")],
        [
            excl("groq/llama", ExclusionCode.TRIED, "key k-llama already tried for this request"),
            excl("cerebras/qwen", ExclusionCode.COOLING, "cooling"),
        ],
        0,
        None,
        1,
        NOW,
    )
    assert "already tried" not in failure.message
    assert failure.message == (
        "All 1 attempts failed: groq/llama (key k-llama): server_error 500 oops; "
        "cerebras/qwen: skipped, cooling"
    )


def test_at_most_20_exclusions_are_listed_and_the_rest_are_counted() -> None:
    excluded = [excl(f"p/m{i:02d}", ExclusionCode.COOLING, f"reason {i}") for i in range(MAX_LISTED + 7)]
    failure = final_failure([], excluded, 0, None, 0, NOW)
    assert MAX_LISTED == 20
    for i in range(MAX_LISTED):
        assert f"p/m{i:02d}: skipped, reason {i}" in failure.message
    assert f"p/m{MAX_LISTED:02d}" not in failure.message
    assert failure.message.endswith("; ... and 7 more models skipped")


def test_exactly_20_exclusions_are_all_listed_with_nothing_counted() -> None:
    excluded = [excl(f"p/m{i:02d}", ExclusionCode.COOLING, "cooling") for i in range(MAX_LISTED)]
    failure = final_failure([], excluded, 0, None, 0, NOW)
    assert "more models skipped" not in failure.message
    assert failure.message.count(": skipped, cooling") == MAX_LISTED


def test_pool_exclusions_do_not_take_a_listing_slot() -> None:
    excluded = [excl(f"a/pool{i}", ExclusionCode.POOL, POOL_REASON) for i in range(30)]
    excluded += [excl(f"p/m{i:02d}", ExclusionCode.COOLING, "cooling") for i in range(MAX_LISTED)]
    failure = final_failure([], excluded, 0, None, 0, NOW)
    assert failure.message.count(": skipped, cooling") == MAX_LISTED
    assert "more models skipped" not in failure.message
    assert failure.message.endswith(f"30 models left out ({POOL_REASON})")


def test_tried_exclusions_neither_take_a_listing_slot_nor_count_as_skipped() -> None:
    excluded = [excl(f"p/m{i:02d}", ExclusionCode.COOLING, "cooling") for i in range(MAX_LISTED)]
    excluded += [excl("groq/llama", ExclusionCode.TRIED, f"key g{i} already tried") for i in range(3)]
    failure = final_failure([tried("groq/llama", "server_error", 500)] * 3, excluded[::-1], 0, None, 3, NOW)
    assert failure.message.count(": skipped, cooling") == MAX_LISTED
    assert "more models skipped" not in failure.message


def test_the_failure_carries_the_attempt_count() -> None:
    assert final_failure([tried("groq/llama", "connect")], [], 0, None, 4, NOW).attempts == 4


def test_a_tried_model_is_not_listed_again_as_skipped_after_its_own_failure() -> None:
    skip = Excluded(
        ref="groq/llama",
        reason="skipped for this request: groq/llama stopped sending within 5s",
        code=ExclusionCode.SKIPPED,
    )
    failure = final_failure([tried("groq/llama", "server_error", 500)], [skip], 0, None, 1, NOW)
    assert "skipped" not in failure.message
