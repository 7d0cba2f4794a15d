"""Operators, from the outside: the CLI that makes them, their log-in, ``/api/admin`` over two
tenants, the audit rows their actions leave, and the wall between operator and tenant credentials."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.context import Kernel
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, other_process
from tests.test_cli import cli_env, error_line, run_cli  # noqa: F401 (cli_env is a fixture)

PASSWORD = "a long operator passphrase 7f3"


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client that adds no credentials of its own: every header is the test's."""
    async with open_client(settings) as client:
        client.event_hooks = {"request": [], "response": []}
        yield client


@pytest.fixture(scope="module")
async def kernel(settings: Settings) -> AsyncIterator[Kernel]:
    """The kernel's services as another process (the CLI) holds them."""
    async with other_process(settings) as opened:
        yield opened


async def new_operator(api: AsyncTestClient[Any], kernel: Kernel) -> dict[str, Any]:
    """An operator made the way ``businessos operators create`` makes one, logged in over HTTP."""
    email = f"op-{uuid.uuid4().hex[:10]}@example.com"
    await kernel.operators.create(email, PASSWORD)
    response = await api.post("/api/admin/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {"email": email, "id": body["operator"]["id"], "token": body["access_token"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def owner(tenant: dict[str, Any]) -> dict[str, str]:
    return {**bearer(tenant["access_token"]), "X-Tenant-ID": tenant["slug"]}


def status_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


# --- the command line ---------------------------------------------------------------------------


async def test_cli_creates_lists_and_disables_operators(
    cli_env: dict[str, str], api: AsyncTestClient[Any]  # noqa: F811
) -> None:
    email = f"cli-op-{uuid.uuid4().hex[:8]}@example.com"
    made = run_cli("operators", "create", email, env=cli_env, stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    assert email in made.stdout
    again = run_cli("operators", "create", email.upper(), env=cli_env, stdin=PASSWORD + "\n")
    assert "already exists" in error_line(again)
    weak = run_cli("operators", "create", "weak-" + email, env=cli_env, stdin="password\n")
    assert error_line(weak).startswith("businessos: error:")

    login = await api.post("/api/admin/auth/login", json={"email": email, "password": PASSWORD})
    token = status_of(login, 200)["access_token"]
    assert (await api.get("/api/admin/tenants", headers=bearer(token))).status_code == 200

    listed = run_cli("operators", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if email in line)
    assert "active" in line and "never" not in line  # the log-in above is recorded

    disabled = run_cli("operators", "disable", email, env=cli_env)
    assert disabled.returncode == 0, disabled.stderr
    # At once: the token already issued and a new log-in are both refused.
    assert (await api.get("/api/admin/tenants", headers=bearer(token))).status_code == 401
    login = await api.post("/api/admin/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 401
    assert "disabled" in next(line for line in run_cli("operators", "list", env=cli_env).stdout.splitlines()
                              if email in line)
    assert "no operator" in error_line(run_cli("operators", "disable", "nobody@example.com", env=cli_env))


# --- log-in -------------------------------------------------------------------------------------


async def test_operator_log_in_refuses_wrong_passwords_then_locks(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    op = await new_operator(api, kernel)
    for _ in range(5):
        wrong = await api.post("/api/admin/auth/login", json={"email": op["email"], "password": "nope"})
        assert wrong.status_code == 401, wrong.text
    locked = await api.post("/api/admin/auth/login", json={"email": op["email"], "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    unknown = await api.post("/api/admin/auth/login", json={"email": "x@example.com", "password": PASSWORD})
    assert unknown.status_code == 401
    bad = await api.post("/api/admin/auth/login", json={"email": "not-an-email", "password": PASSWORD})
    assert bad.status_code in (400, 422) and "email" in bad.text


async def test_operator_log_in_is_rate_limited_per_address(settings: Settings, tmp_path: Any) -> None:
    from tests.conftest import settings_for

    assert settings.database_url and settings.redis_url
    strict = settings_for(
        settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE="3"
    )
    async with open_client(strict) as client:
        client.event_hooks = {"request": [], "response": []}
        statuses = [
            (await client.post("/api/admin/auth/login", json={"email": f"r{i}@example.com", "password": "x"},
                               headers={"X-Forwarded-For": "1.2.3.4"})).status_code
            for i in range(5)
        ]
    assert statuses[:3] == [401, 401, 401] and 429 in statuses[3:], statuses


# --- credentials stay on their side -------------------------------------------------------------


async def test_tenant_and_operator_credentials_never_cross(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    op = await new_operator(api, kernel)
    tenant = await new_tenant(api, "wall")
    key = status_of(
        await api.post("/api/api-keys", json={"name": "k", "role": "admin"}, headers=owner(tenant)), 201
    )["key"]
    for headers in (owner(tenant), bearer(tenant["access_token"]), {"X-API-Key": key}, bearer(key), {}):
        for path in ("/api/admin/tenants", f"/api/admin/tenants/{tenant['slug']}", "/metrics"):
            response = await api.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
        changed = await api.post(f"/api/admin/tenants/{tenant['id']}/suspend", headers=headers)
        assert changed.status_code == 401
    for path in ("/api/tenants/current", "/api/auth/me", "/api/api-keys", "/api/audit/logs"):
        for headers in (bearer(op["token"]), {**bearer(op["token"]), "X-Tenant-ID": tenant["slug"]}):
            assert (await api.get(path, headers=headers)).status_code == 401, path
    # The tenant was never suspended by any of that.
    assert (await api.get("/api/tenants/current", headers=owner(tenant))).status_code == 200


# --- /api/admin over two tenants ------------------------------------------------------------------


async def test_operator_lists_searches_and_pages_tenants(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    op = await new_operator(api, kernel)
    marker = uuid.uuid4().hex[:6]
    a = await new_tenant(api, f"srch-{marker}-a")
    b = await new_tenant(api, f"srch-{marker}-b")
    auth = bearer(op["token"])
    found = status_of(await api.get("/api/admin/tenants", params={"q": f"{marker}-A"}, headers=auth), 200)
    assert [t["id"] for t in found["tenants"]] == [a["id"]]
    both = status_of(await api.get("/api/admin/tenants", params={"q": marker, "limit": 1}, headers=auth), 200)
    assert both["pagination"] == {"page": 1, "limit": 1, "total": 2, "pages": 2}
    second = status_of(
        await api.get("/api/admin/tenants", params={"q": marker, "limit": 1, "page": 2}, headers=auth), 200
    )
    assert {both["tenants"][0]["id"], second["tenants"][0]["id"]} == {a["id"], b["id"]}
    # LIKE wildcards in q are literal.
    none = status_of(await api.get("/api/admin/tenants", params={"q": "%"}, headers=bearer(op["token"])), 200)
    assert none["tenants"] == []
    for params in ({"limit": 0}, {"page": 0}, {"limit": 101}, {"status": "gone"}, {"q": "x" * 101}):
        bad = await api.get("/api/admin/tenants", params=params, headers=bearer(op["token"]))
        assert bad.status_code in (400, 422), (params, bad.text)
    assert (await api.get("/api/admin/tenants/no-such-tenant", headers=bearer(op["token"]))).status_code == 404
    assert (await api.get(f"/api/admin/tenants/{uuid.uuid4()}", headers=bearer(op["token"]))).status_code == 404


async def test_operator_actions_land_in_the_tenants_audit_chain(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    op = await new_operator(api, kernel)
    auth = bearer(op["token"])
    a, b = await new_tenant(api, "opa"), await new_tenant(api, "opb")
    status_of(await api.post("/api/api-keys", json={"name": "k", "role": "viewer"}, headers=owner(a)), 201)
    assert (await api.post("/api/modules/x/enable", headers=owner(a))).status_code == 404  # no plugins here

    detail = status_of(await api.get(f"/api/admin/tenants/{a['slug']}", headers=auth), 200)
    assert detail["tenant"]["id"] == a["id"]
    assert detail["usage"]["members"] == 1 and detail["usage"]["api_keys"] == 1
    assert detail["usage"]["modules"] == [] and detail["usage"]["ai_calls"] == 0

    suspended = status_of(await api.post(f"/api/admin/tenants/{a['id']}/suspend", headers=auth), 200)
    assert suspended["status"] == "suspended"
    assert (await api.get("/api/tenants/current", headers=owner(a))).status_code == 403
    assert (await api.get("/api/tenants/current", headers=owner(b))).status_code == 200
    # A suspended tenant is still visible to the operator.
    seen = status_of(await api.get(f"/api/admin/tenants/{a['id']}", headers=auth), 200)
    assert seen["tenant"]["status"] == "suspended"
    status_of(await api.post(f"/api/admin/tenants/{a['slug']}/activate", headers=auth), 200)
    assert (await api.get("/api/tenants/current", headers=owner(a))).status_code == 200

    assert status_of(await api.put(f"/api/admin/tenants/{a['slug']}/plan", json={"plan": "pro"}, headers=auth), 200)[
        "plan"
    ] == "pro"
    bad = await api.put(f"/api/admin/tenants/{a['slug']}/plan", json={"plan": "Not A Plan"}, headers=auth)
    assert bad.status_code in (400, 422) and "plan" in bad.text
    assert (await api.get("/api/tenants/current", headers=owner(a))).json()["plan"] == "pro"
    assert (await api.get("/api/tenants/current", headers=owner(b))).json()["plan"] == "free"

    verified = status_of(await api.get(f"/api/admin/tenants/{a['slug']}/audit/verify", headers=auth), 200)
    assert verified["chain"]["valid"] is True and verified["chain"]["rows"] >= 5

    actor = f"operator:{op['id']}"
    logs = status_of(await api.get("/api/audit/logs", params={"actor": actor}, headers=owner(a)), 200)
    actions = sorted(row["action"] for row in logs["items"])
    assert actions == sorted(
        [
            "operator.tenant.viewed", "operator.tenant.viewed", "tenant.status.updated",
            "tenant.status.updated", "tenant.plan.updated", "operator.audit.verified",
        ]
    ), actions
    # Tenant B saw none of it, and A's chain still verifies from the tenant's side.
    other = status_of(await api.get("/api/audit/logs", params={"actor": actor}, headers=owner(b)), 200)
    assert other["items"] == []
    assert status_of(await api.get("/api/audit/verify", headers=owner(a)), 200)["valid"] is True


async def test_usage_overview_pages_every_tenant(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    op = await new_operator(api, kernel)
    made = await new_tenant(api, "usage")
    first = status_of(await api.get("/api/admin/usage", params={"limit": 100}, headers=bearer(op["token"])), 200)
    total, pages = first["pagination"]["total"], first["pagination"]["pages"]
    assert total >= 1 and len(first["tenants"]) == min(total, 100)
    # Oldest first: the tenant just made is on the last page.
    last = status_of(
        await api.get("/api/admin/usage", params={"limit": 100, "page": pages}, headers=bearer(op["token"])), 200
    )
    row = next(r for r in last["tenants"] if r["tenant"]["id"] == made["id"])
    assert {"tenant", "members", "api_keys", "modules", "ai_calls", "ai_tokens", "ai_cost", "since"} <= row.keys()
    assert (row["members"], row["api_keys"], row["modules"], row["ai_calls"]) == (1, 0, [], 0)
    since = status_of(
        await api.get("/api/admin/usage", params={"since": "2000-01-01T00:00:00Z", "limit": 1},
                      headers=bearer(op["token"])), 200,
    )
    assert since["tenants"][0]["since"].startswith("2000-01-01")
    bad = await api.get("/api/admin/usage", params={"since": "yesterday"}, headers=bearer(op["token"]))
    assert bad.status_code in (400, 422)
