"""hello, tested the way a third party tests its plugin: through the kit's fixtures, over HTTP."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from kernel.testing import ApiKey, TenantFactory, TestTenant


async def test_ping_counts_per_tenant(
    businessos_client: AsyncTestClient[Any], businessos_tenant: TestTenant, businessos_make_tenant: TenantFactory
) -> None:
    other = await businessos_make_tenant("other")
    for expected in (1, 2):
        response = await businessos_client.get("/api/hello/ping", headers=businessos_tenant.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"message": "pong", "tenant": businessos_tenant.slug, "pings": expected}
    # The other tenant's count is its own.
    response = await businessos_client.get("/api/hello/ping", headers=other.headers)
    assert response.json()["pings"] == 1


async def test_a_tenant_without_the_module_gets_404(
    businessos_client: AsyncTestClient[Any], businessos_make_tenant: TenantFactory
) -> None:
    tenant = await businessos_make_tenant("off", enable=False)
    response = await businessos_client.get("/api/hello/ping", headers=tenant.headers)
    assert response.status_code == 404 and response.json()["module"] == "hello"


async def test_the_greeting_is_a_tenant_setting(
    businessos_client: AsyncTestClient[Any], businessos_tenant: TestTenant, businessos_make_tenant: TenantFactory
) -> None:
    other = await businessos_make_tenant("other")
    saved = await businessos_client.put(
        "/api/modules/hello/settings", json={"greeting": "hi"}, headers=businessos_tenant.headers
    )
    assert saved.status_code == 200, saved.text
    pong = await businessos_client.get("/api/hello/ping", headers=businessos_tenant.headers)
    assert pong.json()["message"] == "hi"
    pong = await businessos_client.get("/api/hello/ping", headers=other.headers)
    assert pong.json()["message"] == "pong"


async def test_an_api_key_can_ping_but_not_without_the_permission(
    businessos_client: AsyncTestClient[Any], businessos_api_key: ApiKey, businessos_tenant: TestTenant
) -> None:
    response = await businessos_client.get("/api/hello/ping", headers=businessos_api_key.headers)
    assert response.status_code == 200, response.text
    scoped = await businessos_client.post(
        "/api/api-keys", json={"name": "no pings", "scopes": ["kernel.tenant.read"]}, headers=businessos_tenant.headers
    )
    assert scoped.status_code == 201, scoped.text
    refused = await businessos_client.get(
        "/api/hello/ping", headers={"X-Tenant-ID": businessos_tenant.slug, "X-API-Key": scoped.json()["key"]}
    )
    assert refused.status_code == 403, refused.text
