"""Tenant binding and access control, from the outside: credentials of one tenant never reach
another's data, switching tenants, API keys, editable roles, and every route of the app walked
for every kind of caller against the permission it declares.

Every request carries its credentials explicitly (the clients here have no owner-token hook).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.identity.auth import SKIP_AUTHENTICATION
from kernel.identity.permissions import AUTHENTICATED, OPERATOR, PUBLIC
from kernel.operators.access import in_operator_area
from kernel.settings import Settings
from tests.conftest import _dsn, new_tenant, open_client, other_process, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client that adds no credentials of its own: every header is the test's."""
    async with open_client(settings) as client:
        client.event_hooks = {"request": [], "response": []}
        yield client


def at(tenant: dict[str, Any] | None, token: str | None = None, *, key: str | None = None) -> dict[str, str]:
    headers = {}
    if tenant is not None:
        headers["X-Tenant-ID"] = tenant["slug"]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["X-API-Key"] = key
    return headers


def owner(tenant: dict[str, Any]) -> dict[str, str]:
    return at(tenant, tenant["access_token"])


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def join(
    api: AsyncTestClient[Any],
    tenant: dict[str, Any],
    role: str,
    email: str | None = None,
    pw: str | None = None,
) -> dict[str, Any]:
    """Invite (as the tenant's owner) and register; an existing account gives its password."""
    email = email or f"{role}-{uuid.uuid4().hex[:10]}@example.com"
    pw = pw or f"pw-{uuid.uuid4().hex}"
    response = await api.post(
        "/api/tenant/invitations", json={"email": email, "role": role}, headers=owner(tenant)
    )
    assert response.status_code == 201, response.text
    response = await api.post(
        "/api/auth/register",
        json={"email": email, "password": pw, "invitation_token": response.json()["token"]},
        headers=at(tenant),
    )
    assert response.status_code == 201, response.text
    return {"email": email, "password": pw, **response.json()}


