"""Snapshots of the projections, so a start (or a read-only command) folds only the log's tail.

A snapshot is what the routing view, the operational statistics and the supervisor's notes had folded at
one position (`seq`), with what that fold depended on: the configuration the view was built from (the hash
of its `ConfigApplied` record), the event log's schema version and this encoding's format version. It is
derived data: one that does not fit (another configuration, another schema or format, a position past the
log's end, bytes that do not decode) is passed over for the next older, and with none left the log is
folded from the start, which gives the same projections, only slower.

Encoded with msgspec's MessagePack, projections as arrays (compact, fast); the header fields stay named, so
`check` reads them without building the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import msgspec

from events.op_stats import OperationalStats, OpStatsState
from events.sqlite_store import MIGRATIONS
from events.store import LogStore
from events.types import ConfigApplied, Event, ServiceStarted, ServiceStopped
from events.view import RoutingView, ViewState

FORMAT = 2  # of the encoding below: bump it when any state struct changes shape (2: catalog overrides
# carry intelligence ranks and limits)
LOG_SCHEMA = len(MIGRATIONS)  # the event log's schema version
KEEP = 3  # snapshots kept; older ones go as a new one is saved


class NotesState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    config_hash: str | None
    lifecycle: ServiceStarted | ServiceStopped | None


class LogNotes:
    """What the supervisor notes from the log at start: the hash of the last recorded configuration (is
    this start's different?) and the last start or stop (did the previous run end cleanly?)."""

    FOLDS: ClassVar[frozenset[type[Event]]] = frozenset({ConfigApplied, ServiceStarted, ServiceStopped})

    def __init__(self) -> None:
        self.config_hash: str | None = None
        self.lifecycle: ServiceStarted | ServiceStopped | None = None

    def apply(self, event: Event) -> None:
        if type(event) is ConfigApplied:
            self.config_hash = event.hash
        elif isinstance(event, ServiceStarted | ServiceStopped):
            self.lifecycle = event

    def state(self) -> NotesState:
        return NotesState(self.config_hash, self.lifecycle)

    def restore(self, state: NotesState) -> None:
        self.config_hash, self.lifecycle = state.config_hash, state.lifecycle


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    format: int
    schema: int
    seq: int
    config_hash: str  # of the configuration record the view was built from
    created: float
    view: ViewState
    op_stats: OpStatsState
    notes: NotesState


class _Header(msgspec.Struct, frozen=True):
    """A snapshot's named fields that say whether it fits, decoded without the rest."""

    format: int
    schema: int
    seq: int
    config_hash: str


_encoder = msgspec.msgpack.Encoder()
_header = msgspec.msgpack.Decoder(_Header)
_decoder = msgspec.msgpack.Decoder(Snapshot)


def take(
    view: RoutingView, op_stats: OperationalStats, notes: LogNotes, config_hash: str, created: float
) -> Snapshot:
    """The three projections' state as one snapshot; they must all have folded up to `view.seq`."""
    return Snapshot(
        format=FORMAT,
        schema=LOG_SCHEMA,
        seq=view.seq,
        config_hash=config_hash,
        created=created,
        view=view.state(),
        op_stats=op_stats.state(),
        notes=notes.state(),
    )


def encode(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def check(data: bytes, config_hash: str, last_seq: int) -> Snapshot | str:
    """The snapshot if it fits this log and this configuration, else why not (one line)."""
    try:
        header = _header.decode(data)
    except msgspec.DecodeError as exc:
        return f"it does not decode ({exc})"
    if header.format != FORMAT:
        return f"its format is version {header.format}, this build reads version {FORMAT}"
    if header.schema != LOG_SCHEMA:
        return f"it was made on event log schema {header.schema}, the log is on schema {LOG_SCHEMA}"
    if header.seq > last_seq:
        return f"its position {header.seq} is past the log's end ({last_seq})"
    if header.config_hash != config_hash:
        return f"it was made under another configuration ({header.config_hash[:12]}, now {config_hash[:12]})"
    try:
        found = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        return f"it does not decode ({exc})"
    damaged = found.view.stats.damaged()
    return found if damaged is None else f"it does not decode ({damaged})"


def newest_fitting(
    stored: Iterable[tuple[int, bytes]], config_hash: str, last_seq: int
) -> tuple[Snapshot | None, list[str]]:
    """The newest of `stored` (newest first) that fits, and a line for each newer one passed over."""
    skipped: list[str] = []
    for seq, data in stored:
        found = check(data, config_hash, last_seq)
        if isinstance(found, Snapshot):
            return found, skipped
        skipped.append(f"snapshot at seq {seq} ignored: {found}")
    return None, skipped


def restore(
    snapshot: Snapshot,
    view: RoutingView,
    op_stats: OperationalStats | None = None,
    notes: LogNotes | None = None,
) -> None:
    """Put the snapshot's state into fresh projections (the view built from its configuration)."""
    view.restore(snapshot.view)
    if op_stats is not None:
        op_stats.restore(snapshot.op_stats)
    if notes is not None:
        notes.restore(snapshot.notes)


def resume(
    store: LogStore,
    view: RoutingView,
    config_hash: str,
    op_stats: OperationalStats | None = None,
    notes: LogNotes | None = None,
) -> tuple[Snapshot | None, list[str]]:
    """Restore the newest fitting snapshot in `store` into the fresh projections given, if there is one;
    the caller then folds the log after `view.seq`. Returns it and a line per snapshot passed over."""
    found, skipped = newest_fitting(store.snapshots(), config_hash, store.last_seq())
    if found is not None:
        restore(found, view, op_stats, notes)
    return found, skipped


def save(store: LogStore, snapshot: Snapshot, keep: int = KEEP) -> int:
    """Encode and store `snapshot`, keeping the newest `keep`; returns its size in bytes."""
    data = encode(snapshot)
    store.save_snapshot(snapshot.seq, data, keep)
    return len(data)
