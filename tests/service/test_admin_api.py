"""The admin API's pure parts: which field a msgspec error names, a base URL without its credentials, and
the chain order the models list follows."""

from __future__ import annotations

import msgspec
import pytest

from actors.model_health import ModelDetail
from events.catalog import CatalogModel
from events.decide import MeanScore
from service.admin_api import ModelPatch, _without_secrets, chain_positions, field_of


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"limits": {"rpm": 0}}', "limits.rpm"),
        (b'{"limits": {"rpx": 1}}', "limits.rpx"),
        (b'{"nope": 1}', "nope"),
        (b'{"pool": "x"}', "pool"),
        (b"[]", None),
    ],
)
def test_the_field_of_a_validation_error(raw: bytes, field: str | None) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(raw, type=ModelPatch)
    assert field_of(caught.value) == field


def test_a_base_url_loses_its_credentials_and_query() -> None:
    assert (
        _without_secrets("https://user:pw@api.example.com:8443/v1?key=abc#x")
        == "https://api.example.com:8443/v1"
    )
    assert _without_secrets("http://[::1]:9000/v1") == "http://[::1]:9000/v1"
    assert _without_secrets("https://api.groq.com/openai/v1") == "https://api.groq.com/openai/v1"


def detail(id: str, rank: int, *, enabled: bool = True, fallback: bool = True) -> ModelDetail:
    m = CatalogModel("p", id, "balanced", fallback, enabled, None, rank, 5)
    return ModelDetail(m, 1, 1, None, 0.0, 0.0, None, None, MeanScore(0.5, 0, 0, 0, 0, 0.5, 0.5))


def test_the_chain_is_ordered_by_rank_then_catalog_order_and_holds_only_enabled_chain_models() -> None:
    details = [
        detail("a", 3),
        detail("b", 1),
        detail("c", 3),
        detail("off", 1, enabled=False),
        detail("out", 1, fallback=False),
    ]
    assert chain_positions(details) == {"p/b": 1, "p/a": 2, "p/c": 3}
