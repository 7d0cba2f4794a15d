"""Declared shortcuts of a ``"*"`` handler: ``accepts`` (events it refuses get no delivery at all)
and ``batch`` (several deliveries of one tenant in one call; when that call fails, each delivery
is retried on its own with the single handler)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import eventually, new_tenant
from tests.plugin_factory import FakePlugin, event_platform, table_plugin, unique


def batch_plugin(name: str) -> FakePlugin:
    """``hear`` (one event) and ``hear_many`` (a batch) log each call as a row: ``single`` with
    the note, ``batch`` with the batch's notes joined. A batch holding a ``boom`` note fails after
    logging itself; ``accepts`` takes only the plugin's own event."""
    body = f'''
    import uuid

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
            session.add(Row(tenant_id=ctx.tenant_id, id=uuid.uuid4(), note=ctx.payload["note"], kind="single"))

    async def hear_many(contexts) -> None:
        notes = sorted(ctx.payload["note"] for ctx in contexts)
        tenant_id = contexts[0].tenant_id
        async with contexts[0].services.data.tenant(tenant_id) as session:
            session.add(Row(tenant_id=tenant_id, id=uuid.uuid4(), note=",".join(notes), kind="batch"))
        if any(note.startswith("boom") for note in notes):
            raise RuntimeError("the batch fails")

    @post("/api/{name}/things/{{notes:str}}", opt={{"permission": sdk.AUTHENTICATED}})
    async def make(notes: str, tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        async with services.data.tenant(tenant.id) as session:
            for note in notes.split(","):
                await services.changes.emit(
                    session, tenant_id=tenant.id, event="{name}.thing.made", payload={{"note": note}}
                )
        return {{"notes": notes}}

    @get("/api/{name}/heard", opt={{"permission": sdk.AUTHENTICATED}})
    async def heard(tenant: sdk.Tenant, services: sdk.Services) -> list:
        async with services.data.tenant(tenant.id) as session:
            return [[row.kind, row.note] for row in (await session.execute(select(Row))).scalars()]

    @sdk.hookimpl
    def businessos_routes():
        return [make, heard]

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.thing.made")]

    @sdk.hookimpl
    def businessos_event_handlers():
        return [
            sdk.EventHandler(
                "*", hear, name="hear", accepts=lambda event: event == "{name}.thing.made", batch=hear_many
            )
        ]
    '''
    columns = 'sa.Column("note", sa.Text(), nullable=False), sa.Column("kind", sa.Text(), nullable=False)'
    return table_plugin(name, body, f"{name}_rows", columns)


@pytest.fixture
async def platform(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, AsyncTestClient[Any]]]:
    name = unique("bat")
    async with event_platform(settings, tmp_path, batch_plugin(name)) as client:
        yield name, client


async def test_a_batch_handler_hears_a_tenants_events_together_and_refused_events_get_no_delivery(
    platform: tuple[str, AsyncTestClient[Any]],
) -> None:
    name, client = platform
    one, two = await new_tenant(client, "bat-a"), await new_tenant(client, "bat-b")
    a, b = {"X-Tenant-ID": one["slug"]}, {"X-Tenant-ID": two["slug"]}
    for headers in (a, b):
        assert (await client.post(f"/api/modules/{name}/enable", headers=headers)).status_code in (200, 201)
    # A kernel event the handler does not accept, then three events in one transaction.
    key = await client.post("/api/api-keys", json={"name": "k", "role": "viewer"}, headers=a)
    assert key.status_code == 201, key.text
    assert (await client.post(f"/api/{name}/things/x,y,z", headers=a)).status_code == 201
    assert (await client.post(f"/api/{name}/things/w", headers=b)).status_code == 201

    async def deliveries(headers: dict[str, str]) -> list[dict[str, Any]]:
        response = await client.get("/api/events/deliveries", params={"limit": 100}, headers=headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def settled(headers: dict[str, str], count: int) -> bool:
        items = await deliveries(headers)
        return len(items) == count and all(i["status"] == "succeeded" for i in items)

    await eventually(lambda: settled(a, 3), timeout=30)
    await eventually(lambda: settled(b, 1), timeout=30)
    # Only the accepted events have deliveries (the API key's event was dispatched before them).
    assert {i["event"] for i in await deliveries(a)} == {f"{name}.thing.made"}
    assert all(i["attempts"] == 1 for i in await deliveries(a))
    # The three events of tenant a reached the batch handler in one call; tenant b's one event,
    # alone, went to the single handler; neither tenant heard the other's.
    heard_a = sorted(map(tuple, (await client.get(f"/api/{name}/heard", headers=a)).json()))
    assert heard_a == [("batch", "x,y,z")]
    assert (await client.get(f"/api/{name}/heard", headers=b)).json() == [["single", "w"]]

    # A failing batch: each of its deliveries is retried on its own, with the single handler.
    assert (await client.post(f"/api/{name}/things/boom-1,boom-2", headers=a)).status_code == 201

    async def retried() -> bool:
        items = [i for i in await deliveries(a) if i["status"] == "succeeded"]
        return len(items) == 5

    await eventually(retried, timeout=30)
    items = await deliveries(a)
    assert sorted(i["attempts"] for i in items) == [1, 1, 1, 2, 2]
    heard_a = sorted(map(tuple, (await client.get(f"/api/{name}/heard", headers=a)).json()))
    assert heard_a == [("batch", "boom-1,boom-2"), ("batch", "x,y,z"), ("single", "boom-1"), ("single", "boom-2")]
