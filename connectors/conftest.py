"""The connectors' tests. The plugin test kit is loaded here, once for every connector: pytest
takes ``pytest_plugins`` only from a top-level conftest (the http connector's tests run on it).

The slack, email and nats tests use the helpers below instead: a platform per test module on the
suite's PostgreSQL and Redis (module-scoped, so several connectors' tests can share one pytest run
without one connector's session-scoped platform serving another's), 127.0.0.1 opened for egress
(the local servers that stand in for Slack, an SMTP relay and NATS listen there), tenants,
connections made through ``/api/connections``, and the events a connector recorded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel.app import load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import database_url, new_tenant, node_context, other_process, servers, settings_for

pytest_plugins = ["kernel.testing"]

__all__ = [
    "connector_settings",
    "database_url",
    "make_connection",
    "node_context",
    "other_process",
    "recorded_events",
    "servers",
    "tenant_with",
]


async def connector_settings(database_url: str, redis_url: str, data_dir: Path, plugin: str, **env: str) -> Settings:
    """A platform with ``plugin`` loaded (and migrated) and 127.0.0.1 allowed for egress."""
    result = settings_for(
        database_url, redis_url, data_dir, BUSINESSOS_PLUGINS=plugin,
        BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32", **env,
    )
    plugins = load_app_plugins(result.plugins_allowlist)
    record = plugins.get(plugin)
    assert record is not None and record.active, record and record.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


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


async def recorded_events(kernel: Kernel, tenant_id: uuid.UUID, event: str) -> list[dict[str, Any]]:
    """Payloads of ``event`` in the tenant's outbox, oldest first."""
    async with kernel.db.tenant(tenant_id) as session:
        rows = await session.execute(
            text("select payload from events_outbox where event = :e order by created_at, id"), {"e": event}
        )
        return [msgspec.convert(row.payload, dict[str, Any]) for row in rows]


@asynccontextmanager
async def platform(settings: Settings) -> AsyncIterator[Kernel]:
    """The platform's services in the test's loop (see ``tests.conftest.other_process``)."""
    async with other_process(settings) as kernel:
        yield kernel
