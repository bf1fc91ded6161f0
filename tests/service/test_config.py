"""Config loading: defaults, merging over the built-in catalog, environment, and precise error messages."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from events.catalog import CatalogModel
from events.policy import RoutingPolicy
from events.quotas import Limits
from events.view import SessionPolicy
from service.config import (
    KINDS,
    POOLS,
    QUOTA_DAYS,
    Config,
    ConfigError,
    PlatformConfig,
    Routing,
    Sessions,
    Timeouts,
    load_builtin_catalog,
    load_config,
)
from service.providers import ADAPTERS
from service.server import routing_settings

SEED = Path("/work/shared/catalog/seed-catalog.json")
CATALOG = Path(__file__).resolve().parents[2] / "service" / "data" / "catalog.json"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {}, serving=True)
    return info.value


def model(config: Config, ref: str):
    return next(m for m in config.models if m.ref == ref)


# --- defaults and the built-in catalog ------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config.path is None
    assert (config.host, config.port, config.data_dir) == ("127.0.0.1", 8080, Path("data"))
    assert config.api_keys == ()
    assert config.admin_token is None
    assert config.timeouts == Timeouts()
    assert config.routing == Routing()
    assert config.routing.policy == RoutingPolicy()
    assert config.routing.rate_limit_cooldown_s == config.routing.policy.rate_limit_cooldown_s == 60.0
    assert config.timeouts.transient_cooldown_s == config.routing.policy.transient_cooldown_s == 15.0
    assert config.sessions == Sessions(pin_ttl_s=1800.0, max_sessions=10000, provider_ban_window_s=180.0)
    assert config.builtin_catalog
    assert config.env_keys == {}

    assert len(config.platforms) == 17
    assert {p.kind for p in config.platforms.values()} == {"openai", "gemini", "cohere", "cloudflare"}
    assert {n: config.platforms[n].kind for n in ("google", "cohere", "cloudflare")} == {
        "google": "gemini",
        "cohere": "cohere",
        "cloudflare": "cloudflare",
    }
    assert config.platforms["google"].env_var == "GOOGLE_API_KEY"
    assert config.platforms["longcat"].protection == "provider-ban"
    assert {p.protection for n, p in config.platforms.items() if n != "longcat"} == {"model-skip"}
    assert config.platforms["groq"].env_var == "GROQ_API_KEY"
    assert config.platforms["ollama"].timeout_s == 120.0
    assert config.platforms["openrouter"].headers["X-Title"] == "FreeLLMAPI"
    # Single-flight follows the protection level: on for provider-ban (LongCat), off elsewhere.
    assert {
        (p.quota_day, p.single_flight == (p.protection == "provider-ban")) for p in config.platforms.values()
    } == {("utc", True)}

    chat = [m for m in config.models if m.task == "chat"]
    assert len(chat) == 98
    assert all(m.platform in config.platforms for m in config.models)
    assert {m.pool for m in chat} == set(POOLS)
    assert all(m.fallback == m.enabled for m in chat)
    # Embedding models: each with the family of vectors it gives, none in the chat chain.
    embedding = {m.ref: m.family for m in config.models if m.task == "embedding"}
    assert embedding == {
        "google/gemini-embedding-001": "google/gemini-embedding-001",
        "mistral/mistral-embed": "mistralai/mistral-embed",
        "cohere/embed-v4.0": "cohere/embed-v4.0",
        "cloudflare/@cf/baai/bge-m3": "BAAI/bge-m3",
        "cloudflare/@cf/baai/bge-base-en-v1.5": "BAAI/bge-base-en-v1.5",
        "nvidia/baai/bge-m3": "BAAI/bge-m3",
        "nvidia/nvidia/nv-embedqa-e5-v5": "nvidia/nv-embedqa-e5-v5",
        "github/openai/text-embedding-3-small": "openai/text-embedding-3-small",
    }
    assert not any(m.fallback for m in config.models if m.task == "embedding")
    assert model(config, "longcat/LongCat-2.0-Preview").pool == "smart"
    assert model(config, "openrouter/openrouter/owl-alpha").pool == "smart"
    assert model(config, "cerebras/gpt-oss-120b").pool == "fast"
    assert not model(config, "cerebras/zai-glm-4.7").enabled


def test_builtin_catalog_pools_follow_ranks() -> None:
    version, _, models = load_builtin_catalog()
    assert version
    extras = {"longcat/LongCat-2.0-Preview", "openrouter/openrouter/owl-alpha"}
    for m in (m for m in models if m.task == "chat"):
        smart = m.intelligence_rank <= 3 or m.ref in extras
        expected = "smart" if smart else "fast" if m.speed_rank <= 2 else "balanced"
        assert m.pool == expected, m.ref


def test_builtin_catalog_is_a_fresh_copy_each_call() -> None:
    _, platforms, _ = load_builtin_catalog()
    platforms.pop("groq")
    platforms["openrouter"].headers.clear()
    _, again, _ = load_builtin_catalog()
    assert "groq" in again
    assert again["openrouter"].headers


@pytest.mark.skipif(not SEED.exists(), reason="seed catalog not available")
def test_catalog_file_is_what_the_build_script_makes() -> None:
    from build_catalog import build  # scripts/ is on sys.path (tests/conftest.py)

    shipped = json.loads(CATALOG.read_text(encoding="utf-8"))
    rebuilt = build(json.loads(SEED.read_text(encoding="utf-8")), shipped["version"])
    assert rebuilt == shipped


# --- valid files ----------------------------------------------------------------------------------------


FULL = (
    """\
# a complete file
[server]
host = "0.0.0.0"
port = 9000
data_dir = "/var/lib/switchboard"

