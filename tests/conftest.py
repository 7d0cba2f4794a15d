"""Shared fixtures: real PostgreSQL and Redis, a fresh database per test session.

``DATABASE_URL`` / ``REDIS_URL`` name external servers when set (the database in the URL is only
used to create and drop the session's own database); otherwise the embedded servers are started
in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from kernel import sdk
from kernel.app import create_app, load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.plugins.loader import PluginSet
from kernel.runtime import open_kernel
from kernel.settings import Settings, load_settings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SECRET = "test-secret-key-for-the-businessos-suite-0123456789"


def _dsn(url: str) -> str:
    """A plain libpq-style DSN asyncpg accepts (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(owner database URL, Redis URL) of the servers the suite talks to."""
    data_dir = tmp_path_factory.mktemp("servers")
    env = {"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_SECRET_KEY": SECRET}
    for name in ("DATABASE_URL", "REDIS_URL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    embedded = EmbeddedServices(load_settings(env)).start()
    try:
        settings = embedded.resolved()
        assert settings.database_url and settings.redis_url
        yield settings.database_url, settings.redis_url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
async def database_url(servers: tuple[str, str]) -> AsyncIterator[str]:
    """A database created for this test session, migrated to the kernel's head."""
    base = servers[0]
    name = f"bos_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_dsn(base))
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    admin = await asyncpg.connect(_dsn(base))
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


def settings_for(database_url: str, redis_url: str, data_dir: Path, **env: str) -> Settings:
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_DATA_DIR": str(data_dir),
        "BUSINESSOS_PLUGINS": "",
        # Every test request comes from one address ("testclient"): per-IP limits would trip the
        # suite. Tests of rate limiting pass their own, low, values.
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        **env,
    }
    return load_settings(values)


@pytest.fixture(scope="session")
async def settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings on the session database with no plugins allowed; the kernel schema migrated."""
    result = settings_for(database_url, servers[1], tmp_path_factory.mktemp("data"))
    await migrate.upgrade(result, database_url, {})
    return result


# Owner tokens of the tenants made by new_tenant(), by slug and by id.
OWNER_TOKENS: dict[str, str] = {}


async def _act_as_owner(request: httpx.Request) -> None:
    """Requests naming a tenant made by new_tenant() carry its owner's access token, unless they
    bring credentials of their own. Tests of anonymous or cross-tenant access use explicit headers."""
    if "authorization" in request.headers or "x-api-key" in request.headers:
        return
    token = OWNER_TOKENS.get(request.headers.get("x-tenant-id", "").lower())
    if token:
        request.headers["authorization"] = f"Bearer {token}"


@asynccontextmanager
async def open_client(
    settings: Settings, plugins: PluginSet | None = None
) -> AsyncIterator[AsyncTestClient[Any]]:
    """An HTTP client on a freshly built app (lifespan included)."""
    app = create_app(settings, plugins or load_app_plugins(settings.plugins_allowlist))
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        client.event_hooks = {"request": [_act_as_owner], "response": []}
        yield client


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


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:  # noqa: ASYNC109
    """Wait until ``check()`` is true (for effects that cross processes), failing after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def new_tenant(client: AsyncTestClient[Any], prefix: str = "t", **extra: Any) -> dict[str, Any]:
    """Create a tenant with a unique slug and an owner; return the tenant's JSON plus the owner's
    ``access_token``, ``refresh_token``, ``user_id``, ``email`` and ``password``."""
    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    owner = {"email": f"owner-{slug}@example.com", "password": f"pw-{uuid.uuid4().hex}", "name": "Owner"}
    response = await client.post(
        "/api/tenants", json={"name": f"Tenant {slug}", "slug": slug, "owner": owner, **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    OWNER_TOKENS[slug] = OWNER_TOKENS[body["tenant"]["id"]] = body["access_token"]
    return {
        **body["tenant"],
        "access_token": body["access_token"],
        "refresh_token": body["refresh_token"],
        "user_id": body["user_id"],
        "email": owner["email"],
        "password": owner["password"],
    }
