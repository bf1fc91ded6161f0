"""`ConfigApplied`: a configuration as plain values and back, exactly, and its content hash."""

from __future__ import annotations

from dataclasses import fields

import msgspec
from builders import model

from events.catalog import CatalogModel
from events.config_applied import (
    build,
    config_hash,
    models_of,
    plain,
    policy_of,
    record_config,
    session_policy_of,
    view_of,
)
from events.policy import RoutingPolicy
from events.quotas import Limits
from events.types import ConfigApplied, decode_event, encode_event
from events.view import SessionPolicy

MODELS = (
    model(
        "groq", "llama-70b", intelligence=2, speed=3, context_window=128_000, limits=Limits(rpm=30, tpd=None)
    ),
    model("longcat", "flash", pool="smart", intelligence=1, speed=9, limits=Limits(rpd=500)),
    model("gemini", "pro", enabled=False, fallback=False, intelligence=4, speed=5),
)
SESSIONS = SessionPolicy(
    protection={"longcat": "provider-ban", "groq": "model-skip"},
    single_flight=frozenset({"longcat"}),
    pin_ttl_s=60.0,
    max_sessions=7,
    provider_ban_window_s=30.0,
)
POLICY = RoutingPolicy(decay_days=3.0, output_reserve_cap=500, rate_limit_cooldown_s=9.5)


def record(**changes: object) -> ConfigApplied:
    args: dict = {
        "ts": 1.0,
        "models": MODELS,
        "policy": POLICY,
        "sessions": SESSIONS,
        "platforms": ["groq", "longcat", "gemini"],
        "rolling_day_platforms": ["gemini"],
        "timeouts": {"first_byte_s": 45.0, "platform_first_byte_s": {"gemini": 90.0}},
        "max_attempts": 4,
    }
    return record_config(**{**args, **changes})


def test_a_record_survives_the_log_and_rebuilds_every_part_exactly() -> None:
    event = decode_event(encode_event(record()))
    assert isinstance(event, ConfigApplied)
    assert models_of(event) == list(MODELS)
    assert [m.limits for m in models_of(event)] == [m.limits for m in MODELS]
    assert policy_of(event) == POLICY
    assert type(policy_of(event).output_reserve_cap) is int
    assert session_policy_of(event) == SESSIONS
    assert isinstance(session_policy_of(event).single_flight, frozenset)
    assert event.platforms == ("gemini", "groq", "longcat")
    view = view_of(event)
    assert view.catalog.models() == MODELS
    assert (view.policy, view.session_policy) == (POLICY, SESSIONS)
    assert config_hash(event) == event.hash == record().hash


def test_the_hash_covers_every_setting_but_not_the_time() -> None:
    base = record().hash
    assert record(ts=99.0).hash == base
    assert record(policy=RoutingPolicy(decay_days=3.0, output_reserve_cap=500)).hash != base
    assert record(models=MODELS[:2]).hash != base
    assert record(models=(MODELS[1], MODELS[0], MODELS[2])).hash != base  # order ranks ties: it counts
    assert record(max_attempts=5).hash != base
    assert record(rolling_day_platforms=[]).hash != base
    reordered = SessionPolicy(
        protection={"groq": "model-skip", "longcat": "provider-ban"},
        single_flight=frozenset({"longcat"}),
        pin_ttl_s=60.0,
        max_sessions=7,
        provider_ban_window_s=30.0,
    )
    assert record(sessions=reordered).hash == base  # a mapping's order means nothing


def test_fields_a_build_does_not_know_are_ignored_and_missing_ones_take_their_defaults() -> None:
    newer = {**plain(POLICY), "a_setting_from_a_newer_build": 1.5}
    assert build(RoutingPolicy, newer) == POLICY
    older = {k: v for k, v in plain(POLICY).items() if k != "decay_days"}
    assert build(RoutingPolicy, older).decay_days == RoutingPolicy().decay_days
    m = {k: v for k, v in plain(MODELS[0]).items() if k != "limits"}
    assert build(CatalogModel, m).limits == Limits()
    assert set(plain(MODELS[0])) == {f.name for f in fields(CatalogModel) if f.init}
    assert "ref" not in plain(MODELS[0])


def test_a_record_is_plain_json() -> None:
    raw = msgspec.json.decode(encode_event(record()))
    assert raw["type"] == "config_applied"
    assert raw["models"][0]["limits"] == {"rpm": 30, "rpd": None, "tpm": None, "tpd": None}
    assert raw["sessions"]["single_flight"] == ["longcat"]
    assert raw["timeouts"]["platform_first_byte_s"] == {"gemini": 90.0}
