"""Catalog models for the pure-core tests, with the defaults every test file used to repeat."""

from __future__ import annotations

from events.catalog import CatalogModel
from events.quotas import Limits

NO_LIMITS = Limits()


def model(
    platform: str,
    id: str,
    *,
    pool: str = "balanced",
    fallback: bool = True,
    enabled: bool = True,
    context_window: int | None = None,
    intelligence: int = 50,
    speed: int = 50,
    limits: Limits = NO_LIMITS,
) -> CatalogModel:
    """Lower intelligence/speed rank is smarter/faster."""
    return CatalogModel(platform, id, pool, fallback, enabled, context_window, intelligence, speed, limits)
