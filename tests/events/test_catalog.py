"""The catalog routing sees: configured models with the operator's ModelUpdated changes over them, and name
resolution by `id` and `platform/id`."""

from __future__ import annotations

from builders import model

from events.catalog import Catalog, CatalogModel, ModelOverride
from events.quotas import Limits
from events.types import KeyAdded, LimitChanges, ModelUpdated

MID = model("gemini", "flash", intelligence=4)
BIG = model("groq", "llama-70b", intelligence=2)
OFF = model("gemini", "pro", enabled=False, intelligence=0)
CATALOG = [MID, BIG, OFF]


def test_ref_is_platform_slash_id_and_not_part_of_equality() -> None:
    m = CatalogModel("openrouter", "qwen/qwen3:free", "fast", True, True, 32_000, 3, 4, Limits(rpm=20))
    assert m.ref == "openrouter/qwen/qwen3:free"
    assert m == CatalogModel(
        "openrouter", "qwen/qwen3:free", "fast", True, True, 32_000, 3, 4, Limits(rpm=20)
    )


def test_models_keep_the_configured_order() -> None:
    assert Catalog(CATALOG).models() == tuple(CATALOG)


def test_resolve_by_id_and_by_platform_id() -> None:
    catalog = Catalog(CATALOG)
    assert catalog.resolve("flash") == [MID]
    assert catalog.resolve("gemini/flash") == [MID]
    assert catalog.resolve("groq/flash") == []
    assert catalog.resolve("nothing") == []


def test_disabled_models_cannot_be_resolved() -> None:
    catalog = Catalog(CATALOG)
    assert catalog.resolve("pro") == []
    assert catalog.resolve("gemini/pro") == []


def test_ids_containing_a_slash() -> None:
    qwen = model("openrouter", "qwen/qwen3-coder:free")
    plain = model("qwen", "qwen3")
    catalog = Catalog([qwen, plain])
    assert catalog.resolve("qwen/qwen3-coder:free") == [qwen]
    assert catalog.resolve("openrouter/qwen/qwen3-coder:free") == [qwen]
    assert catalog.resolve("qwen/qwen3") == [plain]


def test_the_same_id_on_two_platforms_gives_both() -> None:
    a = model("groq", "llama-8b", intelligence=8)
    b = model("cerebras", "llama-8b", intelligence=7)
    catalog = Catalog([a, b])
    assert catalog.resolve("llama-8b") == [a, b]
    assert catalog.resolve("groq/llama-8b") == [a]


# -- Operator changes


def test_overrides_merge_field_by_field() -> None:
    catalog = Catalog([BIG])
    catalog.apply(ModelUpdated(ts=1, platform="groq", model="llama-70b", enabled=False))
    assert catalog.overrides == {BIG.ref: ModelOverride(enabled=False)}
    catalog.apply(ModelUpdated(ts=2, platform="groq", model="llama-70b", pool="fast"))
    assert catalog.overrides[BIG.ref] == ModelOverride(enabled=False, pool="fast")
    catalog.apply(ModelUpdated(ts=3, platform="groq", model="llama-70b", enabled=True, fallback=False))
    assert catalog.overrides[BIG.ref] == ModelOverride(enabled=True, fallback=False, pool="fast")
    catalog.apply(ModelUpdated(ts=4, platform="groq", model="llama-70b"))  # nothing set: nothing changes
    assert catalog.overrides[BIG.ref] == ModelOverride(enabled=True, fallback=False, pool="fast")
    (m,) = catalog.models()
    assert (m.enabled, m.fallback, m.pool) == (True, False, "fast")


def test_overrides_are_per_platform_and_id() -> None:
    catalog = Catalog([])
    catalog.apply(ModelUpdated(ts=1, platform="groq", model="meta/llama", enabled=False))
    catalog.apply(ModelUpdated(ts=1, platform="openrouter", model="meta/llama", pool="smart"))
    catalog.apply(KeyAdded(ts=1, key_id="k", platform="groq", label="k", source="env"))
    assert catalog.overrides == {
        "groq/meta/llama": ModelOverride(enabled=False),
        "openrouter/meta/llama": ModelOverride(pool="smart"),
    }


def test_an_override_disables_and_enables_a_model() -> None:
    catalog = Catalog(CATALOG)
    catalog.apply(ModelUpdated(ts=1, platform="gemini", model="flash", enabled=False))
    assert catalog.resolve("flash") == []
    catalog.apply(ModelUpdated(ts=2, platform="gemini", model="pro", enabled=True, pool="fast"))
    (pro,) = catalog.resolve("pro")
    assert (pro.enabled, pro.pool, pro.intelligence_rank) == (True, "fast", 0)
    assert [m.ref for m in catalog.models()] == [MID.ref, BIG.ref, OFF.ref]  # same models, same order


def test_an_override_for_a_model_not_in_the_catalog_changes_nothing_visible() -> None:
    catalog = Catalog(CATALOG)
    catalog.apply(ModelUpdated(ts=1, platform="nowhere", model="x", enabled=True))
    assert catalog.models() == tuple(CATALOG)


def test_the_version_changes_with_every_override_and_models_are_cached_until_then() -> None:
    catalog = Catalog(CATALOG)
    first = catalog.models()
    assert catalog.models() is first
    version = catalog.version
    catalog.apply(KeyAdded(ts=1, key_id="k", platform="groq", label="k", source="env"))
    assert (catalog.version, catalog.models()) == (version, first)
    catalog.apply(ModelUpdated(ts=1, platform="groq", model="llama-70b", fallback=False))
    assert catalog.version == version + 1
    assert catalog.models() is not first
    assert catalog.models()[1].fallback is False


def test_rank_and_limit_overrides_and_a_lifted_limit() -> None:
    base = model("groq", "llama-70b", intelligence=2, limits=Limits(rpm=30, tpd=1000))
    catalog = Catalog([base])
    catalog.apply(
        ModelUpdated(
            ts=1, platform="groq", model="llama-70b", intelligence_rank=7, limits=LimitChanges(rpm=5)
        )
    )
    (m,) = catalog.models()
    assert (m.intelligence_rank, m.limits) == (7, Limits(rpm=5, tpd=1000))
    catalog.apply(ModelUpdated(ts=2, platform="groq", model="llama-70b", limits=LimitChanges(tpd=None)))
    catalog.apply(ModelUpdated(ts=3, platform="groq", model="llama-70b", enabled=False))
    (m,) = catalog.models()
    assert (m.intelligence_rank, m.limits, m.enabled) == (7, Limits(rpm=5), False)
    again = Catalog([base])
    again.restore(catalog.state())
    assert again.models() == catalog.models() and again.version == catalog.version