[gateway]
api_keys = [
  "sk-one-0123456789abcdef",
  "sha256:"""
    + "ab" * 32
    + """",
]

[admin]
token = "admin-secret-0123456789"

[timeouts]
first_byte_s = 30
stall_s = 20.5
keepalive_s = 5
transient_cooldown_s = 10

[routing]
max_attempts = 3
rate_limit_cooldown_s = 90
decay_days = 3
ttfb_worst = -1
output_reserve_cap = 4096

[sessions]
pin_ttl_s = 600
max_sessions = 50
provider_ban_window_s = 30.5

[catalog]
builtin = true

[[platforms]]
name = "groq"
protection = "off"
timeout_s = 30
headers = { "X-Title" = "mine" }
quota_day = "rolling"
single_flight = true

[[models]]
platform = "groq"
id = "llama-3.3-70b-versatile"
pool = "smart"
fallback = false
context_window = 65536
rpm = 10
rpd = 100
tpm = 1000
tpd = 10000
intelligence_rank = 2
speed_rank = 3
enabled = true
"""
)


def test_full_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path, {})
    assert config.path == path
    assert (config.host, config.port, config.data_dir) == ("0.0.0.0", 9000, Path("/var/lib/switchboard"))
    assert config.api_keys == ("sk-one-0123456789abcdef", "sha256:" + "ab" * 32)
    assert config.admin_token == "admin-secret-0123456789"
    assert config.timeouts == Timeouts(30.0, 20.5, 5.0, 10.0)
    assert isinstance(config.timeouts.first_byte_s, float)
    policy = RoutingPolicy(
        decay_days=3.0,
        ttfb_worst=-1.0,
        output_reserve_cap=4096,
        rate_limit_cooldown_s=90.0,
        transient_cooldown_s=10.0,  # from [timeouts]
    )
    assert config.routing == Routing(max_attempts=3, rate_limit_cooldown_s=90.0, policy=policy)
    assert config.routing.rate_limit_cooldown_s == config.routing.policy.rate_limit_cooldown_s == 90.0
    assert config.sessions == Sessions(pin_ttl_s=600.0, max_sessions=50, provider_ban_window_s=30.5)
    assert isinstance(config.sessions.pin_ttl_s, float)
    groq = config.platforms["groq"]
    assert (groq.protection, groq.timeout_s, groq.headers) == ("off", 30.0, {"X-Title": "mine"})
    assert (groq.quota_day, groq.single_flight) == ("rolling", True)
    assert (config.platforms["cerebras"].quota_day, config.platforms["cerebras"].single_flight) == (
        "utc",
        False,
    )
    assert groq.base_url == "https://api.groq.com/openai/v1"  # not given: kept from the catalog
    llama = model(config, "groq/llama-3.3-70b-versatile")
    assert (llama.pool, llama.fallback, llama.context_window) == ("smart", False, 65536)
    assert (llama.rpm, llama.rpd, llama.tpm, llama.tpd) == (10, 100, 1000, 10000)
    assert (llama.intelligence_rank, llama.speed_rank, llama.enabled) == (2, 3, True)
    assert llama.display_name == "Llama 3.3 70B"  # not given: kept
    assert len([m for m in config.models if m.task == "chat"]) == 98


def test_override_builtin_platform_base_url_and_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[platforms]]\nname = "groq"\nbase_url = "http://localhost:9999/v1/"\nkeys = ["gsk_a", "gsk_b"]\n',
    )
    config = load_config(path, {})
    groq = config.platforms["groq"]
    assert groq.base_url == "http://localhost:9999/v1"  # trailing slash dropped: adapters append paths
    assert groq.keys == ("gsk_a", "gsk_b")
    assert (groq.protection, groq.display_name, groq.env_var) == ("model-skip", "Groq", "GROQ_API_KEY")
    assert list(config.platforms) == list(load_builtin_catalog()[1])  # order unchanged


def test_add_new_platform_and_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[[platforms]]
name = "my-lab"
kind = "openai"
base_url = "https://llm.example.com/v1"

[[models]]
platform = "my-lab"
id = "lab/model-7b"
enabled = false

[[models]]
platform = "groq"
id = "brand-new"
rpm = 5
""",
    )
    config = load_config(path, {})
    lab = config.platforms["my-lab"]
    assert list(config.platforms)[-1] == "my-lab"
    assert (lab.keys, lab.headers, lab.protection, lab.timeout_s) == ((), {}, "model-skip", None)
    assert (lab.env_var, lab.display_name) == ("MY_LAB_API_KEY", "my-lab")
    assert (lab.quota_day, lab.single_flight) == ("utc", False)
    assert [m.ref for m in config.models[-2:]] == ["my-lab/lab/model-7b", "groq/brand-new"]
    new = model(config, "my-lab/lab/model-7b")
    assert (new.pool, new.enabled, new.fallback, new.display_name) == (
        "balanced",
        False,
        False,
        "lab/model-7b",
    )
    assert (new.context_window, new.rpm, new.rpd, new.tpm, new.tpd) == (None, None, None, None, None)
    assert model(config, "groq/brand-new").fallback
    assert model(config, "groq/brand-new").rpm == 5


def test_unlimited_resets_a_builtin_limit(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\nplatform = "groq"\nid = "qwen/qwen3-32b"\nrpd = "unlimited"\n')
    assert model(load_config(path, {}), "groq/qwen/qwen3-32b").rpd is None


def test_builtin_false_keeps_only_the_files_platforms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[catalog]
builtin = false

[[platforms]]
name = "groq"
kind = "openai"
base_url = "https://api.groq.com/openai/v1"

[[models]]
platform = "groq"
id = "llama-3.3-70b-versatile"
""",
    )
    config = load_config(path, {"CEREBRAS_API_KEY": "csk"})
    assert not config.builtin_catalog
    assert config.catalog_version == "none"
    assert list(config.platforms) == ["groq"]
    assert [m.ref for m in config.models] == ["groq/llama-3.3-70b-versatile"]
    assert config.models[0].intelligence_rank == 16  # defaults, not the built-in row
    assert config.env_keys == {}


