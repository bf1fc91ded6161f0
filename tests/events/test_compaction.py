"""Compaction (`SqliteStore.delete_before` with events/retention.py's types): folding the compacted log gives
exactly the projections the full log gives, every decision after the cutoff replays exactly as before, the
seqs of what stays never change, and a writer appending meanwhile loses nothing."""

from __future__ import annotations

import pickle
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from events.analytics import Analytics
from events.config_applied import CONFIG_TAG, last_config, view_of
from events.op_stats import OperationalStats
from events.replay import Replayed
from events.retention import REMOVABLE
from events.sqlite_store import SqliteStore
from events.types import (
    EVENT_TYPES,
    KeyAdded,
    KeyChecked,
    KeyDisabled,
    KeyEnabled,
    KeyInvalidated,
    KeyRemoved,
    ModelUpdated,
    RequestReceived,
    RouteDecided,
    ServiceStarted,
    ServiceStopped,
    SessionBanned,
    SessionPinCleared,
    SessionPinned,
    event_tag,
)
from events.view import FOLD_ORDER, RoutingView, rebuild
from service.replay_runner import run_replay

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_log import generate  # noqa: E402
from test_replay import CATALOG, CATALOG_B, POLICY_B, RoutingPolicy, new_view, simulate_runs  # noqa: E402

ALWAYS_KEPT = {
    event_tag(t)
    for t in (
        ServiceStarted,
        ServiceStopped,
        KeyAdded,
        KeyRemoved,
        KeyDisabled,
        KeyEnabled,
        KeyInvalidated,
        KeyChecked,
        ModelUpdated,
        SessionPinned,
        SessionPinCleared,
        SessionBanned,
    )
} | {CONFIG_TAG}


def test_nothing_a_projection_folds_or_the_log_must_keep_is_removable() -> None:
    folders = (*FOLD_ORDER, OperationalStats, Analytics)
    folded = {event_tag(t) for t in EVENT_TYPES if any(t in p.FOLDS for p in folders)}
    assert folded == RoutingView.FOLDED_TAGS | {
        event_tag(t) for t in (*OperationalStats.FOLDS, *Analytics.FOLDS)
    }
    assert not REMOVABLE & folded
    assert not REMOVABLE & ALWAYS_KEPT
    assert {event_tag(RouteDecided), event_tag(RequestReceived)} <= REMOVABLE


def generated(path: Path) -> None:
    generate(path, 6_000, seed=7)  # what a serving gateway writes, decisions that reproduce


def three_runs(path: Path) -> None:
    """Runs under configurations A, B, A: each decision replays under the one recorded before it."""
    memory = simulate_runs(
        4, [(RoutingPolicy(), CATALOG), (POLICY_B, CATALOG_B), (RoutingPolicy(), CATALOG)], 150
    )
    with closing(SqliteStore(path)) as store:
        store.append([e for _, e in memory.read_after(0)])


def projections(path: Path) -> tuple[int, dict[str, bytes]]:
    """Every projection folded from the whole log, under the configuration it records, as bytes to compare."""
    with closing(SqliteStore(path, read_only=True)) as store:
        config = last_config(store)
        view = view_of(config) if config is not None else new_view()
        stats = OperationalStats()
        rebuild(store, view, also=(stats.apply,))
    parts = ("catalog", "health", "cooldowns", "quotas", "stats", "sessions", "in_flight")
    folded = {name: pickle.dumps(getattr(view, name)) for name in parts}
    folded["operational"] = pickle.dumps(stats.models)
    return view.seq, folded


def replayed(path: Path, from_seq: int | None = None) -> tuple[int, list[tuple[int, object, bool]]]:
    results: list[Replayed] = []
    run = run_replay(
        path, new_view, from_seq=from_seq, keep_all=True, config_from_log=True, on_result=results.append
    )
    return run.total, [(r.seq, r.recomputed, r.matches) for r in results]


def rows(path: Path) -> list[tuple[int, str, bytes]]:
    with closing(SqliteStore(path, read_only=True)) as store:
        return [
            (s, t, bytes(d))
            for s, t, d in store._db.execute("SELECT seq, type, data FROM events ORDER BY seq")
        ]


@pytest.mark.parametrize("make", [generated, three_runs], ids=["generated", "three-configurations"])
@pytest.mark.parametrize("share", [0.3, 0.7])
def test_the_compacted_log_folds_and_replays_as_the_full_one(
    tmp_path: Path, make: Callable[[Path], None], share: float
) -> None:
    full, compacted = tmp_path / "full.db", tmp_path / "compacted.db"
    make(full)
    shutil.copy(full, compacted)
    before = rows(full)
    cutoff = before[int(len(before) * share)][0]
    with closing(SqliteStore(compacted)) as store:
        expected = store.count_by_type(cutoff, REMOVABLE)
        removed = sum((batch for batch in store.delete_before(cutoff, REMOVABLE, batch=97)), Counter[str]())
        store.vacuum()
    assert removed == expected and removed[event_tag(RouteDecided)] > 0
    after = rows(compacted)
    # What stays is every row but the removed ones, each at its seq, byte for byte.
    assert after == [r for r in before if not (r[0] < cutoff and r[1] in REMOVABLE)]
    assert len(before) - len(after) == removed.total()
    assert compacted.stat().st_size < full.stat().st_size
    assert projections(compacted) == projections(full)
    total, results = replayed(full, from_seq=cutoff)
    assert total > 0 and all(matches for _, _, matches in results)
    assert replayed(compacted) == replayed(compacted, from_seq=cutoff) == (total, results)


def test_a_writer_appending_between_batches_loses_nothing(tmp_path: Path) -> None:
    # A gateway serving meanwhile: its appends take the write lock between two of the compaction's batches.
    path = tmp_path / "log.db"
    generated(path)
    compactor, gateway = SqliteStore(path), SqliteStore(path)
    try:
        last = gateway.last_seq()
        cutoff = last // 2
        appended: list[int] = []
        for i, _ in enumerate(compactor.delete_before(cutoff, REMOVABLE, batch=500)):
            appended += gateway.append([KeyChecked(ts=2e9 + i, key_id="groq.k1", ok=True)])
        assert appended == list(range(last + 1, last + 1 + len(appended))) and len(appended) > 3
        assert [s for s, _ in gateway.read_after(last)] == appended
        assert compactor.count_by_type(cutoff, REMOVABLE) == Counter()
    finally:
        compactor.close()
        gateway.close()


def test_a_cutoff_at_the_start_removes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    generated(path)
    before = rows(path)
    with closing(SqliteStore(path)) as store:
        assert list(store.delete_before(1, REMOVABLE)) == []
        assert store.count_by_type(1, REMOVABLE) == Counter()
    assert rows(path) == before


def test_a_cutoff_past_the_end_keeps_the_newest_event_so_no_seq_is_handed_out_twice(tmp_path: Path) -> None:
    # Found in review: `--before` a date after the last event deleted the log's end, and SQLite gave those
    # seqs out again to events a running gateway (and every later snapshot) then never folded.
    path = tmp_path / "log.db"
    generated(path)
    with closing(SqliteStore(path)) as store:
        last = store.last_seq()
        list(store.delete_before(last + 1_000, REMOVABLE))
        assert store.last_seq() == last
        assert store.append([KeyChecked(ts=3e9, key_id="groq.k1", ok=True)]) == [last + 1]
