"""Chat and embedding models in one catalog: chat routing (the chain in every mode, a named model) never
picks an embedding model, an embeddings request never a chat model; embedding models of one family are
routed like named chat models (keys, cooldowns, exclusions recorded)."""

from __future__ import annotations

import dataclasses
import random

import msgspec
import pytest
from builders import model

from events.catalog import Catalog, CatalogModel
from events.config_applied import models_of, record_config
from events.decide import UnknownModel, WrongTask, decide
from events.policy import RoutingPolicy
from events.types import AttemptFailed, ExclusionCode, KeyAdded, ModelUpdated, RouteInput
from events.view import RoutingView, SessionPolicy

NOW = 1_000_000.0


def embedding(platform: str, id: str, family: str | None, **kw: object) -> CatalogModel:
    # The smartest and fastest ranks: were they in the chain, every mode would pick them first.
    base = model(platform, id, intelligence=1, speed=1, **kw)  # type: ignore[arg-type]
    return dataclasses.replace(base, task="embedding", family=family)


CHAT = model("groq", "llama", intelligence=5, speed=5)
CHAT_SMART = model("groq", "big", pool="smart", intelligence=2, speed=9)
BGE_CF = embedding("cloudflare", "@cf/baai/bge-m3", "BAAI/bge-m3")
BGE_NV = embedding("nvidia", "baai/bge-m3", "BAAI/bge-m3")
OWN = embedding("cloudflare", "own-vectors", None)
CATALOG = (CHAT, CHAT_SMART, BGE_CF, BGE_NV, OWN)
KEYS = (("g1", "groq"), ("cf1", "cloudflare"), ("nv1", "nvidia"))


def make_view() -> RoutingView:
    view = RoutingView(CATALOG, RoutingPolicy())
    for k, p in KEYS:
        view.apply(view.seq + 1, KeyAdded(ts=0.0, key_id=k, platform=p, label=k, source="config"))
    return view


def embeddings_input(*refs: str, **kw: object) -> RouteInput:
    return RouteInput(mode="auto", requested=refs, use_chain=False, task="embedding", **kw)  # type: ignore[arg-type]


def test_a_models_family_names_its_vectors_and_defaults_to_its_own_ref() -> None:
    assert BGE_CF.vectors == BGE_NV.vectors == "BAAI/bge-m3"
    assert OWN.vectors == "cloudflare/own-vectors"
    assert CHAT.task == "chat" and CHAT.family is None


@pytest.mark.parametrize("mode", ["auto", "auto-smart", "auto-fast"])
def test_the_chat_chain_never_holds_an_embedding_model(mode: str) -> None:
    view = make_view()
    chain = view.chain(mode)
    assert {m.ref for m in chain.models} <= {CHAT.ref, CHAT_SMART.ref}
    for seed in range(20):
        d = decide(view, RouteInput(mode=mode), NOW, random.Random(seed))
        assert d.chosen is not None and d.chosen.task == "chat"
        assert all(c.ref not in (BGE_CF.ref, BGE_NV.ref, OWN.ref) for c in d.candidates)


@pytest.mark.parametrize("name", [BGE_CF.ref, "baai/bge-m3"])
def test_a_chat_request_naming_an_embedding_model_is_told_to_use_embeddings(name: str) -> None:
    with pytest.raises(WrongTask) as raised:
        decide(make_view(), RouteInput(mode="auto", requested=(name,)), NOW, random.Random(0))
    assert raised.value.message == f"'{name}' is an embedding model; use /v1/embeddings."
    assert isinstance(raised.value, UnknownModel)  # replay and every caller of decide treat it alike


def test_an_embeddings_request_naming_a_chat_model_is_refused() -> None:
    with pytest.raises(WrongTask) as raised:
        decide(make_view(), embeddings_input(CHAT.ref), NOW, random.Random(0))
    assert raised.value.message == f"'{CHAT.ref}' is a chat model, not an embedding model."


def test_an_embeddings_request_picks_among_its_family_in_order() -> None:
    d = decide(make_view(), embeddings_input(BGE_NV.ref, BGE_CF.ref), NOW, random.Random(0))
    assert (d.chosen, d.chosen_key) == (BGE_NV, "nv1")
    assert d.candidates_total == 2  # the chain is off: nothing else was eligible


def test_a_cooling_key_is_an_exclusion_and_the_family_answers_elsewhere() -> None:
    view = make_view()
    view.apply(
        view.seq + 1,
        AttemptFailed(
            ts=NOW - 1,
            request_id="r",
            attempt=1,
            platform="nvidia",
            model=BGE_NV.id,
            key_id="nv1",
            kind="rate_limited",
            status=429,
            retry_after_s=60.0,
        ),
    )
    d = decide(view, embeddings_input(BGE_NV.ref, BGE_CF.ref), NOW, random.Random(0))
    assert (d.chosen, d.chosen_key) == (BGE_CF, "cf1")
    assert [(e.ref, e.code) for e in d.excluded] == [(BGE_NV.ref, ExclusionCode.RATE_LIMITED)]


def test_when_the_family_is_spent_nothing_else_is_chosen() -> None:
    tried = (("nv1", BGE_NV.ref), ("cf1", BGE_CF.ref))
    d = decide(make_view(), embeddings_input(BGE_NV.ref, BGE_CF.ref, tried=tried), NOW, random.Random(0))
    assert d.chosen is None
    assert {e.code for e in d.excluded} == {ExclusionCode.TRIED}


def test_the_recorded_configuration_keeps_task_and_family() -> None:
    event = record_config(
        ts=0.0, models=CATALOG, policy=RoutingPolicy(), sessions=SessionPolicy(), platforms=["groq"]
    )
    assert models_of(event) == list(CATALOG)
    # A record written before models had a task reads as chat models of no family.
    older = [{k: v for k, v in m.items() if k not in ("task", "family")} for m in event.models]
    old = msgspec.structs.replace(event, models=tuple(older))
    assert {m.task for m in models_of(old)} == {"chat"} and {m.family for m in models_of(old)} == {None}


def test_an_operators_changes_keep_a_models_task() -> None:
    catalog = Catalog(CATALOG)
    catalog.apply(ModelUpdated(ts=0.0, platform="nvidia", model=BGE_NV.id, intelligence_rank=9))
    changed = next(m for m in catalog.models() if m.ref == BGE_NV.ref)
    assert (changed.task, changed.family, changed.intelligence_rank) == ("embedding", "BAAI/bge-m3", 9)
