from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.runtime import DatabaseNotReady, prepare_database
from kernel.settings import Settings
from kernel.testing import create_database, drop_database
from tests.conftest import _dsn


@pytest.fixture
async def empty_database(servers: tuple[str, str]) -> AsyncIterator[str]:
    url = await create_database(servers[0])
    yield url
    await drop_database(servers[0], url)


async def test_an_external_database_behind_the_code_is_refused_with_the_command(
    empty_database: str, settings: Settings
) -> None:
    plugins = load_app_plugins(frozenset())
    with pytest.raises(DatabaseNotReady, match="businessos migrate"):
        await prepare_database(settings, plugins, empty_database, migrate_now=False)


async def test_a_fresh_database_ends_with_every_branch_at_head(
    empty_database: str, settings: Settings
) -> None:
    assert await migrate.pending_heads(empty_database, {}) == ["kernel"]
    await migrate.upgrade(settings, empty_database, {})
    assert await migrate.pending_heads(empty_database, {}) == []
    # Upgrading again changes nothing.
    await migrate.upgrade(settings, empty_database, {})
    conn = await asyncpg.connect(_dsn(empty_database))
    try:
        versions = [r["version_num"] for r in await conn.fetch("select version_num from alembic_version")]
        assert versions == ScriptDirectory.from_config(migrate.alembic_config({})).get_heads()
        owner = await conn.fetchval(
            "select pg_get_userbyid(relowner) from pg_class where relname = 'tenants'"
        )
        assert owner != settings.runtime_role
    finally:
        await conn.close()
