"""Property tests on the event codec (events/types.py), which reads the log back: every event of the
vocabulary, with any field values of its types, round-trips through `encode_event` / `decode_event`;
bytes that are not an event fail as a decode error, never as something else.

Values are built from each struct's own field types, so an event or field added later is covered without
touching this file. Floats are finite: JSON has no NaN or infinity (msgspec writes them as null, which a
`float` field then refuses; nothing the gateway records can be non-finite today).
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import msgspec
from fuzz_strategies import FUZZ, any_bytes, json_bytes, json_values
from hypothesis import given
from hypothesis import strategies as st

from events.types import EVENT_TYPES, AnyEvent, decode_event, encode_event, event_tag

texts = st.text(max_size=12)
floats = st.floats(allow_nan=False, allow_infinity=False)
ints = st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-3, 1000))


def for_type(kind: Any) -> st.SearchStrategy[Any]:
    """Values of a field's type, as msgspec reads the annotation."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return json_values
    if kind is type(None):
        return st.none()
    if kind is msgspec.UnsetType:  # a field left out (ModelUpdated.limits: a limit not changed)
        return st.just(msgspec.UNSET)
    if kind is bool:
        return st.booleans()
    if kind is int:
        return ints
    if kind is float:
        return floats
    if kind is str:
        return texts
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return st.sampled_from(list(kind))
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return struct(kind)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(for_type(a) for a in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(for_type(args[0]), max_size=3).map(tuple)
        return st.tuples(*(for_type(a) for a in args))
    if origin is dict:
        return st.dictionaries(for_type(args[0]), for_type(args[1]), max_size=3)
    if origin is typing.Annotated:
        return for_type(args[0])
    raise NotImplementedError(f"no strategy for {kind!r}: teach for_type this type")


def struct(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    required = {f.name: for_type(hints[f.name]) for f in msgspec.structs.fields(cls) if f.required}
    optional = {f.name: for_type(hints[f.name]) for f in msgspec.structs.fields(cls) if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


events = st.one_of(*(struct(cls) for cls in EVENT_TYPES))


@FUZZ
@given(event=events)
def test_every_event_round_trips_through_the_codec(event: AnyEvent) -> None:
    data = encode_event(event)
    assert decode_event(data) == event
    assert decode_event(data.decode()) == event  # as text, as SQLite hands a row back
    assert msgspec.json.decode(data)["type"] == event_tag(type(event))


@FUZZ
@given(
    data=st.one_of(
        any_bytes,
        json_bytes(events.map(msgspec.to_builtins)),
        st.builds(
            lambda tag, fields: {**fields, "type": tag},
            st.sampled_from([event_tag(cls) for cls in EVENT_TYPES]),
            st.dictionaries(texts, json_values, max_size=4),
        ).map(msgspec.json.encode),
    )
)
def test_bytes_that_are_not_an_event_fail_as_a_decode_error(data: bytes) -> None:
    try:
        event = decode_event(data)
    except (msgspec.DecodeError, UnicodeDecodeError):  # (msgspec checks a string's UTF-8 as it reads it)
        return
    assert isinstance(event, EVENT_TYPES)
    assert decode_event(encode_event(event)) == event
