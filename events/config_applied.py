"""The configuration in force, as the log records it (`ConfigApplied`), and the routing view it builds.

A decision is a pure function of the log and of the configuration the gateway ran with (its catalog, routing
and session policies). The gateway records that configuration whenever it starts with one that differs from
the last recorded (by content hash), so a replay rebuilds every decision's view from the log alone, and the
read-only commands show what the gateway really runs with.

The record holds plain values (JSON objects, lists, numbers, strings) written from the dataclasses by their
fields and read back by their type hints: a field added to `CatalogModel`, `RoutingPolicy` or
`SessionPolicy` is recorded without a schema change; a field a newer build recorded and this one does not
know is ignored; a field an older build did not record takes its default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from events.catalog import CatalogModel
from events.policy import RoutingPolicy
from events.store import Entry, LogStore
from events.types import ConfigApplied, event_tag
from events.view import RoutingView, SessionPolicy

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

CONFIG_TAG = event_tag(ConfigApplied)
_CONFIG_TYPES = frozenset({CONFIG_TAG})
_hash_encoder = msgspec.json.Encoder(order="deterministic")


def record_config(
    *,
    ts: float,
    models: Iterable[CatalogModel],
    policy: RoutingPolicy,
    sessions: SessionPolicy,
    platforms: Iterable[str],
    rolling_day_platforms: Iterable[str] = (),
    timeouts: object = None,
    max_attempts: int = 0,
) -> ConfigApplied:
    """The record of one configuration, with its content hash. `timeouts`: a dataclass or a mapping."""
    event = ConfigApplied(
        ts=ts,
        hash="",
        models=tuple(plain(m) for m in models),
        policy=plain(policy),
        sessions=plain(sessions),
        platforms=tuple(sorted(platforms)),
        rolling_day_platforms=tuple(sorted(rolling_day_platforms)),
        timeouts=plain(timeouts) if timeouts is not None else {},
        max_attempts=max_attempts,
    )
    return msgspec.structs.replace(event, hash=config_hash(event))


def config_hash(event: ConfigApplied) -> str:
    """SHA-256 of everything the record says but when it was made (and its own hash)."""
    content = msgspec.structs.asdict(event)
    for name in ("ts", "request_id", "hash"):
        content.pop(name, None)
    return hashlib.sha256(_hash_encoder.encode(content)).hexdigest()


def models_of(event: ConfigApplied) -> list[CatalogModel]:
    return [build(CatalogModel, m) for m in event.models]


def policy_of(event: ConfigApplied) -> RoutingPolicy:
    return build(RoutingPolicy, event.policy)


def session_policy_of(event: ConfigApplied) -> SessionPolicy:
    return build(SessionPolicy, event.sessions)


def view_of(event: ConfigApplied) -> RoutingView:
    """A fresh routing view (nothing folded) as the gateway that recorded `event` built it at start."""
    return RoutingView(
        models_of(event), policy_of(event), frozenset(event.rolling_day_platforms), session_policy_of(event)
    )


def recorded_configs(store: LogStore, upto: int | None = None, batch: int = 1000) -> list[Entry]:
    """Every `ConfigApplied` in the log with seq <= `upto` (all of them when None), in log order."""
    out: list[Entry] = []
    seq = 0
    while True:
        entries = store.read_after(seq, batch, _CONFIG_TYPES)
        for entry in entries:
            if upto is not None and entry[0] > upto:
                return out
            out.append(entry)
        if len(entries) < batch:
            return out
        seq = entries[-1][0]


def last_config(store: LogStore) -> ConfigApplied | None:
    """The configuration the gateway last started with, if it recorded one (older logs did not)."""
    entry = store.last_of(CONFIG_TAG)
    return entry[1] if entry is not None and isinstance(entry[1], ConfigApplied) else None


# ---- dataclasses <-> plain values ----------------------------------------------------------------------


def plain(value: object) -> Any:
    """A dataclass (recursively) as JSON-ready values: dataclasses by their init fields, sets sorted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def build(cls: type[T], data: Mapping[str, Any]) -> T:
    """`cls` from plain values: the fields it knows, each converted back by its type hint."""
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{name: _convert(hints.get(name), value) for name, value in data.items() if name in known})


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any) -> Any:
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is not type(None) and _fits(arm, value):
                return _convert(arm, value)
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return build(hint, value)  # type: ignore[arg-type]  # is_dataclass admits instances too
    if origin in (frozenset, set) or hint in (frozenset, set):
        return frozenset(value)
    if origin is tuple or hint is tuple:
        args = typing.get_args(hint)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(_convert(item, v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _fits(arm: Any, value: Any) -> bool:
    if dataclasses.is_dataclass(arm):
        return isinstance(value, Mapping)
    origin = typing.get_origin(arm) or arm
    if origin in (frozenset, set, tuple, list, Sequence):
        return isinstance(value, list | tuple)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    return isinstance(origin, type) and isinstance(value, origin)
