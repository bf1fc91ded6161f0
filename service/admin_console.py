"""The web console at `/admin/`: static files in the package."""

from __future__ import annotations

from quart_trio import QuartTrio

from service.admin_context import AdminContext


def register(app: QuartTrio, admin: AdminContext) -> None:
    """Placeholder until this module's routes are built."""