def test_builtin_false_name_needs_a_base_url(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[catalog]\nbuiltin = false\n\n[[platforms]]\nname = "groq"\n')
    assert err.line == 4
    assert err.key == "[[platforms]][1]"
    assert "expected base_url for new platform" in err.message  # kind defaults to openai (issue 9)
    assert "built-in catalog is off" in err.message


def test_a_new_platform_speaks_openai_unless_it_says_otherwise(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[[platforms]]\nname = "lab"\nbase_url = "https://lab.test/v1"\n'), {}
    )
    assert config.platforms["lab"].kind == "openai"


def test_relative_data_dir_is_resolved_against_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "switchboard.toml"
    path.write_text('[server]\ndata_dir = "state/db"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("etc/switchboard.toml"), {}).data_dir == folder / "state" / "db"


def test_locator_handles_subtables_dotted_keys_and_multiline_values(tmp_path: Path) -> None:
    text = """\
server.port = 8081
[gateway]
api_keys = [
  "a = 1",
  "[b]",
]
[[platforms]]
name = "groq"
[platforms.headers]
"X-Title" = "t"
[[platforms]]
name = "cerebras"
notes = '''
[[platforms]]
name = "fake"
'''
"""
    err = error_for(tmp_path, text)
    assert (err.line, err.key) == (13, "[[platforms]][2].notes")


# --- routing policy, sessions, platform quota day and single flight ------------------------------------


def _non_default(name: str, default: float) -> float | int:
    """A valid value different from the default, keeping the TTFB thresholds in order."""
    if isinstance(default, int):
        return default + 7
    if name.startswith("ttfb_") and name.endswith("_ms"):
        return default + 1.5
    return default * 2 if default else 1.0


def test_every_routing_policy_field_is_accepted(tmp_path: Path) -> None:
    listed = """decay_days prior_successes prior_failures speed_weight slow_tps slow_penalty ttfb_bonus
    ttfb_good_ms ttfb_zero_ms ttfb_bad_ms ttfb_worst intelligence_weight smart_intelligence smart_speed
    smart_ttfb penalty_per_429 penalty_cap penalty_decay_s penalty_weight output_reserve_default
    output_reserve_cap rate_limit_cooldown_s transient_cooldown_s transient_window_s
    model_missing_cooldown_s"""
    assert set(listed.split()) <= set(RoutingPolicy.names())
    expected = {f.name: _non_default(f.name, f.default) for f in fields(RoutingPolicy)}
    text = "[routing]\nmax_attempts = 2\n" + "".join(f"{k} = {v!r}\n" for k, v in expected.items())
    config = load_config(write(tmp_path, text), {})
    policy = config.routing.policy
    assert policy == RoutingPolicy(**expected)
    for f in fields(RoutingPolicy):
        assert type(getattr(policy, f.name)) is type(f.default), f.name
    assert config.routing.max_attempts == 2
    assert config.routing.rate_limit_cooldown_s == policy.rate_limit_cooldown_s == 120.0
    assert config.timeouts.transient_cooldown_s == policy.transient_cooldown_s == 30.0


def test_routing_floats_accept_integers_and_weights_any_finite_number(tmp_path: Path) -> None:
    text = """\
[routing]
ttfb_worst = -2
speed_weight = 0
smart_speed = -0.25
penalty_weight = 0.0
slow_penalty = -1
prior_successes = 1
ttfb_bad_ms = 30000
"""
    policy = load_config(write(tmp_path, text), {}).routing.policy
    assert (policy.ttfb_worst, policy.speed_weight, policy.smart_speed) == (-2.0, 0.0, -0.25)
    assert (policy.penalty_weight, policy.slow_penalty) == (0.0, -1.0)
    assert isinstance(policy.ttfb_worst, float)
    assert isinstance(policy.prior_successes, float)
    assert policy.prior_successes == 1.0
    assert policy.ttfb_bad_ms == 30000.0
    assert policy.decay_days == RoutingPolicy.decay_days  # not given: default


def test_transient_cooldown_from_either_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[timeouts]\ntransient_cooldown_s = 7\n"), {})
    assert config.timeouts.transient_cooldown_s == config.routing.policy.transient_cooldown_s == 7.0
    config = load_config(write(tmp_path, "[routing]\ntransient_cooldown_s = 8.5\n"), {})
    assert config.timeouts.transient_cooldown_s == config.routing.policy.transient_cooldown_s == 8.5


def test_transient_cooldown_in_both_tables_is_an_error(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[timeouts]\ntransient_cooldown_s = 7\n\n[routing]\ntransient_cooldown_s = 7\n")
    assert (err.line, err.key) == (5, "routing.transient_cooldown_s")
    assert "timeouts.transient_cooldown_s (line 2)" in err.message
    assert "use one" in err.message


def test_routing_rate_limit_cooldown_mirrors_the_policy() -> None:
    assert Routing(rate_limit_cooldown_s=90).policy.rate_limit_cooldown_s == 90
    from_policy = Routing(policy=RoutingPolicy(rate_limit_cooldown_s=30.0))
    assert from_policy.rate_limit_cooldown_s == 30.0
    assert Routing(rate_limit_cooldown_s=30.0) == from_policy
    same = Routing(rate_limit_cooldown_s=5.0, policy=RoutingPolicy(rate_limit_cooldown_s=5.0))
    assert same.policy.rate_limit_cooldown_s == 5.0
    with pytest.raises(ValueError, match="rate_limit_cooldown_s"):
        Routing(rate_limit_cooldown_s=5.0, policy=RoutingPolicy(rate_limit_cooldown_s=6.0))


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (
            "[routing]\nttfb_zero_ms = 400\n",
            2,
            "routing.ttfb_zero_ms",
            "above ttfb_good_ms (500, the default; ttfb_good_ms < ttfb_zero_ms < ttfb_bad_ms must hold), "
            "found an integer (400)",
        ),
        (
            "[routing]\nttfb_good_ms = 2000\n",
            2,
            "routing.ttfb_good_ms",
            "below ttfb_zero_ms (2000, the default",
        ),
        (
            "[routing]\nttfb_good_ms = 100\nttfb_zero_ms = 100\n",
            3,
            "routing.ttfb_zero_ms",
            "above ttfb_good_ms (100;",
        ),
        (
            "[routing]\nttfb_zero_ms = 3000\nttfb_bad_ms = 2500.5\n",
            3,
            "routing.ttfb_bad_ms",
            "above ttfb_zero_ms (3000; ttfb_good_ms < ttfb_zero_ms < ttfb_bad_ms must hold), "
            "found a float (2500.5)",
        ),
        (
            "[routing]\nttfb_bad_ms = 1500\n",
            2,
            "routing.ttfb_bad_ms",
            "above ttfb_zero_ms (2000, the default",
        ),
        (
            "[routing]\nttfb_zero_ms = 20000\n",
            2,
            "routing.ttfb_zero_ms",
            "below ttfb_bad_ms (10000, the default",
        ),
        (
            "[routing]\nttfb_bad_ms = 50\nttfb_zero_ms = 20\nttfb_good_ms = 30\n",
            3,
            "routing.ttfb_zero_ms",
            "above ttfb_good_ms (30;",
        ),
    ],
)
def test_ttfb_thresholds_must_increase(tmp_path: Path, text: str, line: int, key: str, words: str) -> None:
    err = error_for(tmp_path, text)
    assert (err.line, err.key) == (line, key)
    assert words in err.message


def test_quota_day_choices() -> None:
    assert QUOTA_DAYS == ("utc", "rolling")
    platform = next(iter(load_builtin_catalog()[1].values()))
    assert (platform.quota_day, platform.single_flight) == ("utc", False)
    bare = PlatformConfig(
        name="x",
        kind="openai",
        base_url="https://x.test",
        keys=(),
        protection="off",
        headers={},
        timeout_s=None,
        env_var="X_API_KEY",
        display_name="x",
    )
    assert (bare.quota_day, bare.single_flight) == ("utc", False)


def test_new_platform_quota_day_and_single_flight(tmp_path: Path) -> None:
    text = """\
[[platforms]]
name = "lab"
kind = "openai"
base_url = "https://lab.test/v1"
protection = "provider-ban"
quota_day = "rolling"
single_flight = true

[[platforms]]
name = "longcat"
single_flight = true
"""
    config = load_config(write(tmp_path, text), {})
    lab = config.platforms["lab"]
    assert (lab.protection, lab.quota_day, lab.single_flight) == ("provider-ban", "rolling", True)
    longcat = config.platforms["longcat"]
    assert (longcat.protection, longcat.quota_day, longcat.single_flight) == ("provider-ban", "utc", True)


def test_provider_ban_platforms_are_single_flight_by_default(tmp_path: Path) -> None:
    # It was off unless set: LongCat threads (the seed guarded them) collided across sessions.
    text = """\
[[platforms]]
name = "lab"
kind = "openai"
base_url = "https://lab.test/v1"
protection = "provider-ban"

[[platforms]]
name = "longcat"
single_flight = false

[[platforms]]
name = "groq"
single_flight = true

[[platforms]]
name = "nvidia"
protection = "provider-ban"

[[platforms]]
name = "mistral"
single_flight = false
"""
    env = {"THREAD_PROTECTION_PLATFORMS": "cerebras:provider-ban, mistral:provider-ban"}
    config = load_config(write(tmp_path, text), env)
    assert config.platforms["lab"].single_flight is True
    assert config.platforms["longcat"].single_flight is False  # said so
    assert config.platforms["cerebras"].single_flight is True  # the level set by the environment brings it
    assert config.platforms["nvidia"].single_flight is True  # a file's level brings its default too
    assert config.platforms["mistral"].single_flight is False  # said so: the environment's level keeps it
    assert config.platforms["sambanova"].single_flight is False  # model-skip
    settings = routing_settings(config)
    # Only provider-ban platforms can be single-flight (groq says true, but is model-skip).
    assert settings.sessions.single_flight == {"lab", "cerebras", "nvidia"}


def test_sessions_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[sessions]\nmax_sessions = 1\n"), {})
    assert config.sessions == Sessions(max_sessions=1)
    assert (config.sessions.pin_ttl_s, config.sessions.provider_ban_window_s) == (1800.0, 180.0)


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ('[server]\nhost = "x"\n\n[sever]\nport = 1\n', 4, "sever", "unknown key"),
        (
            "[server]\nhost = 'x'\nprot = 8080\n",
            3,
            "server.prot",
            "expected one of: body_timeout_s, data_dir,",
        ),
        (
            '# c\n[[platforms]]\nname = "groq"\n[[platforms]]\nname = "cerebras"\nprtection = "off"\n',
            6,
            "[[platforms]][2].prtection",
            "unknown key",
        ),
        ("[server]\nport = 70000\n", 2, "server.port", "from 0 to 65535, found an integer (70000)"),
        ("[server]\nport = true\n", 2, "server.port", "found a boolean (true)"),
        ('[server]\nhost = ""\n', 2, "server.host", "non-empty string"),
        (
            "[routing]\nmax_attempts = 0\n",
            2,
            "routing.max_attempts",
            "an integer from 1 to 2**53, found an integer (0)",
        ),
        ("[routing]\nmax_attempts = true\n", 2, "routing.max_attempts", "found a boolean"),
        ("[routing]\nmax_attempts = 2.5\n", 2, "routing.max_attempts", "found a float (2.5)"),
        ("\n[timeouts]\nstall_s = -1\n", 3, "timeouts.stall_s", "positive number"),
        ('[timeouts]\nstall_s = "45"\n', 2, "timeouts.stall_s", 'found a string ("45")'),
        ("[timeouts]\nstall_s = nan\n", 2, "timeouts.stall_s", "positive number"),
        ("[timeouts]\nkeepalive_s = false\n", 2, "timeouts.keepalive_s", "found a boolean"),
        ("timeouts = 5\n", 1, "timeouts", "expected a table, found an integer"),
        ('[catalog]\nbuiltin = "yes"\n', 2, "catalog.builtin", "expected true or false"),
        (
            '[[platforms]]\nname = "groq"\n[[platforms]]\nname = "cerebras"\nprotection = "ban"\n',
            5,
            "[[platforms]][2].protection",
            '"provider-ban", "model-skip", "off"',
        ),
        (
            '[[platforms]]\nname = "aws"\nkind = "bedrock"\nbase_url = "https://x"\n',
            3,
            "[[platforms]][1].kind",
            # (the kinds it lists grow with each adapter: the kind it names is what this pins)
            'found a string ("bedrock")',
        ),
        (
            '[[platforms]]\nname = "x"\nkind = "openai"\nbase_url = "ftp://x"\n',
            4,
            "[[platforms]][1].base_url",
            "http:// or https://",
        ),
        ('[[platforms]]\nname = "groq"\ntimeout_s = 0\n', 3, "[[platforms]][1].timeout_s", "positive"),
        (
            '[[platforms]]\nname = "groq"\n\n[[platforms]]\nname = "groq"\n',
            5,
            "[[platforms]][2].name",
            "duplicate platform",
        ),
        ('[[platforms]]\nkind = "openai"\n', 1, "[[platforms]][1]", '"name"'),
        ('[[platforms]]\nname = "My Lab"\n', 2, "[[platforms]][1].name", "lowercase"),
        ('[[platforms]]\nname = "lab"\nkind = "openai"\n', 1, "[[platforms]][1]", "base_url"),
        ('[platforms]\nname = "groq"\n', 1, "platforms", "array of tables"),
        ('[[models]]\nplatform = "nope"\nid = "m"\n', 2, "[[models]][1].platform", "known platform"),
        ('[[models]]\nplatform = "groq"\n', 1, "[[models]][1]", '"id"'),
        (
            '[[models]]\nplatform = "groq"\nid = "a"\n[[models]]\nplatform = "groq"\nid = "a"\n',
            6,
            "[[models]][2].id",
            'duplicate model "groq/a"',
        ),
        (
            '[[models]]\nplatform = "groq"\nid = "a"\npool = "turbo"\n',
            4,
            "[[models]][1].pool",
            '"fast", "balanced", "smart"',
        ),
        ('[[models]]\nplatform = "groq"\nid = "a"\nrpm = 0\n', 4, "[[models]][1].rpm", '"unlimited"'),
        ('[[models]]\nplatform = "groq"\nid = "a"\ntpd = 1.5\n', 4, "[[models]][1].tpd", "found a float"),
        (
            '[[models]]\nplatform = "groq"\nid = "a"\nenabled = 1\n',
            4,
            "[[models]][1].enabled",
            "true or false",
        ),
        (
            '[[models]]\nplatform = "groq"\nid = "a"\ncontext_window = true\n',
            4,
            "[[models]][1].context_window",
            "found a boolean",
        ),
        ('[[models]]\nplatform = "groq"\nid = "a"\nsize = "big"\n', 4, "[[models]][1].size", "unknown key"),
        # [routing]: RoutingPolicy fields
        ("[routing]\npolicy = 1\n", 2, "routing.policy", "unknown key"),
        ("[routing]\ndecay_day = 3\n", 2, "routing.decay_day", "decay_days, intelligence_weight"),
        (
            "[routing]\ndecay_days = 0\n",
            2,
            "routing.decay_days",
            "positive number of days, found an integer (0)",
        ),
        ("[routing]\nprior_successes = 0\n", 2, "routing.prior_successes", "expected a positive number,"),
        ("[routing]\nprior_failures = -1.5\n", 2, "routing.prior_failures", "found a float (-1.5)"),
        ("[routing]\nslow_tps = 0\n", 2, "routing.slow_tps", "positive number of tokens per second"),
        ("[routing]\nttfb_good_ms = -5\n", 2, "routing.ttfb_good_ms", "positive number of milliseconds"),
        ("[routing]\npenalty_per_429 = 0\n", 2, "routing.penalty_per_429", "positive number"),
        ("[routing]\npenalty_cap = -1\n", 2, "routing.penalty_cap", "positive number"),
        ("[routing]\npenalty_decay_s = 0\n", 2, "routing.penalty_decay_s", "positive number of seconds"),
        ("[routing]\nrate_limit_cooldown_s = 0\n", 2, "routing.rate_limit_cooldown_s", "positive number"),
        ("[routing]\ntransient_cooldown_s = -2\n", 2, "routing.transient_cooldown_s", "positive number"),
        ("[routing]\ntransient_window_s = inf\n", 2, "routing.transient_window_s", "found a float (inf)"),
        ("[routing]\nmodel_missing_cooldown_s = true\n", 2, "routing.model_missing_cooldown_s", "a boolean"),
        (
            "[routing]\noutput_reserve_default = 0\n",
            2,
            "routing.output_reserve_default",
            "an integer from 1 to 2**53",
        ),
        ("[routing]\noutput_reserve_cap = 1.5\n", 2, "routing.output_reserve_cap", "found a float (1.5)"),
        ("[routing]\noutput_reserve_cap = true\n", 2, "routing.output_reserve_cap", "found a boolean"),
        ("[routing]\nspeed_weight = true\n", 2, "routing.speed_weight", "finite number, found a boolean"),
        ("[routing]\nttfb_worst = nan\n", 2, "routing.ttfb_worst", "expected a finite number"),
        ("[routing]\nsmart_ttfb = -inf\n", 2, "routing.smart_ttfb", "expected a finite number"),
        ('[routing]\nintelligence_weight = "0.1"\n', 2, "routing.intelligence_weight", "found a string"),
        ("[routing]\ndecay_days = 1" + "0" * 400 + "\n", 2, "routing.decay_days", "found an integer"),
        ("[routing]\nttfb_bonus = 1" + "0" * 400 + "\n", 2, "routing.ttfb_bonus", "finite number"),
        ("[timeouts]\nstall_s = 1" + "0" * 400 + "\n", 2, "timeouts.stall_s", "positive number"),
        # [sessions]
        ("sessions = 1\n", 1, "sessions", "expected a table"),
        (
            "[sessions]\npin_ttl = 5\n",
            2,
            "sessions.pin_ttl",
            "max_sessions, pin_ttl_s, provider_ban_window_s",
        ),
        ("[sessions]\npin_ttl_s = 0\n", 2, "sessions.pin_ttl_s", "positive number of seconds"),
        (
            "\n[sessions]\nmax_sessions = 0\n",
            3,
            "sessions.max_sessions",
            "an integer from 1 to 2**53, found an integer (0)",
        ),
        ("[sessions]\nmax_sessions = 10.0\n", 2, "sessions.max_sessions", "found a float (10.0)"),
        ("[sessions]\nmax_sessions = true\n", 2, "sessions.max_sessions", "found a boolean"),
        ("[sessions]\nprovider_ban_window_s = -1\n", 2, "sessions.provider_ban_window_s", "positive"),
        ('[sessions]\nprovider_ban_window_s = "3m"\n', 2, "sessions.provider_ban_window_s", "a string"),
        # [[platforms]] quota_day / single_flight
        (
            '[[platforms]]\nname = "groq"\nquota_day = "local"\n',
            3,
            "[[platforms]][1].quota_day",
            'expected a quota day ("utc", "rolling"), found a string ("local")',
        ),
        ('[[platforms]]\nname = "groq"\nquota_day = 1\n', 3, "[[platforms]][1].quota_day", "an integer"),
        (
            '[[platforms]]\nname = "groq"\nsingle_flight = "yes"\n',
            3,
            "[[platforms]][1].single_flight",
            "expected true or false",
        ),
        (
            '[[platforms]]\nname = "x"\nkind = "openai"\nbase_url = "https://x"\nsingle_flight = 1\n',
            5,
            "[[platforms]][1].single_flight",
            "found an integer (1)",
        ),
    ],
)
def test_validation_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    err = error_for(tmp_path, text)
    path = str(tmp_path / "switchboard.toml")
    assert (err.file, err.line, err.key) == (path, line, key)
    assert words in err.message
    assert str(err) == f"{path}:{line}: {key}: {err.message}"
    assert "\n" not in str(err)


