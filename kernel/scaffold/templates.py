"""The files ``businessos plugin new`` writes (``__NAME__`` and friends are replaced)."""

from __future__ import annotations

__all__ = ["render"]

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "__TITLE__: a BusinessOS plugin"
readme = "README.md"
requires-python = ">=3.11"
# BusinessOS is the host the plugin is installed into, not a dependency of it.
dependencies = []

[project.optional-dependencies]
test = ["businessos[testing]"]

[project.entry-points."businessos.plugins"]
__NAME__ = "__NAME__"

[tool.setuptools]
packages = [__PACKAGES__]
__PACKAGE_DATA__
[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "session"
asyncio_default_test_loop_scope = "session"
'''

INIT = '''\
"""__TITLE__: a BusinessOS plugin (made with ``businessos plugin new``).

It imports nothing from the kernel but ``kernel.sdk``; docs/plugins.md and docs/connectors.md
describe every hook.
"""

from __future__ import annotations

from collections.abc import Sequence
__IMPORTS__
from kernel import sdk

from .nodes import NODES

manifest = sdk.Manifest(
    name="__NAME__",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="__TITLE__",
    description="__TITLE__ for BusinessOS workflows.",
)


@sdk.hookimpl
def businessos_workflow_nodes() -> Sequence[sdk.NodeSpec]:
    return NODES
__HOOKS__'''

CREDENTIALS_HOOK = '''

@sdk.hookimpl
def businessos_credentials() -> Sequence[sdk.CredentialType]:
    return TYPES
'''

MIGRATION_HOOKS = '''

@sdk.hookimpl
def businessos_metadata() -> MetaData:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"
'''

NODES = '''\
"""The plugin's workflow nodes."""

from __future__ import annotations
__NODE_IMPORTS__
import msgspec

from kernel import sdk
__LOCAL_IMPORTS__

class GreetConfig(msgspec.Struct, kw_only=True):
    name: str


class GreetOutput(msgspec.Struct, kw_only=True):
    greeting: str


async def greet(ctx: sdk.NodeContext, config: GreetConfig) -> GreetOutput:
    """Greet ``name``__GREET_DOC__."""
    greeting = f"Hello, {config.name}!"
__GREET_BODY__    return GreetOutput(greeting=greeting)
__FETCH__

NODES = [
    sdk.NodeSpec(
        key="__NAME__.greet", kind="action", title="Greet", config=GreetConfig, output=GreetOutput, run=greet,
    ),__FETCH_SPEC__
]
'''

GREET_RECORDS = '''\
    async with ctx.services.data.tenant(ctx.tenant_id) as session:
        session.add(Greeting(tenant_id=ctx.tenant_id, text=greeting))
'''

FETCH = '''

class FetchConfig(msgspec.Struct, kw_only=True):
    connection: uuid.UUID
    """A __NAME__.api_key connection of the tenant."""
    path: str = "/status"


class FetchOutput(msgspec.Struct, kw_only=True):
    status: int
    body: Any


async def fetch(ctx: sdk.NodeContext, config: FetchConfig) -> FetchOutput:
    """GET ``path`` of the connection's API with its key; the step's idempotency key goes along."""
    creds = await ctx.services.connections.open(ctx.tenant_id, config.connection, ApiCredentials)
    response = await ctx.services.http.get(
        creds.base_url.rstrip("/") + config.path,
        headers={"Authorization": f"Bearer {creds.api_key}", "Idempotency-Key": ctx.idempotency_key},
        follow_redirects=False,
    )
    if response.status_code >= 400:
        raise sdk.Problem(f"the API answered {response.status_code}", extra={"status": response.status_code})
    return FetchOutput(status=response.status_code, body=response.json())
'''

FETCH_SPEC = '''
    sdk.NodeSpec(
        key="__NAME__.fetch", kind="action", title="Fetch from the API", config=FetchConfig, output=FetchOutput,
        run=fetch,
    ),'''

CREDENTIALS = '''\
"""The plugin's credential type: what a tenant stores as a connection, and how it is checked."""

from __future__ import annotations

import msgspec

from kernel import sdk


class ApiCredentials(msgspec.Struct, kw_only=True):
    base_url: str
    """The API's root, e.g. ``https://api.example.com/v1``."""
    api_key: sdk.Secret
    """Sealed at rest; answered only as a masked hint."""


async def check(services: sdk.Services, creds: ApiCredentials) -> None:
    """``POST /api/connections/{id}/test``: GET ``/me`` with the key; say what failed otherwise."""
    response = await services.http.get(
        creds.base_url.rstrip("/") + "/me", field="credentials.base_url",
        headers={"Authorization": f"Bearer {creds.api_key}"}, seconds=15, follow_redirects=False,
    )
    if response.status_code in (401, 403):
        raise sdk.Forbidden(f"the API key was refused (HTTP {response.status_code})")
    if response.status_code != 200:
        raise sdk.Unprocessable(
            f"{creds.base_url} answered {response.status_code}",
            errors=[sdk.FieldError("credentials.base_url", f"answered {response.status_code}, not 200")],
        )


TYPES = [
    sdk.CredentialType(key="__NAME__.api_key", title="__TITLE__ API key", schema=ApiCredentials, check=check),
]
'''

MODELS = '''\
"""The plugin's tables (created by its migrations, never from this metadata)."""

from __future__ import annotations

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk


class Base(sdk.Model):
    """The plugin's declarative base: its own MetaData, returned by ``businessos_metadata``."""


class Greeting(sdk.TenantScoped, Base):
    __tablename__ = "__NAME___greetings"

    text: Mapped[str] = mapped_column(Text)
'''

MIGRATION = '''\
"""__NAME__: the greetings table.

Revision ID: __NAME___0001
"""

from __future__ import annotations

import sqlalchemy as sa

from kernel import sdk

revision = "__NAME___0001"
down_revision = None
branch_labels = ("__NAME__",)
depends_on = None


def upgrade() -> None:
    # tenant_id, id and created_at, forced row-level security and the runtime role's grants.
    sdk.create_tenant_table("__NAME___greetings", sa.Column("text", sa.Text(), nullable=False))


def downgrade() -> None:
    from alembic import op

    op.drop_table("__NAME___greetings")
'''

CONFTEST = '''\
"""The BusinessOS test kit runs a platform with this plugin (``pip install -e .`` first)."""

from __future__ import annotations
__CONFTEST_IMPORTS__
import pytest

pytest_plugins = ["kernel.testing"]


@pytest.fixture(scope="session")
def businessos_plugins() -> frozenset[str]:
    """Load only this plugin, whatever else is installed."""
    return frozenset({"__NAME__"})
__CONFTEST_EXTRA__'''

CONFTEST_CONNECTOR_IMPORTS = '''
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, get
'''

CONFTEST_CONNECTOR = '''

@pytest.fixture(scope="session")
def businessos_env() -> dict[str, str]:
    """Let the platform's egress client call the local API (loopback is refused otherwise)."""
    return {"BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32"}


VALID_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def local_api() -> Iterator[str]:
    """The outside API, played by a local server speaking its protocol; yields its base URL."""

    def authorized(request: Request[Any, Any, Any]) -> bool:
        return request.headers.get("authorization") == f"Bearer {VALID_KEY}"

    @get("/me")
    async def me(request: Request[Any, Any, Any]) -> Response[Any]:
        if not authorized(request):
            return Response({"error": "bad key"}, status_code=401)
        return Response({"ok": True})

    @get("/status")
    async def status(request: Request[Any, Any, Any]) -> Response[Any]:
        if not authorized(request):
            return Response({"error": "bad key"}, status_code=401)
        return Response({"status": "green", "idempotency_key": request.headers.get("idempotency-key")})

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Litestar([me, status]), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the local API did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
'''

TEST = '''\
"""__NAME__, tested the way the platform runs it: through the kit's fixtures, with two tenants."""

from __future__ import annotations

__TEST_HEADER__


async def test_the_greet_node_greets(businessos_settings: Settings, businessos_tenant: TestTenant) -> None:
    async with open_services(businessos_settings, "__NAME__") as services:
        out = await greet(node_context(services, businessos_tenant.id), GreetConfig(name="Ada"))
    assert out.greeting == "Hello, Ada!"


async def test_the_module_can_be_switched_on_and_off(
    businessos_client: AsyncTestClient[Any], businessos_make_tenant: TenantFactory
) -> None:
    tenant = await businessos_make_tenant("off", enable=False)
    on = await businessos_client.post("/api/modules/__NAME__/enable", headers=tenant.headers)
    assert on.status_code == 200, on.text
    off = await businessos_client.post("/api/modules/__NAME__/disable", headers=tenant.headers)
    assert off.status_code == 200, off.text
__TEST_EXTRA__'''

TEST_MIGRATION = '''

async def test_greetings_are_recorded_per_tenant(
    businessos_settings: Settings, businessos_tenant: TestTenant, businessos_make_tenant: TenantFactory
) -> None:
    other = await businessos_make_tenant("other")
    async with open_services(businessos_settings, "__NAME__") as services:
        for name in ("Ada", "Grace"):
            await greet(node_context(services, businessos_tenant.id), GreetConfig(name=name))
        await greet(node_context(services, other.id), GreetConfig(name="Alan"))
        async with services.data.tenant(uuid.UUID(businessos_tenant.id)) as session:
            mine = sorted((await session.execute(select(Greeting.text))).scalars())
        async with services.data.tenant(uuid.UUID(other.id)) as session:
            theirs = list((await session.execute(select(Greeting.text))).scalars())
    assert mine == ["Hello, Ada!", "Hello, Grace!"] and theirs == ["Hello, Alan!"]
'''

TEST_CONNECTOR = '''

async def _connect(client: AsyncTestClient[Any], tenant: TestTenant, base_url: str, key: str) -> dict[str, Any]:
    response = await client.post("/api/connections", headers=tenant.headers, json={
        "type": "__NAME__.api_key", "name": f"api {key[-4:]}", "credentials": {"base_url": base_url, "api_key": key},
    })
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


async def test_a_connection_is_checked_and_never_shows_its_key(
    businessos_client: AsyncTestClient[Any], businessos_tenant: TestTenant, local_api: str
) -> None:
    good = await _connect(businessos_client, businessos_tenant, local_api, VALID_KEY)
    assert VALID_KEY not in str(good) and good["secrets"]["api_key"].endswith(VALID_KEY[-4:])
    tested = await businessos_client.post(f"/api/connections/{good['id']}/test", headers=businessos_tenant.headers)
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.text
    bad = await _connect(businessos_client, businessos_tenant, local_api, "wrong-key-0000000000")
    failed = await businessos_client.post(f"/api/connections/{bad['id']}/test", headers=businessos_tenant.headers)
    assert failed.json()["ok"] is False and "401" in failed.json()["error"]["detail"]


async def test_the_fetch_node_uses_its_tenants_connection_only(
    businessos_client: AsyncTestClient[Any], businessos_settings: Settings, businessos_tenant: TestTenant,
    businessos_make_tenant: TenantFactory, local_api: str,
) -> None:
    made = await _connect(businessos_client, businessos_tenant, local_api, VALID_KEY)
    other = await businessos_make_tenant("other")
    config = FetchConfig(connection=uuid.UUID(made["id"]))
    async with open_services(businessos_settings, "__NAME__") as services:
        ctx = node_context(services, businessos_tenant.id)
        out = await fetch(ctx, config)
        assert out.status == 200 and out.body == {"status": "green", "idempotency_key": ctx.idempotency_key}
        with pytest.raises(sdk.NotFound):
            await fetch(node_context(services, other.id), config)
'''

README = '''\
# __TITLE__

A BusinessOS plugin (`__NAME__`), made with `businessos plugin new`.

| file | what it holds |
| --- | --- |
| `pyproject.toml` | the distribution and its `businessos.plugins` entry point `__NAME__` |
| `__NAME__/__init__.py` | the manifest and the hooks |
| `__NAME__/nodes.py` | the workflow nodes |
__README_ROWS__| `tests/` | tests on the BusinessOS test kit (`pytest_plugins = ["kernel.testing"]`) |

## Develop

```console
$ pip install -e .          # into the environment BusinessOS is installed in
$ pytest                    # the kit starts PostgreSQL and Redis (embedded) for the session
$ businessos plugins list   # __NAME__ is listed as active
```

Then enable it for a tenant (`POST /api/modules/__NAME__/enable`) and use its nodes in a workflow.
See docs/plugins.md (every hook) and docs/connectors.md (connections, credentials, publishing).
'''


def _title(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split("_"))


def render(name: str, *, connector: bool, with_migration: bool) -> dict[str, str]:
    """Every file of the package, by path relative to its root."""
    title = _title(name)
    packages = [f'"{name}"'] + ([f'"{name}.migrations"'] if with_migration else [])
    package_data = f'\n[tool.setuptools.package-data]\n"{name}.migrations" = ["*.py"]\n' if with_migration else ""
    imports = []
    if with_migration:
        imports += ["from pathlib import Path", "", "from sqlalchemy import MetaData"]
    hooks = (CREDENTIALS_HOOK if connector else "") + (MIGRATION_HOOKS if with_migration else "")
    init = INIT.replace("__IMPORTS__", ("\n".join(imports) + "\n") if imports else "").replace("__HOOKS__", hooks)
    lines = ["from .credentials import TYPES"] * connector + ["from .models import Base"] * with_migration
    init = init.replace("from .nodes import NODES\n", "\n".join([*lines, "from .nodes import NODES"]) + "\n")
    node_imports, local_imports = "", ""
    if connector:
        node_imports = "\nimport uuid\nfrom typing import Any\n"
    local = (["from .credentials import ApiCredentials"] if connector else []) + (
        ["from .models import Greeting"] if with_migration else []
    )
    if local:
        local_imports = "\n" + "\n".join(local) + "\n"
    nodes = (
        NODES.replace("__NODE_IMPORTS__", node_imports)
        .replace("__LOCAL_IMPORTS__", local_imports)
        .replace("__GREET_DOC__", " and record the greeting in the tenant's table" if with_migration else "")
        .replace("__GREET_BODY__", GREET_RECORDS if with_migration else "")
        .replace("__FETCH__", FETCH if connector else "")
        .replace("__FETCH_SPEC__", FETCH_SPEC if connector else "")
    )
    conftest = CONFTEST.replace("__CONFTEST_IMPORTS__", CONFTEST_CONNECTOR_IMPORTS if connector else "").replace(
        "__CONFTEST_EXTRA__", CONFTEST_CONNECTOR if connector else ""
    )
    extra = (TEST_MIGRATION if with_migration else "") + (TEST_CONNECTOR if connector else "")
    stdlib = ["import uuid"] * (connector or with_migration) + ["from typing import Any"]
    third = ["import pytest"] * connector + ["from litestar.testing import AsyncTestClient"] + (
        ["from sqlalchemy import select"] * with_migration
    )
    ours = [
        f"from {name}.nodes import {'FetchConfig, GreetConfig, fetch, greet' if connector else 'GreetConfig, greet'}",
    ] + [f"from {name}.models import Greeting"] * with_migration
    kit = ["from kernel import sdk"] * connector + [
        "from kernel.testing import Settings, TenantFactory, TestTenant, node_context, open_services",
    ]
    blocks = [stdlib, third, sorted([*kit, *ours])] + ([["from .conftest import VALID_KEY"]] if connector else [])
    header = "\n\n".join("\n".join(block) for block in blocks)
    test = TEST.replace("__TEST_HEADER__", header).replace("__TEST_EXTRA__", extra)
    rows = ""
    if connector:
        rows += f"| `{name}/credentials.py` | the credential type `{name}.api_key` and its check |\n"
    if with_migration:
        rows += f"| `{name}/models.py`, `{name}/migrations/` | the `{name}_greetings` table and its first migration |\n"
    files = {
        "pyproject.toml": PYPROJECT.replace("__PACKAGES__", ", ".join(packages)).replace(
            "__PACKAGE_DATA__", package_data
        ),
        "README.md": README.replace("__README_ROWS__", rows),
        f"{name}/__init__.py": init,
        f"{name}/nodes.py": nodes,
        "tests/__init__.py": "",
        "tests/conftest.py": conftest,
        f"tests/test_{name}.py": test,
    }
    if connector:
        files[f"{name}/credentials.py"] = CREDENTIALS
    if with_migration:
        files[f"{name}/models.py"] = MODELS
        files[f"{name}/migrations/__init__.py"] = ""
        files[f"{name}/migrations/{name}_0001_greetings.py"] = MIGRATION
    replaced = {
        "__DIST__": "businessos-" + name.replace("_", "-"),
        "__TITLE__": title,
        "__NAME__": name,
    }
    out = {}
    for path, content in files.items():
        for key, value in replaced.items():
            content = content.replace(key, value)
        out[path] = content
    return out
