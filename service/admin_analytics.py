"""The admin API's analytics, from the stats actor: summary, by model / platform / key, timeline, errors."""

from __future__ import annotations

from quart_trio import QuartTrio

from service.admin_context import AdminContext


def register(app: QuartTrio, admin: AdminContext) -> None:
    """Placeholder until this module's routes are built."""
