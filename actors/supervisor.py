"""The supervisor: rebuilds projections from the log, then runs every actor and the HTTP server side by
side in one root nursery, so a crash anywhere takes the whole process down with its traceback.

Start order: the caller holds the data dir and has bound the listening socket (service/server.py), so a
start that cannot serve has appended nothing; then the projections are rebuilt, the configuration in force
is recorded if it changed (`ConfigApplied`), keys that came or went are recorded, `ServiceStarted`, and only
then does the HTTP server accept connections.

The projections start from the newest snapshot that fits (events/snapshot.py) and fold only the log after
it; the snapshotter writes new ones while the gateway runs.

Shutdown order (SIGINT/SIGTERM or `shutdown.set()`): the server stops accepting and lets in-flight
requests end within its grace period; then the actors stop; then the log writer commits what it holds and
the log gets a final `ServiceStopped`; then a snapshot at that final position. Nothing accepted is lost.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import trio

from actors.clock import WallClock
from actors.feed import Feed
from actors.key_checker import KeyChecker
from actors.log_writer import LogWriter
from actors.metrics import MetricsActor
from actors.model_health import ModelHealth
from actors.request import Deadlines, RequestActor
from actors.responses import ResponseRetention, ResponseStore
from actors.session import SessionActor
from actors.snapshotter import Snapshotter
from actors.stats import History, StatsActor
from actors.upstream import Upstream
from events.catalog import CatalogModel
from events.config_applied import record_config
from events.op_stats import OperationalStats
from events.policy import RoutingPolicy
from events.snapshot import LogNotes, resume
from events.store import LogStore
from events.types import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    ConfigApplied,
    KeyAdded,
    KeyRemoved,
    KeySource,
    RequestCompleted,
    RequestReceived,
    ServiceStarted,
    ServiceStopped,
    event_tag,
)
from events.unclean import UNCLEAN_WINDOW, Unfinished, unfinished
from events.view import RoutingView, SessionPolicy, folded_tags, rebuild

logger = logging.getLogger("switchboard.snapshot")


@dataclass(frozen=True)
class Runtime:
    """The handles the HTTP layer talks to."""

    log: LogWriter
    health: ModelHealth
    stats: StatsActor
    requests: RequestActor
    key_checker: KeyChecker
    clock: WallClock
    shutting_down: trio.Event
    metrics: MetricsActor
    feed: Feed  # the live feed (/admin/events)
    responses: ResponseStore  # stored Responses API answers (/v1/responses)
    unclean_previous_start: float | None = None  # the last run was killed or crashed: when it had started
    unfinished: Unfinished | None = None  # ... and what it left open
    snapshotter: Snapshotter | None = None
    claude_model: str = "auto-smart"  # what a Claude model name routes as (service/messages.py)
    messages_max_tokens: int | None = 8192  # `[messages] max_tokens_cap` (None: the client's own)


@dataclass(frozen=True)
class Settings:
    models: Sequence[CatalogModel]
    keys: Sequence[tuple[str, str, str, KeySource]]  # (key_id, platform, label, source) known at start
    deadlines: Deadlines
    max_attempts: int
    policy: RoutingPolicy
    version: str
    rolling_day_platforms: frozenset[str] = frozenset()
    key_check_interval_s: float = 300.0
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    platforms: frozenset[str] = frozenset()  # every configured platform, keyed or not
    snapshot_every_events: int = 100_000  # a snapshot of the projections after this many events...
    snapshot_every_s: float = 600.0  # ... or this long after the last one, if anything was folded since
    claude_model: str = "auto-smart"  # `[messages] claude_model`: a Claude model name's mode or model
    messages_max_tokens: int | None = 8192  # `[messages] max_tokens_cap` (None: "unlimited")
    responses: ResponseRetention = field(default_factory=ResponseRetention)

    def new_view(self) -> RoutingView:
        return RoutingView(self.models, self.policy, self.rolling_day_platforms, self.sessions)

    def config_record(self, ts: float) -> ConfigApplied:
        """What decisions depend on, for the log (events/config_applied.py rebuilds `new_view()` from it)."""
        return record_config(
            ts=ts,
            models=self.models,
            policy=self.policy,
            sessions=self.sessions,
            platforms=self.platforms,
            rolling_day_platforms=self.rolling_day_platforms,
            timeouts=self.deadlines,
            max_attempts=self.max_attempts,
        )


@dataclass
class Projections:
    """What a start folds from the log: the view, the operational statistics, the supervisor's notes."""

    view: RoutingView
    op_stats: OperationalStats
    notes: LogNotes
    config_hash: str  # of the configuration the view was built from
    snapshot_seq: int  # where the snapshot it started from was taken (0: none, folded from the start)
    replayed: int  # events folded after it (only the types some projection folds are read)
    seconds: float  # how long loading took


def load_projections(store: LogStore, settings: Settings) -> Projections:
    """The projections at the log's end: from the newest snapshot that fits this configuration, plus the
    log after it (every snapshot passed over gets a log line saying why)."""
    started = time.perf_counter()
    view, op_stats, notes = settings.new_view(), OperationalStats(), LogNotes()
    config_hash = settings.config_record(0.0).hash
    found, skipped = resume(store, view, config_hash, op_stats, notes)
    for line in skipped:
        logger.warning("%s", line)
    replayed = rebuild(
        store,
        view,
        also=(op_stats.apply, notes.apply),
        types=folded_tags(OperationalStats.FOLDS, LogNotes.FOLDS),
    )
    seconds = time.perf_counter() - started
    if found is not None:
        logger.info(
            "projections from the snapshot at seq %d and %d events after it (%.2fs)",
            found.seq,
            replayed,
            seconds,
        )
    return Projections(view, op_stats, notes, config_hash, found.seq if found else 0, replayed, seconds)


