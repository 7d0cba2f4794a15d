"""``Database.read``: the fast read path keeps row-level security, stays read-only, and hands
clean connections back to its pool after errors and cancellations."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import bindparam, select, text

from kernel.db.reader import Query
from kernel.identity.models import MembershipRow
from kernel.settings import Settings
from tests.conftest import new_tenant, other_process

MEMBERS = Query(select(MembershipRow.tenant_id, MembershipRow.user_id).order_by(MembershipRow.user_id))
ONE_MEMBER = Query(select(MembershipRow.user_id).where(MembershipRow.user_id == bindparam("user_id")))


async def test_reads_only_the_tenants_rows(client: AsyncTestClient[Any], settings: Settings) -> None:
    a, b = await new_tenant(client, "ra"), await new_tenant(client, "rb")
    async with other_process(settings) as kernel:
        async with kernel.db.read(uuid.UUID(a["id"])) as reader:
            rows = await reader.fetch(MEMBERS)
            assert [str(r["user_id"]) for r in rows] == [a["user_id"]]
            assert {str(r["tenant_id"]) for r in rows} == {a["id"]}
            # another tenant's row is invisible even when asked for by id
            assert await reader.fetchrow(ONE_MEMBER, user_id=uuid.UUID(b["user_id"])) is None
        async with kernel.db.read(uuid.UUID(b["id"])) as reader:
            assert str(await reader.fetchval(ONE_MEMBER, user_id=uuid.UUID(b["user_id"]))) == b["user_id"]
        async with kernel.db.read(uuid.uuid4()) as reader:  # a tenant that does not exist sees nothing
            assert await reader.fetch(MEMBERS) == []


async def test_is_read_only_and_recovers_from_errors(client: AsyncTestClient[Any], settings: Settings) -> None:
    a = await new_tenant(client, "ro")
    tenant_id = uuid.UUID(a["id"])
    async with other_process(settings) as kernel:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            async with kernel.db.read(tenant_id) as reader:
                await reader.fetch(Query(text("delete from memberships")))
        with pytest.raises(TypeError, match="user_id"):
            async with kernel.db.read(tenant_id) as reader:
                await reader.fetch(ONE_MEMBER)  # a missing parameter is named
        with pytest.raises(RuntimeError):
            async with kernel.db.read(tenant_id) as reader:
                raise RuntimeError("the handler failed")
        for _ in range(kernel.settings.db_pool_size + 2):  # every pooled connection came back usable
            async with kernel.db.read(tenant_id) as reader:
                assert len(await reader.fetch(MEMBERS)) == 1


async def test_cancelled_reads_leave_no_transaction_behind(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    a, b = await new_tenant(client, "ca"), await new_tenant(client, "cb")

    async with other_process(settings) as kernel:

        async def slow() -> None:
            async with kernel.db.read(uuid.UUID(a["id"])) as reader:
                await reader.fetch(Query(text("select pg_sleep(5)")))

        tasks = [asyncio.create_task(slow()) for _ in range(3)]
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The next reads, on whatever connections the pool hands out, see only their own tenant.
        for _ in range(kernel.settings.db_pool_size + 2):
            async with kernel.db.read(uuid.UUID(b["id"])) as reader:
                assert [str(r["user_id"]) for r in await reader.fetch(MEMBERS)] == [b["user_id"]]
