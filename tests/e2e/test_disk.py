"""A log that cannot be written (README: the disk): the gateway keeps running, refuses new requests with 503
while `/healthz` says why, writes what it held once it can, and starts on a full disk instead of
crash-looping. A database size cap stands in for a full disk: SQLite answers it with the same SQLITE_FULL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import trio
from harness import GATEWAY_KEY, config_text, gateway_from

from events.sqlite_store import SqliteStore
from events.store import StoreUnwritable
from events.types import Event, RequestCompleted, ServiceStarted, ServiceStopped

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


class SmallDisk(SqliteStore):
    full = False  # refuse every append outright (the size cap may leave room in a page for a few events)

    def append(self, events: Sequence[Event]) -> list[int]:
        if self.full:
            raise StoreUnwritable("disk full")
        return super().append(events)

    def fill(self) -> None:
        pages = int(self._db.execute("PRAGMA page_count").get)
        self._db.execute(f"PRAGMA max_page_count = {pages}")

    def free(self) -> None:
        self.full = False
        self._db.execute("PRAGMA max_page_count = 1073741823")


def completed(data_dir: Path) -> dict[str, RequestCompleted]:
    store = SqliteStore(data_dir / "switchboard.db")
    try:
        return {e.request_id: e for _, e in store.read_after(0) if isinstance(e, RequestCompleted)}
    finally:
        store.close()


async def wait_ready(client: httpx.AsyncClient, status: int) -> dict[str, object]:
    """Poll /readyz until it answers `status`; /healthz (liveness) must say the same with a 200."""
    with trio.fail_after(10):
        while True:
            resp = await client.get("/readyz")
            if resp.status_code == status:
                live = await client.get("/healthz")
                assert live.status_code == 200  # a liveness probe must not restart it: held events would go
                assert live.json()["status"] == resp.json()["status"]
                return resp.json()
            await trio.sleep(0.05)


async def test_a_full_disk_refuses_new_requests_and_loses_nothing_a_client_was_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disks: list[SmallDisk] = []

    def small_disk(path: Path) -> SmallDisk:
        disks.append(SmallDisk(path))
        return disks[0]

    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["ok"])

    answered: list[str] = []  # request ids that got a 200
    with trio.fail_after(60):
        async with gateway_from(tmp_path, config_for, store=small_disk) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                first = await client.post("/v1/chat/completions", json=HELLO)
                assert first.status_code == 200
                answered.append(first.headers["X-Request-Id"])
                disks[0].fill()
                refused = None
                for _ in range(400):  # until a commit needs a page the "disk" does not have
                    resp = await client.post("/v1/chat/completions", json=HELLO)
                    if resp.status_code == 503:
                        refused = resp
                        break
                    assert resp.status_code == 200, resp.text
                    answered.append(resp.headers["X-Request-Id"])
                assert refused is not None, "the size cap never filled"
                assert refused.json()["error"]["code"] == "log_unwritable"
                assert "disk full" in refused.json()["error"]["message"]
                assert refused.headers["Retry-After"] == "5"
                health = await wait_ready(client, 503)
                assert health["status"] == "log_unwritable"
                assert health["log"]["writable"] is False  # type: ignore[index]
                stream = await client.post("/v1/chat/completions", json={**HELLO, "stream": True})
                assert stream.status_code == 503
                assert (await client.get("/v1/models")).status_code == 200  # what needs no write still works

                disks[0].free()
                health = await wait_ready(client, 200)
                assert health["log"] == {"writable": True}
                again = await client.post("/v1/chat/completions", json=HELLO)
                assert again.status_code == 200
                answered.append(again.headers["X-Request-Id"])
    said = [r.getMessage() for r in caplog.records if r.name == "switchboard.log"]
    assert len(said) == 2 and "cannot be written (disk full)" in said[0] and "written again" in said[1], said
    done = completed(gw.data_dir)
    assert [done[r].outcome for r in answered] == ["ok"] * len(answered)
    assert refused.headers["X-Request-Id"] not in done  # refused before anything was recorded


async def test_a_gateway_starts_on_a_full_disk_and_records_its_start_once_there_is_room(
    tmp_path: Path,
) -> None:
    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["ok"])

    async with gateway_from(tmp_path, config_for):  # a first run leaves a log behind
        pass
    disks: list[SmallDisk] = []

    def full_disk(path: Path) -> SmallDisk:
        disk = SmallDisk(path)
        disk.full = True
        disks.append(disk)
        return disk

    with trio.fail_after(60):
        async with gateway_from(tmp_path, config_for, store=full_disk) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                health = await wait_ready(client, 503)
                assert "disk full" in str(health["reason"])
                assert "the event log cannot be written (disk full)" in gw.output.getvalue()
                assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 503
                disks[0].free()
                await wait_ready(client, 200)
                assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 200
    store = SqliteStore(tmp_path / "data" / "switchboard.db")
    try:
        lifecycle = [
            type(e) for _, e in store.read_after(0) if isinstance(e, ServiceStarted | ServiceStopped)
        ]
    finally:
        store.close()
    assert lifecycle == [ServiceStarted, ServiceStopped, ServiceStarted, ServiceStopped]


async def test_a_log_that_cannot_even_be_opened_is_waited_for_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a full disk SQLite cannot make the WAL's -shm index, so the file cannot be opened at all.
    from service import server

    refusals = [2]

    def opening(path: Path) -> SqliteStore:
        if refusals[0]:
            refusals[0] -= 1
            raise StoreUnwritable("I/O error", f"{path} cannot be opened (I/O error)")
        return SqliteStore(path)

    monkeypatch.setattr(server, "SqliteStore", opening)
    monkeypatch.setattr(server, "OPEN_RETRY_S", 0.05)

    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["ok"])

    with trio.fail_after(30):
        async with gateway_from(tmp_path, config_for) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 200
            out = gw.output.getvalue()
    assert refusals == [0]
    assert out.count("cannot be opened (I/O error): waiting for space") == 1, out
    assert "switchboard.db opened after" in out
