"""The metrics fold: what each committed event adds, the per-request overhead accumulator and its cap, the
gauges a scrape reads, the text format, and the actor folding what the log writer publishes."""

from __future__ import annotations

import time
from collections.abc import Sequence

import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.feed import FeedStatistics
from actors.log_writer import LogWriter, LogWriterStatistics
from actors.metrics import GatewayMetrics, Live, MetricsActor
from actors.model_health import KeyView, ModelAvailability
from actors.request import RequestStatistics
from events.catalog import CatalogModel
from events.key_health import KeyInfo, KeyStatus
from events.store import MemoryStore
from events.types import (
    AttemptFailed,
    AttemptSucceeded,
    ClientDisconnected,
    Event,
    RequestCompleted,
    RequestReceived,
    StreamStalled,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def live(
    keys: Sequence[KeyView] = (),
    models: Sequence[ModelAvailability] = (),
    *,
    in_flight: int = 0,
    writable: bool = True,
    feed: int = 0,
    lagged: int = 0,
) -> Live:
    return Live(
        keys=keys,
        models=models,
        requests=RequestStatistics(in_flight, 0, 0, 0, 0),
        log=LogWriterStatistics(
            events_written=7,
            batches=2,
            largest_batch=5,
            foreign_events=0,
            last_seq=7,
            queued=3,
            held=0,
            dropped=0,
        ),
        log_writable=writable,
        feed=FeedStatistics(
            subscribers=feed, lagged=lagged, events_sent=0, buffered=0, catching_up=0, position=0
        ),
    )


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def scrape(metrics: GatewayMetrics, current: Live | None = None) -> Samples:
    return samples(metrics.render(metrics.folded(), current or live()).decode())


def received(rid: str, ts: float = 100.0) -> RequestReceived:
    return RequestReceived(ts=ts, request_id=rid, model="auto", stream=False, messages=1, est_input_tokens=5)


def succeeded(rid: str, model: str = "m1", latency_ms: float = 400.0) -> AttemptSucceeded:
    return AttemptSucceeded(
        ts=100.5,
        request_id=rid,
        attempt=1,
        platform="groq",
        model=model,
        key_id="groq.abc",
        latency_ms=latency_ms,
        ttfb_ms=100.0,
        input_tokens=12,
        output_tokens=30,
    )


def failed(rid: str, kind: str = "server_error", latency_ms: float = 200.0) -> AttemptFailed:
    return AttemptFailed(
        ts=100.2,
        request_id=rid,
        attempt=1,
        platform="groq",
        model="m0",
        key_id="groq.abc",
        kind=kind,
        status=503,
        latency_ms=latency_ms,
    )


def completed(
    rid: str,
    outcome: str = "ok",
    latency_ms: float = 650.0,
    attempts: int = 1,
    model: str | None = "m1",
    first_content_ms: float | None = None,
) -> RequestCompleted:
    return RequestCompleted(
        ts=100.7,
        request_id=rid,
        outcome=outcome,  # type: ignore[arg-type]  # the tests pass the three outcomes
        status=200 if outcome == "ok" else 502,
        attempts=attempts,
        latency_ms=latency_ms,
        platform="groq" if model else None,
        model=model,
        first_content_ms=first_content_ms,
    )


def fold(metrics: GatewayMetrics, events: Sequence[Event]) -> None:
    for event in events:
        metrics.apply(event)


def test_a_fallback_counts_the_request_once_each_attempt_once_and_the_overhead_outside_them() -> None:
    m = GatewayMetrics("1.2.3")
    fold(m, [received("r1"), failed("r1"), succeeded("r1"), completed("r1", attempts=2)])
    found = scrape(m)
    assert value(found, "switchboard_requests_total", platform="groq", model="m1", outcome="ok") == 1
    assert value(found, "switchboard_fallbacks_total", outcome="ok") == 1
    assert (
        value(found, "switchboard_attempt_failures_total", platform="groq", model="m0", kind="server_error")
        == 1
    )
    up = "switchboard_upstream_duration_seconds"
    assert value(found, f"{up}_count", platform="groq", model="m1", outcome="ok") == 1
    assert value(found, f"{up}_sum", platform="groq", model="m1", outcome="ok") == 0.4
    assert value(found, f"{up}_count", platform="groq", model="m0", outcome="error") == 1
    assert value(found, "switchboard_request_duration_seconds_sum", platform="groq", model="m1") == 0.65
    # 650 ms in the gateway, 200 + 400 of them upstream.
    assert value(found, "switchboard_gateway_overhead_seconds_count") == 1
    assert abs((value(found, "switchboard_gateway_overhead_seconds_sum") or 0) - 0.05) < 1e-9
    assert value(found, "switchboard_gateway_overhead_seconds_bucket", le="0.025") == 0
    assert value(found, "switchboard_gateway_overhead_seconds_bucket", le="0.05") == 1
    assert value(found, "switchboard_tokens_total", platform="groq", model="m1", direction="input") == 12
    assert value(found, "switchboard_tokens_total", platform="groq", model="m1", direction="output") == 30
    assert m.statistics() == (0, 0)  # the accumulator let the request go at its completion


def test_a_single_attempt_is_no_fallback_and_a_non_stream_has_no_time_to_first_token() -> None:
    m = GatewayMetrics("1.2.3")
    fold(m, [received("r1"), succeeded("r1"), completed("r1")])
    found = scrape(m)
    assert value(found, "switchboard_fallbacks_total", outcome="ok") is None
    assert value(found, "switchboard_time_to_first_token_seconds_count", platform="groq", model="m1") is None


def test_a_streams_time_to_first_token_is_the_clients() -> None:
    m = GatewayMetrics("1.2.3")
    fold(m, [received("r1"), succeeded("r1"), completed("r1", first_content_ms=320.0)])
    found = scrape(m)
    ttft = "switchboard_time_to_first_token_seconds"
    assert value(found, f"{ttft}_count", platform="groq", model="m1") == 1
    assert value(found, f"{ttft}_sum", platform="groq", model="m1") == 0.32
    assert value(found, f"{ttft}_bucket", platform="groq", model="m1", le="0.25") == 0
    assert value(found, f"{ttft}_bucket", platform="groq", model="m1", le="0.5") == 1


def test_a_client_abort_is_a_disconnect_not_an_attempt_failure() -> None:
    m = GatewayMetrics("1.2.3")
    fold(
        m,
        [
            received("r1"),
            failed("r1", kind="client_abort", latency_ms=50.0),
            ClientDisconnected(ts=100.3, request_id="r1", platform="groq", model="m0"),
            completed("r1", outcome="client_abort", latency_ms=60.0, model="m0"),
        ],
    )
    found = scrape(m)
    assert value(found, "switchboard_client_disconnects_total") == 1
    assert not [k for k in found if k[0] == "switchboard_attempt_failures_total"]
    up = "switchboard_upstream_duration_seconds_count"
    assert value(found, up, platform="groq", model="m0", outcome="client_abort") == 1
    assert (
        value(found, "switchboard_requests_total", platform="groq", model="m0", outcome="client_abort") == 1
    )


def test_stalls_by_phase_and_an_error_with_no_model_has_empty_labels() -> None:
    m = GatewayMetrics("1.2.3")
    stall = StreamStalled(
        ts=1.0, request_id="r1", platform="groq", model="m0", key_id="groq.abc", phase="pre", silent_s=30.0
    )
    fold(
        m,
        [received("r1"), stall, failed("r1", kind="stall_pre"), completed("r1", outcome="error", model=None)],
    )
    found = scrape(m)
    assert value(found, "switchboard_stream_stalls_total", platform="groq", model="m0", phase="pre") == 1
    # Empty: Prometheus reads an empty label as no label.
    assert value(found, "switchboard_requests_total", platform="", model="", outcome="error") == 1
    assert value(found, "switchboard_fallbacks_total", outcome="error") is None


def test_the_overhead_accumulator_is_capped_and_the_dropped_request_gets_no_overhead() -> None:
    m = GatewayMetrics("1.2.3", max_tracked=2)
    fold(m, [received("r1"), received("r2"), received("r3")])  # r1, the oldest, is dropped
    assert m.statistics() == (2, 1)
    fold(m, [succeeded("r1"), completed("r1"), succeeded("r3"), completed("r3")])
    found = scrape(m)
    assert value(found, "switchboard_gateway_overhead_seconds_count") == 1
    assert value(found, "switchboard_requests_total", platform="groq", model="m1", outcome="ok") == 2
    assert m.statistics() == (1, 1)  # r2 still in flight


def test_a_request_that_ends_before_any_attempt_is_all_overhead() -> None:
    m = GatewayMetrics("1.2.3")
    fold(m, [received("r1"), completed("r1", outcome="error", latency_ms=3.0, attempts=0, model=None)])
    found = scrape(m)
    assert value(found, "switchboard_gateway_overhead_seconds_sum") == 0.003


def key(key_id: str, platform: str, status: KeyStatus, cooling: int = 0) -> KeyView:
    info = KeyInfo(key_id, platform, "…abcd", "config", status)
    return KeyView(info, tuple((f"model-{i}", 200.0) for i in range(cooling)))


def model(platform: str, model_id: str, usable: int) -> ModelAvailability:
    return ModelAvailability(CatalogModel(platform, model_id, "balanced", True, True, None, 1, 1), usable)


def test_the_gauges_are_what_the_scrape_read() -> None:
    m = GatewayMetrics("1.2.3")
    current = live(
        [key("groq.aaa", "groq", "ok", cooling=2), key("groq.bbb", "groq", "disabled")],
        [model("groq", "m1", 1)],
        in_flight=4,
        writable=False,
        feed=2,
        lagged=3,
    )
    found = scrape(m, current)
    assert value(found, "switchboard_key_healthy", key_id="groq.aaa", platform="groq") == 1
    assert value(found, "switchboard_key_healthy", key_id="groq.bbb", platform="groq") == 0
    assert value(found, "switchboard_key_cooldowns", key_id="groq.aaa") == 2
    assert value(found, "switchboard_key_cooldowns", key_id="groq.bbb") == 0
    assert value(found, "switchboard_model_usable_keys", platform="groq", model="m1") == 1
    assert value(found, "switchboard_requests_in_flight") == 4
    assert value(found, "switchboard_log_queue_events") == 3
    assert value(found, "switchboard_log_writable") == 0
    assert value(found, "switchboard_log_events_written_total") == 7
    assert value(found, "switchboard_feed_subscribers") == 2
    assert value(found, "switchboard_feed_lagged_total") == 3
    assert value(found, "switchboard_info", version="1.2.3") == 1
    text = m.render(m.folded(), current).decode()
    assert "…abcd" not in text  # a key's label is a piece of its secret: never a label value


def test_two_gateways_in_one_process_have_their_own_registries() -> None:
    a, b = GatewayMetrics("1"), GatewayMetrics("1")
    fold(a, [received("r1"), succeeded("r1"), completed("r1")])
    assert value(scrape(b), "switchboard_requests_total", platform="groq", model="m1", outcome="ok") is None


def test_a_large_catalog_scrape_renders_in_milliseconds() -> None:
    """100 models x 10 keys, every model with traffic: the scrape's cost (printed; bounded loosely, since
    machines differ: it runs in a worker thread, so only its size matters to the event loop)."""
    m = GatewayMetrics("1.2.3")
    for i in range(100):
        rid = f"r{i}"
        fold(
            m,
            [
                received(rid),
                failed(rid),
                succeeded(rid, model=f"m{i}"),
                completed(rid, attempts=2, model=f"m{i}", first_content_ms=100.0),
            ],
        )
    keys = [key(f"groq.{i:03d}", "groq", "ok", cooling=i % 3) for i in range(1000)]
    models = [model("groq", f"m{i}", 10) for i in range(100)]
    current = live(keys, models)
    started = time.perf_counter()
    text = m.render(m.folded(), current)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"scrape of 100 models x 10 keys: {len(text)} bytes in {elapsed_ms:.1f} ms")
    assert len(samples(text.decode())) > 5000
    assert elapsed_ms < 2000


async def test_the_actor_folds_each_committed_batch() -> None:
    store = MemoryStore()
    log = LogWriter(store)
    actor = MetricsActor(log, "1.2.3", time.time)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            await nursery.start(actor.run)
            for event in (received("r1"), succeeded("r1"), completed("r1")):
                await log.append(event)
            await log.append_durable(received("r2"))
            log.close()  # the writer commits what it holds, closes its subscribers: the actor ends
    stats = actor.statistics()
    assert (stats.events_folded, stats.requests_tracked) == (4, 1)
    found = scrape(actor.metrics)
    assert value(found, "switchboard_requests_total", platform="groq", model="m1", outcome="ok") == 1
    assert value(found, "switchboard_log_batch_size_count") == stats.batches_folded
    assert value(found, "switchboard_log_batch_size_sum") == 4
    assert value(found, "switchboard_log_commit_lag_seconds_count") == stats.batches_folded