def test_toml_syntax_error_keeps_the_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[server]\nhost = "x"\nport = = 3\n')
    assert err.line == 3
    assert str(err).startswith(f"{tmp_path / 'switchboard.toml'}:3: invalid TOML: ")
    assert "(at line" not in str(err)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.toml", {})
    assert info.value.file == str(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text",
    [
        '[gateway]\napi_keys = ["sk-topsecret-1-0123456789", 5]\n',
        '[gateway]\napi_keys = "sk-topsecret-1-0123456789"\n',
        '[gateway]\napi_keys = ["sha256:sk-topsecret-1-0123456789"]\n',
        '[admin]\ntoken = "sha256:sk-topsecret-1-0123456789"\n',
        '[[platforms]]\nname = "groq"\nkeys = "sk-topsecret-1-0123456789"\n',
        '[[platforms]]\nname = "groq"\nkeys = ["sk-topsecret-1-0123456789", ""]\n',
        '[[platforms]]\nname = "groq"\nheaders = { Authorization = 12345 }\n',
        '[gateway]\napi_keys = ["sk-topsecret-1-0123456789"]\napi_key = "sk-topsecret-1-0123456789"\n',
    ],
)
def test_secrets_never_appear_in_errors(tmp_path: Path, text: str) -> None:
    err = error_for(tmp_path, text)
    assert err.line is not None
    assert "topsecret" not in str(err)
    assert "12345" not in str(err)


