"""Workflows and the plan: starts past the monthly runs are refused with 402 naming the limit,
and the plan's concurrency caps how many runs of a tenant the engine claims at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from plugins.workflows.engine import Engine, EngineConfig
from tests.conftest import new_tenant, open_client, other_process
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

PROVIDER = """
USED: dict[str, int] = {}


class Plans(sdk.EntitlementProvider):
    plans = ("free", "tiny")

    async def check(self, query: sdk.EntitlementQuery, services: sdk.Services) -> sdk.Entitlement:
        if query.plan != "tiny":
            return sdk.Entitlement(allowed=True)
        if query.feature == "workflows.executions":
            used = USED.get(str(query.tenant_id), 0)
            if used + query.amount > 2:
                return sdk.Entitlement(allowed=False, remaining=0, limit="workflow_runs",
                                       detail="2 workflow runs a month", lift="upgrade to the free plan")
            USED[str(query.tenant_id)] = used + query.amount
            return sdk.Entitlement(allowed=True, remaining=2 - used - query.amount)
        if query.feature == "workflows.concurrency":
            return sdk.Entitlement(allowed=True, remaining=1)
        return sdk.Entitlement(allowed=True)


@sdk.hookimpl
def businessos_entitlements():
    return Plans()
"""


@pytest.fixture(scope="module")
def billing() -> str:
    return unique("wfbill")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory, billing: str) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("wf-limits")
    with installed(path, FakePlugin(name=billing, source=plugin_source(billing, PROVIDER))):
        yield path


@pytest.fixture(scope="module")
async def scoped(settings: Settings, billing: str, plugin_dir: Path) -> Settings:
    result = msgspec.structs.replace(settings, plugins_allowlist=frozenset({billing, "workflows"}))
    plugins = load_app_plugins(result.plugins_allowlist)
    assert settings.database_url
    await migrate.upgrade(result, settings.database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def api(scoped: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(scoped, load_app_plugins(scoped.plugins_allowlist)) as client:
        yield client


async def test_runs_past_the_plan_are_refused_and_its_concurrency_is_kept(
    api: AsyncTestClient[Any], scoped: Settings
) -> None:
    tiny = await new_tenant(api, "wf-tiny", plan="tiny")
    h = {"X-Tenant-ID": tiny["slug"]}
    assert (await api.post("/api/modules/workflows/enable", headers=h)).status_code == 200
    graph = {"nodes": [{"id": "start", "node": "workflows.manual"},
                       {"id": "a", "node": "workflows.set", "config": {"values": {"a": 1}}}],
             "edges": [{"source": "start", "target": "a"}]}
    wid = (await api.post("/api/workflows", json={"name": "w", "graph": graph}, headers=h)).json()["id"]
    assert (await api.post(f"/api/workflows/{wid}/publish", headers=h)).status_code == 201
    runs = [await api.post(f"/api/workflows/{wid}/run", json={}, headers=h) for _ in range(3)]
    assert [r.status_code for r in runs] == [202, 202, 402]
    refused = runs[2].json()
    assert runs[2].headers["content-type"].startswith("application/problem+json")
    assert refused["limit"] == "workflow_runs" and "upgrade" in refused["lift"]

    started = {r.json()["execution_id"] for r in runs[:2]}
    async with other_process(scoped) as kernel:
        engine = Engine(kernel.services("workflows"), config=EngineConfig(heartbeat_seconds=0.05))
        claimed = []
        while (claim := await engine.claim()) is not None:
            claimed.append(claim)
        mine = [c for c in claimed if str(c[1]) in started]
        assert len(mine) == 1  # the plan's workflows.concurrency is 1
        assert all(isinstance(c[0], uuid.UUID) for c in claimed)
