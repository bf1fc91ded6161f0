"""Configuration: the TOML file, merged over the built-in catalog, plus environment overrides.

Every setting has a default, so `load_config(None)` gives a working gateway (built-in catalog, data in
`./data`). A file only says what differs. Mistakes are reported as one `ConfigError` naming the file, the
line and the key path, because a gateway that starts with a silently ignored typo routes wrongly for hours.

Error handling: any problem (missing file, TOML syntax, unknown key, wrong type, out-of-range value,
duplicate) raises `ConfigError`. Messages never contain the value of a gateway key, admin token, provider
key or header: they say what kind of value was found instead.

Environment (wins over the file; empty values count as unset): SWITCHBOARD_HOST, SWITCHBOARD_PORT,
SWITCHBOARD_DATA_DIR, `<PLATFORM>_API_KEY` (comma list, see `env_var_for`) and THREAD_PROTECTION_PLATFORMS
(`"longcat:provider-ban,groq:model-skip"`, overriding those platforms' `protection`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from events.policy import RoutingPolicy

KINDS = ("openai",)
PROTECTIONS = ("provider-ban", "model-skip", "off")
POOLS = ("fast", "balanced", "smart")
QUOTA_DAYS = ("utc", "rolling")  # daily limits reset at UTC midnight / count the last 24 hours

DEFAULT_PROTECTION = "model-skip"
DEFAULT_QUOTA_DAY = "utc"
PROTECTION_ENV = "THREAD_PROTECTION_PLATFORMS"  # "longcat:provider-ban,groq:model-skip"
# A model added by the file without ranks sits mid-table (seed ranges: intelligence 1..32, speed 1..11): an
# unknown model should neither outrank the known-strong ones in smart mode nor be starved everywhere else.
DEFAULT_INTELLIGENCE_RANK = 16
DEFAULT_SPEED_RANK = 6
NO_CATALOG_VERSION = "none"  # catalog_version when `[catalog] builtin = false`
UNLIMITED = "unlimited"  # TOML has no null: this string resets a limit to "none recorded"

_KeyPath = tuple[str | int, ...]

_PLATFORM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SHA256 = re.compile(r"sha256:[0-9a-fA-F]{64}")
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


@dataclass(frozen=True)
class Timeouts:
    first_byte_s: float = 45.0
    stall_s: float = 45.0
    keepalive_s: float = 15.0
    transient_cooldown_s: float = 15.0


@dataclass(frozen=True)
class Routing:
    """`[routing]`: the attempt budget plus every routing constant (`policy`).

    `rate_limit_cooldown_s` mirrors `policy.rate_limit_cooldown_s` and the two are always equal: when they are
    constructed differing, the one left at the default takes the other's value (both non-default and
    different is a ValueError).
    """

    max_attempts: int = 5
    rate_limit_cooldown_s: float = RoutingPolicy.rate_limit_cooldown_s  # a 429 that carries no Retry-After
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


@dataclass(frozen=True)
class Sessions:
    """`[sessions]`: the session table (pins, bans) and thread protection timing."""

    pin_ttl_s: float = 1800.0  # a pin expires after this long without use
    max_sessions: int = 10000  # the table is bounded: the least recently used session goes first
    # Within this time of a session's use of its pinned model on a provider-ban platform, that platform's
    # other models are not offered to the session.
    provider_ban_window_s: float = 180.0


@dataclass(frozen=True)
class PlatformConfig:
    name: str
    kind: str
    base_url: str
    keys: tuple[str, ...] = field(repr=False)  # secrets: kept out of repr so a logged config leaks nothing
    protection: str
    headers: dict[str, str] = field(repr=False)  # may carry credentials too
    # Raises this platform's first-byte deadline above [timeouts] first_byte_s (slow reasoning models);
    # None: the global deadline applies.
    timeout_s: float | None
    env_var: str
    display_name: str
    quota_day: str = DEFAULT_QUOTA_DAY  # QUOTA_DAYS: "utc" (reset at UTC midnight) or "rolling" (last 24 h)
    # Provider-ban platforms only: while one session has a request in flight here, other sessions skip it.
    single_flight: bool = False


@dataclass(frozen=True)
class ModelConfig:
    platform: str
    id: str
    display_name: str
    pool: str
    fallback: bool
    context_window: int | None
    rpm: int | None
    rpd: int | None
    tpm: int | None
    tpd: int | None
    intelligence_rank: int
    speed_rank: int
    enabled: bool

    @property
    def ref(self) -> str:
        return f"{self.platform}/{self.id}"


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path | None
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_token: str | None = field(default=None, repr=False)
    timeouts: Timeouts = field(default_factory=Timeouts)
    routing: Routing = field(default_factory=Routing)
    sessions: Sessions = field(default_factory=Sessions)
    builtin_catalog: bool = True
    catalog_version: str
    platforms: dict[str, PlatformConfig]
    models: tuple[ModelConfig, ...]
    env_keys: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)


def env_var_for(platform: str) -> str:
    """`groq` -> `GROQ_API_KEY`; dashes become underscores so the name is usable in a shell."""
    return platform.upper().replace("-", "_") + "_API_KEY"


def load_builtin_catalog() -> tuple[str, dict[str, PlatformConfig], tuple[ModelConfig, ...]]:
    """The catalog shipped in `service/data/catalog.json` (built by `scripts/build_catalog.py`).

    Parsed afresh on every call so callers may not share (and mutate) one platforms dict.
    """
    text = resources.files(__package__).joinpath("data", "catalog.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    platforms = {
        p["name"]: PlatformConfig(
            name=p["name"],
            kind=p["kind"],
            base_url=p["base_url"],
            keys=(),
            protection=p["protection"],
            headers=dict(p["headers"]),
            timeout_s=float(p["timeout_s"]),
            env_var=p["env_var"],
            display_name=p["display_name"],
            quota_day=p.get("quota_day", DEFAULT_QUOTA_DAY),
            single_flight=p.get("single_flight", False),
        )
        for p in raw["platforms"]
    }
    models = tuple(
        ModelConfig(
            platform=m["platform"],
            id=m["id"],
            display_name=m["display_name"],
            pool=m["pool"],
            fallback=m["fallback"],
            context_window=m["context_window"],
            rpm=m["rpm"],
            rpd=m["rpd"],
            tpm=m["tpm"],
            tpd=m["tpd"],
            intelligence_rank=m["intelligence_rank"],
            speed_rank=m["speed_rank"],
            enabled=m["enabled"],
        )
        for m in raw["models"]
    )
    return raw["version"], platforms, models


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None = no file, all defaults), merge it over the built-in catalog, apply `env`.

    `env` defaults to `os.environ`; tests pass a dict.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is None:
        ctx = _Context(None, "")
    else:
        ctx = _Context(str(path), _read(path))
        try:
            raw = tomllib.loads(ctx.text)
        except tomllib.TOMLDecodeError as err:
            match = _TOML_POSITION.search(str(err))
            line = int(match.group(1)) if match and match.group(1) else None
            reason = str(err)[: match.start()] if match else str(err)
            raise ConfigError(f"invalid TOML: {reason}", file=ctx.file, line=line) from None

    ctx.check_keys(raw, (), _TOP_LEVEL)
    server = ctx.table(raw, ("server",), {"host", "port", "data_dir"})
    gateway = ctx.table(raw, ("gateway",), {"api_keys"})
    admin = ctx.table(raw, ("admin",), {"token"})
    timeouts = ctx.table(raw, ("timeouts",), set(Timeouts.__dataclass_fields__))
    routing = ctx.table(raw, ("routing",), {"max_attempts", *RoutingPolicy.names()})
    sessions = ctx.table(raw, ("sessions",), set(Sessions.__dataclass_fields__))
    catalog = ctx.table(raw, ("catalog",), {"builtin"})

    host = ctx.string(server["host"], ("server", "host")) if "host" in server else "127.0.0.1"
    port = ctx.integer(server["port"], ("server", "port"), 0, 65535) if "port" in server else 8080
    data_dir = Path("data")
    if "data_dir" in server:
        data_dir = Path(ctx.string(server["data_dir"], ("server", "data_dir"))).expanduser()
        if path is not None and not data_dir.is_absolute():
            # Relative to the file, not the working directory: the same file must mean the same data.
            data_dir = path.absolute().parent / data_dir

    api_keys: tuple[str, ...] = ()
    if "api_keys" in gateway:
        api_keys = ctx.string_list(gateway["api_keys"], ("gateway", "api_keys"), secret=True)
        for i, key in enumerate(api_keys):
            ctx.check_token(key, ("gateway", "api_keys", i))
    admin_token = None
    if "token" in admin:
        admin_token = ctx.string(admin["token"], ("admin", "token"), secret=True)
        ctx.check_token(admin_token, ("admin", "token"))

    builtin = ctx.boolean(catalog["builtin"], ("catalog", "builtin")) if "builtin" in catalog else True
    if builtin:
        version, platforms, models = load_builtin_catalog()
    else:
        version, platforms, models = NO_CATALOG_VERSION, {}, ()
    platforms = _merge_platforms(ctx, raw, platforms, builtin)
    models = _merge_models(ctx, raw, platforms, models)

    timeout_values = Timeouts(**{k: ctx.positive(v, ("timeouts", k)) for k, v in timeouts.items()})
    routing_values = _routing(ctx, routing, timeouts)
    # One value, two homes: [timeouts] transient_cooldown_s is the documented spelling, the policy uses it.
    timeout_values = replace(timeout_values, transient_cooldown_s=routing_values.policy.transient_cooldown_s)
    sessions_values = Sessions(
        **{k: _number_field(ctx, Sessions, k, v, "sessions") for k, v in sessions.items()}
    )

    host, port, data_dir = _server_env(env, host, port, data_dir)
    platforms = _protection_env(env, platforms)
    return Config(
        path=path,
        host=host,
        port=port,
        data_dir=data_dir,
        api_keys=api_keys,
        admin_token=admin_token,
        timeouts=timeout_values,
        routing=routing_values,
        sessions=sessions_values,
        builtin_catalog=builtin,
        catalog_version=version,
        platforms=platforms,
        models=models,
        env_keys=_env_keys(env, platforms),
    )


_TOP_LEVEL = {
    "server",
    "gateway",
    "admin",
    "timeouts",
    "routing",
    "sessions",
    "catalog",
    "platforms",
    "models",
}
_PLATFORM_KEYS = {
    "name",
    "kind",
    "base_url",
    "keys",
    "protection",
    "headers",
    "timeout_s",
    "quota_day",
    "single_flight",
}
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
_TTFB_ORDER = ("ttfb_good_ms", "ttfb_zero_ms", "ttfb_bad_ms")  # must be strictly increasing
_UNITS = (("_s", "seconds"), ("_ms", "milliseconds"), ("_days", "days"), ("_tps", "tokens per second"))
_LIMITS = ("rpm", "rpd", "tpm", "tpd")
_MODEL_KEYS = {
    "platform",
    "id",
    "pool",
    "fallback",
    "context_window",
    *_LIMITS,
    "intelligence_rank",
    "speed_rank",
    "enabled",
}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=str(path)) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file ({err.strerror})", file=str(path)) from None


def _merge_platforms(
    ctx: _Context, raw: dict[str, Any], platforms: dict[str, PlatformConfig], builtin: bool
) -> dict[str, PlatformConfig]:
    """Apply `[[platforms]]`: a known name overrides the given fields, a new name is a new platform."""
    platforms = dict(platforms)
    seen: dict[str, int] = {}
    for i, entry in enumerate(ctx.array_of_tables(raw, "platforms")):
        at: _KeyPath = ("platforms", i)
        ctx.check_keys(entry, at, _PLATFORM_KEYS)
        if "name" not in entry:
            raise ctx.error(at, 'expected a "name" key, found none')
        name = ctx.string(entry["name"], (*at, "name"))
        if not _PLATFORM_NAME.fullmatch(name):
            raise ctx.error(
                (*at, "name"),
                f'expected a platform name of lowercase letters, digits, "-" and "_", found {_show(name)}',
            )
        if name in seen:
            raise ctx.error(
                (*at, "name"),
                f"duplicate platform {_show(name)} (already in {_format_path(('platforms', seen[name]))})",
            )
        seen[name] = i

        given: dict[str, Any] = {}
        if "kind" in entry:
            given["kind"] = ctx.choice(entry["kind"], (*at, "kind"), KINDS, "a supported platform kind")
        if "base_url" in entry:
            given["base_url"] = ctx.url(entry["base_url"], (*at, "base_url"))
        if "keys" in entry:
            given["keys"] = ctx.string_list(entry["keys"], (*at, "keys"), secret=True)
        if "protection" in entry:
            given["protection"] = ctx.choice(
                entry["protection"], (*at, "protection"), PROTECTIONS, "a protection level"
            )
        if "headers" in entry:
            given["headers"] = ctx.headers(entry["headers"], (*at, "headers"))
        if "timeout_s" in entry:
            given["timeout_s"] = ctx.positive(entry["timeout_s"], (*at, "timeout_s"))
        if "quota_day" in entry:
            given["quota_day"] = ctx.choice(entry["quota_day"], (*at, "quota_day"), QUOTA_DAYS, "a quota day")
        if "single_flight" in entry:
            given["single_flight"] = ctx.boolean(entry["single_flight"], (*at, "single_flight"))

        if name in platforms:
            platforms[name] = replace(platforms[name], **given)
            continue
        missing = [k for k in ("kind", "base_url") if k not in given]
        if missing:
            why = "not a built-in platform" if builtin else "the built-in catalog is off"
            raise ctx.error(
                at, f"expected {' and '.join(missing)} for new platform {_show(name)} ({why}), found none"
            )
        platforms[name] = PlatformConfig(
            name=name,
            kind=given["kind"],
            base_url=given["base_url"],
            keys=given.get("keys", ()),
            protection=given.get("protection", DEFAULT_PROTECTION),
            headers=given.get("headers", {}),
            timeout_s=given.get("timeout_s"),
            env_var=env_var_for(name),
            display_name=name,
            quota_day=given.get("quota_day", DEFAULT_QUOTA_DAY),
            single_flight=given.get("single_flight", False),
        )
    return platforms


def _merge_models(
    ctx: _Context, raw: dict[str, Any], platforms: dict[str, PlatformConfig], models: tuple[ModelConfig, ...]
) -> tuple[ModelConfig, ...]:
    """Apply `[[models]]`: a known (platform, id) overrides the given fields, a new one is appended."""
    merged = list(models)
    position = {(m.platform, m.id): n for n, m in enumerate(merged)}
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(ctx.array_of_tables(raw, "models")):
        at: _KeyPath = ("models", i)
        ctx.check_keys(entry, at, _MODEL_KEYS)
        for required in ("platform", "id"):
            if required not in entry:
                raise ctx.error(at, f'expected a "{required}" key, found none')
        platform = ctx.string(entry["platform"], (*at, "platform"))
        if platform not in platforms:
            known = ", ".join(platforms) or "none"
            raise ctx.error(
                (*at, "platform"), f"expected a known platform ({known}), found {_describe(platform)}"
            )
        model_id = ctx.string(entry["id"], (*at, "id"))
        if (platform, model_id) in seen:
            first = _format_path(("models", seen[platform, model_id]))
            raise ctx.error(
                (*at, "id"), f"duplicate model {_show(f'{platform}/{model_id}')} (already in {first})"
            )
        seen[platform, model_id] = i

        given: dict[str, Any] = {}
        if "pool" in entry:
            given["pool"] = ctx.choice(entry["pool"], (*at, "pool"), POOLS, "a pool")
        for flag in ("fallback", "enabled"):
            if flag in entry:
                given[flag] = ctx.boolean(entry[flag], (*at, flag))
        if "context_window" in entry:
            given["context_window"] = ctx.integer(entry["context_window"], (*at, "context_window"), 1)
        for limit in _LIMITS:
            if limit in entry:
                given[limit] = ctx.limit(entry[limit], (*at, limit))
        for rank in ("intelligence_rank", "speed_rank"):
            if rank in entry:
                given[rank] = ctx.integer(entry[rank], (*at, rank), 1)

        if (platform, model_id) in position:
            n = position[platform, model_id]
            merged[n] = replace(merged[n], **given)
            continue
        enabled = given.get("enabled", True)
        merged.append(
            ModelConfig(
                platform=platform,
                id=model_id,
                display_name=model_id,
                pool=given.get("pool", "balanced"),
                fallback=given.get("fallback", enabled),  # same rule as the built-in catalog
                context_window=given.get("context_window"),
                rpm=given.get("rpm"),
                rpd=given.get("rpd"),
                tpm=given.get("tpm"),
                tpd=given.get("tpd"),
                intelligence_rank=given.get("intelligence_rank", DEFAULT_INTELLIGENCE_RANK),
                speed_rank=given.get("speed_rank", DEFAULT_SPEED_RANK),
                enabled=enabled,
            )
        )
    return tuple(merged)


def _routing(ctx: _Context, routing: dict[str, Any], timeouts: dict[str, Any]) -> Routing:
    """`[routing]` -> Routing: `max_attempts` plus any RoutingPolicy field, checked by its type and role."""
    given: dict[str, Any] = {
        name: _number_field(ctx, RoutingPolicy, name, value, "routing")
        for name, value in routing.items()
        if name != "max_attempts"
    }
    if "transient_cooldown_s" in timeouts:
        if "transient_cooldown_s" in given:
            other = ctx.line_of(("timeouts", "transient_cooldown_s"))
            raise ctx.error(
                ("routing", "transient_cooldown_s"),
                "also set as timeouts.transient_cooldown_s"
                + (f" (line {other})" if other is not None else "")
                + "; use one of the two",
            )
        given["transient_cooldown_s"] = ctx.positive(
            timeouts["transient_cooldown_s"], ("timeouts", "transient_cooldown_s")
        )
    effective = {**{f.name: f.default for f in fields(RoutingPolicy)}, **given}
    rule = " < ".join(_TTFB_ORDER)
    for low, high in pairwise(_TTFB_ORDER):
        if effective[low] < effective[high]:
            continue
        # Blame the later key when the file sets it; otherwise the earlier one is the key that was given.
        blamed, other, relation = (high, low, "above") if high in given else (low, high, "below")
        note = "" if other in given else ", the default"
        raise ctx.error(
            ("routing", blamed),
            f"expected a value {relation} {other} ({effective[other]:g}{note}; {rule} must hold), "
            f"found {_describe(routing[blamed])}",
        )
    policy = RoutingPolicy(**given)
    max_attempts = Routing.max_attempts
    if "max_attempts" in routing:
        max_attempts = ctx.integer(routing["max_attempts"], ("routing", "max_attempts"), 1)
    return Routing(
        max_attempts=max_attempts, rate_limit_cooldown_s=policy.rate_limit_cooldown_s, policy=policy
    )


def _number_field(ctx: _Context, cls: type, name: str, value: Any, table: str) -> float | int:
    """Validate `value` for the numeric dataclass field `cls.name`: int fields take integers >= 1, weights
    (RoutingPolicy only) any finite number, every other float field a positive number (ints accepted)."""
    at: _KeyPath = (table, name)
    if get_type_hints(cls)[name] is int:
        return ctx.integer(value, at, 1)
    if cls is RoutingPolicy and name in _POLICY_WEIGHTS:
        return ctx.finite(value, at)
    unit = next((f" of {unit}" for suffix, unit in _UNITS if name.endswith(suffix)), "")
    return ctx.positive(value, at, f"a positive number{unit}")


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
    overrides: dict[str, str] = {}
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
            problem = f"unknown platform {_show(name)} (known: {', '.join(platforms) or 'none'})"
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
        overrides[name] = level
    if not overrides:
        return platforms
    return {n: replace(p, protection=overrides[n]) if n in overrides else p for n, p in platforms.items()}


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
        data_dir = Path(value).expanduser()  # relative to the working directory, like any shell path
    return host, port, data_dir


def _env_keys(env: Mapping[str, str], platforms: dict[str, PlatformConfig]) -> dict[str, tuple[str, ...]]:
    """`GROQ_API_KEY="k1, k2"` -> {"groq": ("k1", "k2")}; blanks and repeats are dropped."""
    found: dict[str, tuple[str, ...]] = {}
    for name, platform in platforms.items():
        keys = tuple(dict.fromkeys(k.strip() for k in env.get(platform.env_var, "").split(",") if k.strip()))
        if keys:
            found[name] = keys
    return found


# --- validation helpers ---------------------------------------------------------------------------------


class _Context:
    """The file being validated: builds errors that carry its name and the line of a key path."""

    def __init__(self, file: str | None, text: str) -> None:
        self.file = file
        self.text = text
        self._locator = _Locator(text)

    def error(self, at: _KeyPath, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=self._locator.line_of(at), key=_format_path(at))

    def line_of(self, at: _KeyPath) -> int | None:
        return self._locator.line_of(at)

    def check_keys(self, table: dict[str, Any], at: _KeyPath, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.error((*at, key), f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def table(self, raw: dict[str, Any], at: _KeyPath, allowed: set[str]) -> dict[str, Any]:
        value = raw.get(str(at[-1]), {})
        if not isinstance(value, dict):
            raise self.error(at, f"expected a table, found {_describe(value)}")
        self.check_keys(value, at, allowed)
        return value

    def array_of_tables(self, raw: dict[str, Any], name: str) -> list[dict[str, Any]]:
        value = raw.get(name, [])
        if not isinstance(value, list):
            raise self.error((name,), f"expected an array of tables ([[{name}]]), found {_describe(value)}")
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise self.error((name, i), f"expected a table, found {_describe(entry)}")
        return value

    def string(self, value: Any, at: _KeyPath, *, secret: bool = False) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(at, f"expected a non-empty string, found {_describe(value, secret)}")
        return value

    def string_list(self, value: Any, at: _KeyPath, *, secret: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(at, f"expected an array of strings, found {_describe(value, secret)}")
        return tuple(self.string(item, (*at, i), secret=secret) for i, item in enumerate(value))

    def check_token(self, value: str, at: _KeyPath) -> None:
        """Gateway keys and the admin token are plaintext or `sha256:<64 hex>` (already hashed)."""
        if value.startswith("sha256:") and not _SHA256.fullmatch(value):
            raise self.error(
                at, 'expected plaintext or "sha256:" and 64 hex digits, found a malformed sha256 value'
            )

    def integer(self, value: Any, at: _KeyPath, low: int, high: int | None = None) -> int:
        # bool is a subclass of int in Python; `port = true` is a mistake, not port 1.
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
            raise self.error(at, f"expected {expected}, found {_describe(value)}")
        return value

    def positive(self, value: Any, at: _KeyPath, what: str = "a positive number of seconds") -> float:
        number = _as_float(value)
        if number is None or number <= 0:
            raise self.error(at, f"expected {what}, found {_describe(value)}")
        return number

    def finite(self, value: Any, at: _KeyPath) -> float:
        number = _as_float(value)
        if number is None:
            raise self.error(at, f"expected a finite number, found {_describe(value)}")
        return number

    def boolean(self, value: Any, at: _KeyPath) -> bool:
        if not isinstance(value, bool):
            raise self.error(at, f"expected true or false, found {_describe(value)}")
        return value

    def choice(self, value: Any, at: _KeyPath, choices: tuple[str, ...], what: str) -> str:
        if not isinstance(value, str) or value not in choices:
            listed = ", ".join(f'"{c}"' for c in choices)
            raise self.error(at, f"expected {what} ({listed}), found {_describe(value)}")
        return value

    def limit(self, value: Any, at: _KeyPath) -> int | None:
        if value == UNLIMITED:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.error(at, f'expected an integer >= 1 or "{UNLIMITED}", found {_describe(value)}')
        return value

    def url(self, value: Any, at: _KeyPath) -> str:
        text = self.string(value, at)
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.error(at, f"expected an http:// or https:// URL, found {_describe(value)}")
        return text.rstrip("/")  # adapters append "/chat/completions"

    def headers(self, value: Any, at: _KeyPath) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.error(at, f"expected a table of header names to strings, found {_describe(value)}")
        for name, header in value.items():
            if not isinstance(header, str):
                # Header values can be credentials: describe, never show.
                raise self.error((*at, name), f"expected a string, found {_describe(header, secret=True)}")
        return dict(value)


def _as_float(value: Any) -> float | None:
    """A TOML integer or float as a finite float; None for anything else (bool, nan, inf, a huge integer)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # TOML integers are unbounded
        return None
    return number if math.isfinite(number) else None