ServeHttp = Callable[[Runtime], Awaitable[None]]


async def run_service(
    store: LogStore,
    upstream: Upstream,
    settings: Settings,
    serve_http: ServeHttp,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    clock = WallClock()
    loaded = load_projections(store, settings)
    view, stats_p, notes = loaded.view, loaded.op_stats, loaded.notes
    recorded, lifecycle = notes.config_hash, notes.lifecycle  # before the snapshotter folds more into them
    # The position the projections hold (a snapshot's share included): what ServiceStarted said before.
    folded = view.seq
    known_keys = set(view.health.keys)

    log = LogWriter(store, after=view.seq)
    health = ModelHealth(view, log, clock.now)
    # The analytics' last 30 days are read up to where the log writer publishes from (actors/stats.py).
    stats = StatsActor(stats_p, log, history=History(store, view.seq), now=clock.now)
    p = settings.policy
    sessions = SessionActor(log, settings.sessions, clock.now)
    requests = RequestActor(
        log=log,
        health=health,
        sessions=sessions,
        upstream=upstream,
        deadlines=settings.deadlines,
        max_attempts=settings.max_attempts,
        now=clock.now,
        output_reserve=(p.output_reserve_default, p.output_reserve_cap),
    )
    key_checker = KeyChecker(health, upstream, log, clock.now, interval_s=settings.key_check_interval_s)
    own_stats = OperationalStats()  # the snapshotter's copy (actors/snapshotter.py says why)
    own_stats.restore(stats_p.state())
    snapshotter = Snapshotter(
        store,
        log,
        health,
        own_stats,
        notes,
        config_hash=loaded.config_hash,
        seq=view.seq,
        saved_seq=loaded.snapshot_seq,
        every_events=settings.snapshot_every_events,
        every_s=settings.snapshot_every_s,
        now=clock.now,
    )
    metrics = MetricsActor(log, settings.version, clock.now)
    shutting_down = trio.Event()
    feed = Feed(log, shutting_down)
    responses = ResponseStore(log, store, upto=view.seq, retention=settings.responses, now=clock.now)
    # A start with no stop after it: that run was killed or crashed (a hard kill loses at most one batch).
    unclean = lifecycle.ts if isinstance(lifecycle, ServiceStarted) else None
    left_open = _unfinished(store) if unclean is not None else None
    runtime = Runtime(
        log,
        health,
        stats,
        requests,
        key_checker,
        clock,
        shutting_down,
        metrics,
        feed,
        responses,
        unclean,
        left_open,
        snapshotter,
        settings.claude_model,
        settings.messages_max_tokens,
    )

    async with trio.open_nursery() as outer:
        await outer.start(log.run)
        async with trio.open_nursery() as inner:
            await inner.start(health.run)
            await inner.start(sessions.run)
            await inner.start(stats.run)
            await inner.start(requests.run)
            await inner.start(key_checker.run)
            await inner.start(snapshotter.run)
            await inner.start(metrics.run)
            await inner.start(feed.run)
            await inner.start(responses.run)
            if handle_signals:
                inner.start_soon(_watch_signals, shutting_down)
            config = settings.config_record(clock.now())
            if recorded != config.hash:  # first, so everything after it runs under it
                await log.append_durable(config)
            configured = {key_id for key_id, *_ in settings.keys}
            for key_id in sorted(known_keys - configured):
                # Known from the log but gone from config, environment and vault: no secret to call with.
                await log.append_durable(KeyRemoved(ts=clock.now(), key_id=key_id))
            for key_id, platform, label, source in settings.keys:
                if key_id not in known_keys:
                    await log.append_durable(
                        KeyAdded(ts=clock.now(), key_id=key_id, platform=platform, label=label, source=source)
                    )
            await log.append_durable(
                ServiceStarted(
                    ts=clock.now(),
                    version=settings.version,
                    events_replayed=folded,
                    unclean_previous_start=unclean,
                    unfinished_requests=len(left_open.requests) if left_open else 0,
                    unfinished_attempts=len(left_open.attempts) if left_open else 0,
                )
            )
            task_status.started(runtime)
            await serve_http(runtime)
            inner.cancel_scope.cancel()
        await log.append_durable(ServiceStopped(ts=clock.now()))
        log.close()
    # The log writer has made its last commit: the position is final.
    snapshotter.final(view)


_RUN_TAGS = frozenset(
    event_tag(t)
    for t in (
        ServiceStarted,
        RequestReceived,
        RequestCompleted,
        AttemptStarted,
        AttemptSucceeded,
        AttemptFailed,
    )
)


def _unfinished(store: LogStore) -> Unfinished:
    """What the unclean last run left open, from its last events only (events/unclean.py)."""
    last_seq = store.last_seq()
    start = max(0, last_seq - UNCLEAN_WINDOW)
    left = unfinished(store.read_after(start, types=_RUN_TAGS), from_run_start=start == 0)
    last = store.read_after(last_seq - 1, 1)  # of any type: when the run last wrote anything
    return replace(left, last_event_ts=last[0][1].ts) if last else left


async def _watch_signals(shutting_down: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            shutting_down.set()
            return
