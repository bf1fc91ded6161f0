"""`switchboard backup`: master.key and a consistent copy of the log, taken while the gateway serves, from
which a gateway starts with its keys and history."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest
import trio
from custom_gateway import read_log
from harness import GATEWAY_KEY, config_text, gateway_from

from events.types import RequestCompleted
from service import cli

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_backup_taken_while_serving_restores_with_its_master_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["ok"])

    dest = tmp_path / "backup"
    with trio.fail_after(60):
        async with gateway_from(tmp_path, config_for, env={}) as gw:  # master.key in the data dir
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:

                async def load() -> None:
                    for _ in range(30):
                        assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 200

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load)
                    await trio.sleep(0.05)
                    code = await trio.to_thread.run_sync(
                        cli.main, ["backup", "--data-dir", str(gw.data_dir), str(dest)]
                    )
            assert code == 0
            assert cli.main(["backup", "--data-dir", str(gw.data_dir), str(dest)]) == 2  # never overwrites
    out, err = capsys.readouterr()
    assert "backed up" in out and "already exists" in err
    assert (dest / "master.key").read_bytes() == (gw.data_dir / "master.key").read_bytes()
    assert stat.S_IMODE(os.stat(dest / "master.key").st_mode) == 0o600
    copied = read_log(dest)
    assert copied == read_log(gw.data_dir)[: len(copied)]  # a prefix of the log: one consistent moment
    # The copy is a data dir a gateway starts from, with the keys it had.
    (tmp_path / "restored").mkdir()
    with trio.fail_after(30):
        async with gateway_from(tmp_path / "restored", config_for, data_dir=dest, env={}) as restored:
            async with httpx.AsyncClient(base_url=restored.url, headers=AUTH, timeout=10) as client:
                assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 200
    assert sum(isinstance(e, RequestCompleted) for e in read_log(dest)) >= 1


def test_a_backup_of_a_large_log_finishes_while_another_writer_commits_all_the_time(tmp_path: Path) -> None:
    import threading

    from events.sqlite_store import SqliteStore
    from events.types import KeyChecked
    from service.backup import BackupDone, backup

    db = tmp_path / "data" / "switchboard.db"
    store = SqliteStore(db)
    batch = [KeyChecked(ts=float(n), key_id=f"k{n}", ok=True, status=200) for n in range(2000)]
    for _ in range(40):  # 80k events, tens of MB: many backup steps' worth of pages
        store.append(batch)
    stop = threading.Event()
    commits = [0]

    def writer() -> None:
        other = SqliteStore(db)
        try:
            while not stop.is_set():
                other.append(batch[:1])
                commits[0] += 1
        finally:
            other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    result: list[object] = []
    copier = threading.Thread(
        target=lambda: result.append(backup(db, tmp_path / "data" / "master.key", tmp_path / "copy"))
    )
    copier.start()
    copier.join(60)  # a stepwise backup restarts at every commit and would never finish here
    finished = not copier.is_alive()
    stop.set()
    thread.join()
    copier.join()
    store.close()
    assert finished, "the backup did not finish beside a busy writer"
    done = result[0]
    assert isinstance(done, BackupDone)
    assert commits[0] > 10  # the copy really ran beside a writer
    assert done.master_key is None and done.events >= 80_000
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["switchboard.db"]
