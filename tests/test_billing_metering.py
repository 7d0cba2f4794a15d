"""Billing meters kernel events through its "*" handler, with a real worker delivering them: a
tenant's subscription is made when ``kernel.tenant.created`` is handled (before anyone reads it),
and members joining or leaving meter active seats; the other tenant's figures are its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.events.deliveries import QUEUE
from kernel.jobs.worker import build_worker
from tests.conftest import _dsn, eventually, new_tenant, open_client, settings_for


@pytest.fixture(scope="module")
async def api(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = settings_for(database_url, servers[1], tmp_path_factory.mktemp("metering"), BUSINESSOS_PLUGINS="billing")
    plugins = load_app_plugins(settings.plugins_allowlist)
    await migrate.upgrade(settings, database_url, plugins.migration_folders())
    scoped = msgspec.structs.replace(settings, event_sweep_seconds=1)
    worker = build_worker(scoped, plugins, servers[1], queue=QUEUE, cron_jobs=False)
    running = asyncio.create_task(worker.main())
    try:
        async with open_client(scoped, plugins) as client:
            yield client
    finally:
        await worker.close()
        running.cancel()


async def subscriptions_of(database_url: str, tenant_id: str) -> list[str]:
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        rows = await conn.fetch("select plan_code || ':' || status as s from billing_subscriptions "
                                "where tenant_id = $1", uuid.UUID(tenant_id))
    finally:
        await conn.close()
    return [r["s"] for r in rows]


async def test_sign_up_event_makes_the_subscription_and_members_meter_seats(
    api: AsyncTestClient[Any], database_url: str
) -> None:
    a, b = await new_tenant(api, "meter", plan="pro"), await new_tenant(api, "meter")

    async def subscribed() -> bool:
        return await subscriptions_of(database_url, a["id"]) == ["pro:trialing"]

    # Nobody has read the subscription: the handler of kernel.tenant.created made it.
    await eventually(subscribed, timeout=20)
    h = {"X-Tenant-ID": a["slug"]}
    for n in range(2):
        email = f"m{n}-{uuid.uuid4().hex[:8]}@example.com"
        invited = await api.post("/api/tenant/invitations", json={"email": email, "role": "member"}, headers=h)
        assert invited.status_code == 201, invited.text
        joined = await api.post("/api/auth/register", headers=h, json={
            "email": email, "password": f"pw-{uuid.uuid4().hex}", "invitation_token": invited.json()["token"]})
        assert joined.status_code == 201, joined.text

    async def seats(tenant: dict[str, Any]) -> str | None:
        body = (await api.get("/api/billing/usage", headers={"X-Tenant-ID": tenant["slug"]})).json()
        return next((m["used"] for m in body["metrics"] if m["metric"] == "seats"), None)

    async def three_seats() -> bool:
        return await seats(a) == "3"

    await eventually(three_seats, timeout=20)
    assert await seats(b) in (None, "1")

    async def delivered() -> bool:
        # The handler's work commits before its delivery is marked done: wait for both.
        found = (await api.get("/api/events/deliveries", params={"status": "succeeded", "limit": 200},
                               headers=h)).json()["items"]
        return {"kernel.tenant.created", "kernel.member.added"} <= {d["event"] for d in found}

    await eventually(delivered, timeout=20)
    deliveries = (await api.get("/api/events/deliveries", params={"limit": 200}, headers=h)).json()["items"]
    assert {d["handler"] for d in deliveries} == {"billing:meter"}
