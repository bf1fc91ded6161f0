"""`/metrics` on a real gateway in front of the fault upstream: the counts after an answer, a fallback and a
stream; the admin token guards it; no key material in it; the gauges follow the log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import trio
from custom_gateway import read_log, settled
from harness import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    GATEWAY_KEY,
    SECRET_ENV,
    Gateway,
    config_text,
    gateway_from,
    running_gateway,
)
from prometheus_client.parser import text_string_to_metric_families

from events.sqlite_store import SqliteStore
from events.store import StoreUnwritable
from events.types import Event, KeyDisabled, RequestCompleted
from service import __version__
from service.secrets import key_id_for

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
UPSTREAM_KEY = "sk-upstream-secret-QzXwVyTu"  # a tail no number can contain
KEY_ID = key_id_for(bytes.fromhex(SECRET_ENV["SWITCHBOARD_SECRET_KEY"]), "local", UPSTREAM_KEY)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def scrape(gw: Gateway) -> tuple[httpx.Response, Samples]:
    """A scrape once the metrics actor has folded every event committed so far."""
    await settled(gw)
    metrics, health = gw.runtime.metrics, gw.runtime.health
    with trio.fail_after(2):
        while True:  # both fold the same batches: the metrics actor may only be a moment behind
            if metrics.statistics().events_folded >= health.statistics().events_applied:
                break
            await trio.sleep(0.01)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        resp = await client.get("/metrics", headers=ADMIN_HEADERS)
    assert resp.status_code == 200, resp.text
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }
    return resp, found


async def test_the_scrape_counts_an_answer_a_fallback_and_a_stream(tmp_path) -> None:
    async with running_gateway(tmp_path, ["fail:503", "ok"], keys=(UPSTREAM_KEY,)) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, headers=AUTH, timeout=10) as client:
            one = await client.post("/chat/completions", json={"model": "local/ok", "messages": HELLO})
            over = await client.post(
                "/chat/completions", json={"models": ["local/fail:503", "local/ok"], "messages": HELLO}
            )
            streamed = await client.post(
                "/chat/completions", json={"model": "local/ok", "stream": True, "messages": HELLO}
            )
        assert [r.status_code for r in (one, over, streamed)] == [200, 200, 200]
        assert over.headers["x-fallback-attempts"] == "1"
        resp, found = await scrape(gw)
        text = resp.text

    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    ok = {"platform": "local", "model": "ok"}
    assert value(found, "switchboard_requests_total", **ok, outcome="ok") == 3
    assert value(found, "switchboard_request_duration_seconds_count", **ok) == 3
    assert value(found, "switchboard_upstream_duration_seconds_count", **ok, outcome="ok") == 3
    failing = {"platform": "local", "model": "fail:503"}
    assert value(found, "switchboard_upstream_duration_seconds_count", **failing, outcome="error") == 1
    assert value(found, "switchboard_attempt_failures_total", **failing, kind="server_error") == 1
    assert value(found, "switchboard_fallbacks_total", outcome="ok") == 1
    assert value(found, "switchboard_time_to_first_token_seconds_count", **ok) == 1
    assert value(found, "switchboard_gateway_overhead_seconds_count") == 3
    assert (value(found, "switchboard_tokens_total", **ok, direction="output") or 0) > 0
    assert (value(found, "switchboard_tokens_total", **ok, direction="input") or 0) > 0
    assert value(found, "switchboard_client_disconnects_total") is None  # none yet: no series
    assert value(found, "switchboard_key_healthy", key_id=KEY_ID, platform="local") == 1
    assert value(found, "switchboard_requests_in_flight") == 0
    assert value(found, "switchboard_log_writable") == 1
    assert value(found, "switchboard_log_queue_events") == 0
    assert (value(found, "switchboard_log_batch_size_count") or 0) > 0
    assert value(found, "switchboard_info", version=__version__) == 1
    # No key material: the upstream key, the gateway key, the admin token, nor a key's label (its tail).
    for secret in (UPSTREAM_KEY, UPSTREAM_KEY[-4:], GATEWAY_KEY, ADMIN_TOKEN):
        assert secret not in text

    # The stream's time to first token is the client's, recorded on its completion.
    completions = [e for e in read_log(gw.data_dir) if isinstance(e, RequestCompleted)]
    assert [c.first_content_ms is not None for c in completions] == [False, False, True]
    assert 0 < (completions[2].first_content_ms or 0) <= completions[2].latency_ms


async def test_stored_responses_are_counted(tmp_path) -> None:
    async with running_gateway(tmp_path, ["ok"], keys=(UPSTREAM_KEY,)) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, headers=AUTH, timeout=10) as client:
            _, before = await scrape(gw)
            for store in (True, True, False):
                resp = await client.post("/responses", json={"model": "ok", "input": "hi", "store": store})
                assert resp.status_code == 200, resp.text
        _, found = await scrape(gw)
    assert value(before, "switchboard_stored_responses") == 0
    assert value(found, "switchboard_stored_responses") == 2  # store: false is not kept
    assert (value(found, "switchboard_stored_responses_cache_bytes") or 0) > 0


async def test_metrics_need_the_admin_token(tmp_path) -> None:
    async with (
        running_gateway(tmp_path, ["ok"]) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
    ):
        for headers in ({}, AUTH, {"Authorization": "Bearer wrong-token"}):
            resp = await client.get("/metrics", headers=headers)
            assert resp.status_code == 401, headers
            assert resp.json()["error"]["code"] == "admin_auth_required"
            assert "switchboard_" not in resp.text


async def test_the_key_gauges_follow_the_log(tmp_path) -> None:
    async with running_gateway(tmp_path, ["rate-limit:30", "ok"], keys=(UPSTREAM_KEY,)) as gw:
        _, found = await scrape(gw)
        assert value(found, "switchboard_key_healthy", key_id=KEY_ID, platform="local") == 1
        assert value(found, "switchboard_key_cooldowns", key_id=KEY_ID) == 0
        assert value(found, "switchboard_model_usable_keys", platform="local", model="ok") == 1

        async with httpx.AsyncClient(base_url=gw.base_url, headers=AUTH, timeout=10) as client:
            resp = await client.post(
                "/chat/completions", json={"models": ["local/rate-limit:30", "local/ok"], "messages": HELLO}
            )
        assert resp.status_code == 200
        _, found = await scrape(gw)
        assert value(found, "switchboard_key_cooldowns", key_id=KEY_ID) == 1  # 429: key x model cooling
        assert value(found, "switchboard_model_usable_keys", platform="local", model="rate-limit:30") == 0

        await gw.runtime.log.append_durable(KeyDisabled(ts=gw.runtime.clock.now(), key_id=KEY_ID))
        _, found = await scrape(gw)
        assert value(found, "switchboard_key_healthy", key_id=KEY_ID, platform="local") == 0
        assert value(found, "switchboard_model_usable_keys", platform="local", model="ok") == 0


class FullDisk(SqliteStore):
    full = False

    def append(self, events: Sequence[Event]) -> list[int]:
        if self.full:
            raise StoreUnwritable("disk full")
        return super().append(events)


async def test_the_log_gauges_show_an_outage_and_its_end(tmp_path: Path) -> None:
    disks: list[FullDisk] = []

    def full_disk(path: Path) -> FullDisk:
        disks.append(FullDisk(path))
        return disks[0]

    def config_for(url: str, data_dir: Path) -> str:
        return config_text(url, data_dir, ["ok"])

    async with gateway_from(tmp_path, config_for, store=full_disk) as gw:
        disks[0].full = True
        async with httpx.AsyncClient(base_url=gw.base_url, headers=AUTH, timeout=10) as client:
            # Already running when its first event meets the full disk: answered, its events held.
            resp = await client.post("/chat/completions", json={"model": "ok", "messages": HELLO})
        assert resp.status_code == 200
        _, found = await scrape(gw)
        assert value(found, "switchboard_log_writable") == 0
        assert (value(found, "switchboard_log_held_events") or 0) >= 3  # received, decided, ..., completed
        assert value(found, "switchboard_requests_total", platform="local", model="ok", outcome="ok") is None

        disks[0].full = False
        with trio.fail_after(10):
            while True:
                if gw.runtime.log.outage() is None:
                    break
                await trio.sleep(0.05)
        _, found = await scrape(gw)
        assert value(found, "switchboard_log_writable") == 1
        assert value(found, "switchboard_log_held_events") == 0
        # Folded once committed, late: the lag says so.
        assert value(found, "switchboard_requests_total", platform="local", model="ok", outcome="ok") == 1
        assert (value(found, "switchboard_log_commit_lag_seconds_bucket", le="+Inf") or 0) > (
            value(found, "switchboard_log_commit_lag_seconds_bucket", le="0.25") or 0
        )
