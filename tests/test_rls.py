"""Tenant isolation is enforced by PostgreSQL itself, through the runtime role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from kernel.db.urls import runtime_url
from kernel.settings import Settings
from tests.conftest import _dsn


@pytest.fixture
async def owner(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_dsn(database_url))
    yield conn
    await conn.close()


@pytest.fixture
async def runtime(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    url = runtime_url(settings, database_url).render_as_string(hide_password=False)
    conn = await asyncpg.connect(_dsn(url))
    yield conn
    await conn.close()


async def _two_tenants_with_modules(runtime: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    ids = []
    for name in ("a", "b"):
        tenant = uuid.uuid4()
        await runtime.execute(
            "insert into tenants (id, name, slug) values ($1, $2, $3)", tenant, name, f"rls-{tenant.hex[:12]}"
        )
        async with runtime.transaction():
            await runtime.execute("select set_config('app.tenant_id', $1, true)", str(tenant))
            await runtime.execute(
                "insert into tenant_modules (tenant_id, id, plugin, enabled) values ($1, $2, $3, true)",
                tenant,
                uuid.uuid4(),
                f"plugin_of_{name}",
            )
        ids.append(tenant)
    return ids[0], ids[1]


async def test_runtime_role_cannot_bypass_rls_and_owns_nothing(runtime: asyncpg.Connection) -> None:
    role = await runtime.fetchrow(
        "select rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb"
        " from pg_roles where rolname = current_user"
    )
    assert role is not None
    assert not role["rolsuper"] and not role["rolbypassrls"]
    assert not role["rolcreaterole"] and not role["rolcreatedb"]
    owned = await runtime.fetchval(
        """select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = 'public' and pg_get_userbyid(c.relowner) = current_user"""
    )
    assert owned == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime.execute("create table sneaky (id int)")


async def test_every_tenant_table_has_forced_rls_and_a_tenant_leading_key(owner: asyncpg.Connection) -> None:
    tables = await owner.fetch(
        """select c.relname, c.relrowsecurity, c.relforcerowsecurity,
                  (select count(*) from pg_policy p where p.polrelid = c.oid) as policies,
                  (select a.attname from pg_index i
                     join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                    where i.indrelid = c.oid and i.indisprimary) as pk_first,
                  (select a.attnotnull from pg_attribute a
                    where a.attrelid = c.oid and a.attname = 'tenant_id') as tenant_not_null
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'public' and c.relkind in ('r', 'p')
              and exists (select 1 from pg_attribute a
                           where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)"""
    )
    assert tables, "expected at least the kernel's tenant tables"
    for t in tables:
        name = t["relname"]
        assert t["relrowsecurity"], f"{name}: row-level security not enabled"
        assert t["relforcerowsecurity"], f"{name}: row-level security not forced"
        assert t["policies"] >= 1, f"{name}: no policy"
        assert t["pk_first"] == "tenant_id", f"{name}: primary key does not lead with tenant_id"
        assert t["tenant_not_null"], f"{name}: tenant_id is nullable"


async def test_without_a_tenant_setting_nothing_is_visible(runtime: asyncpg.Connection) -> None:
    await _two_tenants_with_modules(runtime)
    assert await runtime.fetchval("select count(*) from tenant_modules") == 0
    async with runtime.transaction():
        # An emptied setting (what remains after a transaction-local set_config) also fails closed.
        await runtime.execute("select set_config('app.tenant_id', '', true)")
        assert await runtime.fetchval("select count(*) from tenant_modules") == 0


async def test_one_connection_alternating_tenants_never_sees_the_other(runtime: asyncpg.Connection) -> None:
    a, b = await _two_tenants_with_modules(runtime)
    for _ in range(5):
        for tenant, other in ((a, b), (b, a)):
            async with runtime.transaction():
                await runtime.execute("select set_config('app.tenant_id', $1, true)", str(tenant))
                rows = await runtime.fetch("select tenant_id from tenant_modules")
                assert rows and {r["tenant_id"] for r in rows} == {tenant}
                # Filtering explicitly for the other tenant still finds nothing.
                assert (
                    await runtime.fetchval("select count(*) from tenant_modules where tenant_id = $1", other)
                    == 0
                )
            # The setting ends with the transaction: the next user of the connection sees nothing.
            assert await runtime.fetchval("select count(*) from tenant_modules") == 0


async def test_writes_into_another_tenant_are_refused(runtime: asyncpg.Connection) -> None:
    a, b = await _two_tenants_with_modules(runtime)
    async with runtime.transaction():
        await runtime.execute("select set_config('app.tenant_id', $1, true)", str(a))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with runtime.transaction():
                await runtime.execute(
                    "insert into tenant_modules (tenant_id, id, plugin, enabled) values ($1, $2, 'x', true)",
                    b,
                    uuid.uuid4(),
                )
        # Moving one's own row to the other tenant is refused by WITH CHECK too.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with runtime.transaction():
                await runtime.execute("update tenant_modules set tenant_id = $1", b)
        # Updates and deletes aimed at the other tenant touch nothing.
        assert await runtime.execute("delete from tenant_modules where tenant_id = $1", b) == "DELETE 0"
    async with runtime.transaction():
        await runtime.execute("select set_config('app.tenant_id', $1, true)", str(b))
        assert await runtime.fetchval("select count(*) from tenant_modules") == 1


async def test_pool_of_one_connection_keeps_tenants_apart(settings: Settings, database_url: str) -> None:
    """Through the kernel's own Database helper, on a pool that has a single connection."""
    from sqlalchemy import text

    from kernel.db.engine import Database

    db = Database(runtime_url(settings, database_url), pool_size=1)
    try:
        async with db.global_() as session:
            ids = [uuid.uuid4(), uuid.uuid4()]
            for t in ids:
                await session.execute(
                    text("insert into tenants (id, name, slug) values (:id, 'p', :slug)"),
                    {"id": t, "slug": f"pool-{t.hex[:12]}"},
                )
        for t in ids:
            async with db.tenant(t) as session:
                await session.execute(
                    text(
                        "insert into tenant_modules (tenant_id, id, plugin, enabled)"
                        " values (:t, :i, 'p', true)"
                    ),
                    {"t": t, "i": uuid.uuid4()},
                )
        for _ in range(10):
            for t in ids:
                async with db.tenant(t) as session:
                    seen = set(
                        (await session.execute(text("select tenant_id from tenant_modules"))).scalars()
                    )
                    assert seen == {t}
            async with db.global_() as session:
                assert (await session.execute(text("select count(*) from tenant_modules"))).scalar_one() == 0
    finally:
        await db.dispose()
