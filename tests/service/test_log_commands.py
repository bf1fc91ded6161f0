"""`switchboard log export`, `log tail` and `log compact` on a generated log, and every read-only command on a
read-only log (a read-only file, a read-only directory)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from events.retention import REMOVABLE
from events.sqlite_store import SqliteStore
from events.store import StoreUnwritable
from events.types import KeyChecked, LimitChanges, ModelUpdated, event_type
from service import cli, server
from service.server import DB_NAME

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from gen_log import T0, generate  # noqa: E402

EVENTS = 3_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose log holds what a serving gateway writes (copy it before changing it)."""
    data_dir = tmp_path_factory.mktemp("generated")
    generate(data_dir / DB_NAME, EVENTS, seed=3)
    return data_dir


@pytest.fixture
def data_dir(generated: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    copy.mkdir()
    shutil.copy(generated / DB_NAME, copy / DB_NAME)
    return copy


def stored(data_dir: Path) -> list[tuple[int, bytes]]:
    with closing(SqliteStore(data_dir / DB_NAME, read_only=True)) as store:
        return store.read_raw_after(0, 10**9)


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


# ---- log export ------------------------------------------------------------------------------------------


def test_log_export_writes_every_event_as_one_json_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["log", "export", "--data-dir", str(data_dir)]) == 0
    exported = lines(capsys.readouterr().out)
    rows = stored(data_dir)
    assert len(exported) == len(rows) >= EVENTS
    assert exported == [{"seq": s, **json.loads(data)} for s, data in rows]
    first = exported[0]
    assert list(first)[:3] == ["seq", "type", "hash"] and first["type"] == "config_applied" and "ts" in first


