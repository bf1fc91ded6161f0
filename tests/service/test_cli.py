"""The `switchboard` command line, called as `service.cli.main([...])` on a temporary config and data dir."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from events.catalog import CatalogModel
from events.decide import decide
from events.policy import RoutingPolicy
from events.replay import Replayed
from events.sqlite_store import SqliteStore
from events.types import AttemptFailed, KeyAdded, KeyDisabled, KeyInvalidated, RouteDecided, RouteInput
from events.view import POOL_REASON, RoutingView
from service import __version__, cli, server
from service.secrets import Vault, key_id_for
from service.server import DB_NAME

ROOT = Path(__file__).resolve().parents[2]
T = 1_750_000_000.0
MASTER_HEX = "cd" * 32
SECRET = "sk-cli-provider-secret-4321"

CONFIG = """\
[server]
data_dir = "{data_dir}"
[catalog]
builtin = false

[[platforms]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
platform = "local"
id = "ok"
intelligence_rank = 1
context_window = 8192

[[models]]
platform = "local"
id = "echo"
intelligence_rank = 2
"""


@pytest.fixture
def setup(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", MASTER_HEX)
    monkeypatch.delenv("LOCAL_API_KEY", raising=False)
    for name in ("SWITCHBOARD_HOST", "SWITCHBOARD_PORT", "SWITCHBOARD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    config = tmp_path / "switchboard.toml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    return config, data_dir


def run(*argv: str, config: Path) -> int:
    return cli.main([*argv, "--config", str(config)])


def add_key(monkeypatch, config: Path, secret: str = SECRET, platform: str = "local") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(secret + "\n"))
    return run("keys", "add", platform, config=config)


def raw_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob(DB_NAME + "*")))


def table(text: str) -> dict[str, str]:
    """Rows of a CLI table by their first column."""
    return {line.split()[0]: line for line in text.strip().splitlines()[1:] if line.strip()}


def test_keys_add_reads_the_key_from_stdin_and_stores_it_encrypted(setup, monkeypatch, capsys):
    config, data_dir = setup
    assert add_key(monkeypatch, config, SECRET + "  \r") == 0  # surrounding whitespace is not the key
    out = capsys.readouterr().out
    key_id = key_id_for(bytes.fromhex(MASTER_HEX), "local", SECRET)
    assert out.strip() == f"added: {key_id} (local, …4321)"
    assert SECRET not in out
    assert SECRET.encode() not in raw_bytes(data_dir)
    vault = Vault(data_dir / DB_NAME, bytes.fromhex(MASTER_HEX))
    try:
        assert vault.get(key_id) == SECRET  # stored, and only the master key opens it
    finally:
        vault.close()

    assert add_key(monkeypatch, config) == 0
    assert capsys.readouterr().out.strip() == f"already stored: {key_id} (local, …4321)"


def test_keys_add_never_takes_the_key_from_argv(setup, monkeypatch, capsys):
    config, data_dir = setup
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exc:
        run("keys", "add", "local", SECRET, config=config)
    assert exc.value.code == 2
    assert not list(data_dir.glob(DB_NAME + "*")) or SECRET.encode() not in raw_bytes(data_dir)


def test_keys_add_with_nothing_on_stdin_is_an_error(setup, monkeypatch, capsys):
    config, _ = setup
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert run("keys", "add", "local", config=config) == 2
    assert "no key on standard input" in capsys.readouterr().err


def test_keys_add_unknown_platform_exits_2(setup, monkeypatch, capsys):
    config, data_dir = setup
    assert add_key(monkeypatch, config, platform="nope") == 2
    err = capsys.readouterr().err
    assert "unknown platform 'nope'" in err
    assert "local" in err  # the known ones are listed
    assert SECRET not in err
    assert not list(data_dir.glob(DB_NAME + "*")) or SECRET.encode() not in raw_bytes(data_dir)


def test_keys_list_disable_enable(setup, monkeypatch, capsys):
    config, _ = setup
    assert run("keys", "list", config=config) == 0
    assert "no keys yet" in capsys.readouterr().out

    assert add_key(monkeypatch, config) == 0
    key_id = key_id_for(bytes.fromhex(MASTER_HEX), "local", SECRET)
    capsys.readouterr()
    assert run("keys", "list", config=config) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["KEY", "PLATFORM", "LABEL", "SOURCE", "STATUS"]
    assert table(out)[key_id].split() == [key_id, "local", "…4321", "vault", "ok"]
    assert SECRET not in out

    assert run("keys", "disable", key_id, "--reason", "leaked", config=config) == 0
    assert capsys.readouterr().out.strip() == f"disabled {key_id}"
    assert run("keys", "list", config=config) == 0
    assert table(capsys.readouterr().out)[key_id].split()[4:] == ["disabled", "(leaked)"]

    assert run("keys", "enable", key_id, config=config) == 0
    assert capsys.readouterr().out.strip() == f"enabled {key_id}"
    assert run("keys", "list", config=config) == 0
    assert table(capsys.readouterr().out)[key_id].split()[4:] == ["ok"]

    assert run("keys", "disable", "local.0000000000", config=config) == 2
    assert "no key 'local.0000000000'" in capsys.readouterr().err


def test_keys_list_shows_invalid_and_cooling_keys(setup, monkeypatch, capsys):
    config, data_dir = setup
    other = "sk-cli-second-secret-8765"
    assert add_key(monkeypatch, config) == 0
    assert add_key(monkeypatch, config, other) == 0
    first_id = key_id_for(bytes.fromhex(MASTER_HEX), "local", SECRET)
    second_id = key_id_for(bytes.fromhex(MASTER_HEX), "local", other)
    store = SqliteStore(data_dir / DB_NAME)
    try:
        now = time.time()
        store.append(
            [
                KeyInvalidated(ts=now, key_id=first_id, status=401, message="Incorrect API key provided."),
                AttemptFailed(
                    ts=now,
                    request_id="req_x",
                    attempt=1,
                    platform="local",
                    model="ok",
                    key_id=second_id,
                    kind="rate_limited",
                    status=429,
                    retry_after_s=120.0,
                ),
            ]
        )
    finally:
        store.close()
    capsys.readouterr()
    assert run("keys", "list", config=config) == 0
    rows = table(capsys.readouterr().out)
    assert "invalid (HTTP 401: Incorrect API key provided.)" in rows[first_id]
    assert rows[second_id].split()[4] == "ok"
    assert "cooling: ok 1" in rows[second_id]  # ~120 s left, on model ok only
    assert "echo" not in rows[second_id]


def test_models_lists_the_catalog_and_toggles_models(setup, monkeypatch, capsys):
    config, _ = setup
    assert add_key(monkeypatch, config) == 0
    capsys.readouterr()
    assert run("models", config=config) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "MODEL",
        "TASK",
        "POOL",
        "RANK",
        "CONTEXT",
        "ENABLED",
        "CHAIN",
        "KEYS",
        "OK/TOTAL",
    ]
    rows = table(out)
    assert rows["local/ok"].split() == ["local/ok", "chat", "balanced", "1", "8192", "yes", "yes", "1", "-"]
    assert rows["local/echo"].split() == ["local/echo", "chat", "balanced", "2", "-", "yes", "yes", "1", "-"]
    # ... and where each platform's keys come from.
    assert rows["PLATFORM"].split() == ["PLATFORM", "KIND", "KEY", "VARIABLE", "USABLE", "KEYS"]
    assert rows["local"].split() == ["local", "openai", "LOCAL_API_KEY", "1"]

    assert run("models", "disable", "local/echo", config=config) == 0
    assert capsys.readouterr().out.strip() == "disabled local/echo"
    assert run("models", config=config) == 0
    assert "local/echo" not in table(capsys.readouterr().out)
    assert run("models", "--all", config=config) == 0
    assert table(capsys.readouterr().out)["local/echo"].split()[5] == "no"
    assert run("models", "enable", "echo", config=config) == 0  # a bare id that names one model
    assert capsys.readouterr().out.strip() == "enabled local/echo"

    assert run("models", "disable", "nope", config=config) == 2
    assert "matches 0 models" in capsys.readouterr().err
    assert run("models", "disable", config=config) == 2
    assert "name the model" in capsys.readouterr().err


def test_log_tail_prints_the_last_events_as_json_lines(setup, monkeypatch, capsys):
    config, _ = setup
    for n in range(3):
        assert add_key(monkeypatch, config, f"sk-cli-key-number-{n:04d}") == 0
    key_id = key_id_for(bytes.fromhex(MASTER_HEX), "local", "sk-cli-key-number-0002")
    assert run("keys", "disable", key_id, config=config) == 0
    capsys.readouterr()

    assert run("log", "tail", "-n", "2", "--json", config=config) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [3, 4]
    assert [line["event"]["type"] for line in lines] == ["key_added", "key_disabled"]
    assert lines[1]["event"]["key_id"] == key_id

    assert run("log", "tail", "-n", "100", "--type", "key_added", "--json", config=config) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    out = "".join(json.dumps(line) for line in lines)
    assert "sk-cli-key-number" not in out  # labels only: "…0000"


BAD_CONFIGS = [
    pytest.param('[server]\nhost = "127.0.0.1"\ncolour = "blue"\n', 3, "server.colour", id="unknown-key"),
    pytest.param('[server]\nport = "8080"\n', 2, "server.port", id="wrong-type"),
    pytest.param("[server]\nhost = \n", 2, None, id="toml-syntax"),
    pytest.param(
        '[catalog]\nbuiltin = false\n\n[[platforms]]\nname = "local"\nkind = "openai"\n'
        'base_url = "http://x/v1"\nprotection = "sometimes"\n',
        8,
        "[[platforms]][1].protection",
        id="bad-choice",
    ),
]


@pytest.mark.parametrize(("text", "line", "key"), BAD_CONFIGS)
@pytest.mark.parametrize("argv", [("keys", "list"), ("models",), ("log", "tail")])
def test_a_bad_config_exits_2_with_file_and_line(tmp_path, monkeypatch, capsys, text, line, key, argv):
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", MASTER_HEX)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main([*argv, "--config", str(path), "--data-dir", str(tmp_path / "data")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith(f"error: {path}:{line}: "), err
    if key is not None:
        assert f":{line}: {key}: " in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_a_missing_config_file_exits_2(tmp_path, capsys):
    assert cli.main(["models", "--config", str(tmp_path / "nope.toml")]) == 2
    assert f"error: {tmp_path / 'nope.toml'}: config file not found" in capsys.readouterr().err


def test_a_malformed_master_key_exits_2_without_storing(setup, monkeypatch, capsys):
    config, data_dir = setup
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", "not-a-key")
    assert add_key(monkeypatch, config) == 2
    err = capsys.readouterr().err
    assert "SWITCHBOARD_SECRET_KEY must be" in err
    assert "not-a-key" not in err
    assert not list(data_dir.glob(DB_NAME + "*")) or SECRET.encode() not in raw_bytes(data_dir)


def test_explain_lists_the_models_the_pool_left_out_on_one_line():
    models = [
        CatalogModel("local", name, pool, True, True, None, rank, rank)
        for name, pool, rank in (("a", "balanced", 2), ("s1", "smart", 1), ("s2", "smart", 3))
    ]
    view = RoutingView(models, RoutingPolicy())
    view.apply(1, KeyAdded(ts=0.0, key_id="k1", platform="local", label="k1", source="config"))
    route = RouteInput(mode="auto", requested=("auto",))
    d = decide(view, route, 10.0, random.Random(1))
    rec = d.record(ts=10.0, request_id="r1", attempt=1, seed=1, view_seq=1, now=10.0, route=route)
    for replayed in (Replayed(5, rec, d, True), Replayed(5, rec, None, False)):  # recomputed, or as recorded
        text = cli.explain(replayed)
        assert f"    {POOL_REASON}: local/s1, local/s2" in text.splitlines()
        assert text.count("local/s1") == 1


# ---- serve: a start that cannot serve says so on one line ------------------------------------------------


def test_serve_on_a_port_in_use_prints_one_line_and_exits_1(setup, capsys):
    config, data_dir = setup
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--config", str(config), "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no generated token shown for a gateway that never listened
    assert captured.err.splitlines() == [
        f"switchboard: cannot listen on 127.0.0.1:{port}: address already in use (another gateway? pick "
        "another port with [server] port or SWITCHBOARD_PORT)"
    ]
    assert not (data_dir / DB_NAME).exists() or SqliteStore(data_dir / DB_NAME).last_seq() == 0


def test_serve_on_a_data_dir_another_gateway_holds_refuses_naming_it(setup, capsys):
    config, data_dir = setup
    with server.data_dir_lock(data_dir):  # as a running gateway holds it
        assert cli.main(["serve", "--config", str(config), "--port", "0"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"switchboard: another gateway (pid {os.getpid()}) is serving the data dir ")
    assert (data_dir / server.LOCK_NAME).read_text() == ""  # released, no stale pid
    assert not (data_dir / DB_NAME).exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"switchboard {__version__}"


# ---- paths as typed ------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_callers_directory(setup, tmp_path, monkeypatch, capsys):
    """scripts/switchboard runs from the checkout; it passes the directory the command was typed in."""
    _, data_dir = setup
    elsewhere = tmp_path / "checkout"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv(cli.CALLER_DIR_ENV, str(tmp_path))
    assert add_key(monkeypatch, Path("switchboard.toml")) == 0  # relative: tmp_path/switchboard.toml
    capsys.readouterr()
    assert cli.main(["keys", "list", "--config", "switchboard.toml", "--data-dir", "data"]) == 0
    assert "local" in capsys.readouterr().out
    assert (data_dir / DB_NAME).exists()
    assert not (elsewhere / "data").exists()
    monkeypatch.delenv(cli.CALLER_DIR_ENV)  # without the wrapper: the working directory, as any command
    assert cli.main(["models", "--config", "switchboard.toml"]) == 2
    assert "switchboard.toml: config file not found" in capsys.readouterr().err


def fake_checkout(root: Path) -> Path:
    """scripts/switchboard and its bootstrap in a checkout whose installed `switchboard` reports how it
    was run (where, with which arguments), so the wrapper is tested without installing anything."""
    (root / "scripts").mkdir(parents=True)
    for name in ("switchboard", "_bootstrap.sh"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    (root / "pyproject.toml").write_text("[project]\n")
    (root / "constraints.txt").write_text("")
    digest = hashlib.sha256(b"[project]\n").hexdigest()[:16]
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (root / ".venv" / f".installed-base-{digest}").touch()
    fake = bin_dir / "switchboard"
    fake.write_text('#!/bin/sh\necho "cwd=$PWD caller=$SWITCHBOARD_CALLER_DIR args=$*"\n')
    fake.chmod(0o755)
    return root


def test_the_wrapper_runs_the_installed_cli_from_the_checkout_with_the_callers_directory(tmp_path):
    checkout = fake_checkout(tmp_path / "checkout")
    here = tmp_path / "somewhere"
    here.mkdir()
    done = subprocess.run(
        [str(checkout / "scripts" / "switchboard"), "models", "--config", "my.toml"],
        cwd=here,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != cli.CALLER_DIR_ENV},
        check=True,
    )
    assert done.stdout.strip() == f"cwd={checkout} caller={here} args=models --config my.toml"


# ---- log tail --------------------------------------------------------------------------------------------


def test_log_tail_filters_by_type_before_counting(setup, monkeypatch, capsys):
    config, data_dir = setup
    store = SqliteStore(data_dir / DB_NAME)
    try:
        store.append(
            [
                KeyAdded(ts=T, key_id=f"local.k{n}", platform="local", label="…k", source="vault")
                for n in range(3)
            ]
        )
        store.append([KeyDisabled(ts=T + n, key_id="local.k0", reason="test") for n in range(5)])
    finally:
        store.close()
    assert run("log", "tail", "-n", "2", "--type", "key_added", "--json", config=config) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["seq"], line["event"]["key_id"]) for line in lines] == [(2, "local.k1"), (3, "local.k2")]
    assert run("log", "tail", "-n", "3", "--type", "key_added,key_disabled", "--json", config=config) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [6, 7, 8]


def test_log_tail_refuses_an_unknown_type_listing_the_known_ones(setup, capsys):
    config, _ = setup
    assert run("log", "tail", "--type", "attempt_faild", config=config) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("error: unknown event type 'attempt_faild'; known types: ")
    known = err.split("known types: ", 1)[1].split(", ")
    assert {"attempt_failed", "route_decided", "config_applied", "key_added"} <= set(known)
    assert known == sorted(known)


def test_log_tail_prints_one_readable_line_per_event(setup, monkeypatch, capsys):
    config, data_dir = setup
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    route = RouteInput(mode="auto", requested=("auto",))
    store = SqliteStore(data_dir / DB_NAME)
    try:
        store.append(
            [
                AttemptFailed(
                    ts=T + 0.25,
                    request_id="req_0123456789abcdef01234567",
                    attempt=2,
                    platform="local",
                    model="ok",
                    key_id="local.k1",
                    kind="rate_limited",
                    status=429,
                    message="slow down please",
                    retry_after_s=20.0,
                ),
                RouteDecided(
                    ts=T,
                    request_id="req_0123456789abcdef01234567",
                    attempt=1,
                    seed=7,
                    view_seq=3,
                    now=T,
                    input=route,
                    candidates=(),
                    excluded=(),
                    chosen_ref="local/ok",
                    chosen_key="local.k1",
                    candidates_total=2,
                ),
                KeyAdded(ts=T, key_id="local.k1", platform="local", label="…4321", source="env"),
            ]
        )
    finally:
        store.close()
    try:
        assert run("log", "tail", config=config) == 0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    lines = capsys.readouterr().out.splitlines()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T))
    assert [line.split()[:4] for line in lines] == [
        ["1", stamp.split()[0], stamp.split()[1] + ".250", "attempt_failed"],
        ["2", stamp.split()[0], stamp.split()[1] + ".000", "route_decided"],
        ["3", stamp.split()[0], stamp.split()[1] + ".000", "key_added"],
    ]
    assert lines[0].endswith(
        "req_0123456789abcdef01234567  local/ok attempt=2 key_id=local.k1 kind=rate_limited status=429 "
        'message="slow down please" retry_after_s=20'
    )
    assert lines[1].endswith("attempt=1 mode=auto chose local/ok key=local.k1 candidates=2 excluded=0")
    assert lines[2].split()[4:] == ["-", "key_id=local.k1", "platform=local", "label=…4321", "source=env"]


def test_replay_says_how_many_decisions_predate_the_recorded_configuration(setup, capsys):
    sys.path.insert(0, str(ROOT / "tests" / "events"))
    from test_replay import CATALOG, recorded, select_decisions, simulate

    _, data_dir = setup
    memory = simulate(8, 30)  # written by a gateway that recorded no configuration
    old = len(select_decisions(memory))
    memory.append([recorded(RoutingPolicy(), CATALOG)])
    simulate(9, 30, store=memory)
    total = len(select_decisions(memory))
    store = SqliteStore(data_dir / DB_NAME)
    try:
        store.append([e for _, e in memory.read_after(0)])
    finally:
        store.close()
    # The old decisions replay under the defaults (the built-in catalog): they do not reproduce.
    assert cli.main(["replay", "--data-dir", str(data_dir), "--processes", "1"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"note: {old} of {total} decisions predate the configuration this log records" in lines[-2]
    assert lines[-1].startswith(f"{total - old} of {total} decisions reproduced")
