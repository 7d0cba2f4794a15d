"""The http connector's tests: the platform with ``http`` only, allowed to call 127.0.0.1 (where
the local API runs), and the local API itself.

Copied out of this repository, this file also needs ``pytest_plugins = ["kernel.testing"]``
(here ``connectors/conftest.py`` loads the kit for every connector)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.testing import Settings, TenantFactory, TestTenant, open_services

from .local_api import LocalApi, local_api


@pytest.fixture(scope="session")
def businessos_plugins() -> frozenset[str]:
    return frozenset({"http"})


@pytest.fixture(scope="session")
def businessos_env() -> dict[str, str]:
    return {"BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32"}


@pytest.fixture(scope="session")
def api() -> Iterator[LocalApi]:
    with local_api() as running:
        yield running


@pytest.fixture
async def services(businessos_settings: Settings) -> AsyncIterator[sdk.Services]:
    """The http plugin's facade, as a workflow step gets it."""
    async with open_services(businessos_settings, "http") as opened:
        yield opened


@pytest.fixture
async def two_tenants(businessos_make_tenant: TenantFactory) -> tuple[TestTenant, TestTenant]:
    return await businessos_make_tenant("one"), await businessos_make_tenant("two")


async def connect(
    client: AsyncTestClient[Any], tenant: TestTenant, kind: str, credentials: dict[str, Any], name: str = ""
) -> str:
    """Create a connection through the API; its id."""
    response = await client.post(
        "/api/connections", headers=tenant.headers,
        json={"type": kind, "name": name or f"{kind} {len(credentials)}", "credentials": credentials},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])
