"""The connectors' tests. The plugin test kit is loaded here, once for every connector: pytest
takes ``pytest_plugins`` only from a top-level conftest (copied out of this repository, a
connector's own ``tests/conftest.py`` loads it instead).

The helpers below serve the slack, email and nats tests: a platform per test module on the kit's
PostgreSQL and Redis (``kernel.testing.platform_settings``: module-scoped, so several connectors'
tests share one pytest run without one connector's platform serving another's), 127.0.0.1 opened
for egress (the local servers standing in for Slack, an SMTP relay and NATS listen there),
tenants, connections made through ``/api/connections``, and the events a connector recorded.

The workflow helpers (:func:`workflow_settings`, :func:`publish_workflow`, :func:`start_run`,
:func:`finished_run`, :func:`runs_of`) drive a connector end to end the way a tenant does: a
workflow saved and published over HTTP, run by the platform's real job worker
(``kernel.testing.running_worker``), its outcome read back over HTTP, waiting with bounded polling."""

from __future__ import annotations

import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel import sdk
from kernel.testing import Settings, eventually, new_tenant, platform_settings

pytest_plugins = ["kernel.testing"]

__all__ = [
    "connector_settings",
    "finished_run",
    "make_connection",
    "publish_workflow",
    "recorded_events",
    "runs_of",
    "start_run",
    "step",
    "steps_of",
    "tenant_with",
    "workflow_settings",
]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RUN_SECONDS = 60.0
"""How long a run may take to finish under a loaded machine before a test gives up on it."""


async def connector_settings(servers: tuple[str, str], database_url: str, data_dir: Path, plugin: str) -> Settings:
    """A platform with ``plugin`` loaded (and migrated) and 127.0.0.1 allowed for egress."""
    return await platform_settings(
        database_url, servers[1], data_dir, {plugin}, BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32"
    )


async def workflow_settings(
    servers: tuple[str, str], database_url: str, data_dir: Path, plugin: str
) -> Settings:
    """:func:`connector_settings` with the workflows module loaded as well."""
    return await platform_settings(
        database_url,
        servers[1],
        data_dir,
        {plugin, "workflows"},
        BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32",
    )


async def tenant_with(api: AsyncTestClient[Any], plugin: str, prefix: str, *more: str) -> dict[str, Any]:
    """A new tenant with ``plugin`` (and ``more`` modules) enabled; ``h`` holds its owner's
    request headers."""
    tenant = await new_tenant(api, prefix)
    h = {"X-Tenant-ID": tenant["slug"]}
    for name in (plugin, *more):
        response = await api.post(f"/api/modules/{name}/enable", headers=h)
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


def step(node_id: str, key: str, /, **config: Any) -> dict[str, Any]:
    """A graph node: ``key`` from the catalogue with ``config``."""
    return {"id": node_id, "node": key, "config": config}


async def publish_workflow(
    api: AsyncTestClient[Any], tenant: dict[str, Any], nodes: list[dict[str, Any]], name: str = ""
) -> str:
    """Save ``nodes`` as a chain (each node leads to the next) and publish it; the workflow id."""
    edges = [{"source": a["id"], "target": b["id"], "port": "main"} for a, b in pairwise(nodes)]
    body = {"name": name or f"wf-{uuid.uuid4().hex[:6]}", "graph": {"nodes": nodes, "edges": edges}}
    made = await api.post("/api/workflows", json=body, headers=tenant["h"])
    assert made.status_code == 201, made.text
    workflow: str = made.json()["id"]
    published = await api.post(f"/api/workflows/{workflow}/publish", headers=tenant["h"])
    assert published.status_code == 201, published.text
    return workflow


async def refused_workflow(
    api: AsyncTestClient[Any], tenant: dict[str, Any], nodes: list[dict[str, Any]]
) -> list[str]:
    """Save ``nodes`` as a chain and expect 422; the fields the problem names."""
    edges = [{"source": a["id"], "target": b["id"], "port": "main"} for a, b in pairwise(nodes)]
    body = {"name": f"wf-{uuid.uuid4().hex[:6]}", "graph": {"nodes": nodes, "edges": edges}}
    made = await api.post("/api/workflows", json=body, headers=tenant["h"])
    assert made.status_code == 422, made.text
    return [error["field"] for error in made.json()["errors"]]


async def start_run(api: AsyncTestClient[Any], tenant: dict[str, Any], workflow: str, payload: Any = None) -> str:
    """``POST /api/workflows/{id}/run`` (a manual trigger's input); the execution id."""
    response = await api.post(f"/api/workflows/{workflow}/run", json={"input": payload or {}}, headers=tenant["h"])
    assert response.status_code == 202, response.text
    execution: str = response.json()["execution_id"]
    return execution


async def finished_run(api: AsyncTestClient[Any], tenant: dict[str, Any], execution: str) -> dict[str, Any]:
    """The execution's detail (``execution`` and ``steps``) once it has ended, polled over HTTP."""
    found: dict[str, Any] = {}

    async def ended() -> bool:
        response = await api.get(f"/api/workflows/executions/{execution}", headers=tenant["h"])
        assert response.status_code == 200, response.text
        found.update(response.json())
        return found["execution"]["status"] in TERMINAL

    await eventually(ended, timeout=RUN_SECONDS)
    return found


async def runs_of(api: AsyncTestClient[Any], tenant: dict[str, Any], workflow: str) -> list[dict[str, Any]]:
    """The workflow's executions (every one, newest first as the API lists them)."""
    response = await api.get(
        "/api/workflows/executions", params={"workflow_id": workflow, "limit": 100}, headers=tenant["h"]
    )
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["executions"]
    return runs


def steps_of(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An execution detail's steps by node id (first iteration)."""
    return {s["node_id"]: s for s in detail["steps"] if s["iteration"] == "0"}
