"""What the gateway records of its configuration (`ConfigApplied`): everything its decisions depend on,
rebuilt exactly from the log, and never a secret."""

from __future__ import annotations

from events.config_applied import view_of
from events.types import decode_event, encode_event
from service.config import load_config
from service.server import routing_settings

SECRETS = ("sk-provider-SECRET-0001", "sk-gateway-SECRET-0002", "admin-SECRET-0000003", "hdr-SECRET-0004")

CONFIG = f"""
[gateway]
api_keys = ["{SECRETS[1]}"]
[admin]
token = "{SECRETS[2]}"
[timeouts]
first_byte_s = 20
stall_s = 30
[routing]
max_attempts = 3
decay_days = 2
rate_limit_cooldown_s = 7
[sessions]
pin_ttl_s = 600
[[platforms]]
name = "groq"
keys = ["{SECRETS[0]}"]
quota_day = "rolling"
headers = {{ "X-Secret" = "{SECRETS[3]}" }}
timeout_s = 90
[[platforms]]
name = "longcat"
protection = "provider-ban"
single_flight = true
[[models]]
platform = "groq"
id = "llama-3.3-70b-versatile"
rpm = 3
pool = "smart"
"""


def test_the_recorded_configuration_rebuilds_the_gateways_view_and_holds_no_secret(tmp_path) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(CONFIG)
    config = load_config(path, env={"GROQ_API_KEY": "sk-env-SECRET-0005"})
    settings = routing_settings(config)
    event = settings.config_record(1.0)
    data = encode_event(event)
    for secret in (*SECRETS, "sk-env-SECRET-0005"):
        assert secret.encode() not in data
    restored = decode_event(data)
    view, live = view_of(restored), settings.new_view()  # type: ignore[arg-type]
    assert view.catalog.models() == live.catalog.models()
    assert view.policy == live.policy == config.routing.policy
    assert view.session_policy == live.session_policy
    assert view.quotas._rolling == live.quotas._rolling == frozenset({"groq"})
    assert restored.max_attempts == 3
    assert restored.timeouts["first_byte_s"] == 20
    assert restored.timeouts["platform_first_byte_s"]["groq"] == 90
    assert set(restored.platforms) == set(config.platforms)
    assert event.hash == routing_settings(load_config(path, env={})).config_record(2.0).hash  # keys aside


def test_the_built_in_configuration_round_trips() -> None:
    settings = routing_settings(load_config(None, env={}))
    view = view_of(decode_event(encode_event(settings.config_record(0.0))))  # type: ignore[arg-type]
    live = settings.new_view()
    assert view.catalog.models() == live.catalog.models()
    assert (view.policy, view.session_policy) == (live.policy, live.session_policy)
