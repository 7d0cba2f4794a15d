"""A handler of ``"*"`` hears every event of a tenant that enabled its plugin: the plugin's own,
other plugins' and the kernel's, one delivery each, and nothing of other tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import eventually, new_tenant
from tests.plugin_factory import FakePlugin, event_platform, table_plugin, unique


def listener_plugin(name: str) -> FakePlugin:
    """``hear`` records each event it is handed, once per event id."""
    body = f'''
    from litestar import Request
    from sqlalchemy import Text, select
    from sqlalchemy.orm import Mapped, mapped_column

    Base = sdk.declarative_base()

    class Row(sdk.TenantScoped, Base):
        __tablename__ = "{name}_rows"
        note: Mapped[str] = mapped_column(Text)
        kind: Mapped[str] = mapped_column(Text)

    async def hear(ctx: sdk.EventContext) -> None:
        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            if (await session.execute(select(Row).where(Row.id == ctx.event_id))).first() is None:
                session.add(Row(tenant_id=ctx.tenant_id, id=ctx.event_id, note=ctx.event, kind="heard"))

    @post("/api/{name}/things/{{note:str}}", opt={{"permission": sdk.AUTHENTICATED}})
    async def make(note: str, tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        async with services.data.tenant(tenant.id) as session:
            await services.changes.emit(
                session, tenant_id=tenant.id, event="{name}.thing.made", payload={{"note": note}}
            )
        return {{"note": note}}

    @get("/api/{name}/heard", opt={{"permission": sdk.AUTHENTICATED}})
    async def heard(tenant: sdk.Tenant, services: sdk.Services) -> list:
        async with services.data.tenant(tenant.id) as session:
            return [row.note for row in (await session.execute(select(Row))).scalars()]

    @sdk.hookimpl
    def businessos_routes():
        return [make, heard]

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.thing.made")]

    @sdk.hookimpl
    def businessos_event_handlers():
        return [sdk.EventHandler("*", hear, name="hear")]
    '''
    columns = 'sa.Column("note", sa.Text(), nullable=False), sa.Column("kind", sa.Text(), nullable=False)'
    return table_plugin(name, body, f"{name}_rows", columns)


@pytest.fixture
async def platform(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, AsyncTestClient[Any]]]:
    name = unique("any")
    async with event_platform(settings, tmp_path, listener_plugin(name)) as client:
        yield name, client


async def test_a_handler_of_every_event_hears_each_event_of_its_tenant_once(
    platform: tuple[str, AsyncTestClient[Any]],
) -> None:
    name, client = platform
    one, two = await new_tenant(client, "any-a"), await new_tenant(client, "any-b")
    a, b = {"X-Tenant-ID": one["slug"]}, {"X-Tenant-ID": two["slug"]}
    assert (await client.post(f"/api/modules/{name}/enable", headers=a)).status_code in (200, 201)
    for note in ("x", "y"):
        assert (await client.post(f"/api/{name}/things/{note}", headers=a)).status_code == 201
    # A kernel event after the module is on: a new API key.
    key = await client.post("/api/api-keys", json={"name": "k", "role": "viewer"}, headers=a)
    assert key.status_code == 201, key.text

    async def heard_all() -> bool:
        notes = (await client.get(f"/api/{name}/heard", headers=a)).json()
        return sorted(notes).count(f"{name}.thing.made") == 2 and "kernel.api_key.created" in notes

    await eventually(heard_all, timeout=30)
    deliveries = (await client.get("/api/events/deliveries", params={"limit": 100}, headers=a)).json()["items"]
    per_event: dict[str, int] = {}
    for item in deliveries:
        assert item["handler"] == f"{name}:hear"
        per_event[item["event_id"]] = per_event.get(item["event_id"], 0) + 1
    assert per_event and set(per_event.values()) == {1}
    # The other tenant never enabled the plugin: it hears nothing and sees no delivery.
    assert (await client.get(f"/api/{name}/heard", headers=b)).status_code == 404
    assert (await client.get("/api/events/deliveries", headers=b)).json()["items"] == []
