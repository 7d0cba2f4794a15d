"""A pytest plugin for plugin authors: a running platform with your plugin, a tenant, a client.

Load it from your ``conftest.py``::

    pytest_plugins = ["kernel.testing"]

and write tests against the fixtures below (``pip install "businessos[testing]"`` brings pytest,
pytest-asyncio and httpx). The platform runs on the embedded PostgreSQL and Redis, or on the
servers ``DATABASE_URL`` / ``REDIS_URL`` name; each test session gets a database of its own,
migrated (kernel and plugins), and dropped at the end.

Fixtures:

- ``businessos_plugins`` (session): the plugins to load; every installed one unless you override
  it in your conftest (``return frozenset({"my_plugin"})``).
- ``businessos_env`` (session): more settings of the platform, as environment names; override it,
  e.g. ``{"BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32"}`` so that ``services.http`` may call
  the local server your tests start (outbound calls to loopback are refused otherwise).
- ``businessos_settings`` (session): the :class:`~kernel.settings.Settings` of that platform.
- ``businessos_client`` (test): a Litestar ``AsyncTestClient`` on a freshly started app.
- ``businessos_tenant`` (test): a new tenant with its owner, your plugins enabled for it.
- ``businessos_make_tenant`` (test): makes more such tenants (``await businessos_make_tenant()``).
- ``businessos_api_key`` (test): an admin API key of that tenant.

The helpers the fixtures are made of (:func:`open_client`, :func:`new_tenant`,
:func:`eventually`, ...) are public too, for tests that need two tenants or their own app;
:func:`open_services` and :func:`node_context` run a node the way the workflow engine would;
:func:`start_worker_process` runs ``businessos worker`` as a process a test can SIGKILL.

The module is loaded explicitly rather than through a ``pytest11`` entry point: an entry point
would add these fixtures to every pytest run of any environment where BusinessOS is installed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from kernel.app import create_app, load_app_plugins
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.plugins.contract import NodeContext
from kernel.plugins.loader import ENTRY_POINT_GROUP, PluginSet
from kernel.plugins.services import Actor, Services
from kernel.runtime import open_kernel
from kernel.settings import Settings, load_settings

__all__ = [
    "OWNER_TOKENS",
    "SECRET",
    "ApiKey",
    "Settings",
    "TenantFactory",
    "TestTenant",
    "TestWorker",
    "act_as_owner",
    "businessos_api_key",
    "businessos_client",
    "businessos_database_url",
    "businessos_env",
    "businessos_make_tenant",
    "businessos_plugins",
    "businessos_servers",
    "businessos_settings",
    "businessos_tenant",
    "create_database",
    "drop_database",
    "dsn",
    "eventually",
    "new_tenant",
    "node_context",
    "open_client",
    "open_services",
    "platform_settings",
    "running_servers",
    "running_worker",
    "settings_for",
    "start_worker_process",
]

# litellm would fetch its price list from the internet at import; tests use the bundled one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

T = TypeVar("T")

SECRET = "test-secret-key-for-the-businessos-suite-0123456789"
"""The platform secret of test platforms (never use it for a real one)."""


def dsn(url: str) -> str:
    """A plain libpq-style DSN asyncpg accepts (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextmanager
def running_servers(data_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """(owner database URL, Redis URL): the servers ``DATABASE_URL`` / ``REDIS_URL`` in ``env``
    (the process environment by default) name, else embedded ones started under ``data_dir``."""
    env = os.environ if env is None else env
    values = {"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_SECRET_KEY": SECRET}
    values.update({name: env[name] for name in ("DATABASE_URL", "REDIS_URL") if env.get(name)})
    embedded = EmbeddedServices(load_settings(values)).start()
    try:
        settings = embedded.resolved()
        assert settings.database_url and settings.redis_url
        yield settings.database_url, settings.redis_url
    finally:
        embedded.stop()


async def create_database(base_url: str) -> str:
    """A new, empty database on the server of ``base_url`` (a role that may create databases);
    returns its URL."""
    name = f"bos_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn(base_url))
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(base_url: str, url: str) -> None:
    """Drop the database of ``url`` (made by :func:`create_database` on ``base_url``'s server)."""
    name = make_url(url).database
    admin = await asyncpg.connect(dsn(base_url))
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


def settings_for(database_url: str, redis_url: str, data_dir: Path, **env: str) -> Settings:
    """Settings of a test platform on those servers: no plugins unless ``BUSINESSOS_PLUGINS`` is
    given, rate limits out of the way (every test request comes from one address)."""
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_DATA_DIR": str(data_dir),
        "BUSINESSOS_PLUGINS": "",
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        **env,
    }
    return load_settings(values)


async def platform_settings(
    database_url: str, redis_url: str, data_dir: Path, plugins: Iterable[str], **env: str
) -> Settings:
    """Settings of a platform with ``plugins`` allowed and loaded, the kernel's and their
    migrations applied (a plugin that fails to load fails with the loader's reason): for a test
    module that wants a platform of its own (``businessos_settings`` is one per test session)."""
    allowed = ",".join(sorted(plugins))
    settings = settings_for(database_url, redis_url, data_dir, **{**env, "BUSINESSOS_PLUGINS": allowed})
    loaded = load_app_plugins(settings.plugins_allowlist)
    broken = {n: r.reason if r else "not installed" for n in plugins if not (r := loaded.get(n)) or not r.active}
    if broken:
        raise AssertionError(f"plugins did not load: {broken}")
    await migrate.upgrade(settings, database_url, loaded.migration_folders())
    return settings


OWNER_TOKENS: dict[str, str] = {}
"""Owner access tokens of the tenants :func:`new_tenant` made, by slug and by id."""


async def act_as_owner(request: httpx.Request) -> None:
    """An httpx request hook: a request naming (``X-Tenant-ID``) a tenant made by
    :func:`new_tenant` carries its owner's token, unless it brings credentials of its own."""
    if "authorization" in request.headers or "x-api-key" in request.headers:
        return
    token = OWNER_TOKENS.get(request.headers.get("x-tenant-id", "").lower())
    if token:
        request.headers["authorization"] = f"Bearer {token}"


@asynccontextmanager
async def open_client(
    settings: Settings, plugins: PluginSet | None = None, *, as_owner: bool = True
) -> AsyncIterator[AsyncTestClient[Any]]:
    """An HTTP client on a freshly built app (its lifespan included). With ``as_owner``, requests
    act as the owner of the tenant they name (see :func:`act_as_owner`)."""
    app = create_app(settings, plugins or load_app_plugins(settings.plugins_allowlist))
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        client.event_hooks = {"request": [act_as_owner] if as_owner else [], "response": []}
        yield client


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


@asynccontextmanager
async def open_services(settings: Settings, plugin: str) -> AsyncIterator[Services]:
    """``plugin``'s facade (``sdk.Services``) on the test platform of ``settings``, opened in the
    test's own event loop (the app under test runs in the client's): what a node or job gets."""
    async with open_kernel(settings, load_app_plugins(settings.plugins_allowlist)) as kernel:
        yield kernel.services(plugin)


def node_context(
    services: Services, tenant_id: uuid.UUID | str, *, step_id: str = "step-1", attempt: int = 1,
    execution_id: uuid.UUID | None = None,
) -> NodeContext:
    """What the workflow engine hands a node: one step of a run (a fresh one unless
    ``execution_id`` is given), acting as ``workflow``."""
    return NodeContext(
        tenant_id=uuid.UUID(str(tenant_id)), execution_id=execution_id or uuid.uuid4(), step_id=step_id,
        attempt=attempt, actor=Actor.system("workflow"), services=services,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:  # noqa: ASYNC109
    """Wait until ``check()`` is true (for effects that cross processes), failing after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class TestWorker:
    """A job worker running beside the test's app (see :func:`running_worker`)."""

    __test__ = False

    settings: Settings

    async def enqueue(
        self, job: str, *, tenant_id: str | uuid.UUID | None = None, payload: dict[str, Any] | None = None
    ) -> None:
        """Put a plugin's job (``<plugin>.<job>``) on the worker's queue now, as a schedule's
        tick or ``services.jobs.enqueue`` would (a sweeper a test wants to run at once, say)."""
        from arq.connections import ArqRedis, RedisSettings, create_pool

        from kernel.events.deliveries import QUEUE
        from kernel.jobs.facade import enqueue_job

        assert self.settings.redis_url
        queue: ArqRedis = await create_pool(RedisSettings.from_dsn(self.settings.redis_url))
        try:
            await enqueue_job(
                queue, QUEUE, job, tenant_id=uuid.UUID(str(tenant_id)) if tenant_id else None, payload=payload or {}
            )
        finally:
            await queue.aclose()


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[TestWorker]:
    """The platform's job worker in this event loop, as ``businessos worker`` runs it: the outbox
    dispatcher, event deliveries, plugin jobs, the delivery sweeper and schedules. Leaving the
    block stops it, like killing the process: work it had claimed stays claimed until its lease
    expires."""
    from kernel.events.deliveries import QUEUE
    from kernel.jobs.worker import build_worker

    assert settings.redis_url
    plugins = load_app_plugins(settings.plugins_allowlist)
    worker = build_worker(settings, plugins, settings.redis_url, queue=QUEUE, cron_jobs=False)
    task = asyncio.create_task(worker.main())
    try:
        yield TestWorker(settings)
    finally:
        in_hand = [task, *worker.tasks.values()]
        for running in in_hand:
            running.cancel()
        await asyncio.gather(*in_hand, return_exceptions=True)
        worker.tasks.clear()  # cancelled above: close() would re-raise their cancellation
        await worker.close()


def start_worker_process(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``businessos worker`` as a process of its own (``env`` is its whole environment), its output
    appended to ``log``: for tests that SIGKILL a worker and start another, as a crash would."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "kernel.cli", "worker"], env=dict(env), stdout=out, stderr=out)


# -- fixtures ----------------------------------------------------------------------------------
# Session fixtures are synchronous, so they work whatever event-loop scope the author's
# pytest-asyncio configuration picks: their async steps run to completion on a loop of their own,
# in a thread of their own (so that no loop of pytest-asyncio's is replaced or closed).


def _run(step: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, step).result()


@dataclass(frozen=True)
class TestTenant:
    """A tenant made for one test, and its owner."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    id: str
    slug: str
    name: str
    plan: str
    owner_id: str
    owner_email: str
    owner_password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        """Headers of a request as the owner: ``X-Tenant-ID`` and the bearer token."""
        return {"X-Tenant-ID": self.slug, "Authorization": f"Bearer {self.access_token}"}


@dataclass(frozen=True)
class ApiKey:
    """An API key of the test tenant."""

    id: str
    key: str
    tenant: TestTenant

    @property
    def headers(self) -> dict[str, str]:
        """Headers of a request made with the key."""
        return {"X-Tenant-ID": self.tenant.slug, "X-API-Key": self.key}


@pytest.fixture(scope="session")
def businessos_plugins() -> frozenset[str]:
    """The plugins the platform loads: every installed one. Override it to pick yours."""
    return frozenset(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


@pytest.fixture(scope="session")
def businessos_env() -> dict[str, str]:
    """More settings of the test platform, as environment names (none by default). Override it,
    e.g. to let ``services.http`` reach your local test server:
    ``return {"BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32"}``."""
    return {}


@pytest.fixture(scope="session")
def businessos_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(owner database URL, Redis URL) of the servers the tests talk to."""
    with running_servers(tmp_path_factory.mktemp("businessos-servers")) as urls:
        yield urls


@pytest.fixture(scope="session")
def businessos_database_url(businessos_servers: tuple[str, str]) -> Iterator[str]:
    """A database of this test session's own, dropped at its end."""
    url = _run(create_database(businessos_servers[0]))
    try:
        yield url
    finally:
        _run(drop_database(businessos_servers[0], url))


@pytest.fixture(scope="session")
def businessos_settings(
    businessos_plugins: frozenset[str],
    businessos_database_url: str,
    businessos_servers: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    businessos_env: dict[str, str],
) -> Settings:
    """Settings of the platform with ``businessos_plugins`` allowed, kernel and plugins migrated.
    A plugin that fails to load fails the session, with the loader's reason."""
    settings = settings_for(
        businessos_database_url, businessos_servers[1], tmp_path_factory.mktemp("businessos-data"),
        **{**businessos_env, "BUSINESSOS_PLUGINS": ",".join(sorted(businessos_plugins))},
    )
    plugins = load_app_plugins(settings.plugins_allowlist)
    records = {n: plugins.get(n) for n in businessos_plugins}
    broken = {n: r.reason if r else None for n, r in records.items() if r is None or not r.active}
    if broken:
        raise pytest.UsageError(
            "plugins under test did not load: "
            + "; ".join(f"{n}: {reason or 'not installed'}" for n, reason in sorted(broken.items()))
        )
    _run(migrate.upgrade(settings, businessos_database_url, plugins.migration_folders()))
    return settings


@pytest.fixture
async def businessos_client(businessos_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client on a running app; it adds no credentials (use ``businessos_tenant.headers``)."""
    async with open_client(businessos_settings, as_owner=False) as client:
        yield client


TenantFactory = Callable[..., Awaitable[TestTenant]]
"""``await make(prefix="test", *, enable=True, **signup)``: see ``businessos_make_tenant``."""


@pytest.fixture
def businessos_make_tenant(
    businessos_client: AsyncTestClient[Any], businessos_plugins: frozenset[str]
) -> TenantFactory:
    """Makes tenants: ``await businessos_make_tenant()`` is a new tenant and its owner, with every
    plugin of ``businessos_plugins`` enabled (``enable=False``: none). Extra keyword arguments go
    into the sign-up body (``plan="pro"``, ``allow_signup=True``)."""

    async def make(prefix: str = "test", *, enable: bool = True, **signup: Any) -> TestTenant:
        made = await new_tenant(businessos_client, prefix, **signup)
        tenant = TestTenant(
            id=made["id"], slug=made["slug"], name=made["name"], plan=made["plan"], owner_id=made["user_id"],
            owner_email=made["email"], owner_password=made["password"], access_token=made["access_token"],
            refresh_token=made["refresh_token"],
        )
        for name in sorted(businessos_plugins) if enable else ():
            response = await businessos_client.post(f"/api/modules/{name}/enable", headers=tenant.headers)
            assert response.status_code == 200, response.text
        return tenant

    return make


@pytest.fixture
async def businessos_tenant(businessos_make_tenant: TenantFactory) -> TestTenant:
    """A new tenant and its owner, with every plugin of ``businessos_plugins`` enabled."""
    return await businessos_make_tenant()


@pytest.fixture
async def businessos_api_key(businessos_client: AsyncTestClient[Any], businessos_tenant: TestTenant) -> ApiKey:
    """An API key with the admin role in ``businessos_tenant``."""
    response = await businessos_client.post(
        "/api/api-keys", json={"name": "test", "role": "admin"}, headers=businessos_tenant.headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return ApiKey(id=body["id"], key=body["key"], tenant=businessos_tenant)
