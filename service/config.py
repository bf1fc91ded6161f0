"""Configuration: the TOML file, merged over the built-in catalog, plus environment overrides.

Every setting has a default, so `load_config(None)` gives a working gateway (built-in catalog, data in
`./data`). A file only says what differs. Mistakes are reported as one `ConfigError` naming the file, the
line and the key path, because a gateway that starts with a silently ignored typo routes wrongly for hours.
Messages never contain the value of a gateway key, admin token, provider key or header.

The file's shape is a msgspec schema (`ConfigFile`); `_translate` turns its errors into those messages. Only
rules across several keys (duplicates, references, orderings) are checked by hand. Defaults live with the
code that uses the values (`RoutingPolicy`, `SessionPolicy`, `PlatformConfig`, `ModelConfig`, ...).

Environment (wins over the file; empty values count as unset): SWITCHBOARD_HOST, SWITCHBOARD_PORT,
SWITCHBOARD_DATA_DIR, `<PLATFORM>_API_KEY` (comma list, see `env_var_for`) and THREAD_PROTECTION_PLATFORMS
(`"longcat:provider-ban,groq:model-skip"`, overriding those platforms' `protection`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin, get_type_hints

import msgspec
from msgspec import UNSET, Meta, UnsetType

from events.catalog import ALIASES, VIRTUAL_MODELS, CatalogModel
from events.policy import RoutingPolicy
from events.quotas import Limits
from events.view import SessionPolicy

# The platform kinds the gateway has an adapter for: a new adapter adds its kind here and nowhere else.
Kind = Literal["openai", "gemini", "cohere", "cloudflare"]
Protection = Literal["provider-ban", "model-skip", "off"]
Pool = Literal["fast", "balanced", "smart"]
Task = Literal["chat", "embedding"]  # events/catalog.py TASKS: chat completions, or /v1/embeddings
QuotaDay = Literal["utc", "rolling"]  # daily limits reset at UTC midnight / count the last 24 hours
KINDS: tuple[str, ...] = get_args(Kind)
PROTECTIONS: tuple[str, ...] = get_args(Protection)
POOLS: tuple[str, ...] = get_args(Pool)
QUOTA_DAYS: tuple[str, ...] = get_args(QuotaDay)

DEFAULT_PROTECTION: Protection = "model-skip"
DEFAULT_QUOTA_DAY: QuotaDay = "utc"
DEFAULT_DATA_DIR = Path("data")  # relative to the working directory: a file's data_dir is relative to it
PROTECTION_ENV = "THREAD_PROTECTION_PLATFORMS"  # "longcat:provider-ban,groq:model-skip"
# A model added by the file without ranks sits mid-table (seed ranges: intelligence 1..32, speed 1..11): an
# unknown model should neither outrank the known-strong ones in smart mode nor be starved everywhere else.
DEFAULT_INTELLIGENCE_RANK = 16
DEFAULT_SPEED_RANK = 6
NO_CATALOG_VERSION = "none"  # catalog_version when `[catalog] builtin = false`
UNLIMITED = "unlimited"  # TOML has no null: this string resets a limit to "none recorded"

_KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column \d+|at end of document)\)\s*$")


class ConfigError(Exception):
    """A configuration problem, rendered on one line as `<file>:<line>: <key path>: <message>`.

    Parts that are unknown are left out (`line` is None when the locator cannot place a key, `file` is None
    for environment variables). Key paths use TOML spelling with 1-based indices, e.g.
    `[[platforms]][2].protection` is the `protection` key of the second `[[platforms]]` entry.
    """

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file or ""
        if self.file is not None and self.line is not None:
            where += f":{self.line}"
        return ": ".join(part for part in (where, self.key, self.message) if part)


# --- the values the rest of the gateway reads ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlatformConfig:
    name: str
    kind: Kind
    base_url: str
    display_name: str
    env_var: str
    keys: tuple[str, ...] = field(default=(), repr=False)  # secrets: a logged config must leak nothing
    protection: Protection = DEFAULT_PROTECTION
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may carry credentials too
    # Raises this platform's first-byte deadline above [timeouts] first_byte_s (slow reasoning models);
    # None: the global deadline applies.
    timeout_s: float | None = None
    quota_day: QuotaDay = DEFAULT_QUOTA_DAY
    # Provider-ban platforms only: while one session has a request in flight here, other sessions skip it.
    # Not given, it follows the protection level: on for provider-ban, as the seed guarded LongCat threads.
    single_flight: bool | None = None  # None: set to the level's default at once (never None after)
    # The file set single_flight itself: a protection level given later (the environment) leaves it alone.
    single_flight_given: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.single_flight is None:
            object.__setattr__(self, "single_flight", self.protection == "provider-ban")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A model of the catalog or the file: CatalogModel's fields under the same names (so `catalog_model`
    copies them without a list to keep in step), the limits flat as the file spells them, and the name
    shown to people. The defaults are those of a model the file adds."""

    platform: str
    id: str
    display_name: str
    pool: Pool = "balanced"
    fallback: bool = True
    enabled: bool = True
    context_window: int | None = None
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    intelligence_rank: int = DEFAULT_INTELLIGENCE_RANK
    speed_rank: int = DEFAULT_SPEED_RANK
    task: Task = "chat"
    family: str | None = None  # embedding models: the vectors they give (same family = comparable vectors)

    @property
    def ref(self) -> str:
        return f"{self.platform}/{self.id}"

    def catalog_model(self) -> CatalogModel:
        limits = Limits(**{name: getattr(self, name) for name in _LIMIT_FIELDS})
        return CatalogModel(**{name: getattr(self, name) for name in _CATALOG_FIELDS}, limits=limits)


