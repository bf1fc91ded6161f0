"""`/metrics`: Prometheus metrics folded from the log (actors/metrics.py), with the gauges read from the
actors at scrape time. The admin guard (service/admin_auth.py) answers 401 before this handler runs."""

from __future__ import annotations

import trio
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from quart import Response
from quart_trio import QuartTrio

from actors.metrics import Live
from actors.supervisor import Runtime
from service.admin_context import AdminContext


async def live_values(runtime: Runtime) -> Live:
    """The gauges' values now: two asks of the model-health actor (they queue behind committed batches, so
    they see every event committed before the scrape), the rest from the actors' statistics."""
    return Live(
        keys=await runtime.health.keys(),
        models=await runtime.health.models(),
        requests=runtime.requests.statistics(),
        log=runtime.log.statistics(),
        log_writable=runtime.log.outage() is None,
        feed=runtime.feed.statistics(),
        responses=runtime.responses.statistics(),
    )


def register(app: QuartTrio, admin: AdminContext) -> None:
    runtime = admin.runtime
    gateway = runtime.metrics.metrics

    @app.get("/metrics")
    async def scrape() -> Response:
        live = await live_values(runtime)
        # Rendering a large catalog takes tens of milliseconds: off the event loop, from a copy of the
        # numbers taken on it (the fold goes on meanwhile).
        body = await trio.to_thread.run_sync(gateway.render, gateway.folded(), live)
        return Response(body, status=200, content_type=CONTENT_TYPE_PLAIN_0_0_4)
