"""`/admin/events`: the log's tail as server-sent events, resumable and filtered."""

from __future__ import annotations

from quart_trio import QuartTrio

from service.admin_context import AdminContext


def register(app: QuartTrio, admin: AdminContext) -> None:
    """Placeholder until this module's routes are built."""