def test_secrets_are_not_in_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[gateway]\napi_keys = ["sk-topsecret-1-0123456789"]\n[admin]\ntoken = "tok-topsecret-0123456789"\n'
        '[[platforms]]\nname = "groq"\nkeys = ["gsk-topsecret"]\n',
    )
    config = load_config(path, {"CEREBRAS_API_KEY": "csk-topsecret"})
    assert "topsecret" not in repr(config)


# --- environment ----------------------------------------------------------------------------------------


def test_env_keys_comma_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[[platforms]]\nname = "my-lab"\nkind = "openai"\nbase_url = "https://x.test"\n')
    env = {
        "GROQ_API_KEY": " gsk_1 , gsk_2,,gsk_1 ",
        "CEREBRAS_API_KEY": "",
        "LONGCAT_API_KEY": " , ",
        "MY_LAB_API_KEY": "lab-key",
        "UNRELATED_API_KEY": "x",
    }
    config = load_config(path, env)
    assert config.env_keys == {"groq": ("gsk_1", "gsk_2"), "my-lab": ("lab-key",)}
    assert config.platforms["groq"].keys == ()  # env keys are reported separately, not merged


def test_env_overrides_server_settings(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "10.0.0.1"\nport = 9000\ndata_dir = "d"\n')
    env = {"SWITCHBOARD_HOST": "0.0.0.0", "SWITCHBOARD_PORT": "0", "SWITCHBOARD_DATA_DIR": "/srv/sb"}
    config = load_config(path, env)
    assert (config.host, config.port, config.data_dir) == ("0.0.0.0", 0, Path("/srv/sb"))
    assert load_config(None, {"SWITCHBOARD_PORT": " 8443 "}).port == 8443
    assert load_config(None, {"SWITCHBOARD_PORT": ""}).port == 8080


@pytest.mark.parametrize("value", ["http", "-1", "65536", "80.5"])
def test_bad_env_port(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"SWITCHBOARD_PORT": value})
    assert info.value.key == "env SWITCHBOARD_PORT"
    assert str(info.value).startswith("env SWITCHBOARD_PORT: expected an integer from 0 to 65535")


