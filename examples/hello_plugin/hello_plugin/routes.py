from __future__ import annotations

import msgspec
from litestar import get
from sqlalchemy import func, select

from hello_plugin.models import Ping
from kernel import sdk


class Pong(msgspec.Struct):
    message: str
    tenant: str
    pings: int
    """How many times this tenant has pinged, this one included."""


@get("/api/hello/ping", opt={"permission": "hello.pings.read"})
async def ping(tenant: sdk.Tenant, services: sdk.Services) -> Pong:
    """Record a ping for the tenant and answer with its greeting and count."""
    settings = await services.settings(tenant.id)
    async with services.data.tenant(tenant.id) as session:
        session.add(Ping(tenant_id=tenant.id, message=settings.greeting))
        await session.flush()
        # No tenant filter here on purpose: row-level security scopes the count.
        count = (await session.execute(select(func.count()).select_from(Ping))).scalar_one()
    return Pong(message=settings.greeting, tenant=tenant.slug, pings=count)
