"""The connectors' tests. The plugin test kit is loaded here, once for every connector: pytest
takes ``pytest_plugins`` only from a top-level conftest (copied out of this repository, a
connector's own ``tests/conftest.py`` loads it instead).

The helpers below serve the slack, email and nats tests: a platform per test module on the kit's
PostgreSQL and Redis (``kernel.testing.platform_settings``: module-scoped, so several connectors'
tests share one pytest run without one connector's platform serving another's), 127.0.0.1 opened
for egress (the local servers standing in for Slack, an SMTP relay and NATS listen there),
tenants, connections made through ``/api/connections``, and the events a connector recorded."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel import sdk
from kernel.testing import Settings, new_tenant, platform_settings

pytest_plugins = ["kernel.testing"]

__all__ = ["connector_settings", "make_connection", "recorded_events", "tenant_with"]


async def connector_settings(servers: tuple[str, str], database_url: str, data_dir: Path, plugin: str) -> Settings:
    """A platform with ``plugin`` loaded (and migrated) and 127.0.0.1 allowed for egress."""
    return await platform_settings(
        database_url, servers[1], data_dir, {plugin}, BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32"
    )


async def tenant_with(api: AsyncTestClient[Any], plugin: str, prefix: str) -> dict[str, Any]:
    """A new tenant with ``plugin`` enabled; ``h`` holds its owner's request headers."""
    tenant = await new_tenant(api, prefix)
    h = {"X-Tenant-ID": tenant["slug"]}
    response = await api.post(f"/api/modules/{plugin}/enable", headers=h)
    assert response.status_code == 200, response.text
    return {**tenant, "h": h, "uuid": uuid.UUID(tenant["id"])}


async def make_connection(
    api: AsyncTestClient[Any], tenant: dict[str, Any], kind: str, credentials: dict[str, Any], name: str = "test"
) -> dict[str, Any]:
    """``POST /api/connections`` as the tenant's owner; the connection's JSON."""
    response = await api.post(
        "/api/connections", json={"type": kind, "name": name, "credentials": credentials}, headers=tenant["h"]
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def recorded_events(services: sdk.Services, tenant_id: uuid.UUID, event: str) -> list[dict[str, Any]]:
    """Payloads of ``event`` in the tenant's outbox, oldest first."""
    async with services.data.tenant(tenant_id) as session:
        rows = await session.execute(
            text("select payload from events_outbox where event = :e order by created_at, id"), {"e": event}
        )
        return [msgspec.convert(row.payload, dict[str, Any]) for row in rows]
