"""What an unclean run left open, from the end of its log (events/unclean.py)."""

from __future__ import annotations

from events.store import Entry
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Event,
    RequestCompleted,
    RequestReceived,
    ServiceStarted,
)
from events.unclean import Unfinished, unfinished


def received(rid: str, ts: float = 1.0) -> RequestReceived:
    return RequestReceived(ts=ts, request_id=rid, model="m", stream=False, messages=1, est_input_tokens=1)


def completed(rid: str, ts: float = 2.0) -> RequestCompleted:
    return RequestCompleted(ts=ts, request_id=rid, outcome="ok", status=200, attempts=1, latency_ms=1.0)


def started(rid: str, n: int, model: str = "m") -> AttemptStarted:
    return AttemptStarted(ts=1.5, request_id=rid, attempt=n, platform="p", model=model, key_id="k")


def entries(*events: Event) -> list[Entry]:
    return list(enumerate(events, start=1))  # type: ignore[arg-type]


def test_requests_and_attempts_left_open_are_named_and_finished_ones_are_not() -> None:
    left = unfinished(
        entries(
            ServiceStarted(ts=0.0, version="v"),
            received("a"),
            started("a", 1),
            AttemptFailed(
                ts=1.6, request_id="a", attempt=1, platform="p", model="m", key_id="k", kind="server"
            ),
            started("a", 2, "n"),
            received("b"),
            started("b", 1),
            AttemptSucceeded(
                ts=1.7,
                request_id="b",
                attempt=1,
                platform="p",
                model="m",
                key_id="k",
                latency_ms=1.0,
                ttfb_ms=1.0,
                input_tokens=1,
                output_tokens=1,
            ),
            completed("b", ts=9.0),
        ),
        from_run_start=False,
    )
    assert left == Unfinished(9.0, ("a",), (("a", 2, "p/n"),), partial=False)
    assert left.summary() == "1 requests never completed (a); 1 upstream attempts never ended (on p/n)"


def test_only_the_last_run_counts_and_a_window_without_its_start_is_a_lower_bound() -> None:
    earlier_run = [received("old"), ServiceStarted(ts=5.0, version="v"), received("new", ts=6.0)]
    assert unfinished(entries(*earlier_run), from_run_start=False).requests == ("new",)
    tail = unfinished(entries(received("x"), received("y")), from_run_start=False)
    assert tail.partial and tail.summary().startswith("at least 2 requests never completed")
    assert unfinished(entries(received("x")), from_run_start=True).partial is False


def test_a_clean_tail_says_so_and_long_lists_are_cut() -> None:
    assert unfinished([], from_run_start=True).summary() == "no request was left unfinished"
    many = unfinished(entries(*(received(f"r{i}") for i in range(8))), from_run_start=True)
    assert many.summary() == "8 requests never completed (r0, r1, r2, r3, r4, ...)"
