"""Integrity across tenants and imports (issue 10, item 4): each case the attacker run found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import new_tenant
from tests.test_crm import api, crm_settings, crm_tenant, make, problem

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py

CSV = {"Content-Type": "text/csv"}


@contextmanager
def anonymous(api: AsyncTestClient[Any]) -> Iterator[None]:
    """Requests without the owner's token the suite adds for tenants made by ``new_tenant``."""
    hooks = api.event_hooks
    api.event_hooks = {"request": [], "response": []}
    try:
        yield
    finally:
        api.event_hooks = hooks


async def _import(api: AsyncTestClient[Any], t: dict[str, Any], what: str, body: str) -> Any:
    return await api.post(
        f"/api/crm/{what}/import", params={"mode": "per_row"}, content=body.encode(), headers={**t["h"], **CSV}
    )


async def test_csv_import_refuses_an_owner_who_is_not_a_member_row_by_row(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    body = f"first_name,owner_id\nMine,{t['user_id']}\nTheirs,{other['user_id']}\n"
    response = await _import(api, t, "contacts", body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["imported"] == 1
    assert [(e["row"], e["field"]) for e in report["errors"]] == [(3, "owner_id")]
    body = f"name,owner_id\nOurs,{t['user_id']}\nAlien,{other['user_id']}\n"
    report = (await _import(api, t, "companies", body)).json()
    assert report["imported"] == 1 and [(e["row"], e["field"]) for e in report["errors"]] == [(3, "owner_id")]
    names = {c["name"] for c in (await api.get("/api/crm/companies", headers=t["h"])).json()["companies"]}
    assert names == {"Ours"}
    # All or nothing: one stranger and nothing is imported.
    response = await api.post("/api/crm/contacts/import", params={"mode": "all_or_nothing"},
                              content=body.replace("name", "first_name", 1).encode(), headers={**t["h"], **CSV})
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["owner_id"]


async def test_contacts_import_naming_a_shared_company_name_is_a_row_error(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    await make(api, t, "companies", name="Acme")
    await make(api, t, "companies", name="acme")
    unique = await make(api, t, "companies", name="Initech")
    report = (await _import(api, t, "contacts", "first_name,company\nAda,ACME\nBob,Initech\n")).json()
    assert report["imported"] == 1
    [error] = report["errors"]
    assert error["row"] == 2 and error["field"] == "company" and "2 companies" in error["message"]
    [bob] = (await api.get("/api/crm/contacts", headers=t["h"])).json()["contacts"]
    assert bob["company_id"] == unique["id"]


async def test_a_budget_for_a_principal_of_another_tenant_is_refused(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await new_tenant(api)
    for principal in (f"user:{other['user_id']}", "api_key:00000000-0000-0000-0000-000000000000"):
        response = await api.put("/api/ai/budgets", json={"monthly_cost_limit": 5, "principal": principal},
                                 headers=t["h"])
        assert [e["field"] for e in problem(response, 422)["errors"]] == ["principal"]
    response = await api.put("/api/ai/budgets", json={"monthly_cost_limit": 5, "principal": f"user:{t['user_id']}"},
                             headers=t["h"])
    assert response.status_code == 200, response.text


async def test_a_refresh_naming_another_tenant_is_refused(api: AsyncTestClient[Any]) -> None:
    t, other = await new_tenant(api), await new_tenant(api)
    with anonymous(api):
        await _refresh_naming_another_tenant(api, t, other)


async def _refresh_naming_another_tenant(api: AsyncTestClient[Any], t: dict[str, Any], other: dict[str, Any]) -> None:
    for ref in (other["slug"], other["id"]):
        response = await api.post("/api/auth/refresh", json={"refresh_token": t["refresh_token"]},
                                  headers={"X-Tenant-ID": ref})
        problem(response, 403)
    # The token was not spent by the refusals: it still works with its own tenant (or none).
    response = await api.post("/api/auth/refresh", json={"refresh_token": t["refresh_token"]},
                              headers={"X-Tenant-ID": t["slug"]})
    assert response.status_code == 200, response.text


async def test_register_does_not_tell_an_anonymous_caller_the_slug(api: AsyncTestClient[Any]) -> None:
    t = await new_tenant(api)
    with anonymous(api):
        response = await api.post("/api/auth/register", json={"email": "stranger@example.com",
                                                              "password": "a-long-and-unusual-pass-phrase-31"},
                                  headers={"X-Tenant-ID": t["id"]})
    assert response.status_code == 403
    assert t["slug"] not in response.text