def _describe(value: Any, secret: bool = False) -> str:
    """'a string ("x")', 'an integer (70000)'; for secrets only the kind, never the value."""
    match value:
        case bool():
            kind = "a boolean"
        case int():
            kind = "an integer"
        case float():
            kind = "a float"
        case str():
            kind = "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return "a date/time"
    return kind if secret else f"{kind} ({_show(value)})"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
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
            out += ("." if out else "") + (part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return out


# --- line locator ---------------------------------------------------------------------------------------


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
            stripped = line.lstrip()
            try:
                if stripped.startswith("[["):
                    parts, _ = _parse_key(stripped, 2)
                    array = (*_resolve(arrays, parts[:-1]), parts[-1])
                    arrays[array] = arrays.get(array, 0) + 1
                    table = (*array, arrays[array] - 1)
                    self._record(table, number)
                elif stripped.startswith("["):
                    parts, _ = _parse_key(stripped, 1)
                    table = _resolve(arrays, parts)
                    self._record(table, number)
                elif stripped and not stripped.startswith("#"):
                    parts, end = _parse_key(stripped, 0)
                    if stripped.startswith("=", end):
                        self._record((*table, *parts), number)
                        depth, open_string = _scan(stripped, end + 1, 0, None)
            except ValueError:
                continue  # not a line we understand; tomllib has already accepted the document

    def _record(self, at: _KeyPath, number: int) -> None:
        for n in range(1, len(at) + 1):
            self._lines.setdefault(at[:n], number)

    def line_of(self, at: _KeyPath) -> int | None:
        for n in range(len(at), 0, -1):
            if at[:n] in self._lines:
                return self._lines[at[:n]]
        return None


def _resolve(arrays: dict[_KeyPath, int], parts: list[str]) -> _KeyPath:
    """A header's key parts -> concrete path: `[platforms.headers]` means the last `[[platforms]]` element."""
    path: _KeyPath = ()
    for part in parts:
        path = (*path, part)
        if path in arrays:
            path = (*path, arrays[path] - 1)
    return path


def _parse_key(text: str, pos: int) -> tuple[list[str], int]:
    """Parse a (dotted, possibly quoted) key at text[pos:]; return its parts and the position after it."""
    parts: list[str] = []
    while True:
        pos = _skip_blanks(text, pos)
        if text.startswith('"', pos):
            end = _string_end(text, pos + 1)
            try:
                parts.append(json.loads(text[pos:end]))
            except json.JSONDecodeError:
                parts.append(text[pos + 1 : end - 1])
        elif text.startswith("'", pos):
            end = text.index("'", pos + 1) + 1
            parts.append(text[pos + 1 : end - 1])
        else:
            match = _BARE_KEY.match(text, pos)
            if not match:
                raise ValueError("no key here")
            parts.append(match.group())
            end = match.end()
        pos = _skip_blanks(text, end)
        if not text.startswith(".", pos):
            return parts, pos
        pos += 1


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _string_end(text: str, pos: int) -> int:
    """Position just after the closing quote of a one-line basic string whose body starts at pos."""
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
        elif text[pos] == '"':
            return pos + 1
        else:
            pos += 1
    raise ValueError("unterminated string")


def _scan(line: str, pos: int, depth: int, open_string: str | None) -> tuple[int, str | None]:
    """Carry bracket depth and an open multi-line string across a value's text, so that continuation
    lines of arrays, inline tables and multi-line strings are not mistaken for keys."""
    while pos < len(line):
        if open_string is not None:
            if open_string == '"""' and line[pos] == "\\":
                pos += 2
            elif line.startswith(open_string, pos):
                pos += 3
                while line.startswith(open_string[0], pos):  # up to two quotes may end the content
                    pos += 1
                open_string = None
            else:
                pos += 1
            continue
        char = line[pos]
        if char == "#":
            break
        if line.startswith(('"""', "'''"), pos):
            open_string = line[pos : pos + 3]
            pos += 3
            continue
        if char == '"':
            try:
                pos = _string_end(line, pos + 1)
            except ValueError:
                break
            continue
        if char == "'":
            close = line.find("'", pos + 1)
            pos = len(line) if close < 0 else close + 1
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        pos += 1
    return depth, open_string