_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
_CATALOG_FIELDS = tuple(f.name for f in fields(CatalogModel) if f.init and f.name != "limits")


@dataclass(frozen=True)
class Routing:
    """`[routing]`: the attempt budget plus every routing constant (`policy`).

    `rate_limit_cooldown_s` mirrors `policy.rate_limit_cooldown_s` and the two are always equal: when they are
    constructed differing, the one left at the default takes the other's value (both non-default and
    different is a ValueError).
    """

    max_attempts: int = 5  # upstream calls per request, across models and keys
    rate_limit_cooldown_s: float = RoutingPolicy.rate_limit_cooldown_s
    policy: RoutingPolicy = field(default_factory=RoutingPolicy)

    def __post_init__(self) -> None:
        own, policy = self.rate_limit_cooldown_s, self.policy.rate_limit_cooldown_s
        if own == policy:
            return
        default = RoutingPolicy.rate_limit_cooldown_s
        if policy == default:
            object.__setattr__(self, "policy", replace(self.policy, rate_limit_cooldown_s=own))
        elif own == default:
            object.__setattr__(self, "rate_limit_cooldown_s", policy)
        else:
            raise ValueError(
                f"rate_limit_cooldown_s ({own!r}) differs from policy.rate_limit_cooldown_s ({policy!r})"
            )


# --- the file's schema -----------------------------------------------------------------------------------
# Every leaf type carries the words an error uses for what it expects ("expected <description>, found ...");
# `extra=_SECRET` marks values (and everything under them) that an error describes without showing.

_SECRET = {"secret": True}
_FINITE = sys.float_info.max  # TOML allows inf and nan; no setting means either


def _choices(what: str, literal: Any) -> str:
    return f"{what} ({', '.join(json.dumps(v) for v in get_args(literal))})"


Text = Annotated[str, Meta(pattern=r"\S", description="a non-empty string")]
SecretText = Annotated[str, Meta(pattern=r"\S", description="a non-empty string", extra=_SECRET)]
# Gateway keys and the admin token: plaintext, or already hashed as `sha256:<64 hex>`.
Token = Annotated[
    str,
    Meta(
        pattern=r"\A(?!sha256:)(?s:.*)\S|\Asha256:[0-9a-fA-F]{64}\Z",
        description='plaintext or "sha256:" and 64 hex digits',
        extra=_SECRET,
    ),
]
Port = Annotated[int, Meta(ge=0, le=65535, description="an integer from 0 to 65535")]
# Counts and limits are stored in snapshots (msgpack: at most 64 bits) and read by the console (JavaScript:
# exact to 2**53): past that a number means nothing a count could, and must not reach either.
MAX_COUNT = 2**53
Count = Annotated[int, Meta(ge=1, le=MAX_COUNT, description="an integer from 1 to 2**53")]
Seconds = Annotated[float, Meta(gt=0, le=_FINITE, description="a positive number of seconds")]
Finite = Annotated[float, Meta(ge=-_FINITE, le=_FINITE, description="a finite number")]
Flag = Annotated[bool, Meta(description="true or false")]
Limit = Annotated[
    Count | Literal["unlimited"], Meta(description=f'an integer from 1 to 2**53 or "{UNLIMITED}"')
]
Url = Annotated[str, Meta(pattern=r"(?i)\Ahttps?://[^/?#\s]", description="an http:// or https:// URL")]
PlatformName = Annotated[
    str,
    Meta(
        pattern=r"\A[a-z0-9][a-z0-9_-]*\Z",
        description='a platform name of lowercase letters, digits, "-" and "_"',
    ),
]
_STRINGS = Meta(description="an array of strings", extra=_SECRET)  # of secrets: described, never shown
Headers = Annotated[
    dict[str, Annotated[str, Meta(description="a string")]],
    Meta(description="a table of header names to strings", extra=_SECRET),
]
KindField = Annotated[Kind, Meta(description=_choices("a supported platform kind", Kind))]
ProtectionField = Annotated[Protection, Meta(description=_choices("a protection level", Protection))]
PoolField = Annotated[Pool, Meta(description=_choices("a pool", Pool))]
TaskField = Annotated[Task, Meta(description=_choices("a model task", Task))]
QuotaDayField = Annotated[QuotaDay, Meta(description=_choices("a quota day", QuotaDay))]


