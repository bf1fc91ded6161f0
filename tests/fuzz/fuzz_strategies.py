"""What the fuzz modules share: JSON-shaped strategies (anything, or nearly the shape a parser expects, so
examples reach past its first type check), the settings every test applies, and the checks on messages."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st

FUZZ = settings.get_profile("switchboard-fuzz")  # registered by conftest.py, loaded before this module

# Numbers as JSON and msgspec see them: small, at the int64/uint64 edges, beyond them (Python ints), and
# finite floats (JSON has no NaN or infinity).
json_numbers = st.one_of(
    st.integers(-10, 10),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_scalars = st.one_of(st.none(), st.booleans(), json_numbers, st.text(max_size=20))
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def either(shape: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The expected shape most of the time, any JSON value otherwise."""
    return st.one_of(shape, shape, json_values)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with any subset of `fields` (each nearly its shape) and maybe a stray key."""
    return st.fixed_dictionaries(
        {}, optional={name: either(strategy) for name, strategy in fields.items()}
    ).flatmap(
        lambda d: st.dictionaries(st.text(max_size=6), json_values, max_size=1).map(
            lambda extra: {**extra, **d}
        )
    )


def encodes(value: Any) -> bytes:
    return msgspec.json.encode(value)


def json_bytes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of the values, sometimes damaged: cut short, a byte changed, or bytes that are not UTF-8."""

    def damage(raw: bytes, how: int, at: int, byte: int) -> bytes:
        i = at % (len(raw) + 1)
        if how == 0:
            return raw[:i]
        if how == 1:
            return raw[:i] + bytes([byte]) + raw[i + 1 :]
        if how == 2:
            return raw[:i] + b"\xff\xfe" + raw[i:]
        return raw

    return st.builds(
        damage, strategy.map(encodes), st.integers(0, 6), st.integers(0, 10_000), st.integers(0, 255)
    )


# Bytes in which JSON structure and its edges are likely: quotes, brackets, escapes, invalid UTF-8.
json_ish_bytes = st.lists(
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[",
            b"]",
            b'"',
            b":",
            b",",
            b"\\",
            b"\\u",
            b"d800",
            b"null",
            b"1e999",
            b"-",
            b"0",
            b"\xff",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\n",
            b" ",
            b"a",
            b'"error"',
            b'"choices"',
            b'"message"',
        ]
    ),
    max_size=40,
).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=300), json_ish_bytes)


def one_line(text: str) -> bool:
    """No line break of any kind (str.splitlines' set: \\n, \\r, \\v, \\f, \\x1c-\\x1e, \\x85, U+2028/9)."""
    return len(text.splitlines()) <= 1 and not text.endswith(("\n", "\r"))


def assert_message(text: str, limit: int) -> None:
    """An error message for a person: one line, not empty, at most `limit` characters."""
    assert text, "empty message"
    assert one_line(text), f"not one line: {text[:300]!r}"
    assert len(text) <= limit, f"{len(text)} characters (limit {limit}): {text[:300]!r}"