def test_log_export_selects_by_seq_time_and_type(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = stored(data_dir)
    base = ["log", "export", "--data-dir", str(data_dir)]
    assert cli.main([*base, "--since", str(rows[-10][0])]) == 0
    assert [e["seq"] for e in lines(capsys.readouterr().out)] == [s for s, _ in rows[-9:]]
    assert cli.main([*base, "--types", "attempt_failed, stream_stalled"]) == 0
    picked = lines(capsys.readouterr().out)
    assert picked and {e["type"] for e in picked} == {"attempt_failed", "stream_stalled"}
    assert len(picked) == sum(json.loads(d)["type"] in ("attempt_failed", "stream_stalled") for _, d in rows)
    middle = json.loads(rows[len(rows) // 2][1])["ts"]
    when = f"{middle:.0f}"
    import datetime as dt

    iso = dt.datetime.fromtimestamp(float(when), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert cli.main([*base, "--after", iso]) == 0
    after = lines(capsys.readouterr().out)
    assert after and all(e["ts"] >= float(when) for e in after)  # type: ignore[operator]
    assert len(after) == len(rows) - next(
        i for i, (_, d) in enumerate(rows) if json.loads(d)["ts"] >= float(when)
    )
    assert cli.main([*base, "--after", "1d"]) == 0  # the generated log is from 2025: nothing that recent
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--types", "attempt_failed,no_such"],
            "unknown event type 'no_such'; known types: attempt_failed, ",
        ),
        (
            ["--after", "last tuesday"],
            "--after 'last tuesday' is neither a duration (30d, 12h, 90m, 2w) nor a date",
        ),
    ],
)
def test_log_export_refuses_a_bad_selection_in_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert cli.main(["log", "export", "--data-dir", str(data_dir), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and said in captured.err


def test_log_export_into_a_pipe_closed_early_ends_quietly(data_dir: Path) -> None:
    # `switchboard log export | head -1`: the reader has what it wanted; no traceback, exit 0.
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "log", "export", "--data-dir", str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["seq"] == 1
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()


# ---- log tail --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [5000, 2], ids=["by-index", "by-rowid"])
def test_log_tail_counts_back_over_the_gaps_a_compaction_leaves(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    # More events of some types than a page are read along the rowid, fewer from the type index.
    monkeypatch.setattr(cli, "PAGE", page)
    assert cli.main(["log", "compact", "--data-dir", str(data_dir), "--before", "999999999"]) == 0
    capsys.readouterr()
    rows = stored(data_dir)
    base = ["log", "tail", "--json", "--data-dir", str(data_dir)]
    assert cli.main([*base, "-n", "7"]) == 0
    assert [e["seq"] for e in lines(capsys.readouterr().out)] == [s for s, _ in rows[-7:]]
    assert cli.main([*base, "-n", "100000"]) == 0
    assert [e["seq"] for e in lines(capsys.readouterr().out)] == [s for s, _ in rows]
    assert cli.main([*base, "-n", "3", "--type", "key_added,service_started"]) == 0
    picked = [
        (s, json.loads(d)["type"])
        for s, d in rows
        if json.loads(d)["type"] in ("key_added", "service_started")
    ]
    assert [(e["seq"], e["event"]["type"]) for e in lines(capsys.readouterr().out)] == picked[-3:]  # type: ignore[index]
    assert cli.main([*base, "-n", "0"]) == 0
    assert capsys.readouterr().out == ""


# ---- log compact -----------------------------------------------------------------------------------------


def test_log_compact_dry_run_says_what_would_go_and_changes_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = stored(data_dir)
    cutoff = rows[len(rows) // 2][0]
    assert (
        cli.main(["log", "compact", "--data-dir", str(data_dir), "--before", str(cutoff), "--dry-run"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    going = {t: sum(1 for s, d in rows if s < cutoff and json.loads(d)["type"] == t) for t in REMOVABLE}
    assert out[0] == f"would remove {sum(going.values()):,} events before seq {cutoff:,}:"
    assert {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out[1:-1]} == {
        t: n for t, n in going.items() if n
    }
    assert out[-1].startswith("kept: every configuration, lifecycle, key, model and session event")
    assert stored(data_dir) == rows


def test_log_compact_removes_old_records_and_gives_the_space_back(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = stored(data_dir)
    size = (data_dir / DB_NAME).stat().st_size
    assert cli.main(["log", "compact", "--data-dir", str(data_dir), "--before", "30d"]) == 0
    out = capsys.readouterr().out.splitlines()
    kept = stored(data_dir)
    assert out[0] == f"removed {len(rows) - len(kept):,} events before seq {rows[-1][0]:,} (older than 30d):"
    # All of it is older than 30 days; the newest event stays all the same (no seq is handed out twice).
    assert kept[-1] == rows[-1]
    assert {json.loads(d)["type"] for _, d in kept[:-1]}.isdisjoint(REMOVABLE)
    shrunk = out[-1].removeprefix("file: ").removesuffix(" bytes (VACUUM)").split(" -> ")
    assert (
        int(shrunk[0].replace(",", ""))
        >= size
        > int(shrunk[1].replace(",", ""))
        == (data_dir / DB_NAME).stat().st_size
    )
    assert int(shrunk[1].replace(",", "")) < size / 2
    # What is left still replays (nothing: the decisions went) and folds.
    assert cli.main(["replay", "--data-dir", str(data_dir), "--processes", "1"]) == 0
    assert capsys.readouterr().out.strip() == "no recorded decisions match"


def test_log_compact_beside_a_running_gateway_deletes_but_does_not_vacuum(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = stored(data_dir)
    cutoff = json.loads(rows[len(rows) // 2][1])["ts"]
    import datetime as dt

    when = dt.datetime.fromtimestamp(cutoff, dt.UTC).isoformat()
    size = (data_dir / DB_NAME).stat().st_size
    gateway = SqliteStore(data_dir / DB_NAME)
    try:
        with server.data_dir_lock(data_dir):  # as the serving gateway holds it
            assert cli.main(["log", "compact", "--data-dir", str(data_dir), "--before", when]) == 0
            gateway.append([KeyChecked(ts=T0, key_id="groq.k1", ok=True)])  # the gateway goes on writing
    finally:
        gateway.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("removed ") and f"(older than {when}):" in out[0]
    assert out[-1].startswith(f"file: {size:,} bytes, ") and "not shrunk, as a gateway holds" in out[-1]
    kept = stored(data_dir)
    assert (data_dir / DB_NAME).stat().st_size >= size
    assert event_type(KeyChecked(ts=0, key_id="k", ok=True)) in json.loads(kept[-1][1])["type"]
    assert all(s < rows[len(rows) // 2][0] or (s, d) in rows for s, d in kept[:-1])


@pytest.mark.parametrize(
    ("before", "said"),
    [("someday", "--before 'someday' is neither a duration"), ("-5", "--before '-5' is neither")],
)
def test_log_compact_refuses_a_bad_cutoff_in_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str], before: str, said: str
) -> None:
    rows = stored(data_dir)
    assert cli.main(["log", "compact", "--data-dir", str(data_dir), f"--before={before}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and said in captured.err
    assert stored(data_dir) == rows


def test_log_compact_without_a_log_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["log", "compact", "--data-dir", str(tmp_path / "none"), "--before", "30d"]) == 2
    assert "nothing to compact" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


# ---- a read-only log -------------------------------------------------------------------------------------


def test_a_read_only_store_reads_and_cannot_write(data_dir: Path, tmp_path: Path) -> None:
    rows = stored(data_dir)
    with closing(SqliteStore(data_dir / DB_NAME, read_only=True)) as store:
        assert store.last_seq() == rows[-1][0]
        with pytest.raises(StoreUnwritable, match="read-only"):
            store.append([KeyChecked(ts=T0, key_id="groq.k1", ok=True)])
    with closing(SqliteStore(tmp_path / "missing" / DB_NAME, read_only=True)) as empty:
        assert empty.last_seq() == 0 and empty.read_after(0) == []
    assert not (tmp_path / "missing").exists()  # nothing created by reading


READ_ONLY_COMMANDS = [
    ["log", "tail", "-n", "5"],
    ["log", "export", "--types", "config_applied"],
    ["replay", "--processes", "1"],
    ["models"],
    ["keys", "list"],
    ["sessions"],
]


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir to make read-only; writable again at the end, so it can be removed."""
    path = tmp_path / "read-only"
    path.mkdir()
    try:
        yield path
    finally:
        for p in (path, *path.iterdir()):
            p.chmod(stat.S_IRWXU)


def as_reader(argv: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a user the file modes apply to. Root ignores them (CI runs tests as root): then as root
    without capabilities, for which they hold as for any owner."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip(
                "running as root without setpriv (util-linux) to drop the capabilities that ignore modes"
            )
        prefix = [setpriv, "--bounding-set=-all", "--inh-caps=-all"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_SECRET_KEY"] = "ab" * 32
    return subprocess.run(
        [*prefix, sys.executable, "-m", "service.cli", *argv, "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("where", ["file", "directory"])
def test_every_read_only_command_reads_a_read_only_log(generated: Path, shared_dir: Path, where: str) -> None:
    db = shared_dir / DB_NAME
    shutil.copy(generated / DB_NAME, db)
    db.chmod(0o444)
    # A read-only file in a directory others can write (its -shm can be made), or a read-only directory
    # where it cannot: then the log is opened immutable (no -shm, so no writer can be on it).
    shared_dir.chmod(0o755 if where == "file" else 0o555)
    for argv in READ_ONLY_COMMANDS:
        done = as_reader(argv, shared_dir)
        assert (done.returncode, done.stderr) == (0, ""), argv
        assert done.stdout.strip(), argv
    assert "decisions reproduced (100.0%)" in as_reader(["replay", "--processes", "1"], shared_dir).stdout
    # A command that writes gives the one line it always gave.
    written = as_reader(["keys", "disable", "groq.k1"], shared_dir)
    assert written.returncode == 2
    assert (
        written.stderr
        == f"error: {db} cannot be written (a read-only file or directory): make both writable\n"
    )
    if where == "directory":
        assert sorted(p.name for p in shared_dir.iterdir()) == [DB_NAME]  # not even a -shm
        # An immutable open is blind to later writes: following it would wait for ever in silence.
        follow = as_reader(["log", "tail", "-n", "1", "--follow"], shared_dir)
        assert follow.returncode == 2 and "cannot watch" in follow.stderr, follow.stderr


def test_a_read_only_directory_with_committed_events_in_the_wal_says_to_copy_them(
    generated: Path, shared_dir: Path
) -> None:
    staging = shared_dir / "staging"
    staging.mkdir()
    shutil.copy(generated / DB_NAME, staging / DB_NAME)
    writer = SqliteStore(staging / DB_NAME)
    try:
        writer.append(
            [KeyChecked(ts=T0, key_id="groq.k1", ok=True)]
        )  # committed in the -wal, not the file yet
        for name in (DB_NAME, DB_NAME + "-wal"):
            shutil.copy(staging / name, shared_dir / name)
    finally:
        writer.close()
    shutil.rmtree(staging)
    shared_dir.chmod(0o555)
    done = as_reader(["log", "tail"], shared_dir)
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {shared_dir / DB_NAME} cannot be read where it is: its {DB_NAME}-wal holds committed events "
        "that SQLite can only read beside a writable -shm; copy the database and its -wal to a writable "
        "directory\n"
    )


def test_log_tail_shows_a_models_limit_changes_as_the_limits_it_changes() -> None:
    event = ModelUpdated(ts=1.0, platform="p", model="m", limits=LimitChanges(rpm=None, tpm=5))
    assert cli.event_line(7, event).endswith("p/m limits=rpm:none,tpm:5")