def test_env_defaults_to_os_environ(monkeypatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "from-os")
    monkeypatch.setenv("SWITCHBOARD_PORT", "1234")
    config = load_config(None)
    assert config.env_keys["groq"] == ("from-os",)
    assert config.port == 1234


def test_env_thread_protection_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[platforms]]\nname = "groq"\nprotection = "off"\n'
        '[[platforms]]\nname = "lab"\nkind = "openai"\nbase_url = "https://x.test"\n',
    )
    env = {"THREAD_PROTECTION_PLATFORMS": " longcat : model-skip ,groq:provider-ban,\tlab:off, "}
    config = load_config(path, env)
    assert config.platforms["longcat"].protection == "model-skip"
    assert config.platforms["groq"].protection == "provider-ban"
    assert config.platforms["lab"].protection == "off"
    assert config.platforms["cerebras"].protection == "model-skip"  # not named: unchanged
    assert list(config.platforms) == list(load_config(path, {}).platforms)  # order unchanged
    assert config.platforms["groq"].timeout_s == load_config(path, {}).platforms["groq"].timeout_s


@pytest.mark.parametrize("value", ["", "  ", ","])
def test_env_thread_protection_empty_means_unset(value: str) -> None:
    config = load_config(None, {"THREAD_PROTECTION_PLATFORMS": value})
    assert config.platforms == load_config(None, {}).platforms


