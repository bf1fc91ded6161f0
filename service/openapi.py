"""`/openapi.json`: the OpenAPI 3.1 document of `/v1` and `/admin/api`."""

from __future__ import annotations

from quart_trio import QuartTrio

from service.admin_context import AdminContext


def register(app: QuartTrio, admin: AdminContext) -> None:
    """Placeholder until this module's routes are built."""
