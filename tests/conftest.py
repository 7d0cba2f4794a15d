"""Shared fixtures: real PostgreSQL and Redis, a fresh database per test session.

``DATABASE_URL`` / ``REDIS_URL`` name external servers when set (the database in the URL is only
used to create and drop the session's own database); otherwise the embedded servers are started
in a temporary directory.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.app import load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.runtime import open_kernel
from kernel.settings import Settings

# The suite is built from the plugin authors' test kit (kernel.testing), as its helpers; it keeps
# fixtures of its own (no plugins by default, tenants acting as their owner) and the names its
# modules import from here.
from kernel.testing import (
    OWNER_TOKENS,
    SECRET,
    create_database,
    drop_database,
    eventually,
    new_tenant,
    open_client,
    running_servers,
    settings_for,
)
from kernel.testing import dsn as _dsn

__all__ = [
    "OWNER_TOKENS",
    "SECRET",
    "_dsn",
    "eventually",
    "new_tenant",
    "node_context",
    "open_client",
    "other_process",
    "settings_for",
]


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(owner database URL, Redis URL) of the servers the suite talks to."""
    with running_servers(tmp_path_factory.mktemp("servers")) as urls:
        yield urls


@pytest.fixture(scope="session")
async def database_url(servers: tuple[str, str]) -> AsyncIterator[str]:
    """A database created for this test session, migrated to the kernel's head."""
    url = await create_database(servers[0])
    yield url
    await drop_database(servers[0], url)


@pytest.fixture(scope="session")
async def settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings on the session database with no plugins allowed; the kernel schema migrated."""
    result = settings_for(database_url, servers[1], tmp_path_factory.mktemp("data"))
    await migrate.upgrade(result, database_url, {})
    return result


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(settings) as c:
        yield c


@asynccontextmanager
async def other_process(settings: Settings) -> AsyncIterator[Kernel]:
    """The kernel's services opened in the test's own event loop, standing in for another process
    (the app under test runs in the test client's loop): changes made here reach the app only the
    way another process's would, through PostgreSQL and Redis."""
    async with open_kernel(settings, load_app_plugins(settings.plugins_allowlist)) as kernel:
        await asyncio.wait_for(kernel.bus.subscribed.wait(), 5)
        yield kernel


def node_context(
    kernel: Kernel, plugin: str, tenant_id: uuid.UUID, *, step_id: str = "step-1", attempt: int = 1
) -> sdk.NodeContext:
    """What a workflow engine hands a node of ``plugin``: one step of a fresh run, as ``workflow``."""
    return sdk.NodeContext(
        tenant_id=tenant_id,
        execution_id=uuid.uuid4(),
        step_id=step_id,
        attempt=attempt,
        actor=sdk.Actor.system("workflow"),
        services=kernel.services(plugin),
    )