@pytest.mark.parametrize(
    ("value", "entry", "words"),
    [
        ("nope:off", "nope:off", 'unknown platform "nope" (known: google, groq, cerebras'),
        ("groq:ban", "groq:ban", 'unknown level "ban"'),
        ("groq:Off", "groq:Off", 'unknown level "Off"'),
        ("longcat:provider-ban,groq", "groq", 'no ":"'),
        ("groq provider-ban", "groq provider-ban", 'no ":"'),
        (":off", ":off", "no platform name"),
        ("groq:", "groq:", "no level"),
        ("groq:off:x", "groq:off:x", 'unknown level "off:x"'),
        (
            "groq:off, groq :model-skip",
            "groq :model-skip",
            'duplicate platform "groq" (already set by "groq:off")',
        ),
    ],
)
def test_bad_env_thread_protection(value: str, entry: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"THREAD_PROTECTION_PLATFORMS": value})
    err = info.value
    assert (err.file, err.line, err.key) == (None, None, "env THREAD_PROTECTION_PLATFORMS")
    assert words in err.message
    assert f"in entry {json.dumps(entry)}" in err.message
    assert 'level one of "provider-ban", "model-skip", "off"' in err.message
    assert str(err) == f"env THREAD_PROTECTION_PLATFORMS: {err.message}"


def test_env_thread_protection_knows_only_loaded_platforms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[catalog]\nbuiltin = false\n[[platforms]]\nname = "lab"\nkind = "openai"\nbase_url = "https://x.test"\n',
    )
    with pytest.raises(ConfigError, match='unknown platform "groq" \\(known: lab\\)'):
        load_config(path, {"THREAD_PROTECTION_PLATFORMS": "groq:off"})
    assert load_config(path, {"THREAD_PROTECTION_PLATFORMS": "lab:off"}).platforms["lab"].protection == "off"


