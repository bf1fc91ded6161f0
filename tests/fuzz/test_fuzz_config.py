"""Property tests on the config loader (service/config.py: `load_config`): any file text and any
environment give a `Config` or one `ConfigError`, never another exception; the error is one line and
quotes at most a bounded part of what it read.

Documents come three ways: any text; TOML documents built from the schema's own table and key names (so
the field set follows the schema as it grows) with values of every TOML type; and such documents damaged
by one edit. Long strings are runs of "z", so a message that quotes too much of one shows it.
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fuzz_strategies import FUZZ, assert_message
from hypothesis import example, given
from hypothesis import strategies as st

from service.config import PROTECTION_ENV, Config, ConfigError, ConfigFile, load_config

QUOTE_LIMIT = 80  # no message may quote a run of more of one input string than this
MESSAGE_LIMIT = 2000  # wording from the schema (e.g. every [routing] key an unknown key could have been)
LONG = "z" * (QUOTE_LIMIT + 1)  # a valid platform name and bare key too


def _tables() -> dict[str, tuple[str, ...]]:
    """Each table of the schema and its keys: [[platforms]] and [[models]] by their entries' fields."""
    tables = {}
    for f in msgspec.structs.fields(ConfigFile):
        kind = f.type
        while not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            kind = typing.get_args(kind)[0]  # Annotated[list[Entry], ...] -> list[Entry] -> Entry
        tables[f.name] = tuple(kind.__struct_fields__)
    return tables


TABLES = _tables()
ARRAYS = ("platforms", "models")

# Words that pass a first check somewhere (kinds, levels, pools, the "unlimited" limit, a hashed token,
# a URL, a home-relative path with no such user), beside any text and long runs.
words = st.sampled_from(
    [
        "openai",
        "provider-ban",
        "model-skip",
        "off",
        "fast",
        "balanced",
        "smart",
        "utc",
        "rolling",
        "unlimited",
        "local",
        "groq",
        "http://127.0.0.1:9/v1",
        "sha256:" + "ab" * 32,
        "sha256:xyz",
        "~nosuchuser-fuzz/data",
        " ",
        "",
    ]
)
texts = st.one_of(words, st.text(max_size=12), st.text(max_size=5).map(lambda t: t + LONG + t))
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-3, 70_000),
    st.integers(),
    st.floats(),  # inf and nan too: TOML has them
    texts,
)
toml_values: st.SearchStrategy[Any] = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(texts, st.text(max_size=4)), inner, max_size=2)
    ),
    max_leaves=6,
)
DATES = ["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]  # TOML values that are not JSON's


def key(name: str) -> str:
    return name if name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name) else string(name)


def string(text: str) -> str:
    # JSON's escapes are TOML's, but for DEL, which TOML wants escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v if v in DATES else string(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A TOML document in the schema's shape: some tables, some of their keys, the odd stranger."""
    lines: list[str] = []
    for table in draw(st.lists(st.sampled_from(sorted(TABLES)), unique=True, max_size=5)):
        entries = draw(st.integers(1, 3)) if table in ARRAYS else 1
        for _ in range(entries):
            lines.append(f"[[{table}]]" if table in ARRAYS else f"[{key(table)}]")
            names = draw(st.lists(st.sampled_from(TABLES[table]), unique=True, max_size=6))
            names += draw(st.lists(st.one_of(texts, st.text(max_size=6)), max_size=1))  # unknown keys
            for name in names:
                v = draw(st.one_of(toml_values, st.sampled_from(DATES), texts))
                lines.append(f"{key(name)} = {value(v)}")
    if draw(st.booleans()):
        lines[:0] = ["[catalog]", "builtin = false"] if "catalog" not in "".join(lines) else []
    return "\n".join(lines) + "\n"


def damaged(text: str, at: int, what: str, drop: int) -> str:
    """One edit: `drop` characters at `at` replaced by `what`."""
    i = at % (len(text) + 1)
    return text[:i] + what + text[i + drop :]


