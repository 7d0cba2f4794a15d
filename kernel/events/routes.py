"""``GET /api/events/deliveries`` and ``POST /api/events/deliveries/{id}/redeliver``: the tenant's
event deliveries, for its administrators."""

from __future__ import annotations

import uuid

from arq.connections import ArqRedis
from litestar import get, post

from kernel.context import Kernel
from kernel.events.deliveries import QUEUE, Delivery, DeliveryPage
from kernel.tenants.schemas import Tenant

__all__ = ["handlers", "list_deliveries", "redeliver"]

READ = "kernel.events.deliveries.read"
WRITE = "kernel.events.deliveries.write"


@get("/api/events/deliveries", tags=["events"], opt={"permission": READ})
async def list_deliveries(
    kernel: Kernel,
    tenant: Tenant,
    status: str | None = None,
    event: str | None = None,
    handler: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> DeliveryPage:
    """The tenant's event deliveries (one per event and handler), newest first.

    Filters: ``status`` (``pending``, ``running``, ``succeeded``, ``dead``), ``event`` (an event
    id or an event name), ``handler`` (``<plugin>:<name>``). ``limit`` defaults to 50, at most
    200; follow ``next_cursor`` for older rows.
    """
    return await kernel.deliveries.list(
        tenant.id, status=status, event=event, handler=handler, cursor=cursor, limit=limit
    )


@post(
    "/api/events/deliveries/{delivery_id:uuid}/redeliver", status_code=202, tags=["events"],
    opt={"permission": WRITE},
)
async def redeliver(kernel: Kernel, tenant: Tenant, delivery_id: uuid.UUID) -> Delivery:
    """Run a succeeded or dead delivery again, with a fresh set of attempts (202: queued).
    One still pending or running answers 409."""
    queue = ArqRedis(connection_pool=kernel.redis.connection_pool)
    return await kernel.deliveries.redeliver(tenant.id, delivery_id, queue, QUEUE)


handlers = [list_deliveries, redeliver]
