"""`run_replay` over a real SQLite log: forked (the child replays the first part of the log, the parent the
rest) it reports exactly what a serial replay reports; a failure in the child surfaces in the parent with
the child's traceback, and no child process outlives the call."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from events.policy import RoutingPolicy
from events.replay import Replayed, replay, replay_order, select_decisions
from events.sqlite_store import SqliteStore
from events.store import MemoryStore
from events.types import ConfigApplied, RouteDecided
from events.view import RoutingView
from service import replay_runner
from service.replay_runner import CHILD_SHARE, ReplayRun, run_replay

# The simulated gateway of the replay tests (a live view lagging the log, decisions recorded as it decides).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "events"))
from test_replay import CATALOG, CATALOG_B, POLICY_B, new_view, recorded, simulate, simulate_runs

WHAT_IFS: dict[str, Callable[[], RoutingView]] = {
    "rate-limit cooldown 1 s": lambda: new_view(RoutingPolicy(rate_limit_cooldown_s=1.0)),
    "transient cooldown 1 ms": lambda: new_view(RoutingPolicy(transient_cooldown_s=0.001)),
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MemoryStore]:
    """A log of 626 events with 223 recorded decisions, in SQLite and in memory; either what-if changes
    decisions in both the child's and the parent's part of it."""
    memory = simulate(3, 200)
    path = tmp_path_factory.mktemp("replay") / "log.db"
    with closing(SqliteStore(path)) as store:
        store.append([e for _, e in memory.read_after(0)])
    return path, memory


def replayed(
    path: Path, new_view: Callable[[], RoutingView], **kw: object
) -> tuple[ReplayRun, list[Replayed]]:
    """`run_replay` and the results it passed on, in the order it passed them."""
    results: list[Replayed] = []
    run = run_replay(path, new_view, on_result=results.append, **kw)  # type: ignore[arg-type]
    return run, results


def no_child_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def summary(results: list[Replayed]) -> list[tuple[int, tuple[str | None, str | None], bool]]:
    return [(r.seq, r.recomputed, r.matches) for r in results]


def test_forked_and_serial_replays_agree_on_a_log_that_reproduces(logged: tuple[Path, MemoryStore]) -> None:
    path, memory = logged
    decisions = [(s, e) for s, e in memory.read_after(0) if isinstance(e, RouteDecided)]
    assert len(decisions) > 200
    (serial, serial_results), (forked, forked_results) = (
        replayed(path, new_view, parallel=p) for p in (False, True)
    )
    assert serial == ReplayRun(len(decisions), 0, max(d.view_seq for _, d in decisions), 1)
    assert forked == ReplayRun(serial.total, 0, serial.events, 2)
    assert serial_results == forked_results == []
    assert no_child_left()


@pytest.mark.parametrize(("from_seq", "to_seq"), [(None, 400), (200, None), (150, 500), (450, 455)])
def test_forked_and_serial_replays_agree_on_a_range(
    logged: tuple[Path, MemoryStore], from_seq: int | None, to_seq: int | None
) -> None:
    path, memory = logged
    expected = select_decisions(memory, from_seq=from_seq, to_seq=to_seq)
    runs = [replayed(path, new_view, from_seq=from_seq, to_seq=to_seq, parallel=p) for p in (False, True)]
    assert [(r.total, r.changed, results, r.processes) for r, results in runs] == [
        (len(expected), 0, [], 1),
        (len(expected), 0, [], 2),
    ]
    assert runs[0][0].events == runs[1][0].events
    assert no_child_left()


@pytest.mark.parametrize("what_if", sorted(WHAT_IFS))
def test_a_what_if_reports_the_same_changes_in_the_same_order_forked_or_not(
    logged: tuple[Path, MemoryStore], what_if: str
) -> None:
    path, memory = logged
    factory = WHAT_IFS[what_if]
    serial, serial_results = replayed(path, factory, parallel=False)
    forked, forked_results = replayed(path, factory, parallel=True)
    assert (forked.total, forked.events, forked.processes) == (serial.total, serial.events, 2)
    assert forked.changed == serial.changed == len(serial_results)
    assert summary(forked_results) == summary(serial_results)
    assert [(r.recorded, r.unknown_model) for r in forked_results] == [
        (r.recorded, r.unknown_model) for r in serial_results
    ]
    # Both processes pass on what each chose instead, through a file: not the decision itself.
    split = 1 + int((memory.last_seq() - 1) * CHILD_SHARE)
    assert all(r.decision is None for r in forked_results)
    assert all(r.decision is not None for r in serial_results if not r.unknown_model)
    # The changes are real, come from both processes' parts, and are in replay order, as a replay in memory
    # lists them.
    in_memory = [r for r in replay(memory, factory(), select_decisions(memory)) if not r.matches]
    assert summary(forked_results) == summary(in_memory)
    assert any(r.seq <= split for r in forked_results)
    assert any(r.seq > split for r in forked_results)
    orders = [replay_order(r.seq, r.recorded) for r in forked_results]
    assert orders == sorted(orders)
    assert no_child_left()


def test_keep_all_returns_every_result(logged: tuple[Path, MemoryStore]) -> None:
    path, memory = logged
    total = len(select_decisions(memory))
    for parallel in (None, False):
        run, results = replayed(path, new_view, keep_all=True, parallel=parallel)
        assert (run.total, len(results), run.processes, run.changed) == (total, total, 1, 0)
        assert all(r.matches for r in results)
    changed, results = replayed(path, WHAT_IFS["transient cooldown 1 ms"], keep_all=True)
    assert len(results) == total
    assert 0 < sum(not r.matches for r in results) == changed.changed < total


def test_a_failure_in_the_child_is_raised_in_the_parent_with_its_traceback(
    logged: tuple[Path, MemoryStore],
) -> None:
    path, _ = logged
    parent = os.getpid()

    def new_view_failing_in_the_child() -> RoutingView:
        if os.getpid() != parent:
            raise ValueError("no view for the child")
        return new_view()

    with pytest.raises(RuntimeError, match="replay worker process failed") as caught:
        run_replay(path, new_view_failing_in_the_child, parallel=True)
    message = str(caught.value)
    assert "Traceback (most recent call last)" in message
    assert "ValueError: no view for the child" in message
    assert "new_view_failing_in_the_child" in message
    assert no_child_left()


def test_a_child_that_dies_without_an_answer_is_reported(logged: tuple[Path, MemoryStore]) -> None:
    path, _ = logged
    parent = os.getpid()

    def new_view_dying_in_the_child() -> RoutingView:
        if os.getpid() != parent:
            os._exit(3)
        return new_view()

    with pytest.raises(RuntimeError, match=r"replay worker process died \(wait status 768\)"):
        run_replay(path, new_view_dying_in_the_child, parallel=True)
    assert no_child_left()


def test_a_failure_in_the_parent_ends_the_child(logged: tuple[Path, MemoryStore]) -> None:
    path, _ = logged
    parent = os.getpid()

    def new_view_failing_in_the_parent() -> RoutingView:
        if os.getpid() == parent:
            raise KeyError("no view for the parent")
        return new_view()

    with pytest.raises(KeyError, match="no view for the parent"):
        run_replay(path, new_view_failing_in_the_parent, parallel=True)
    assert no_child_left()


def test_by_default_only_a_long_log_is_replayed_forked(
    logged: tuple[Path, MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, memory = logged
    assert memory.last_seq() < replay_runner.PARALLEL_MIN_EVENTS
    assert run_replay(path, new_view).processes == 1  # short
    if threading.active_count() > 1:
        pytest.skip("other threads are running: run_replay never forks then")
    monkeypatch.setattr(replay_runner, "PARALLEL_MIN_EVENTS", 100)  # this log now counts as long
    assert run_replay(path, new_view).processes == 2
    assert run_replay(path, new_view, from_seq=memory.last_seq() - 50).processes == 1  # a short range
    rid = select_decisions(memory)[5][1].request_id
    by_request = run_replay(path, new_view, request_id=rid)
    assert by_request.processes == 1
    assert by_request.total == len(select_decisions(memory, request_id=rid)) > 0
    assert run_replay(path, new_view, keep_all=True).processes == 1
    assert no_child_left()


@pytest.mark.parametrize(
    "selection",
    [{"keep_all": True}, {"request_id": "req5"}, {"to_seq": 0}],
    ids=["keep_all", "request", "to0"],
)
def test_forcing_parallel_keeps_the_selection(logged: tuple[Path, MemoryStore], selection: dict) -> None:
    path, _ = logged
    serial, serial_results = replayed(path, new_view, parallel=False, **selection)
    forked, forked_results = replayed(path, new_view, parallel=True, **selection)
    assert (forked.total, len(forked_results)) == (serial.total, len(serial_results))


# -- Configurations from the log

RUNS = [(RoutingPolicy(), CATALOG), (POLICY_B, CATALOG_B), (RoutingPolicy(), CATALOG)]


@pytest.fixture(scope="module")
def logged_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MemoryStore]:
    """Three gateway runs on one log, under configurations A, B and A again (each recorded at its start)."""
    memory = simulate_runs(4, RUNS, 120)
    path = tmp_path_factory.mktemp("replay-runs") / "log.db"
    with closing(SqliteStore(path)) as store:
        store.append([e for _, e in memory.read_after(0)])
    return path, memory


@pytest.mark.parametrize(("from_seq", "to_seq"), [(None, None), (None, 300), (200, None), (350, 700)])
def test_forked_and_serial_replays_take_each_configuration_from_the_log(
    logged_runs: tuple[Path, MemoryStore], from_seq: int | None, to_seq: int | None
) -> None:
    path, memory = logged_runs
    expected = select_decisions(memory, from_seq=from_seq, to_seq=to_seq)
    configs = [s for s, e in memory.read_after(0) if isinstance(e, ConfigApplied)]
    assert len(configs) == 3 and configs[0] == 1
    split = 1 + int((memory.last_seq() - 1) * CHILD_SHARE)
    assert configs[1] < split < configs[2]  # the parent's part starts under a configuration the child's holds
    for parallel in (False, True):
        run, results = replayed(
            path, new_view, from_seq=from_seq, to_seq=to_seq, parallel=parallel, config_from_log=True
        )
        assert (run.total, results, run.unrecorded) == (len(expected), [], 0)
        assert run.processes == (2 if parallel else 1)
    whole = run_replay(path, new_view, parallel=False, config_from_log=True)
    assert whole.configs == 2
    # The same log under one configuration (a what-if): B's decisions change, forked or not alike.
    (serial, serial_results), (forked, forked_results) = (
        replayed(path, new_view, parallel=p) for p in (False, True)
    )
    assert serial_results and summary(forked_results) == summary(serial_results)
    assert (serial.configs, forked.configs) == (1, 1)


def test_decisions_older_than_any_recorded_configuration_replay_under_the_given_one(tmp_path: Path) -> None:
    memory = simulate(8, 60)  # an older gateway: it recorded no configuration
    old = len(select_decisions(memory))
    memory.append([recorded(POLICY_B, CATALOG_B)])
    simulate(9, 60, POLICY_B, store=memory, models=CATALOG_B)
    path = tmp_path / "log.db"
    with closing(SqliteStore(path)) as store:
        store.append([e for _, e in memory.read_after(0)])
    total = len(select_decisions(memory))
    for parallel in (False, True):
        run = run_replay(path, new_view, parallel=parallel, config_from_log=True)
        assert (run.total, run.changed, run.unrecorded, run.configs) == (total, 0, old, 2)
    assert 0 < old < total
