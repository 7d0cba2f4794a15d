"""Entitlements from the outside: a plugin that answers them refuses module enables, members,
API keys and its own metered action with a 402 naming the limit; the other tenant's plan is
unaffected; without a provider everything is allowed and any plan code is accepted; two
providers stop the boot."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.plugins.loader import BootError
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

PROVIDER = """
from sqlalchemy import text


class Plans(sdk.EntitlementProvider):
    plans = ("free", "tiny")

    async def check(self, query: sdk.EntitlementQuery, services: sdk.Services) -> sdk.Entitlement:
        if query.plan != "tiny":
            return sdk.Entitlement(allowed=True)
        if query.feature == "kernel.module." + BLOCKED:
            return sdk.Entitlement(allowed=False, limit="modules", detail=BLOCKED + " is not in the tiny plan",
                                   lift="upgrade to the free plan")
        if query.feature == "kernel.members":
            return sdk.Entitlement(allowed=False, remaining=0, limit="members", lift="upgrade to the free plan")
        if query.feature == "kernel.api_keys":
            # Counted through the provider's own facade: one live key on the tiny plan.
            async with services.data.tenant(query.tenant_id) as session:
                live = text("select count(*) from api_keys where revoked_at is null")
                used = (await session.execute(live)).scalar_one()
            left = 1 - used - query.amount
            return sdk.Entitlement(allowed=left >= 0, remaining=max(left, 0), limit="api_keys",
                                   lift="revoke a key or upgrade to the free plan")
        if query.feature == NAME + ".widgets":
            return sdk.Entitlement(allowed=query.amount <= 2, remaining=2 - query.amount, limit="widgets",
                                   lift="upgrade to the free plan")
        return sdk.Entitlement(allowed=True)


class Use(msgspec.Struct):
    amount: int = 1


class Left(msgspec.Struct):
    remaining: int | None


@post("/api/" + NAME + "/widgets", status_code=200, opt={"permission": NAME + ".widgets.write"})
async def make_widgets(data: Use, tenant: sdk.Tenant, services: sdk.Services) -> Left:
    return Left(await services.entitlements.check(tenant.id, NAME + ".widgets", data.amount))


@get("/api/" + NAME + "/widgets/remaining", opt={"permission": NAME + ".widgets.write"})
async def widgets_left(tenant: sdk.Tenant, services: sdk.Services) -> Left:
    return Left(await services.entitlements.remaining(tenant.id, NAME + ".widgets"))


@sdk.hookimpl
def businessos_entitlements():
    return Plans()


@sdk.hookimpl
def businessos_permissions():
    return [sdk.Permission(NAME + ".widgets.write")]


@sdk.hookimpl
def businessos_routes():
    return [make_widgets, widgets_left]
