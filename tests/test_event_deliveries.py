"""Event delivery from the outside: one delivery per (event, handler), retries, the dead letter,
the deliveries API and redelivery, for two tenants."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import eventually, new_tenant
from tests.plugin_factory import FakePlugin, event_platform, table_plugin, unique


def delivery_plugin(name: str) -> FakePlugin:
    """Two handlers on one event: ``remember`` always works (idempotent by event id) and logs
    every run; ``fragile`` fails for ``fail-*`` notes and fails once for ``once-*`` notes."""
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

    async def remember(ctx: sdk.EventContext) -> None:
        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            session.add(Row(tenant_id=ctx.tenant_id, id=uuid.uuid4(), note=str(ctx.event_id), kind="run"))
            if (await session.execute(select(Row).where(Row.id == ctx.event_id))).first() is None:
                session.add(Row(tenant_id=ctx.tenant_id, id=ctx.event_id, note=ctx.payload["note"], kind="seen"))

    async def fragile(ctx: sdk.EventContext) -> None:
        note = ctx.payload["note"]
        if note.startswith("fail"):
            raise RuntimeError("the database password is hunter2")
        if note.startswith("once"):
            mark = uuid.uuid5(ctx.event_id, "mark")
            async with ctx.services.data.tenant(ctx.tenant_id) as session:
                if (await session.execute(select(Row).where(Row.id == mark))).first() is None:
                    session.add(Row(tenant_id=ctx.tenant_id, id=mark, note=note, kind="mark"))
                    failed = True
                else:
                    failed = False
            if failed:
                raise ValueError("first time fails")

    @post("/api/{name}/things/{{note:str}}", opt={{"permission": sdk.AUTHENTICATED}})
    async def make(note: str, tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        async with services.data.tenant(tenant.id) as session:
            await services.changes.emit(
                session, tenant_id=tenant.id, event="{name}.thing.made", payload={{"note": note}}
            )
            await services.changes.audit(
                session, sdk.Actor.of_request(request), tenant_id=tenant.id, action="{name}.thing.made"
            )
        return {{"note": note}}

    @sdk.hookimpl
    def businessos_routes():
        return [make]

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.thing.made")]

    @sdk.hookimpl
    def businessos_event_handlers():
        return [
            sdk.EventHandler("{name}.thing.made", remember),
            sdk.EventHandler("{name}.thing.made", fragile, name="fragile"),
        ]
    '''
    columns = 'sa.Column("note", sa.Text(), nullable=False), sa.Column("kind", sa.Text(), nullable=False)'
    return table_plugin(name, body, f"{name}_rows", columns)


@pytest.fixture
async def platform(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, AsyncTestClient[Any]]]:
    """The plugin installed, an API client and a running worker (3 attempts, 1 s sweeps)."""
    name = unique("dlv")
    async with event_platform(settings, tmp_path, delivery_plugin(name), event_max_attempts=3) as client:
        yield name, client


async def _deliveries(client: AsyncTestClient[Any], tenant: dict[str, Any], **params: str) -> list[dict[str, Any]]:
    response = await client.get("/api/events/deliveries", params=params, headers={"X-Tenant-ID": tenant["slug"]})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_each_handler_gets_its_own_delivery_retries_and_dead_letter(
    platform: tuple[str, AsyncTestClient[Any]],
) -> None:
    name, client = platform
    one, two = await new_tenant(client, "dlv-a"), await new_tenant(client, "dlv-b")
    for tenant in (one, two):
        await client.post(f"/api/modules/{name}/enable", headers={"X-Tenant-ID": tenant["slug"]})
    a = {"X-Tenant-ID": one["slug"]}
    for note in ("ok-1", "once-1", "fail-1"):
        assert (await client.post(f"/api/{name}/things/{note}", headers=a)).status_code == 201
    assert (await client.post(f"/api/{name}/things/ok-2", headers={"X-Tenant-ID": two["slug"]})).status_code == 201

    async def settled() -> bool:
        items = await _deliveries(client, one)
        return len(items) == 6 and all(i["status"] in ("succeeded", "dead") for i in items)

    # Two retries of the failing handler wait at most 2 s and 4 s (full jitter).
    await eventually(settled, timeout=30)
    items = await _deliveries(client, one)
    by_note: dict[tuple[str, str], dict[str, Any]] = {}
    events = {i["event_id"] for i in items}
    assert len(events) == 3 and {i["handler"] for i in items} == {f"{name}:remember", f"{name}:fragile"}
    for item in items:
        assert item["event"] == f"{name}.thing.made"
    # Which event is which: the remember handler of each event succeeded at its first attempt.
    for event_id in events:
        mine = {i["handler"].split(":")[1]: i for i in items if i["event_id"] == event_id}
        assert mine["remember"]["status"] == "succeeded" and mine["remember"]["attempts"] == 1
        by_note[(event_id, "fragile")] = mine["fragile"]
    fragile = sorted(by_note.values(), key=lambda i: (i["status"], i["attempts"]))
    # ok: 1 attempt; once: failed, then succeeded at the 2nd; fail: dead after 3, the error's type
    # recorded without its message.
    assert [(i["status"], i["attempts"]) for i in fragile] == [("dead", 3), ("succeeded", 1), ("succeeded", 2)]
    dead = fragile[0]
    assert dead["last_error"] == "RuntimeError" and "hunter2" not in str(items)

    # Filters, and the other tenant's view.
    assert [i["id"] for i in await _deliveries(client, one, status="dead")] == [dead["id"]]
    assert len(await _deliveries(client, one, event=dead["event_id"])) == 2
    assert len(await _deliveries(client, one, handler=f"{name}:fragile")) == 3
    assert len(await _deliveries(client, one, event=f"{name}.thing.made", limit="2")) == 2
    first = (await client.get("/api/events/deliveries", params={"limit": 4}, headers=a)).json()
    rest = (await client.get("/api/events/deliveries", params={"cursor": first["next_cursor"]}, headers=a)).json()
    assert len(first["items"]) == 4 and len(rest["items"]) == 2 and rest["next_cursor"] is None
    assert {i["id"] for i in first["items"]} | {i["id"] for i in rest["items"]} == {i["id"] for i in items}
    theirs = await _deliveries(client, two)
    assert len(theirs) == 2 and not {i["id"] for i in theirs} & {i["id"] for i in items}
    bad = await client.get("/api/events/deliveries", params={"status": "lost", "limit": 0}, headers=a)
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"status", "limit"}

    # Redelivery: another tenant's id is unknown; a dead one starts over and dies again.
    redeliver = f"/api/events/deliveries/{dead['id']}/redeliver"
    assert (await client.post(redeliver, headers={"X-Tenant-ID": two["slug"]})).status_code == 404
    assert (await client.post(f"/api/events/deliveries/{uuid.uuid4()}/redeliver", headers=a)).status_code == 404
    again = await client.post(redeliver, headers=a)
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "pending" and again.json()["attempts"] == 0

    async def dead_again() -> bool:
        now = [i for i in await _deliveries(client, one, status="dead") if i["id"] == dead["id"]]
        return bool(now) and now[0]["attempts"] == 3

    await eventually(dead_again, timeout=30)
    succeeded = next(i for i in fragile if i["status"] == "succeeded")
    again = await client.post(f"/api/events/deliveries/{succeeded['id']}/redeliver", headers=a)
    assert again.status_code == 202

    async def done_again() -> bool:
        now = [i for i in await _deliveries(client, one, status="succeeded") if i["id"] == succeeded["id"]]
        return bool(now) and now[0]["attempts"] == 1

    await eventually(done_again, timeout=10)