file_texts = st.one_of(
    documents(),
    st.builds(
        damaged,
        documents(),
        st.integers(0, 10_000),
        st.sampled_from(["", "[", "]", '"', "=", "\n", "\x00"]),
        st.integers(0, 3),
    ),
    st.text(max_size=200),
)
env_values = st.one_of(
    texts,
    st.text(alphabet="0123456789 ,:-", max_size=8),
    # os.environ hands undecodable bytes over as lone surrogates
    st.binary(min_size=1, max_size=8).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.lists(st.tuples(texts, words), max_size=3).map(lambda ps: ",".join(f"{p}:{lv}" for p, lv in ps)),
).map(lambda s: s.replace("\x00", ""))  # (an environment cannot hold NUL)
envs = st.dictionaries(
    st.sampled_from(
        [
            "SWITCHBOARD_HOST",
            "SWITCHBOARD_PORT",
            "SWITCHBOARD_DATA_DIR",
            PROTECTION_ENV,
            "LOCAL_API_KEY",
            "GROQ_API_KEY",
        ]
    ),
    env_values,
    max_size=3,
)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


def check_load(path: Path | None, env: dict[str, str]) -> Config | None:
    try:
        return load_config(path, env=env)
    except ConfigError as exc:
        message = str(exc)
        assert_message(message, MESSAGE_LIMIT + len(str(path)))
        assert LONG not in message, f"quotes a long input whole: {message[:300]!r}"
        return None


@FUZZ
@given(text=file_texts, env=envs)
@example(text='[server]\ndata_dir = "~nosuchuser-fuzz/data"\n', env={})  # no such user's home
@example(text="", env={"SWITCHBOARD_DATA_DIR": "~nosuchuser-fuzz"})
@example(text=f"[admin]\n{LONG} = 1\n", env={})  # an unknown key as long as you like
@example(text="", env={"SWITCHBOARD_PORT": "0\x850"})  # a line end json.dumps leaves raw
@example(  # a long platform name in the list of known ones
    text=f'[catalog]\nbuiltin = false\n[[platforms]]\nname = "{LONG}"\nbase_url = "http://x/v1"\n'
    '[[models]]\nplatform = "nope"\nid = "m"\n',
    env={PROTECTION_ENV: "nope:off"},
)
def test_any_file_and_environment_give_a_config_or_one_bounded_line(
    config_dir: Path, text: str, env: dict[str, str]
) -> None:
    path = config_dir / "switchboard.toml"
    path.write_text(text, encoding="utf-8", newline="")
    check_load(path, env)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_file_bytes_give_a_config_or_one_bounded_line(config_dir: Path, raw: bytes) -> None:
    path = config_dir / "bytes.toml"
    path.write_bytes(raw)
    check_load(path, {})


@FUZZ
@given(env=envs)
def test_any_environment_without_a_file_gives_a_config_or_one_bounded_line(env: dict[str, str]) -> None:
    check_load(None, env)


# ---- regressions: what the properties above found -------------------------------------------------------


def test_a_data_dir_under_a_home_that_cannot_be_found_is_a_config_error(config_dir: Path) -> None:
    # Path.expanduser raised RuntimeError through load_config.
    path = config_dir / "home.toml"
    path.write_text('[server]\ndata_dir = "~nosuchuser-fuzz/data"\n')
    with pytest.raises(
        ConfigError, match=r"home\.toml:2: server\.data_dir: cannot expand .*no home directory"
    ):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"^env SWITCHBOARD_DATA_DIR: cannot expand"):
        load_config(None, env={"SWITCHBOARD_DATA_DIR": "~nosuchuser-fuzz"})


def test_an_unknown_key_of_any_length_is_quoted_cut_and_a_next_line_character_escaped(
    config_dir: Path,
) -> None:
    path = config_dir / "long.toml"
    path.write_text(f"[admin]\n{'k' * 500} = 1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    message = str(raised.value)
    assert "k" * 80 not in message  # the key is quoted cut...
    assert (
        "expected one of: allowed_origins, secure_cookie, session_ttl_s, token" in message
    )  # ... the rest whole
    assert len(message) < len(str(path)) + 150 + len("allowed_origins, secure_cookie, session_ttl_s, token")
    with pytest.raises(ConfigError) as raised:
        load_config(None, env={"SWITCHBOARD_PORT": "1\u20282"})
    assert str(raised.value) == 'env SWITCHBOARD_PORT: expected an integer from 0 to 65535, found "1\\u20282"'
