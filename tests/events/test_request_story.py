"""A request's story from its events (pure), and the views its decisions are replayed on (events/view_at.py)
over a log of real decisions written by scripts/gen_log.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from events.config_applied import last_config, view_of
from events.op_stats import OperationalStats
from events.replay import Replayed, re_decide
from events.request_story import mode_of, story, summarize
from events.snapshot import LogNotes, save, take
from events.sqlite_store import SqliteStore
from events.store import Entry
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    RequestCompleted,
    RequestReceived,
    ResponseStored,
    RouteDecided,
    RouteInput,
    ScoredCandidate,
)
from events.view import POOL_REASON, RoutingView, rebuild
from events.view_at import ViewsAt

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from gen_log import generate

T = 1_000.0
RID = "req_1"


def decided(attempt: int, chosen: str | None, ts: float, pool_excluded: tuple[str, ...] = ()) -> RouteDecided:
    return RouteDecided(
        ts=ts,
        request_id=RID,
        attempt=attempt,
        seed=attempt,
        view_seq=attempt,
        now=ts,
        input=RouteInput(mode="auto"),
        candidates=(
            ScoredCandidate(
                ref="p/a",
                score=1.0,
                theta=0.5,
                speed=0.1,
                ttfb=0.1,
                intelligence=0.3,
                penalty=0.0,
                pool="fast",
            ),
        ),
        excluded=(),
        chosen_ref=chosen,
        chosen_key="k1" if chosen else None,
        pool_excluded=pool_excluded,
    )


def started(attempt: int, model: str, ts: float) -> AttemptStarted:
    return AttemptStarted(ts=ts, request_id=RID, attempt=attempt, platform="p", model=model, key_id="k1")


def fallback_request() -> list[Entry]:
    events: list[Event] = [
        RequestReceived(
            ts=T,
            request_id=RID,
            model="auto",
            stream=True,
            messages=1,
            est_input_tokens=5,
            requested_models=("auto",),
        ),
        decided(1, "p/a", T + 0.001, pool_excluded=("p/smart",)),
        started(1, "a", T + 0.002),
        AttemptFailed(
            ts=T + 0.5,
            request_id=RID,
            attempt=1,
            platform="p",
            model="a",
            key_id="k1",
            kind="stall_pre",
            message="no first byte in 0.5s",
            latency_ms=498.0,
        ),
        decided(2, "p/b", T + 0.501),
        started(2, "b", T + 0.502),
        AttemptSucceeded(
            ts=T + 0.9,
            request_id=RID,
            attempt=2,
            platform="p",
            model="b",
            key_id="k1",
            latency_ms=398.0,
            ttfb_ms=120.0,
            input_tokens=5,
            output_tokens=7,
        ),
        RequestCompleted(
            ts=T + 0.9,
            request_id=RID,
            outcome="ok",
            status=200,
            attempts=2,
            latency_ms=900.0,
            platform="p",
            model="b",
        ),
    ]
    return list(enumerate(events, start=10))


@pytest.mark.parametrize(
    ("requested", "mode"),
    [
        (("auto",), "auto"),
        (("freellmapi/auto-fast",), "auto-fast"),
        (("groq/llama",), "named"),
        (("auto-smart", "groq/llama"), "auto-smart"),  # the virtual one gives the mode
        (("groq/llama", "auto", "auto-fast"), "auto-fast"),  # the last virtual one, as the runner reads it
    ],
)
def test_mode_is_the_virtual_model_named_or_named(requested: tuple[str, ...], mode: str) -> None:
    assert mode_of(requested) == mode


def test_a_fallback_story_has_its_waterfall_decisions_and_verdict() -> None:
    entries = fallback_request()
    replayed = {
        s: Replayed(s, e, None, True, (e.chosen_ref, e.chosen_key))
        for s, e in entries
        if isinstance(e, RouteDecided)
    }
    s = story(RID, entries, replayed)
    assert (s.request.outcome, s.request.attempts, s.request.mode, s.request.model) == ("ok", 2, "auto", "b")
    assert [e.seq for e in s.events] == list(range(10, 18))
    assert s.events[0].type == "request_received" and s.events[0].data["model"] == "auto"
    stalled, ok = s.attempts
    assert (stalled.outcome, stalled.kind, stalled.start_ms, stalled.duration_ms) == (
        "stalled",
        "stall_pre",
        2.0,
        498.0,
    )
    assert stalled.message == "no first byte in 0.5s" and stalled.ttfb_ms is None
    assert (ok.outcome, ok.start_ms, ok.duration_ms, ok.ttfb_ms, ok.kind) == ("ok", 502.0, 398.0, 120.0, None)
    first, second = s.decisions
    assert (first.chosen_ref, second.chosen_ref) == ("p/a", "p/b")
    assert {"ref": "p/smart", "reason": POOL_REASON, "until": None, "code": "pool"} in first.excluded
    assert first.candidates[0]["ref"] == "p/a"
    assert first.reproduces is True and first.replayed_ref == "p/a"
    assert first.explanation is not None and "[reproduced]" in first.explanation
    assert s.reproduces is True


def test_a_stored_responses_turn_is_in_the_story_without_its_conversation() -> None:
    stored = ResponseStored(
        ts=T + 1, request_id=RID, response_id="resp_1", messages='[{"content":"secret"}]', response='{"x":1}'
    )
    s = story(RID, [*fallback_request(), (18, stored)], {})
    (shown,) = [e for e in s.events if e.type == "response_stored"]
    assert shown.data["response_id"] == "resp_1"
    assert (shown.data["messages"], shown.data["response"]) == ("[]", "{}")


def test_a_decision_not_replayed_says_so_and_leaves_the_verdict_open() -> None:
    entries = fallback_request()
    first_decision = next(s for s, e in entries if isinstance(e, RouteDecided))
    only_first = {first_decision: Replayed(first_decision, entries[1][1], None, True, ("p/a", "k1"))}  # type: ignore[arg-type]
    s = story(RID, entries, only_first)
    assert [d.reproduces for d in s.decisions] == [True, None]
    assert s.decisions[1].explanation is not None and "[not replayed]" in s.decisions[1].explanation
    assert s.reproduces is None
    assert story(RID, entries, {}).decisions[0].reproduces is None


def test_a_request_still_running_has_no_outcome_and_its_latest_attempt() -> None:
    entries = fallback_request()[:6]  # received, failed once, started again
    s = story(RID, entries, {})
    assert (s.request.outcome, s.request.status, s.request.latency_ms) == (None, None, None)
    assert (s.request.attempts, s.request.model) == (2, "b")
    assert [a.outcome for a in s.attempts] == ["stalled", "running"]
    assert s.attempts[1].duration_ms is None
    assert summarize(RID, [e for _, e in entries]) == s.request


@pytest.fixture(scope="module")
def gen_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "switchboard.db"
    generate(path, 3000)
    return path


def decisions_of(store: SqliteStore) -> list[tuple[int, RouteDecided]]:
    return [(s, e) for s, e in store.read_after(0) if isinstance(e, RouteDecided)]


def test_every_decision_reproduces_on_its_view_and_nearby_ones_fold_little(gen_log: Path) -> None:
    store = SqliteStore(gen_log, read_only=True)
    try:
        decisions = decisions_of(store)
        views = ViewsAt(lambda: pytest.fail("the log records its configuration"))
        for seq, rec in decisions:
            view = views.view_for(store, seq, rec.view_seq)
            assert view is not None and view.seq == rec.view_seq
            assert re_decide(view, seq, rec).matches
        # In log order each view starts from the one before: the log is folded about once in all.
        assert views.folded <= store.last_seq()
        # Backwards, past what the cache holds: each from the start of the log again.
        folded = views.folded
        seq, rec = decisions[len(decisions) // 2]
        view = views.view_for(store, seq, rec.view_seq)
        assert view is not None and re_decide(view, seq, rec).matches
        assert views.folded > folded
    finally:
        store.close()


def test_a_view_starts_from_a_snapshot_and_is_not_folded_from_too_far(gen_log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "switchboard.db"
    copy.write_bytes(gen_log.read_bytes())
    store = SqliteStore(copy)
    try:
        config = last_config(store)
        assert config is not None
        seq, rec = decisions_of(store)[-1]
        snapshot_view = view_of(config)
        rebuild(store, snapshot_view, upto=rec.view_seq - 100, types=RoutingView.FOLDED_TAGS)
        save(store, take(snapshot_view, OperationalStats(), LogNotes(), config.hash, 0.0))
        views = ViewsAt(lambda: pytest.fail("the log records its configuration"), max_fold=500)
        view = views.view_for(store, seq, rec.view_seq)
        assert view is not None and re_decide(view, seq, rec).matches
        assert 0 < views.folded <= 100
        first_seq, first = decisions_of(store)[0]
        assert views.view_for(store, first_seq, first.view_seq + 1000) is None  # over max_fold from any start
    finally:
        store.close()