class _Table(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class Timeouts(_Table, frozen=True):
    first_byte_s: Seconds = 45.0  # an attempt with no first byte by then is abandoned (falls over)
    stall_s: Seconds = 45.0  # silence this long after the first byte ends the attempt
    keepalive_s: Seconds = 15.0  # a streaming client hears ": keep-alive" after this much silence
    # The documented spelling of RoutingPolicy.transient_cooldown_s (also settable under [routing]).
    transient_cooldown_s: Seconds = RoutingPolicy.transient_cooldown_s


class Sessions(_Table, frozen=True):
    """`[sessions]`: the session table (pins, bans) and thread protection timing."""

    pin_ttl_s: Seconds = SessionPolicy.pin_ttl_s  # a pin expires after this long without use
    max_sessions: Count = SessionPolicy.max_sessions  # beyond this the least recently used session goes
    # Within this time of a session's use of its pinned model on a provider-ban platform, that platform's
    # other models are not offered to the session.
    provider_ban_window_s: Seconds = SessionPolicy.provider_ban_window_s


class Messages(_Table, frozen=True):
    """`[messages]`: the Anthropic Messages protocol (service/messages.py)."""

    # What a Claude model name (`claude-*`) routes as: a mode or a model id of the catalog. Claude clients
    # (Claude Code) name Anthropic's models, which no provider here serves.
    claude_model: Text = "auto-smart"
    # The most output tokens a Messages request asks a provider for. Claude Code asks for 32,000 and many
    # free models refuse more than they can give (a 400 on every turn); a client's smaller limit is kept.
    # "unlimited" forwards the client's own.
    max_tokens_cap: Limit = 8192


class Snapshots(_Table, frozen=True):
    """`[snapshots]`: how often the projections are saved (README: start-up on a long log)."""

    every_events: Count = 100_000  # a snapshot after this many events ...
    every_s: Seconds = 600.0  # ... or this long after the last one, if anything happened since


class Responses(_Table, frozen=True):
    """`[responses]`: stored Responses API answers (actors/responses.py, README: the Responses API)."""

    retention_days: Annotated[float, Meta(gt=0, le=3650, description="days, at most 3650")] = 30.0
    # Responses indexed at most (the newest kept): bounds the index's memory, about 200 bytes each.
    max_indexed: Count = 100_000
    # Bodies of recent responses held in memory; older ones are read back from the log.
    cache_mb: Annotated[float, Meta(gt=0, le=1e5, description="a positive number of megabytes")] = 64.0


# RoutingPolicy fields that are weights of a score term: any finite number (ttfb_worst is negative by nature).
# Every other float field is a duration, count, prior or threshold and must be > 0; int fields must be >= 1.
_POLICY_WEIGHTS = frozenset(
    {
        "speed_weight",
        "slow_penalty",
        "ttfb_bonus",
        "ttfb_worst",
        "intelligence_weight",
        "smart_intelligence",
        "smart_speed",
        "smart_ttfb",
        "penalty_weight",
    }
)
_UNITS = {
    "_s": " of seconds",
    "_ms": " of milliseconds",
    "_days": " of days",
    "_tps": " of tokens per second",
}
_TTFB_ORDER = ("ttfb_good_ms", "ttfb_zero_ms", "ttfb_bad_ms")  # must be strictly increasing


def _policy_type(name: str) -> Any:
    kind = get_type_hints(RoutingPolicy)[name]
    if kind is int:
        return Count
    if kind is not float:
        raise TypeError(f"RoutingPolicy.{name}: [routing] knows int and float settings, not {kind}")
    if name in _POLICY_WEIGHTS:
        return Finite
    unit = next((unit for suffix, unit in _UNITS.items() if name.endswith(suffix)), "")
    return Annotated[float, Meta(gt=0, le=_FINITE, description=f"a positive number{unit}")]


# `[routing]` is `max_attempts` plus every RoutingPolicy field, so a new routing constant is settable (and
# checked by its type and role) without touching this file.
RoutingTable = msgspec.defstruct(
    "RoutingTable",
    [
        ("max_attempts", Count, Routing.max_attempts),
        *((f.name, _policy_type(f.name), getattr(RoutingPolicy, f.name)) for f in fields(RoutingPolicy)),
    ],
    bases=(_Table,),
)


Megabytes = Annotated[float, Meta(gt=0, le=1e6, description="a positive number of megabytes")]


class ServerLimits(_Table, frozen=True):
    """`[server]`'s limits on what one client may take (applied by service/http_server.py and the edges)."""

    keep_alive_timeout_s: Seconds = 75.0  # an idle keep-alive connection is closed after this
    # A request head must arrive within this, from the connection's start or the head's first byte.
    header_timeout_s: Seconds = 20.0
    body_timeout_s: Seconds = 60.0  # the whole request body must arrive within this (else 408)
    send_timeout_s: Seconds = 30.0  # a client that takes none of a write for this long is dropped
    max_connections: Count | None = None  # open client connections; default from the descriptor limit
    max_body_mb: Megabytes = 32.0  # a larger request body is refused (413) before it is read whole
    grace_s: Seconds = 10.0  # on SIGTERM, requests in flight get this long; then connections are closed

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class _Server(ServerLimits, frozen=True):
    host: Text = "127.0.0.1"
    port: Port = 8080  # 0 picks a free port
    data_dir: Text | None = None


class _Gateway(_Table, frozen=True):
    api_keys: Annotated[tuple[Token, ...], _STRINGS] = ()


class ConsoleSettings(_Table, frozen=True):
    """`[admin]`'s console session settings (service/admin_auth.py)."""

    # A console login lasts this long (or until logout); at most 30 days.
    session_ttl_s: Annotated[float, Meta(gt=0, le=30 * 86400, description="seconds, at most 30 days")] = (
        12 * 3600.0
    )
    # Mark the session cookie Secure even on plain HTTP: behind a proxy that terminates TLS, the gateway
    # sees http while browsers see https.
    secure_cookie: Flag = False
    # The console's origins as browsers see them (e.g. "https://llm.example.com"), for a proxy that rewrites
    # the Host header; an Origin whose host is the request's Host is accepted without being listed.
    allowed_origins: Annotated[tuple[Text, ...], Meta(description="an array of origins")] = ()


class _Admin(ConsoleSettings, frozen=True):
    token: Token | None = None


class _Catalog(_Table, frozen=True):
    builtin: Flag = True


# `[[platforms]]` and `[[models]]` entries override only what they give: UNSET marks the rest.
class _PlatformEntry(_Table, frozen=True):
    name: PlatformName
    kind: KindField | UnsetType = UNSET
    base_url: Url | UnsetType = UNSET
    keys: Annotated[tuple[SecretText, ...], _STRINGS] | UnsetType = UNSET
    protection: ProtectionField | UnsetType = UNSET
    headers: Headers | UnsetType = UNSET
    timeout_s: Seconds | UnsetType = UNSET
    quota_day: QuotaDayField | UnsetType = UNSET
    single_flight: Flag | UnsetType = UNSET


class _ModelEntry(_Table, frozen=True):
    platform: Text
    id: Text
    pool: PoolField | UnsetType = UNSET
    fallback: Flag | UnsetType = UNSET
    enabled: Flag | UnsetType = UNSET
    context_window: Count | UnsetType = UNSET
    rpm: Limit | UnsetType = UNSET
    rpd: Limit | UnsetType = UNSET
    tpm: Limit | UnsetType = UNSET
    tpd: Limit | UnsetType = UNSET
    intelligence_rank: Count | UnsetType = UNSET
    speed_rank: Count | UnsetType = UNSET
    task: TaskField | UnsetType = UNSET
    family: Text | UnsetType = UNSET


class ConfigFile(_Table, frozen=True):
    server: _Server = msgspec.field(default_factory=_Server)
    gateway: _Gateway = msgspec.field(default_factory=_Gateway)
    admin: _Admin = msgspec.field(default_factory=_Admin)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    routing: RoutingTable = msgspec.field(default_factory=RoutingTable)  # type: ignore[valid-type]  # defstruct
    sessions: Sessions = msgspec.field(default_factory=Sessions)
    snapshots: Snapshots = msgspec.field(default_factory=Snapshots)
    messages: Messages = msgspec.field(default_factory=Messages)
    responses: Responses = msgspec.field(default_factory=Responses)
    catalog: _Catalog = msgspec.field(default_factory=_Catalog)
    platforms: Annotated[list[_PlatformEntry], Meta(description="an array of tables ([[platforms]])")] = []
    models: Annotated[list[_ModelEntry], Meta(description="an array of tables ([[models]])")] = []


def _given(entry: msgspec.Struct) -> dict[str, Any]:
    return {name: value for name in entry.__struct_fields__ if (value := getattr(entry, name)) is not UNSET}


# --- loading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path | None
    host: str
    port: int
    data_dir: Path
    api_keys: tuple[str, ...] = field(repr=False)
    admin_token: str | None = field(repr=False)
    timeouts: Timeouts
    routing: Routing
    sessions: Sessions
    builtin_catalog: bool
    catalog_version: str
    platforms: dict[str, PlatformConfig]
    models: tuple[ModelConfig, ...]
    env_keys: dict[str, tuple[str, ...]] = field(repr=False)
    limits: ServerLimits = field(default_factory=ServerLimits)
    snapshots: Snapshots = field(default_factory=Snapshots)
    responses: Responses = field(default_factory=Responses)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    messages: Messages = field(default_factory=Messages)


class _CatalogFile(msgspec.Struct):
    version: str
    platforms: list[PlatformConfig]
    models: list[ModelConfig]


def env_var_for(platform: str) -> str:
    """`groq` -> `GROQ_API_KEY`; dashes become underscores so the name is usable in a shell."""
    return platform.upper().replace("-", "_") + "_API_KEY"


def load_builtin_catalog() -> tuple[str, dict[str, PlatformConfig], tuple[ModelConfig, ...]]:
    """The catalog shipped in `service/data/catalog.json` (built by `scripts/build_catalog.py`).

    Parsed afresh on every call so callers may not share (and mutate) one platforms dict.
    """
    data = resources.files(__package__).joinpath("data", "catalog.json").read_bytes()
    catalog = msgspec.json.decode(data, type=_CatalogFile)
    return catalog.version, {p.name: p for p in catalog.platforms}, tuple(catalog.models)


def load_config(path: Path | None, env: Mapping[str, str] | None = None, *, serving: bool = False) -> Config:
    """Read `path` (None = no file, all defaults), merge it over the built-in catalog, apply `env`.

    `env` defaults to `os.environ`; tests pass a dict. `serving`: also refuse weak gateway keys and admin
    tokens (only `serve` does: a weak key must not stop an operator reading the log or taking a backup).
    """
    env = os.environ if env is None else env
    source = _Source.read(path)
    try:
        file = msgspec.convert(source.raw, ConfigFile)
    except msgspec.ValidationError as err:
        raise _translate(source, err) from None

    if serving:
        _check_token_strength(source, file)
    data_dir = DEFAULT_DATA_DIR
    if file.server.data_dir is not None:
        data_dir = _home_relative(file.server.data_dir, lambda why: source.error(("server", "data_dir"), why))
        if path is not None and not data_dir.is_absolute():
            # Relative to the file, not the working directory: the same file must mean the same data.
            data_dir = path.absolute().parent / data_dir

    if file.catalog.builtin:
        version, platforms, models = load_builtin_catalog()
    else:
        version, platforms, models = NO_CATALOG_VERSION, {}, ()
    platforms = _merge_platforms(source, file.platforms, platforms, file.catalog.builtin)
    models = _merge_models(source, file.models, platforms, models)
    routing = _routing(source, file)
    _check_claude_model(source, file.messages.claude_model, models)

    host, port, data_dir = _server_env(env, file.server.host, file.server.port, data_dir)
    platforms = _protection_env(env, platforms)
    return Config(
        path=path,
        host=host,
        port=port,
        data_dir=data_dir,
        api_keys=file.gateway.api_keys,
        admin_token=file.admin.token,
        # One value, two spellings: [timeouts] transient_cooldown_s is documented, the policy uses it.
        timeouts=msgspec.structs.replace(
            file.timeouts, transient_cooldown_s=routing.policy.transient_cooldown_s
        ),
        routing=routing,
        sessions=file.sessions,
        snapshots=file.snapshots,
        responses=file.responses,
        builtin_catalog=file.catalog.builtin,
        catalog_version=version,
        platforms=platforms,
        models=models,
        env_keys=_env_keys(env, platforms),
        limits=ServerLimits(**{name: getattr(file.server, name) for name in ServerLimits.__struct_fields__}),
        console=ConsoleSettings(
            session_ttl_s=file.admin.session_ttl_s,
            secure_cookie=file.admin.secure_cookie,
            allowed_origins=file.admin.allowed_origins,
        ),
        messages=file.messages,
    )


def _check_claude_model(source: _Source, name: str, models: tuple[ModelConfig, ...]) -> None:
    """A typo here would answer every Claude client's request with a 404: refused at start instead."""
    if name in VIRTUAL_MODELS or name in ALIASES or any(name in (m.ref, m.id) for m in models):
        return
    raise source.error(
        ("messages", "claude_model"),
        f"{json.dumps(name)} is neither a mode ({', '.join(VIRTUAL_MODELS)}) nor a model of the catalog",
    )


MIN_TOKEN_CHARS = 20
MIN_TOKEN_DISTINCT = 8
_TOKEN_HINT = (
    "use at least {n} random characters, e.g. from "
    "python3 -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(24))', "
    "or leave it out and the gateway generates one"
)


def _check_token_strength(source: _Source, file: ConfigFile) -> None:
    """A gateway key or admin token anyone could guess is refused at start (a hash cannot be judged).
    The message never shows the token, only its length."""
    tokens: list[tuple[_KeyPath, str]] = [
        (("gateway", "api_keys", i), t) for i, t in enumerate(file.gateway.api_keys)
    ]
    if file.admin.token is not None:
        tokens.append((("admin", "token"), file.admin.token))
    for at, token in tokens:
        if token.lower().startswith("sha256:"):
            continue
        if len(token) < MIN_TOKEN_CHARS or len(set(token)) < MIN_TOKEN_DISTINCT:
            what = (
                f"shorter than {MIN_TOKEN_CHARS} characters"
                if len(token) < MIN_TOKEN_CHARS
                else f"fewer than {MIN_TOKEN_DISTINCT} different characters"
            )
            raise source.error(
                at, f"too weak to guard the gateway ({what}): {_TOKEN_HINT.format(n=MIN_TOKEN_CHARS)}"
            )


@dataclass(frozen=True)
class _Source:
    """The file being loaded: its name, its parsed document, and where each key is."""

    file: str | None
    raw: dict[str, Any]
    locator: _Locator

    @classmethod
    def read(cls, path: Path | None) -> _Source:
        if path is None:
            return cls(None, {}, _Locator(""))
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", file=str(path)) from None
        except UnicodeDecodeError:
            raise ConfigError("config file is not UTF-8 text", file=str(path)) from None
        except OSError as err:
            raise ConfigError(f"cannot read config file ({err.strerror})", file=str(path)) from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            match = _TOML_POSITION.search(str(err))
            line = int(match.group(1)) if match and match.group(1) else None
            reason = str(err)[: match.start()] if match else str(err)
            raise ConfigError(f"invalid TOML: {reason}", file=str(path), line=line) from None
        return cls(str(path), raw, _Locator(text))

    def error(self, at: _KeyPath, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.locator.line_of(at), key=_format_path(at))

    def given(self, table: str) -> dict[str, Any]:
        """The keys the file sets in `[table]` (call after the schema accepted the file)."""
        given: dict[str, Any] = self.raw.get(table, {})
        return given


def _merge_platforms(
    source: _Source, entries: list[_PlatformEntry], platforms: dict[str, PlatformConfig], builtin: bool
) -> dict[str, PlatformConfig]:
    """Apply `[[platforms]]`: a known name overrides the given fields, a new name is a new platform."""
    platforms = dict(platforms)
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        at: _KeyPath = ("platforms", i)
        name = entry.name
        if name in seen:
            first = _format_path(("platforms", seen[name]))
            raise source.error((*at, "name"), f"duplicate platform {_show(name)} (already in {first})")
        seen[name] = i
        given = _given(entry)
        if "base_url" in given:
            given["base_url"] = given["base_url"].rstrip("/")  # adapters append "/chat/completions"
        if "single_flight" in given:
            given["single_flight_given"] = True
        elif "protection" in given:
            given["single_flight"] = None  # the new level's default
        if name in platforms:
            platforms[name] = replace(platforms[name], **given)
        elif missing := [k for k in ("base_url",) if k not in given]:
            why = "not a built-in platform" if builtin else "the built-in catalog is off"
            raise source.error(
                at, f"expected {' and '.join(missing)} for new platform {_show(name)} ({why}), found none"
            )
        else:
            # A new platform speaks OpenAI's API unless it says otherwise (most providers do).
            given.setdefault("kind", "openai")
            platforms[name] = PlatformConfig(display_name=name, env_var=env_var_for(name), **given)
    return platforms


def _merge_models(
    source: _Source,
    entries: list[_ModelEntry],
    platforms: dict[str, PlatformConfig],
    models: tuple[ModelConfig, ...],
) -> tuple[ModelConfig, ...]:
    """Apply `[[models]]`: a known (platform, id) overrides the given fields, a new one is appended."""
    merged = {(m.platform, m.id): m for m in models}  # replacing a value keeps its place
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        at: _KeyPath = ("models", i)
        if entry.platform not in platforms:
            known = ", ".join(map(_cut, platforms)) or "none"
            raise source.error(
                (*at, "platform"), f"expected a known platform ({known}), found {_describe(entry.platform)}"
            )
        key = (entry.platform, entry.id)
        if key in seen:
            first = _format_path(("models", seen[key]))
            raise source.error((*at, "id"), f"duplicate model {_show('/'.join(key))} (already in {first})")
        seen[key] = i
        given = _given(entry)
        for limit in _LIMIT_FIELDS:
            if given.get(limit) == UNLIMITED:
                given[limit] = None
        if key in merged:
            merged[key] = replace(merged[key], **given)
        else:
            # Same rule as the built-in catalog: an enabled model is in the automatic chain.
            merged[key] = ModelConfig(
                **{"display_name": entry.id, "fallback": given.get("enabled", True), **given}
            )
    return tuple(merged.values())


def _routing(source: _Source, file: ConfigFile) -> Routing:
    """`[routing]` -> Routing, with [timeouts] transient_cooldown_s and the TTFB thresholds' order."""
    given = source.given("routing")
    # RoutingTable is made at import (msgspec.defstruct), so its fields are read by name.
    table: dict[str, Any] = msgspec.structs.asdict(file.routing)
    values = {name: table[name] for name in RoutingPolicy.names()}
    if "transient_cooldown_s" in source.given("timeouts"):
        if "transient_cooldown_s" in given:
            line = source.locator.line_of(("timeouts", "transient_cooldown_s"))
            raise source.error(
                ("routing", "transient_cooldown_s"),
                "also set as timeouts.transient_cooldown_s"
                + (f" (line {line})" if line is not None else "")
                + "; use one of the two",
            )
        values["transient_cooldown_s"] = file.timeouts.transient_cooldown_s
    rule = " < ".join(_TTFB_ORDER)
    for low, high in pairwise(_TTFB_ORDER):
        if values[low] < values[high]:
            continue
        # Blame the later key when the file sets it; otherwise the earlier one is the key that was given.
        blamed, other, relation = (high, low, "above") if high in given else (low, high, "below")
        note = "" if other in given else ", the default"
        raise source.error(
            ("routing", blamed),
            f"expected a value {relation} {other} ({values[other]:g}{note}; {rule} must hold), "
            f"found {_describe(given[blamed])}",
        )
    return Routing(max_attempts=table["max_attempts"], policy=RoutingPolicy(**values))


def _protection_env(
    env: Mapping[str, str], platforms: dict[str, PlatformConfig]
) -> dict[str, PlatformConfig]:
    """THREAD_PROTECTION_PLATFORMS="longcat:provider-ban, groq:off" overrides those platforms' protection.

    Blank entries (a trailing comma) are skipped; any other malformed entry is an error, never ignored.
    An empty value means unset.
    """
    value = env.get(PROTECTION_ENV, "")
    levels = ", ".join(f'"{p}"' for p in PROTECTIONS)
    chosen: dict[str, str] = {}  # platform -> the entry that set it
    overrides: dict[str, Protection] = {}
    for part in value.split(","):
        entry = part.strip()
        if not entry:
            continue
        name, colon, level = (s.strip() for s in entry.partition(":"))
        problem = None
        if not colon:
            problem = 'no ":"'
        elif not name:
            problem = "no platform name"
        elif not level:
            problem = "no level"
        elif name not in platforms:
            problem = f"unknown platform {_show(name)} (known: {', '.join(map(_cut, platforms)) or 'none'})"
        elif level not in PROTECTIONS:
            problem = f"unknown level {_show(level)}"
        elif name in chosen:
            problem = f"duplicate platform {_show(name)} (already set by {_show(chosen[name])})"
        if problem:
            raise ConfigError(
                f"{problem} in entry {_show(entry)}; expected comma-separated platform:level entries "
                f"with level one of {levels}",
                key=f"env {PROTECTION_ENV}",
            )
        chosen[name] = entry
        overrides[name] = cast(Protection, level)  # checked against PROTECTIONS above
    if not overrides:
        return platforms
    # A level set here brings its single-flight default with it.
    return {
        n: replace(
            p, protection=overrides[n], single_flight=p.single_flight if p.single_flight_given else None
        )
        if n in overrides
        else p
        for n, p in platforms.items()
    }


def _server_env(env: Mapping[str, str], host: str, port: int, data_dir: Path) -> tuple[str, int, Path]:
    """SWITCHBOARD_HOST / _PORT / _DATA_DIR win over the file; empty values count as unset."""
    if value := env.get("SWITCHBOARD_HOST", "").strip():
        host = value
    if value := env.get("SWITCHBOARD_PORT", "").strip():
        if not (value.isascii() and value.isdigit() and int(value) <= 65535):
            raise ConfigError(
                f"expected an integer from 0 to 65535, found {_show(value)}", key="env SWITCHBOARD_PORT"
            )
        port = int(value)
    if value := env.get("SWITCHBOARD_DATA_DIR", "").strip():
        # Relative to the working directory, like any shell path.
        data_dir = _home_relative(value, lambda why: ConfigError(why, key="env SWITCHBOARD_DATA_DIR"))
    return host, port, data_dir


def _home_relative(value: str, error: Callable[[str], ConfigError]) -> Path:
    """`~` and `~user` expanded; a home that cannot be found is the setting's error, not a RuntimeError."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        user = value[1:].split("/", 1)[0]
        whose = f"user {_show(user)} has" if user else "there is"
        raise error(
            f"cannot expand {_show(value)}: {whose} no home directory here; give the full path"
        ) from None


def _env_keys(env: Mapping[str, str], platforms: dict[str, PlatformConfig]) -> dict[str, tuple[str, ...]]:
    """`GROQ_API_KEY="k1, k2"` -> {"groq": ("k1", "k2")}; blanks and repeats are dropped."""
    found: dict[str, tuple[str, ...]] = {}
    for name, platform in platforms.items():
        keys = tuple(dict.fromkeys(k.strip() for k in env.get(platform.env_var, "").split(",") if k.strip()))
        if keys:
            found[name] = keys
    return found


# --- schema errors as messages ---------------------------------------------------------------------------

_SEGMENT = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")  # struct field, array index, some dict value
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(.*)`", re.DOTALL)


def _translate(source: _Source, err: msgspec.ValidationError) -> ConfigError:
    """msgspec's "Expected `int` >= 1 - at `$.routing.max_attempts`" -> the key's line and our wording.

    msgspec's own text says which rule failed and where; the message is rebuilt from the schema (what was
    expected) and the document (what was found), so it reads the same for every kind of check and never
    repeats a value that the schema marks secret.
    """
    what, at_sign, where = str(err).rpartition(" - at `$")
    if not at_sign:  # a problem with the document itself
        what, where = str(err), "`"
    kind: Any = ConfigFile
    value: Any = source.raw
    at: _KeyPath = ()
    secret = False
    for name, index in _SEGMENT.findall(where[:-1]):
        kind, metas = _unwrap(kind)
        secret = secret or _secret(metas)
        kind = _child(kind, name)
        part: str | int
        if name:
            part = name
        elif index:
            part = int(index)
        else:  # msgspec does not say which dict key failed: the first value its type rejects is the one
            part = next(k for k in value if not _valid(value[k], kind))
        value, at = value[part], (*at, part)
    kind, metas = _unwrap(kind)
    if match := _UNKNOWN.fullmatch(what):
        allowed = ", ".join(sorted(kind.__struct_fields__))
        return source.error((*at, match.group(1)), f"unknown key (expected one of: {allowed})")
    if match := _MISSING.fullmatch(what):
        return source.error(at, f'expected a "{match.group(1)}" key, found none')
    description = next((m.description for m in reversed(metas) if m.description), None)
    if description is None:
        description = "a table" if _is_table(kind) else "a valid value"
    return source.error(at, f"expected {description}, found {_describe(value, secret or _secret(metas))}")


def _unwrap(kind: Any) -> tuple[Any, list[Meta]]:
    """Strip Annotated layers (keeping their Meta) and the UNSET / None alternatives of a union."""
    metas: list[Meta] = []
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind, *extras = get_args(kind)
            metas.extend(m for m in extras if isinstance(m, Meta))
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(kind) if a not in (UnsetType, type(None))]
            if len(rest) != 1:
                return kind, metas
            kind = rest[0]
        else:
            return kind, metas


def _child(kind: Any, part: str) -> Any:
    """The type of a struct field (`part` names it) or of an array's / dict's items (`part` is not a name)."""
    if _is_table(kind) and part in kind.__struct_fields__:
        return next(f.type for f in msgspec.structs.fields(kind) if f.name == part)
    args = get_args(kind)
    return args[1] if get_origin(kind) is dict else args[0]


def _is_table(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _secret(metas: list[Meta]) -> bool:
    return any((m.extra or {}).get("secret") for m in metas)


def _valid(value: Any, kind: Any) -> bool:
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError:
        return False
    return True


def _describe(value: Any, secret: bool = False) -> str:
    """'a string ("x")', 'an integer (70000)'; for secrets only the kind, never the value."""
    match value:
        case bool():
            kind = "a boolean"
        case int():
            kind = "an integer"
        case float():
            kind = "a float"
        case str() if secret and not value.strip():
            return "a blank string"
        case str() if secret and value.startswith("sha256:"):
            return 'a string starting "sha256:"'  # the prefix is no secret, and says what went wrong
        case str():
            kind = "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return "a date/time"
    return kind if secret else f"{kind} ({_show(value)})"


# Line ends that json.dumps leaves as they are (it escapes those below U+0020): a message stays one line.
_LINE_ENDS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _cut(json.dumps(value, ensure_ascii=False).translate(_LINE_ENDS))
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _format_path(at: _KeyPath) -> str:
    """("platforms", 1, "protection") -> "[[platforms]][2].protection" (1-based, as a reader counts)."""
    out = ""
    for n, part in enumerate(at):
        if isinstance(part, int):
            out += f"[{part + 1}]"
        elif n == 0 and len(at) > 1 and isinstance(at[1], int):
            out += f"[[{part}]]"
        else:
            # (cut: an unknown key is quoted in its error, and it may be as long as the file)
            out += ("." if out else "") + _cut(part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return out


# --- line locator ---------------------------------------------------------------------------------------

_KEY_PART = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_KEY = rf"(?:{_KEY_PART})(?:[ \t]*\.[ \t]*(?:{_KEY_PART}))*"
_LINE_START = re.compile(
    rf"[ \t]*(?:\[\[[ \t]*(?P<array>{_KEY})[ \t]*\]\]"  # [[array]]
    rf"|\[[ \t]*(?P<table>{_KEY})[ \t]*\]"  # [table]
    rf"|(?P<key>{_KEY})[ \t]*=)"  # key = value
)
# In a value: what opens or closes a bracket or a multi-line string, a one-line string to skip, a comment.
_VALUE_TOKEN = re.compile(r"""\"\"\"|'''|"(?:[^"\\]|\\.)*"|'[^']*'|[\[\]{}#]""")
# The rest of an open multi-line string up to its end (the content may end with up to two quotes).
_STRING_END = {
    '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*"{3,5}'),
    "'''": re.compile(r"(?:[^']|'(?!''))*'{3,5}"),
}


