"""The log explains itself: a gateway records the configuration its decisions depend on when it starts with
one that differs from the last recorded (`config_applied`), so `switchboard replay` reproduces every
decision from the log alone across configuration changes, `--config` stays a what-if, and the read-only
commands show what the gateway ran with, without the config file."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import httpx
import pytest
import trio
from custom_gateway import gateway_from, read_log, settled
from harness import GATEWAY_KEY, config_text

from events.types import ConfigApplied, RouteDecided
from service import cli

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HI = [{"role": "user", "content": "hi"}]
KEYS = ("up-1", "up-2")
# A and B differ in their catalog (B ranks echo first and adds fail:503) and in a routing setting.
MODELS_A = ["ok", "echo"]
MODELS_B = ["echo", "ok", "fail:503"]
ROUTING_B = "\n[routing]\nrate_limit_cooldown_s = 5\n"

pytestmark = pytest.mark.usefixtures("clean_env")


def config_a(url: str, data_dir: Path) -> str:
    return config_text(url, data_dir, MODELS_A, keys=KEYS)


def config_b(url: str, data_dir: Path) -> str:
    return config_text(url, data_dir, MODELS_B, keys=KEYS, extra=ROUTING_B)


async def drive(tmp_path: Path, config_for, bodies: list[dict]) -> None:
    with trio.fail_after(30):
        async with gateway_from(tmp_path, config_for) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=20) as client:
                for body in bodies:
                    resp = await client.post("/v1/chat/completions", json={"messages": HI, **body})
                    assert resp.status_code == 200, resp.text
                    await settled(gw)


def change_seqs(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"\(seq (\d+)\): ", out)]


async def test_replay_reproduces_a_log_written_under_a_then_b_then_a_with_no_config(tmp_path, capsys):
    common = [{"model": "auto"}, {"model": "auto"}, {"model": "local/ok"}, {"model": "auto-fast"}]
    await drive(tmp_path, config_a, common)
    await drive(tmp_path, config_b, [*common, {"model": "local/fail:503"}, {"model": "local/echo"}])
    await drive(tmp_path, config_a, common)
    await drive(tmp_path, config_a, [{"model": "auto"}])  # unchanged: nothing new recorded

    data_dir = tmp_path / "data"
    events = read_log(data_dir)
    configs = [(i, e) for i, e in enumerate(events) if isinstance(e, ConfigApplied)]
    hashes = [e.hash for _, e in configs]
    assert len(hashes) == 3 and hashes[0] == hashes[2] != hashes[1]
    assert [m["id"] for m in configs[1][1].models] == MODELS_B
    assert configs[1][1].policy["rate_limit_cooldown_s"] == 5
    # Never a secret: no provider key, no gateway key.
    for secret in (*KEYS, GATEWAY_KEY):
        assert all(secret not in repr(e) for _, e in configs)
    decisions = [e for e in events if isinstance(e, RouteDecided)]
    n = len(decisions)
    assert n >= 15

    capsys.readouterr()
    assert cli.main(["replay", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{n} of {n} decisions reproduced (100.0%)" in out, out
    assert "under 2 recorded configurations" in out
    assert "note:" not in out  # every decision has its recorded configuration

    # Two processes (a real one: it forks), from the log alone too.
    done = await trio.run_process(
        [sys.executable, "-m", "service.cli", "replay", "--data-dir", str(data_dir), "--processes", "2"],
        capture_stdout=True,
    )
    last = done.stdout.decode().splitlines()[-1]
    assert last.startswith(f"{n} of {n} decisions reproduced (100.0%)") and last.endswith("(2 processes)")

    # --config is a what-if: every decision under A. Exactly the ones made under B can change (B's requests
    # named a model A does not have, and B ranked echo first).
    a_file = tmp_path / "a.toml"
    a_file.write_text(config_a("http://127.0.0.1:9/v1", data_dir))
    assert cli.main(["replay", "--config", str(a_file)]) == 0
    out = capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.startswith("what-if under"))
    changed = change_seqs(out)
    assert f"{len(changed)} of {n} decisions would change" in summary
    b_from, b_to = configs[1][0] + 1, configs[2][0] + 1  # seqs are 1-based
    b_decisions = [
        s for s, e in enumerate(events, start=1) if isinstance(e, RouteDecided) and b_from < s < b_to
    ]
    assert changed and set(changed) <= set(b_decisions)
    assert "the named model is unknown under this config" in out


async def test_read_only_commands_show_the_recorded_configuration(tmp_path, capsys, monkeypatch):
    await drive(tmp_path, config_b, [{"model": "local/echo"}])
    data_dir = str(tmp_path / "data")
    capsys.readouterr()
    # No config file: the catalog the gateway ran with (not the built-in one), its keys, its sessions.
    assert cli.main(["models", "--data-dir", data_dir]) == 0
    models, platforms = capsys.readouterr().out.split("\n\n")
    rows = [line.split() for line in models.splitlines()[1:]]
    assert [(r[0], r[3], r[7]) for r in rows] == [
        ("local/echo", "1", "2"),
        ("local/ok", "2", "2"),
        ("local/fail:503", "3", "2"),
    ]
    assert rows[0][8] == "1/1"
    assert [line.split() for line in platforms.splitlines()[1:]] == [["local", "-", "LOCAL_API_KEY", "2"]]
    assert cli.main(["keys", "list", "--data-dir", data_dir]) == 0
    keys = capsys.readouterr().out.splitlines()[1:]
    assert len(keys) == 2 and all(" local " in line and " config " in line for line in keys)
    assert cli.main(["sessions", "--data-dir", data_dir]) == 0
    assert "no live sessions" in capsys.readouterr().out
    # A key for a platform only the recorded configuration knows (no file names it).
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-recorded-platform-0001\n"))
    assert cli.main(["keys", "add", "local", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out.startswith("added: local.")
