from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import eventually, new_tenant, other_process


def _is_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] and body["title"]
    return body


OWNER = {"email": "founder@acme.example", "password": "purple-walrus-sings-42"}


async def test_create_tenant_returns_it_with_the_owners_tokens(client: AsyncTestClient[Any]) -> None:
    slug = f"acme-{uuid.uuid4().hex[:6]}"
    owner = {**OWNER, "email": f"founder@{slug}.example"}
    response = await client.post(
        "/api/tenants", json={"name": "Acme Inc", "slug": slug, "plan": "pro", "owner": owner}
    )
    assert response.status_code == 201
    body = response.json()
    tenant = body["tenant"]
    assert tenant["slug"] == slug and tenant["name"] == "Acme Inc" and tenant["plan"] == "pro"
    assert tenant["status"] == "active"
    assert body["token_type"] == "bearer" and body["expires_in"] > 0 and body["refresh_token"]
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["role"] == "owner" and me.json()["tenant_id"] == tenant["id"]


async def test_duplicate_slug_answers_409_and_keeps_the_first(client: AsyncTestClient[Any]) -> None:
    first = await new_tenant(client)
    owner = {**OWNER, "email": f"other-{uuid.uuid4().hex[:6]}@example.com"}
    response = await client.post(
        "/api/tenants", json={"name": "Other", "slug": first["slug"], "owner": owner}
    )
    body = _is_problem(response, 409)
    assert first["slug"] in body["detail"]
    current = await client.get("/api/tenants/current", headers={"X-Tenant-ID": first["slug"]})
    assert current.json()["name"] == first["name"]


async def test_invalid_body_names_the_field(client: AsyncTestClient[Any]) -> None:
    body = _is_problem(
        await client.post("/api/tenants", json={"name": "x", "slug": "Not A Slug", "owner": OWNER}), 422
    )
    assert [e["field"] for e in body["errors"]] == ["slug"]
    body = _is_problem(await client.post("/api/tenants", json={"slug": "fine-slug", "owner": OWNER}), 422)
    assert "name" in body["detail"]
    body = _is_problem(
        await client.post(
            "/api/tenants", json={"name": "x", "slug": "ok-slug", "plan": "Not A Plan", "owner": OWNER}
        ),
        422,
    )
    assert body["errors"][0]["field"] == "plan"
    weak = {"email": "a@b.example", "password": "password1"}
    body = _is_problem(
        await client.post("/api/tenants", json={"name": "x", "slug": "weak-pw", "owner": weak}), 422
    )
    assert body["errors"][0]["field"] == "owner.password"
    body = _is_problem(await client.post("/api/tenants", json={"name": "x", "slug": "no-owner"}), 422)
    assert body["errors"][0]["field"] == "owner"
    _is_problem(
        await client.post("/api/tenants", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )


async def test_current_tenant_by_id_or_slug(client: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(client)
    for ref in (tenant["id"], tenant["slug"], tenant["slug"].upper(), tenant["id"].upper()):
        response = await client.get("/api/tenants/current", headers={"X-Tenant-ID": ref})
        assert response.status_code == 200, ref
        assert response.json()["id"] == tenant["id"]


async def test_unknown_and_missing_tenants(client: AsyncTestClient[Any]) -> None:
    signup = {"email": "x@y.example", "password": "purple-walrus-sings-42"}
    for ref in ("no-such-tenant", str(uuid.uuid4())):
        _is_problem(await client.post("/api/auth/register", json=signup, headers={"X-Tenant-ID": ref}), 404)
    body = _is_problem(await client.post("/api/auth/register", json=signup), 400)
    assert "X-Tenant-ID" in body["detail"]
    _is_problem(await client.get("/api/tenants/current", headers={"X-Tenant-ID": "no-such-tenant"}), 401)



async def test_suspension_from_another_process_answers_403(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    tenant = await new_tenant(client)
    # Warm the API's cache by id and by slug: the suspension must still reach it.
    for ref in (tenant["id"], tenant["slug"]):
        assert (await client.get("/api/tenants/current", headers={"X-Tenant-ID": ref})).status_code == 200

    async def status(ref: str) -> int:
        return (await client.get("/api/tenants/current", headers={"X-Tenant-ID": ref})).status_code

    async with other_process(settings) as kernel:
        await kernel.tenants.set_status(tenant["slug"], "suspended")
        for ref in (tenant["id"], tenant["slug"]):
            await eventually(lambda ref=ref: _equals(status(ref), 403))  # type: ignore[misc]
        body = _is_problem(
            await client.get("/api/tenants/current", headers={"X-Tenant-ID": tenant["id"]}), 403
        )
        assert "suspended" in body["detail"]
        await kernel.tenants.set_status(tenant["id"], "active")
        await eventually(lambda: _equals(status(tenant["slug"]), 200))


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)