class _Locator:
    """Maps key paths to the line that defines them, by a light scan of the raw TOML text.

    tomllib reports no positions for valid documents. This understands `[table]`, `[[array]]` (with element
    indices), dotted and quoted keys, comments, and skips the continuation lines of multi-line arrays, inline
    tables and strings. Anything it cannot place falls back to the nearest enclosing key, then to None;
    good enough for hand-written files, which is what it is for.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[_KeyPath, int] = {}
        arrays: dict[_KeyPath, int] = {}  # array-of-tables path -> number of elements so far
        table: _KeyPath = ()
        depth, open_string = 0, None
        # TOML counts lines by "\n" only, as tomllib does; str.splitlines would also split on \x0c etc.
        for number, line in enumerate(text.split("\n"), 1):
            if depth or open_string:
                depth, open_string = _scan(line, 0, depth, open_string)
                continue
            match = _LINE_START.match(line)
            if match is None:
                continue  # blank, a comment, or not a line we understand (tomllib accepted the document)
            if match["array"]:
                *parents, name = _key_parts(match["array"])
                array = (*_resolve(arrays, parents), name)
                arrays[array] = arrays.get(array, 0) + 1
                table = (*array, arrays[array] - 1)
                self._record(table, number)
            elif match["table"]:
                table = _resolve(arrays, _key_parts(match["table"]))
                self._record(table, number)
            else:
                self._record((*table, *_key_parts(match["key"])), number)
                depth, open_string = _scan(line, match.end(), 0, None)

    def _record(self, at: _KeyPath, number: int) -> None:
        for n in range(1, len(at) + 1):
            self._lines.setdefault(at[:n], number)

    def line_of(self, at: _KeyPath) -> int | None:
        for n in range(len(at), 0, -1):
            if at[:n] in self._lines:
                return self._lines[at[:n]]
        return None


def _key_parts(key: str) -> list[str]:
    """`a."b.c".'d'` -> ["a", "b.c", "d"]."""
    return [_unquote(part) for part in re.findall(_KEY_PART, key)]


def _unquote(part: str) -> str:
    if part.startswith("'"):
        return part[1:-1]
    if part.startswith('"'):
        try:
            return str(json.loads(part))
        except json.JSONDecodeError:  # a TOML escape that JSON lacks (\U0001F600): near enough
            return part[1:-1]
    return part


def _resolve(arrays: dict[_KeyPath, int], parts: list[str]) -> _KeyPath:
    """A header's key parts -> concrete path: `[platforms.headers]` means the last `[[platforms]]` element."""
    path: _KeyPath = ()
    for part in parts:
        path = (*path, part)
        if path in arrays:
            path = (*path, arrays[path] - 1)
    return path


def _scan(line: str, pos: int, depth: int, open_string: str | None) -> tuple[int, str | None]:
    """Carry bracket depth and an open multi-line string across a value's text, so that continuation
    lines of arrays, inline tables and multi-line strings are not mistaken for keys."""
    while True:
        if open_string is not None:
            end = _STRING_END[open_string].match(line, pos)
            if end is None:
                return depth, open_string
            pos, open_string = end.end(), None
        token = _VALUE_TOKEN.search(line, pos)
        if token is None or token[0] == "#":
            return depth, None
        pos = token.end()
        if token[0] in _STRING_END:
            open_string = token[0]
        elif token[0] in ("[", "{"):
            depth += 1
        elif token[0] in ("]", "}"):
            depth -= 1