async def new_key(api: AsyncTestClient[Any], headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.post("/api/api-keys", json={"name": "k", **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def grants(api: AsyncTestClient[Any], tenant: dict[str, Any]) -> dict[str, set[str]]:
    response = await api.get("/api/roles", headers=owner(tenant))
    assert response.status_code == 200, response.text
    return {r["role"]: set(r["permissions"]) for r in response.json()["roles"]}


async def set_role(
    api: AsyncTestClient[Any], headers: dict[str, str], role: str, permissions: set[str]
) -> Any:
    return await api.put(f"/api/roles/{role}", json={"permissions": sorted(permissions)}, headers=headers)


# --- tenant binding -------------------------------------------------------------------------------


async def test_credentials_of_one_tenant_never_reach_another(api: AsyncTestClient[Any]) -> None:
    a, b = await new_tenant(api, "bind-a"), await new_tenant(api, "bind-b")
    a_key = await new_key(api, owner(a), role="admin")
    b_key = await new_key(api, owner(b), role="admin")
    a_member = await join(api, a, "member")

    # A's credentials naming tenant B: refused before anything of B's is read.
    for creds in (
        at(b, a["access_token"]),
        at(b, a_member["access_token"]),
        at(b, key=a_key["key"]),
        at(b, f"{a_key['key']}"),
    ):
        for method, path, body in (
            ("GET", "/api/tenants/current", None),
            ("GET", "/api/api-keys", None),
            ("GET", "/api/roles", None),
            ("GET", "/api/auth/me", None),
            ("POST", "/api/api-keys", {"name": "x", "role": "viewer"}),
            ("PUT", "/api/roles/member", {"permissions": []}),
            ("DELETE", f"/api/api-keys/{b_key['id']}", None),
            ("POST", "/api/tenant/invitations", {"email": "x@y.example"}),
        ):
            response = await api.request(method, path, json=body, headers=creds)
            problem(response, 403)
            assert b["id"] not in response.text and b_key["prefix"] not in response.text
        # The tenant's id, in any case, is the same refusal.
        problem(await api.get("/api/tenants/current", headers={**creds, "X-Tenant-ID": b["id"].upper()}), 403)

    # Within A, B's ids are simply not there.
    problem(await api.delete(f"/api/api-keys/{b_key['id']}", headers=owner(a)), 404)
    problem(await api.delete(f"/api/api-keys/{b_key['id']}", headers=at(None, key=a_key["key"])), 404)
    listed = (await api.get("/api/api-keys", headers=owner(a))).json()["api_keys"]
    assert [k["id"] for k in listed] == [a_key["id"]]
    # B's key and B's grants are untouched, and B's key works for B only.
    assert (await api.get("/api/tenants/current", headers=at(b, key=b_key["key"]))).json()["id"] == b["id"]
    assert (await api.get("/api/tenants/current", headers=at(None, key=b_key["key"]))).json()["id"] == b["id"]
    assert (await grants(api, b))["member"] == (await grants(api, a))["member"]
    # Without X-Tenant-ID, credentials answer for their own tenant.
    assert (await api.get("/api/tenants/current", headers=at(None, a["access_token"]))).json()["id"] == a[
        "id"
    ]


async def test_switching_tenant_needs_a_membership_there(api: AsyncTestClient[Any]) -> None:
    a, b, c = [await new_tenant(api, f"switch-{x}") for x in "abc"]
    user = await join(api, a, "member")
    await join(api, b, "admin", user["email"], user["password"])
    headers = at(a, user["access_token"])

    for ref in (b["slug"], b["id"]):
        response = await api.post("/api/auth/switch-tenant", json={"tenant": ref}, headers=headers)
        assert response.status_code == 200, response.text
        pair = response.json()
        me = (await api.get("/api/auth/me", headers=at(b, pair["access_token"]))).json()
        assert me["tenant_id"] == b["id"] and me["role"] == "admin"
    # B's tokens are B's: naming A with them is refused; their refresh stays in B.
    problem(await api.get("/api/tenants/current", headers=at(a, pair["access_token"])), 403)
    refreshed = await api.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200
    me = (await api.get("/api/auth/me", headers=at(None, refreshed.json()["access_token"]))).json()
    assert me["tenant_id"] == b["id"]

    for ref in (c["slug"], c["id"], "no-such-tenant", str(uuid.uuid4())):
        problem(await api.post("/api/auth/switch-tenant", json={"tenant": ref}, headers=headers), 403)
    # An API key is not a person: it has no other tenants.
    key = await new_key(api, owner(a), role="member")
    problem(
        await api.post("/api/auth/switch-tenant", json={"tenant": b["slug"]}, headers=at(a, key=key["key"])),
        403,
    )
    problem(await api.post("/api/auth/switch-tenant", json={"tenant": b["slug"]}, headers=at(a)), 401)


# --- API keys ---------------------------------------------------------------------------------------


async def test_api_keys_are_shown_once_and_work_as_bearer_or_header(
    api: AsyncTestClient[Any], database_url: str
) -> None:
    tenant = await new_tenant(api, "keys")
    created = await new_key(api, owner(tenant), role="viewer")
    secret = created["key"]
    assert re.fullmatch(r"bos_[A-Za-z0-9_-]{65}[a-z2-7]{6}", secret), secret
    assert secret.startswith(created["prefix"]) and len(created["prefix"]) < len(secret) - 40
    assert created["role"] == "viewer" and created["scopes"] is None

    for headers in (at(tenant, secret), at(tenant, key=secret), at(None, key=secret)):
        response = await api.get("/api/tenants/current", headers=headers)
        assert response.status_code == 200 and response.json()["id"] == tenant["id"], response.text
    # A viewer key can do what a viewer can, no more.
    problem(await api.get("/api/roles", headers=at(tenant, key=secret)), 403)
    problem(
        await api.post("/api/api-keys", json={"name": "x", "role": "viewer"}, headers=at(tenant, key=secret)),
        403,
    )

    response = await api.get("/api/api-keys", headers=owner(tenant))
    assert response.status_code == 200
    assert secret not in response.text and secret[len(created["prefix"]) :] not in response.text
    (listed,) = response.json()["api_keys"]
    assert (
        listed["id"] == created["id"] and listed["prefix"] == created["prefix"] and listed["role"] == "viewer"
    )
    assert listed["last_used_at"] is not None and listed["revoked_at"] is None
    assert "key" not in listed and "key_hash" not in listed
    # Not stored in clear either.
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        rows = await conn.fetch(
            "select k::text as row from api_keys k where tenant_id = $1", uuid.UUID(tenant["id"])
        )
    finally:
        await conn.close()
    assert len(rows) == 1 and secret not in rows[0]["row"] and secret[-30:] not in rows[0]["row"]

    # A wrong last character fails the checksum: 401, like an unknown key.
    wrong = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    for bad in (wrong, secret[:-6] + "aaaaaa", "bos_" + "A" * 71, "bos_nope", secret + "x"):
        for headers in (at(tenant, key=bad), at(tenant, bad)):
            body = problem(await api.get("/api/tenants/current", headers=headers), 401)
            assert secret not in str(body)


async def test_a_revoked_key_is_refused_at_once_and_an_expired_one_too(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "revoke")
    key = await new_key(api, owner(tenant), role="member")
    assert (await api.get("/api/tenants/current", headers=at(tenant, key=key["key"]))).status_code == 200
    response = await api.delete(f"/api/api-keys/{key['id']}", headers=owner(tenant))
    assert response.status_code == 204, response.text
    problem(await api.get("/api/tenants/current", headers=at(tenant, key=key["key"])), 401)
    problem(await api.get("/api/tenants/current", headers=at(tenant, key["key"])), 401)
    listed = (await api.get("/api/api-keys", headers=owner(tenant))).json()["api_keys"]
    assert listed[0]["revoked_at"] is not None
    # Revoking twice is harmless; an unknown id is 404.
    assert (await api.delete(f"/api/api-keys/{key['id']}", headers=owner(tenant))).status_code == 204
    problem(await api.delete(f"/api/api-keys/{uuid.uuid4()}", headers=owner(tenant)), 404)

    # An expiry in the past is refused; a key past its expiry is refused.
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    problem(
        await api.post(
            "/api/api-keys", json={"name": "x", "role": "member", "expires_at": past}, headers=owner(tenant)
        ),
        422,
    )
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    short = await new_key(api, owner(tenant), role="member", expires_at=expires.isoformat())
    assert (await api.get("/api/tenants/current", headers=at(tenant, key=short["key"]))).status_code == 200
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    problem(await api.get("/api/tenants/current", headers=at(tenant, key=short["key"])), 401)


async def test_a_key_never_exceeds_its_creator_and_a_scoped_key_only_its_scopes(
    api: AsyncTestClient[Any],
) -> None:
    tenant = await new_tenant(api, "scopes")
    member = await join(api, tenant, "member")
    defaults = await grants(api, tenant)
    # Members may manage keys here, but still have only a member's permissions.
    response = await set_role(
        api, owner(tenant), "member", defaults["member"] | {"kernel.api_keys.write", "kernel.api_keys.read"}
    )
    assert response.status_code == 200, response.text
    as_member = at(tenant, member["access_token"])
    for body in (
        {"role": "admin"},
        {"scopes": ["kernel.roles.write"]},
        {"scopes": ["kernel.tenant.read", "kernel.audit.read"]},
    ):
        body_ = problem(await api.post("/api/api-keys", json={"name": "x", **body}, headers=as_member), 403)
        assert "kernel." in body_["detail"]
    await new_key(api, as_member, role="member")
    await new_key(api, as_member, role="viewer")

    # Invalid requests: unknown scopes, both or neither of role and scopes, the owner role.
    refused = problem(
        await api.post("/api/api-keys", json={"name": "x", "scopes": ["kernel.nope"]}, headers=owner(tenant)),
        422,
    )
    assert refused["errors"][0]["field"] == "scopes"
    problem(
        await api.post(
            "/api/api-keys", json={"name": "x", "role": "member", "scopes": []}, headers=owner(tenant)
        ),
        422,
    )
    problem(await api.post("/api/api-keys", json={"name": "x"}, headers=owner(tenant)), 422)
    problem(await api.post("/api/api-keys", json={"name": "x", "role": "owner"}, headers=owner(tenant)), 422)

    # A scoped key does its scopes and nothing else, even when its creator could.
    scoped = await new_key(api, owner(tenant), scopes=["kernel.api_keys.read", "kernel.api_keys.write"])
    headers = at(tenant, key=scoped["key"])
    assert (await api.get("/api/api-keys", headers=headers)).status_code == 200
    problem(await api.get("/api/tenants/current", headers=headers), 403)
    problem(await api.get("/api/roles", headers=headers), 403)
    problem(await set_role(api, headers, "viewer", set()), 403)
    # ... and the keys it makes stay within its scopes.
    problem(await api.post("/api/api-keys", json={"name": "x", "role": "viewer"}, headers=headers), 403)
    problem(
        await api.post("/api/api-keys", json={"name": "x", "scopes": ["kernel.roles.read"]}, headers=headers),
        403,
    )
    listed = {k["id"]: k for k in (await api.get("/api/api-keys", headers=owner(tenant))).json()["api_keys"]}
    assert listed[scoped["id"]]["scopes"] == ["kernel.api_keys.read", "kernel.api_keys.write"]
    assert listed[scoped["id"]]["role"] is None and listed[scoped["id"]]["last_used_at"] is not None
    child = await new_key(api, headers, scopes=["kernel.api_keys.read"])
    assert (await api.get("/api/api-keys", headers=at(tenant, key=child["key"]))).status_code == 200
    problem(await api.delete(f"/api/api-keys/{scoped['id']}", headers=at(tenant, key=child["key"])), 403)


# --- roles ------------------------------------------------------------------------------------------


async def test_built_in_roles_and_their_defaults(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "roles")
    response = await api.get("/api/roles", headers=owner(tenant))
    assert response.status_code == 200, response.text
    body = response.json()
    roles = {r["role"]: r for r in body["roles"]}
    catalog = {p["name"] for p in body["permissions"]}
    assert list(roles) == ["owner", "admin", "member", "viewer"]
    assert {p["plugin"] for p in body["permissions"]} == {"kernel"}  # this app has no plugins
    assert set(roles["owner"]["permissions"]) == set(roles["admin"]["permissions"]) == catalog
    assert roles["owner"]["editable"] is False and all(
        roles[r]["editable"] for r in ("admin", "member", "viewer")
    )
    assert not any(r["customized"] for r in roles.values())
    viewer, member = set(roles["viewer"]["permissions"]), set(roles["member"]["permissions"])
    assert {"kernel.tenant.read", "kernel.modules.read"} <= viewer < member < catalog
    administrative = {
        "kernel.modules.write",
        "kernel.invitations.write",
        "kernel.roles.read",
        "kernel.roles.write",
        "kernel.api_keys.read",
        "kernel.api_keys.write",
        "kernel.audit.read",
    }
    assert not member & administrative and not viewer & administrative
    assert not any(p.endswith((".write", ".manage", ".delete")) for p in viewer)


async def test_editing_a_role_takes_effect_at_once_within_limits(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "role-edit")
    admin = await join(api, tenant, "admin")
    member = await join(api, tenant, "member")
    viewer = await join(api, tenant, "viewer")
    as_admin, as_member = at(tenant, admin["access_token"]), at(tenant, member["access_token"])
    defaults = await grants(api, tenant)

    # A member's existing token: refused, then allowed right after the edit, then refused again.
    problem(await api.get("/api/api-keys", headers=as_member), 403)
    response = await set_role(api, as_admin, "member", defaults["member"] | {"kernel.api_keys.read"})
    assert response.status_code == 200, response.text
    assert response.json()["customized"] is True
    assert (await api.get("/api/api-keys", headers=as_member)).status_code == 200
    assert "kernel.api_keys.read" in (await api.get("/api/auth/me", headers=as_member)).json()["permissions"]
    roles = {r["role"]: r for r in (await api.get("/api/roles", headers=as_admin)).json()["roles"]}
    assert roles["member"]["customized"] is True and "kernel.api_keys.read" in roles["member"]["permissions"]
    assert (await set_role(api, as_admin, "member", defaults["member"])).status_code == 200
    problem(await api.get("/api/api-keys", headers=as_member), 403)
    # Taking a permission away works the same way.
    assert (await set_role(api, owner(tenant), "viewer", set())).status_code == 200
    problem(await api.get("/api/tenants/current", headers=at(tenant, viewer["access_token"])), 403)

    # The owner role is not editable; unknown roles and permissions are refused.
    problem(await set_role(api, as_admin, "owner", set()), 409)
    problem(await set_role(api, owner(tenant), "owner", defaults["owner"]), 409)
    body = problem(await set_role(api, as_admin, "member", {"kernel.nope", "kernel.tenant.read"}), 422)
    assert body["errors"][0]["field"] == "permissions" and "kernel.nope" in body["detail"]
    problem(await set_role(api, as_admin, "superuser", set()), 404)
    problem(
        await api.put("/api/roles/member", json={"permissions": "kernel.tenant.read"}, headers=as_admin), 422
    )
    # Only those with kernel.roles.write edit roles.
    problem(await set_role(api, as_member, "member", defaults["admin"]), 403)
    problem(await set_role(api, at(tenant), "member", defaults["admin"]), 401)
    assert (await grants(api, tenant))["member"] == defaults["member"]


async def test_an_admin_cannot_grant_what_the_admin_lacks(api: AsyncTestClient[Any]) -> None:
    """kernel.roles.write is not a way to every permission: like an API key, a role edit gives
    only what the editor has (the owner always has everything)."""
    tenant = await new_tenant(api, "escalate")
    admin = await join(api, tenant, "admin")
    as_admin = at(tenant, admin["access_token"])
    defaults = await grants(api, tenant)
    limited = {"kernel.roles.read", "kernel.roles.write", "kernel.tenant.read"}
    assert (await set_role(api, owner(tenant), "admin", limited)).status_code == 200
    problem(await api.get("/api/audit/logs", headers=as_admin), 403)

    problem(await set_role(api, as_admin, "admin", defaults["admin"]), 403)
    problem(await set_role(api, as_admin, "member", {"kernel.audit.read"}), 403)
    problem(await api.get("/api/audit/logs", headers=as_admin), 403)
    assert (await grants(api, tenant))["admin"] == limited
    # Within what it has, the admin may still edit.
    assert (await set_role(api, as_admin, "viewer", {"kernel.tenant.read"})).status_code == 200
    assert (await set_role(api, owner(tenant), "admin", defaults["admin"])).status_code == 200
    assert (await api.get("/api/audit/logs", headers=as_admin)).status_code == 200


async def test_an_invitation_never_brings_in_more_than_the_inviter_has(api: AsyncTestClient[Any]) -> None:
    """Who may invite may bring in people with their own permissions at most: a viewer allowed to
    invite must not make (its own second account) a member."""
    tenant = await new_tenant(api, "invite-up")
    viewer = await join(api, tenant, "viewer")
    member = await join(api, tenant, "member")
    defaults = await grants(api, tenant)
    for role in ("viewer", "member"):
        response = await set_role(api, owner(tenant), role, defaults[role] | {"kernel.invitations.write"})
        assert response.status_code == 200, response.text

    def invite(who: dict[str, Any], role: str) -> Any:
        email = f"x-{uuid.uuid4().hex[:8]}@example.com"
        return api.post(
            "/api/tenant/invitations",
            json={"email": email, "role": role},
            headers=at(tenant, who["access_token"]),
        )

    for role in ("member", "admin"):
        problem(await invite(viewer, role), 403)
    problem(await invite(member, "admin"), 403)
    assert (await invite(viewer, "viewer")).status_code == 201
    assert (await invite(member, "member")).status_code == 201
    assert (await invite(member, "viewer")).status_code == 201


# --- every route, every caller ----------------------------------------------------------------------

MATRIX_PLUGIN = """
import uuid

from litestar import delete, put


class ItemIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@get(f"/api/{NAME}/items", opt={"permission": NAME + ".items.read"})
async def list_items(tenant: sdk.Tenant) -> dict[str, Any]:
    return {"tenant": str(tenant.id), "items": []}


@post(f"/api/{NAME}/items", status_code=201, opt={"permission": NAME + ".items.write"})
async def add_item(data: ItemIn) -> dict[str, str]:
    return {"name": data.name}


@put(f"/api/{NAME}/items/{{item_id:uuid}}", opt={"permission": NAME + ".items.write"})
async def put_item(item_id: uuid.UUID, data: ItemIn) -> dict[str, str]:
    raise sdk.NotFound(f"item {item_id} does not exist")


@delete(f"/api/{NAME}/items/{{item_id:uuid}}", status_code=204, opt={"permission": NAME + ".items.purge"})
async def purge_item(item_id: uuid.UUID) -> None:
    raise sdk.NotFound(f"item {item_id} does not exist")


@get(f"/api/{NAME}/whoami", opt={"permission": sdk.AUTHENTICATED})
async def whoami(tenant: sdk.Tenant) -> dict[str, str]:
    return {"tenant": tenant.slug}


@get(f"/api/{NAME}/status", opt={"permission": sdk.PUBLIC})
async def status() -> dict[str, str]:
    return {"status": "ok"}


@get("/stats", opt={"permission": sdk.OPERATOR})
async def admin_stats(operator: sdk.Operator) -> dict[str, str]:
    return {"operator": operator.email}


@post("/touch", status_code=200, opt={"permission": sdk.PUBLIC})
async def admin_touch() -> dict[str, str]:
    return {"touched": "yes"}  # declared public, yet behind the operator guard like every admin route


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [list_items, add_item, put_item, purge_item, whoami, status]


@sdk.hookimpl
def businessos_admin_routes() -> list[Any]:
    return [admin_stats, admin_touch]


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [
        sdk.Permission(NAME + ".items.read", "See items"),
        sdk.Permission(NAME + ".items.write", "Change items"),
        sdk.Permission(NAME + ".items.purge", "Delete items for good"),
    ]
"""

_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _fill(path: str, route: HTTPRoute) -> str:
    """The route's path with made-up values for its parameters."""
    for param in route.path_parameters.values():
        value = {uuid.UUID: str(uuid.uuid4()), int: "7"}.get(param.type, f"x{uuid.uuid4().hex[:6]}")
        path = path.replace("{" + param.full + "}", value)
    return path


def _user_only(response: Any) -> bool:
    """The refusal a user-only action gives an API key (a key is not a person)."""
    return response.status_code == 403 and "api key" in response.json().get("detail", "").lower()


async def test_every_route_answers_every_caller_as_it_declares(settings: Settings, tmp_path: Path) -> None:
    name = unique("matrix")
    with installed(tmp_path, FakePlugin(name, plugin_source(name, MATRIX_PLUGIN))):
        assert settings.database_url and settings.redis_url
        s = settings_for(settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS=name)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            client.event_hooks = {"request": [], "response": []}
            tenant = await new_tenant(client, "matrix")
            enabled = await client.post(f"/api/modules/{name}/enable", headers=owner(tenant))
            assert enabled.status_code == 200, enabled.text

            defaults = await grants(client, tenant)
            # Customized, so the walk follows the tenant's grants rather than the built-in ones:
            # members lose a plugin permission and gain a kernel one.
            member_grants = (defaults["member"] - {f"{name}.items.write"}) | {"kernel.audit.read"}
            assert (await set_role(client, owner(tenant), "member", member_grants)).status_code == 200
            granted = await grants(client, tenant)
            assert granted["member"] == member_grants
            assert (
                f"{name}.items.purge" not in granted["viewer"] and f"{name}.items.read" in granted["viewer"]
            )

            key_scopes = {f"{name}.items.read", "kernel.tenant.read", "kernel.api_keys.read"}
            key = await new_key(client, owner(tenant), scopes=sorted(key_scopes))
            callers: dict[str, dict[str, str]] = {
                "anonymous": at(tenant),
                "api_key": at(tenant, key=key["key"]),
                **{
                    role: at(tenant, (await join(client, tenant, role))["access_token"])
                    for role in ("viewer", "member", "admin")
                },
                "owner": owner(tenant),
            }
            # The installation's operator: the same tenant header, but credentials of no tenant.
            operator_email = f"op-{uuid.uuid4().hex[:8]}@example.com"
            async with other_process(s) as kernel:
                await kernel.operators.create(operator_email, "an operator passphrase 9c2")
            login = await client.post(
                "/api/admin/auth/login", json={"email": operator_email, "password": "an operator passphrase 9c2"}
            )
            assert login.status_code == 200, login.text
            callers["operator"] = at(tenant, login.json()["access_token"])
            permissions_of = {**granted, "api_key": key_scopes, "anonymous": set(), "operator": set()}
            catalog = {
                p["name"]
                for p in (await client.get("/api/roles", headers=owner(tenant))).json()["permissions"]
            }

            walked: list[tuple[str, str]] = []
            undeclared: list[str] = []
            wrong: list[str] = []
            for route in client.app.routes:
                if not isinstance(route, HTTPRoute) or route.path.startswith("/schema"):
                    continue
                for handler in route.route_handlers:
                    methods = sorted(handler.http_methods)
                    permission = handler.opt.get("permission")
                    if methods == ["OPTIONS"] and permission is None:
                        continue  # Litestar's own OPTIONS answer, checked below
                    if permission is None:
                        undeclared.append(f"{methods} {route.path}")
                        continue
                    assert permission in (PUBLIC, AUTHENTICATED, OPERATOR) or permission in catalog, (
                        route.path,
                        permission,
                    )
                    for method in methods:
                        if method in ("HEAD", "OPTIONS"):
                            continue
                        walked.append((method, route.path))
                        url = _fill(route.path, route)
                        for who, headers in callers.items():
                            response = await client.request(
                                method, url, headers=headers, json={} if method in _BODY_METHODS else None
                            )
                            status = response.status_code
                            expected: str
                            if in_operator_area(route.path):
                                # Operators only (the log-in aside); tenant credentials are refused.
                                if who == "operator" or (who == "anonymous" and permission == PUBLIC
                                                         and route.path == "/api/admin/auth/login"):
                                    ok, expected = status not in (401, 403), "not 401/403"
                                else:
                                    ok, expected = status == 401, "401"
                            elif handler.opt.get(SKIP_AUTHENTICATION):
                                # Inbound webhooks read no credential at all (a signature and the
                                # path's token speak for the sender): every caller is anonymous.
                                ok, expected = status not in (401, 403), "not 401/403"
                            elif who == "operator":
                                # An operator's token is no tenant credential: refused everywhere else.
                                ok, expected = status == 401, "401"
                            elif permission == PUBLIC:
                                ok, expected = status not in (401, 403), "not 401/403"
                            elif who == "anonymous":
                                ok, expected = status == 401, "401"
                            elif permission == AUTHENTICATED or permission in permissions_of[who]:
                                ok = status not in (401, 403) or (who == "api_key" and _user_only(response))
                                expected = "not 401/403"
                            else:
                                ok, expected = status == 403, "403"
                            assert status < 500, (method, url, who, response.text)
                            if not ok:
                                wrong.append(
                                    f"{method} {route.path} as {who} ({permission}): {status}, "
                                    f"expected {expected}: {response.text[:200]}"
                                )
            assert not undeclared, undeclared
            assert not wrong, "\n".join(wrong)
            # The walk saw the kernel's routes and the plugin's (and adapts to routes added later).
            paths = {p for _, p in walked}
            assert {
                "/api/auth/login",
                "/api/roles",
                "/api/api-keys/{key_id:uuid}",
                f"/api/{name}/items",
                "/api/admin/tenants",
                "/api/admin/tenants/{ref:str}/plan",
                f"/api/admin/{name}/stats",
                f"/api/admin/{name}/touch",
            } <= paths
            assert len(walked) >= 25

            # Litestar's automatic OPTIONS answers carry no data and no permission is needed to
            # learn which methods a path has; they must not run a handler.
            response = await client.options(f"/api/{name}/items", headers=at(tenant))
            assert response.status_code in (204, 403), response.text
            # Every caller's credentials still work after the walk (nothing in it revoked them).
            for who, headers in callers.items():
                if who not in ("anonymous", "operator"):
                    assert (await client.get(f"/api/{name}/whoami", headers=headers)).status_code == 200, who
            stats = await client.get(f"/api/admin/{name}/stats", headers=callers["operator"])
            assert stats.json() == {"operator": operator_email}