# --- the schema: its wording, one home for defaults, the catalog models ---------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (
            "zzz = 1\n",
            1,
            "zzz",
            "unknown key (expected one of: admin, catalog, gateway, messages, models, platforms, responses, "
            "routing, server, sessions, snapshots, timeouts)",
        ),
        ('[[server]]\nhost = "x"\n', 1, "server", "expected a table, found an array"),
        ("[server]\nhost = 1979-05-27\n", 2, "server.host", "expected a non-empty string, found a date/time"),
        ('[[platforms]]\nname = "groq\\n"\n', 2, "[[platforms]][1].name", 'found a string ("groq\\n")'),
        (
            '[[models]]\nplatform = "groq"\nid = "a"\nrpm = "lots"\n',
            4,
            "[[models]][1].rpm",
            'expected an integer from 1 to 2**53 or "unlimited", found a string ("lots")',
        ),
        ('[[models]]\nplatform = 3\nid = "a"\n', 2, "[[models]][1].platform", "found an integer (3)"),
    ],
)
def test_schema_errors_read_like_the_others(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    err = error_for(tmp_path, text)
    assert (err.line, err.key) == (line, key)
    assert words in err.message


@pytest.mark.parametrize("name", [f.name for f in fields(RoutingPolicy) if f.name.endswith("_s")])
def test_every_routing_duration_is_checked(tmp_path: Path, name: str) -> None:
    err = error_for(tmp_path, f"[routing]\n{name} = 0\n")
    assert (err.line, err.key) == (2, f"routing.{name}")
    assert err.message == "expected a positive number of seconds, found an integer (0)"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            '[[platforms]]\nname = "groq"\nheaders = "Bearer sk-topsecret-1-0123456789"\n',
            "[[platforms]][1].headers",
            "expected a table of header names to strings, found a string",
        ),
        (
            '[[platforms]]\nname = "groq"\nheaders = { A = "x", Authorization = 12345 }\n',
            "[[platforms]][1].headers.Authorization",
            "expected a string, found an integer",
        ),
        ('[admin]\ntoken = " "\n', "admin.token", "found a blank string"),
        (
            '[gateway]\napi_keys = ["sk-1", "sha256:sk-topsecret-1-0123456789"]\n',
            "gateway.api_keys[2]",
            'expected plaintext or "sha256:" and 64 hex digits, found a string starting "sha256:"',
        ),
        (
            '[[platforms]]\nname = "groq"\nkeys = ["sk-topsecret-1-0123456789", " "]\n',
            "[[platforms]][1].keys[2]",
            "expected a non-empty string, found a blank string",
        ),
        # From issue 10's list: gateway keys below a minimum strength are refused at start.
        (
            '[gateway]\napi_keys = ["sk-topsecret-1-0123456789", "topsecret"]\n',
            "gateway.api_keys[2]",
            "too weak to guard the gateway (shorter than 20 characters): use at least 20 random characters",
        ),
        (
            '[admin]\ntoken = "topsecretttttttttttttttttt"\n',
            "admin.token",
            "too weak to guard the gateway (fewer than 8 different characters)",
        ),
    ],
)
def test_secret_errors_say_what_is_wrong_without_the_value(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    err = error_for(tmp_path, text)
    assert err.key == key
    assert words in err.message
    assert "topsecret" not in str(err)
    assert "12345" not in str(err)


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (
            '[server]\nhost = """\n[fake]\nport = 1\n"""\ndata_dir = "d" # [x\n[[platforms]]\nname = "groq"\n'
            'headers = { "A" = "]", B = "{" }\n[[platforms]]\nname = "cerebras"\nnote = 1\n',
            12,
            "[[platforms]][2].note",
        ),
        ('[server]\nhost = """a""""\nprot = 1\n', 3, "server.prot"),
        ('[server]\nhost = """x \\""" y\n[fake]\n"""\nprot = 1\n', 5, "server.prot"),
        ("[server]\nhost = '''x''''\n[sever]\n", 3, "sever"),
        ('[ server ] # c\n\'host\' = "x"\n"prot" . a = 1\n', 3, "server.prot"),
    ],
)
def test_locator_skips_string_and_bracket_contents(tmp_path: Path, text: str, line: int, key: str) -> None:
    err = error_for(tmp_path, text)
    assert (err.line, err.key) == (line, key)


def test_defaults_have_one_home() -> None:
    policy = SessionPolicy()
    assert Sessions() == Sessions(policy.pin_ttl_s, policy.max_sessions, policy.provider_ban_window_s)
    assert Timeouts().transient_cooldown_s == RoutingPolicy().transient_cooldown_s
    assert Routing().rate_limit_cooldown_s == RoutingPolicy().rate_limit_cooldown_s
    assert set(KINDS) == set(ADAPTERS)  # every kind the config accepts has its adapter, and only those


def test_catalog_models_carry_the_config_models(tmp_path: Path) -> None:
    from service.server import catalog_models

    path = write(tmp_path, '[[models]]\nplatform = "groq"\nid = "new"\nrpd = 7\ncontext_window = 4096\n')
    config = load_config(path, {})
    built = catalog_models(config)
    assert [m.ref for m in built] == [m.ref for m in config.models]
    assert built[-1] == CatalogModel(
        platform="groq",
        id="new",
        pool="balanced",
        fallback=True,
        enabled=True,
        context_window=4096,
        intelligence_rank=16,
        speed_rank=6,
        limits=Limits(rpd=7),
    )
    llama = model(config, "groq/llama-3.3-70b-versatile")
    built_llama = next(m for m in built if m.ref == llama.ref)
    assert built_llama.limits == Limits(llama.rpm, llama.rpd, llama.tpm, llama.tpd)
    assert (built_llama.pool, built_llama.intelligence_rank) == (llama.pool, llama.intelligence_rank)


def test_a_weak_gateway_key_stops_only_serve_so_the_log_can_still_be_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\napi_keys = ["sk-my-key"]\n')
    assert load_config(path, {}).api_keys == ("sk-my-key",)  # log tail, backup, keys list read on
    with pytest.raises(ConfigError, match="too weak"):
        load_config(path, {}, serving=True)


def test_snapshot_intervals_are_configured_in_their_own_table(tmp_path: Path) -> None:
    from service.server import routing_settings

    config = load_config(write(tmp_path, "[snapshots]\nevery_events = 5000\nevery_s = 30\n"), {})
    settings = routing_settings(config)
    assert (settings.snapshot_every_events, settings.snapshot_every_s) == (5000, 30.0)
    assert routing_settings(load_config(None, {})).snapshot_every_events == 100_000
    err = error_for(tmp_path, "[snapshots]\nevery_events = 0\n")
    assert err.key == "snapshots.every_events" and "expected an integer from 1 to 2**53" in err.message