"""


def provider_plugin(name: str, blocked: str) -> FakePlugin:
    return FakePlugin(name=name, source=plugin_source(name, f"BLOCKED = {blocked!r}\n" + PROVIDER))


@pytest.fixture(scope="module")
def names() -> tuple[str, str]:
    return unique("bill"), unique("blk")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory, names: tuple[str, str]) -> Iterator[Path]:
    billing, blocked = names
    path = tmp_path_factory.mktemp("entitlements")
    with installed(path, provider_plugin(billing, blocked), FakePlugin(name=blocked, source=plugin_source(blocked))):
        yield path


@pytest.fixture(scope="module")
async def api(
    settings: Settings, names: tuple[str, str], plugin_dir: Path
) -> AsyncIterator[AsyncTestClient[Any]]:
    scoped = msgspec.structs.replace(settings, plugins_allowlist=frozenset(names))
    async with open_client(scoped, load_app_plugins(scoped.plugins_allowlist)) as client:
        yield client


def refused(response: Any, limit: str) -> dict[str, Any]:
    assert response.status_code == 402, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/payment-required") and body["limit"] == limit
    assert "upgrade to the free plan" in body["lift"]
    return body


async def test_plan_codes_are_the_providers(api: AsyncTestClient[Any]) -> None:
    tiny, default = await new_tenant(api, "ent-tiny", plan="tiny"), await new_tenant(api, "ent-free")
    assert (tiny["plan"], default["plan"]) == ("tiny", "free")
    owner = {"email": f"o-{uuid.uuid4().hex[:8]}@example.com", "password": f"pw-{uuid.uuid4().hex}"}
    response = await api.post(
        "/api/tenants", json={"name": "Gold", "slug": f"g-{uuid.uuid4().hex[:8]}", "plan": "gold", "owner": owner}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "plan"
    current = await api.get("/api/tenants/current", headers={"X-Tenant-ID": tiny["slug"]})
    assert current.json()["plan"] == "tiny"


async def test_a_refused_module_enable_names_the_limit(api: AsyncTestClient[Any], names: tuple[str, str]) -> None:
    billing, blocked = names
    tiny, free = await new_tenant(api, "ent-tiny", plan="tiny"), await new_tenant(api, "ent-free")
    body = refused(await api.post(f"/api/modules/{blocked}/enable", headers={"X-Tenant-ID": tiny["slug"]}), "modules")
    assert body["feature"] == f"kernel.module.{blocked}" and blocked in body["detail"]
    modules = (await api.get("/api/modules", headers={"X-Tenant-ID": tiny["slug"]})).json()["modules"]
    assert not any(m["enabled"] for m in modules)
    response = await api.post(f"/api/modules/{blocked}/enable", headers={"X-Tenant-ID": free["slug"]})
    assert response.status_code == 200, response.text
    # The provider's own module is in the tiny plan.
    assert (await api.post(f"/api/modules/{billing}/enable", headers={"X-Tenant-ID": tiny["slug"]})).status_code == 200


async def test_api_keys_are_counted_per_tenant(api: AsyncTestClient[Any]) -> None:
    tiny, free = await new_tenant(api, "ent-tiny", plan="tiny"), await new_tenant(api, "ent-free")
    h = {"X-Tenant-ID": tiny["slug"]}
    first = await api.post("/api/api-keys", json={"name": "one", "role": "viewer"}, headers=h)
    assert first.status_code == 201, first.text
    body = refused(await api.post("/api/api-keys", json={"name": "two", "role": "viewer"}, headers=h), "api_keys")
    assert body["remaining"] == 0
    for n in range(3):
        response = await api.post("/api/api-keys", json={"name": f"k{n}", "role": "viewer"},
                                  headers={"X-Tenant-ID": free["slug"]})
        assert response.status_code == 201, response.text
    # Revoking the key frees the slot.
    assert (await api.delete(f"/api/api-keys/{first.json()['id']}", headers=h)).status_code == 204
    again = await api.post("/api/api-keys", json={"name": "two", "role": "viewer"}, headers=h)
    assert again.status_code == 201, again.text


async def test_members_need_room_in_the_plan(api: AsyncTestClient[Any]) -> None:
    tiny, free = await new_tenant(api, "ent-tiny", plan="tiny"), await new_tenant(api, "ent-free")
    for tenant, status in ((tiny, 402), (free, 201)):
        email = f"m-{uuid.uuid4().hex[:8]}@example.com"
        invited = await api.post("/api/tenant/invitations", json={"email": email, "role": "member"},
                                 headers={"X-Tenant-ID": tenant["slug"]})
        assert invited.status_code == 201, invited.text
        joined = await api.post(
            "/api/auth/register",
            json={"email": email, "password": f"pw-{uuid.uuid4().hex}", "invitation_token": invited.json()["token"]},
            headers={"X-Tenant-ID": tenant["slug"]},
        )
        assert joined.status_code == status, joined.text
        if status == 402:
            refused(joined, "members")


async def test_a_plugin_meters_its_own_feature(api: AsyncTestClient[Any], names: tuple[str, str]) -> None:
    billing, _ = names
    tiny, free = await new_tenant(api, "ent-tiny", plan="tiny"), await new_tenant(api, "ent-free")
    for tenant in (tiny, free):
        enabled = await api.post(f"/api/modules/{billing}/enable", headers={"X-Tenant-ID": tenant["slug"]})
        assert enabled.status_code == 200, enabled.text
    h = {"X-Tenant-ID": tiny["slug"]}
    assert (await api.get(f"/api/{billing}/widgets/remaining", headers=h)).json() == {"remaining": 2}
    refused(await api.post(f"/api/{billing}/widgets", json={"amount": 3}, headers=h), "widgets")
    assert (await api.post(f"/api/{billing}/widgets", json={"amount": 2}, headers=h)).json() == {"remaining": 0}
    h = {"X-Tenant-ID": free["slug"]}
    assert (await api.get(f"/api/{billing}/widgets/remaining", headers=h)).json() == {"remaining": None}
    assert (await api.post(f"/api/{billing}/widgets", json={"amount": 3}, headers=h)).json() == {"remaining": None}


async def test_without_a_provider_everything_is_allowed(settings: Settings) -> None:
    async with open_client(settings) as client:
        tenant = await new_tenant(client, "ent-none", plan="gold-2026")
        assert tenant["plan"] == "gold-2026"
        assert (await new_tenant(client, "ent-none"))["plan"] == "free"
        h = {"X-Tenant-ID": tenant["slug"]}
        for n in range(3):
            response = await client.post("/api/api-keys", json={"name": f"k{n}", "role": "viewer"}, headers=h)
            assert response.status_code == 201, response.text
        bad = await client.post(
            "/api/tenants",
            json={"name": "X", "slug": f"x-{uuid.uuid4().hex[:6]}", "plan": "No Spaces",
                  "owner": {"email": "x@example.com", "password": f"pw-{uuid.uuid4().hex}"}},
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "plan", bad.text


def test_two_providers_stop_the_boot(tmp_path: Path) -> None:
    one, two, blocked = unique("bill"), unique("bill"), unique("blk")
    with installed(tmp_path, provider_plugin(one, blocked), provider_plugin(two, blocked)), pytest.raises(
        BootError
    ) as caught:
        load_app_plugins(frozenset({one, two}))
    assert one in str(caught.value) and two in str(caught.value) and "entitlements" in str(caught.value)
