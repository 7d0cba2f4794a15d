"""The CRM module over HTTP: contacts and companies, with two tenants."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, settings_for


@pytest.fixture(scope="module")
async def crm_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    result = settings_for(database_url, servers[1], tmp_path_factory.mktemp("crm"), BUSINESSOS_PLUGINS="crm")
    plugins = load_app_plugins(result.plugins_allowlist)
    crm = plugins.get("crm")
    assert crm is not None and crm.active, crm and crm.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def api(crm_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(crm_settings) as client:
        yield client


async def crm_tenant(api: AsyncTestClient[Any], prefix: str = "crm") -> dict[str, Any]:
    """A new tenant with the CRM enabled; ``h`` holds its request headers (owner credentials)."""
    tenant = await new_tenant(api, prefix)
    h = {"X-Tenant-ID": tenant["slug"]}
    response = await api.post("/api/modules/crm/enable", headers=h)
    assert response.status_code == 200, response.text
    return {**tenant, "h": h}


async def make(api: AsyncTestClient[Any], t: dict[str, Any], what: str, **body: Any) -> dict[str, Any]:
    response = await api.post(f"/api/crm/{what}", json=body, headers=t["h"])
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


# ---- contacts and companies --------------------------------------------------------------------


async def test_contact_list_has_the_original_shape_and_pagination(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    for i in range(5):
        await make(api, t, "contacts", first_name=f"P{i}", last_name="Page")
    body = (await api.get("/api/crm/contacts", params={"limit": 2, "page": 3}, headers=t["h"])).json()
    assert set(body) == {"contacts", "pagination"}
    assert body["pagination"] == {"page": 3, "limit": 2, "total": 5, "pages": 3}
    assert [c["first_name"] for c in body["contacts"]] == ["P0"]  # newest first: P4 P3 | P2 P1 | P0
    assert (await api.get("/api/crm/contacts", params={"page": 4, "limit": 2}, headers=t["h"])).json()["contacts"] == []


async def test_limit_above_100_is_refused(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    body = problem(await api.get("/api/crm/contacts", params={"limit": 101}, headers=t["h"]), 422)
    assert body["errors"][0]["field"] == "limit"
    bad = {"limit": 101, "page": 0, "sort": "colour"}
    body = problem(await api.get("/api/crm/contacts", params=bad, headers=t["h"]), 422)
    assert [e["field"] for e in body["errors"]] == ["page", "limit", "sort"]
    assert (await api.get("/api/crm/contacts", params={"limit": 100}, headers=t["h"])).status_code == 200


async def test_contact_filters_by_company_owner_and_creation_time(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    acme = await make(api, t, "companies", name="Acme", domain="acme.example")
    first = await make(api, t, "contacts", first_name="Ada", company_id=acme["id"], owner_id=t["user_id"])
    await make(api, t, "contacts", first_name="Bob")
    third = await make(api, t, "contacts", first_name="Cy", company_id=acme["id"])
    assert first["company_name"] == "Acme"

    def names(response: Any) -> list[str]:
        assert response.status_code == 200, response.text
        return sorted(c["first_name"] for c in response.json()["contacts"])

    assert names(await api.get("/api/crm/contacts", params={"company_id": acme["id"]}, headers=t["h"])) == [
        "Ada",
        "Cy",
    ]
    assert names(await api.get("/api/crm/contacts", params={"owner_id": t["user_id"]}, headers=t["h"])) == ["Ada"]
    after = await api.get("/api/crm/contacts", params={"created_after": third["created_at"]}, headers=t["h"])
    assert names(after) == ["Cy"]
    before = await api.get("/api/crm/contacts", params={"created_before": third["created_at"]}, headers=t["h"])
    assert names(before) == ["Ada", "Bob"]


async def test_contact_sort_orders_and_unknown_sort_is_422(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    for first, last, email in (("A", "Zed", "m@x.example"), ("B", "Young", None), ("C", "Abel", "a@x.example")):
        await make(api, t, "contacts", first_name=first, last_name=last, email=email)

    async def order(sort: str) -> list[str]:
        response = await api.get("/api/crm/contacts", params={"sort": sort}, headers=t["h"])
        assert response.status_code == 200, response.text
        return [c["first_name"] for c in response.json()["contacts"]]

    assert await order("created_at") == ["A", "B", "C"]
    assert await order("-created_at") == ["C", "B", "A"]
    assert await order("last_name") == ["C", "B", "A"]
    assert await order("email") == ["C", "A", "B"]  # no e-mail last
    body = problem(await api.get("/api/crm/contacts", params={"sort": "phone"}, headers=t["h"]), 422)
    assert body["errors"][0]["field"] == "sort"


async def test_search_finds_contacts_by_name_email_and_company_name(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    globex = await make(api, t, "companies", name="Globex")
    await make(api, t, "contacts", first_name="Grace", last_name="Hopper", email="grace@navy.example")
    await make(api, t, "contacts", first_name="Hank", last_name="Scorpio", company_id=globex["id"])
    await make(api, t, "contacts", first_name="Alan", last_name="Turing")

    async def found(q: str) -> list[str]:
        response = await api.get("/api/crm/contacts", params={"q": q}, headers=t["h"])
        assert response.status_code == 200, response.text
        return sorted(c["first_name"] for c in response.json()["contacts"])

    assert await found("hopper") == ["Grace"]
    assert await found("navy") == ["Grace"]
    assert await found("globex") == ["Hank"]
    assert await found("alan or grace") == ["Alan", "Grace"]
    assert await found("-turing hank") == ["Hank"]
    # Renaming the company reaches its contacts' search.
    await api.patch(f"/api/crm/companies/{globex['id']}", json={"name": "Initech", "version": 1}, headers=t["h"])
    assert await found("initech") == ["Hank"] and await found("globex") == []


async def test_cursor_paging_walks_every_contact_once_while_rows_are_added(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    ids = [(await make(api, t, "contacts", first_name=f"C{i}"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor = ""
    while True:
        response = await api.get("/api/crm/contacts", params={"cursor": cursor, "limit": 3}, headers=t["h"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"contacts", "next_cursor"}
        seen += [c["id"] for c in body["contacts"]]
        if len(seen) == 3:  # a row added mid-walk (newer than the walk) neither shifts nor repeats rows
            await make(api, t, "contacts", first_name="late")
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert seen == list(reversed(ids))
    ascending = (
        await api.get("/api/crm/contacts", params={"cursor": "", "sort": "created_at", "limit": 100}, headers=t["h"])
    ).json()
    assert [c["id"] for c in ascending["contacts"]][:7] == ids and ascending["next_cursor"] is None
    problem(await api.get("/api/crm/contacts", params={"cursor": "garbage!"}, headers=t["h"]), 422)


async def test_duplicate_email_is_409_whatever_its_case(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    await make(api, t, "contacts", first_name="Ada", email="Ada@Example.com")
    body = problem(
        await api.post("/api/crm/contacts", json={"first_name": "A2", "email": "ada@example.COM"}, headers=t["h"]),
        409,
    )
    assert body["errors"][0]["field"] == "email"
    # Another tenant may have the same address; and a change onto a used address is refused too.
    await make(api, other, "contacts", first_name="Ada", email="ada@example.com")
    bob = await make(api, t, "contacts", first_name="Bob", email="bob@example.com")
    problem(
        await api.patch(
            f"/api/crm/contacts/{bob['id']}", json={"email": "ADA@example.com", "version": 1}, headers=t["h"]
        ),
        409,
    )


async def test_stale_writes_answer_412_with_if_match_409_with_version_and_428_with_neither(
    api: AsyncTestClient[Any],
) -> None:
    t = await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    url = f"/api/crm/contacts/{c['id']}"
    got = await api.get(url, headers=t["h"])
    assert got.headers["etag"] == '"1"' and got.json()["version"] == 1

    problem(await api.patch(url, json={"first_name": "X"}, headers=t["h"]), 428)
    first = await api.patch(url, json={"first_name": "Ada2"}, headers={**t["h"], "If-Match": '"1"'})
    assert first.status_code == 200 and first.json()["version"] == 2 and first.headers["etag"] == '"2"'
    body = problem(await api.patch(url, json={"first_name": "Lost"}, headers={**t["h"], "If-Match": '"1"'}), 412)
    assert body["current_version"] == 2
    problem(await api.patch(url, json={"first_name": "Lost", "version": 1}, headers=t["h"]), 409)
    assert (await api.patch(url, json={"last_name": "L", "version": 2}, headers=t["h"])).json()["version"] == 3
    final = (await api.get(url, headers=t["h"])).json()
    assert (final["first_name"], final["last_name"]) == ("Ada2", "L")


async def test_another_tenants_ids_answer_404(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    co = await make(api, t, "companies", name="Acme")
    for url in (f"/api/crm/contacts/{c['id']}", f"/api/crm/companies/{co['id']}"):
        problem(await api.get(url, headers=other["h"]), 404)
        problem(await api.patch(url, json={"version": 1}, headers=other["h"]), 404)
        problem(await api.delete(url, headers=other["h"]), 404)
    # Nor can another tenant's company be linked.
    body = problem(
        await api.post("/api/crm/contacts", json={"first_name": "X", "company_id": co["id"]}, headers=other["h"]),
        422,
    )
    assert body["errors"][0]["field"] == "company_id"
    assert (await api.get(f"/api/crm/contacts/{c['id']}", headers=t["h"])).status_code == 200
    assert (await api.get("/api/crm/contacts", headers=other["h"])).json()["pagination"]["total"] == 0


async def test_company_crud_and_delete_keeps_its_contacts(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    co = await make(api, t, "companies", name="Acme", domain="acme.example")
    c = await make(api, t, "contacts", first_name="Ada", company_id=co["id"])
    listed = (await api.get("/api/crm/companies", params={"q": "acme"}, headers=t["h"])).json()
    assert [x["id"] for x in listed["companies"]] == [co["id"]] and listed["pagination"]["total"] == 1
    response = await api.delete(f"/api/crm/companies/{co['id']}", headers=t["h"])
    assert response.status_code == 204, response.text
    problem(await api.get(f"/api/crm/companies/{co['id']}", headers=t["h"]), 404)
    left = (await api.get(f"/api/crm/contacts/{c['id']}", headers=t["h"])).json()
    assert (left["company_id"], left["company_name"]) == (None, None)
    assert (await api.delete(f"/api/crm/contacts/{c['id']}", headers=t["h"])).status_code == 204
    problem(await api.get(f"/api/crm/contacts/{c['id']}", headers=t["h"]), 404)


async def test_every_contact_mutation_leaves_an_audit_row(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    await api.patch(f"/api/crm/contacts/{c['id']}", json={"first_name": "Bea", "version": 1}, headers=t["h"])
    await api.delete(f"/api/crm/contacts/{c['id']}", headers=t["h"])
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.*"}, headers=t["h"])).json()["items"]
    by_action = {e["action"]: e for e in logs}
    assert set(by_action) == {"crm.contact.created", "crm.contact.updated", "crm.contact.deleted"}
    assert all(e["resource_id"] == c["id"] and e["actor"] == f"user:{t['user_id']}" for e in logs)
    updated = by_action["crm.contact.updated"]
    assert (updated["before"]["first_name"], updated["after"]["first_name"]) == ("Ada", "Bea")
    assert all(e["action"] != "http.post" for e in (await api.get("/api/audit/logs", headers=t["h"])).json()["items"])


async def test_a_viewer_can_read_but_not_write(api: AsyncTestClient[Any]) -> None:
    from tests.test_access import join

    t = await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    viewer = await join(api, t, "viewer")
    h = {"X-Tenant-ID": t["slug"], "Authorization": f"Bearer {viewer['access_token']}"}
    assert (await api.get("/api/crm/contacts", headers=h)).status_code == 200
    assert (await api.get(f"/api/crm/contacts/{c['id']}", headers=h)).status_code == 200
    problem(await api.post("/api/crm/contacts", json={"first_name": "X"}, headers=h), 403)
    problem(await api.patch(f"/api/crm/contacts/{c['id']}", json={"version": 1}, headers=h), 403)
    problem(await api.delete(f"/api/crm/contacts/{c['id']}", headers=h), 403)
    problem(await api.post("/api/crm/companies", json={"name": "X"}, headers=h), 403)


async def test_disabled_module_answers_404_naming_it_and_keeps_the_data(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    assert (await api.post("/api/modules/crm/disable", headers=t["h"])).status_code == 200
    body = problem(await api.get("/api/crm/contacts", headers=t["h"]), 404)
    assert body["module"] == "crm" and "crm" in body["detail"]
    problem(await api.post("/api/crm/contacts", json={"first_name": "X"}, headers=t["h"]), 404)
    assert (await api.post("/api/modules/crm/enable", headers=t["h"])).status_code == 200
    back = await api.get(f"/api/crm/contacts/{c['id']}", headers=t["h"])
    assert back.status_code == 200 and back.json()["first_name"] == "Ada"


async def test_invalid_contact_input_is_422_naming_the_field(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    body = problem(await api.post("/api/crm/contacts", json={"first_name": "A", "email": "nope"}, headers=t["h"]), 422)
    assert body["errors"][0]["field"] == "email"
    problem(await api.post("/api/crm/contacts", json={"last_name": "A"}, headers=t["h"]), 422)
    problem(await api.get(f"/api/crm/contacts/{uuid.uuid4()}", headers=t["h"]), 404)


async def test_contact_changes_put_their_events_in_the_outbox(
    api: AsyncTestClient[Any], crm_settings: Settings
) -> None:
    from sqlalchemy import text

    from tests.conftest import other_process

    t = await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    await api.patch(f"/api/crm/contacts/{c['id']}", json={"first_name": "Bea", "version": 1}, headers=t["h"])
    problem(
        await api.patch(f"/api/crm/contacts/{c['id']}", json={"first_name": "X", "version": 1}, headers=t["h"]), 409
    )
    await api.delete(f"/api/crm/contacts/{c['id']}", headers=t["h"])
    async with other_process(crm_settings) as kernel, kernel.db.tenant(uuid.UUID(t["id"])) as session:
        rows = (
            await session.execute(
                text("select event, payload from events_outbox where event not like 'kernel.%' order by created_at, id")
            )
        ).all()
    # The refused change left no event: events commit with the change or not at all.
    assert [(r.event, r.payload.get("first_name")) for r in rows] == [
        ("crm.contact.created", "Ada"),
        ("crm.contact.updated", "Bea"),
        ("crm.contact.deleted", None),
    ]
    assert all(r.payload.get("id") == c["id"] for r in rows)


async def test_company_list_sorts_by_name_filters_by_owner_and_pages_by_cursor(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    for name in ("Cyberdyne", "Acme", "Blue Sun"):
        await make(api, t, "companies", name=name, owner_id=t["user_id"] if name != "Acme" else None)
    by_name = (await api.get("/api/crm/companies", params={"sort": "name"}, headers=t["h"])).json()
    assert [c["name"] for c in by_name["companies"]] == ["Acme", "Blue Sun", "Cyberdyne"]
    owned = (await api.get("/api/crm/companies", params={"owner_id": t["user_id"]}, headers=t["h"])).json()
    assert sorted(c["name"] for c in owned["companies"]) == ["Blue Sun", "Cyberdyne"]
    first = (await api.get("/api/crm/companies", params={"cursor": "", "limit": 2}, headers=t["h"])).json()
    rest = (
        await api.get("/api/crm/companies", params={"cursor": first["next_cursor"], "limit": 2}, headers=t["h"])
    ).json()
    assert [c["name"] for c in first["companies"] + rest["companies"]] == ["Blue Sun", "Acme", "Cyberdyne"]
    assert rest["next_cursor"] is None
    problem(await api.get("/api/crm/companies", params={"cursor": "", "sort": "name"}, headers=t["h"]), 422)


async def test_crm_is_discovered_like_a_third_party_plugin_and_documents_its_api(api: AsyncTestClient[Any]) -> None:
    crm = load_app_plugins(frozenset({"crm"})).get("crm")
    assert crm is not None and crm.active and crm.distribution == "businessos"
    assert sorted(crm.table_names()) == [
        "crm_activities", "crm_companies", "crm_contacts", "crm_deal_stage_history", "crm_deals",
        "crm_pipeline_stages", "crm_pipelines",
    ]  # fmt: skip
    assert {p.name for p in crm.permissions} == {
        f"crm.{r}.{v}" for r in ("contacts", "companies", "deals", "pipelines", "activities") for v in ("read", "write")
    }
    events = {e.name for e in crm.event_types}
    assert {"crm.contact.created", "crm.deal.stage_changed", "crm.deal.won", "crm.deal.lost"} <= events
    schema = await api.get("/schema/openapi.json")
    assert schema.status_code == 200, schema.text
    paths = schema.json()["paths"]
    assert {"/api/crm/contacts", "/api/crm/deals/{deal_id}/move", "/api/crm/contacts/import"} <= set(paths)


async def test_two_concurrent_writes_on_one_version_cannot_both_win(api: AsyncTestClient[Any]) -> None:
    import asyncio

    t = await crm_tenant(api)
    c = await make(api, t, "contacts", first_name="Ada")
    url = f"/api/crm/contacts/{c['id']}"
    answers = await asyncio.gather(
        *(api.patch(url, json={"last_name": f"L{i}"}, headers={**t["h"], "If-Match": '"1"'}) for i in range(4))
    )
    assert sorted(a.status_code for a in answers) == [200, 412, 412, 412]
    winner = next(a.json() for a in answers if a.status_code == 200)
    assert (await api.get(url, headers=t["h"])).json() == winner
    problem(await api.get("/api/crm/contacts", params={"page": 10**12}, headers=t["h"]), 422)


async def test_an_owner_must_be_a_member_of_the_tenant(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api, "crm-other")
    for stranger in (str(uuid.uuid4()), other["user_id"]):  # nobody, and a member of another tenant
        for what, body in (("contacts", {"first_name": "X"}), ("companies", {"name": "X Co"})):
            body = problem(await api.post(f"/api/crm/{what}", json={**body, "owner_id": stranger}, headers=t["h"]), 422)
            assert [e["field"] for e in body["errors"]] == ["owner_id"]
    contact = await make(api, t, "contacts", first_name="Y")
    patch = await api.patch(
        f"/api/crm/contacts/{contact['id']}",
        json={"owner_id": other["user_id"], "version": contact["version"]},
        headers=t["h"],
    )
    problem(patch, 422)
    owned = await api.patch(
        f"/api/crm/contacts/{contact['id']}",
        json={"owner_id": t["user_id"], "version": contact["version"]},
        headers=t["h"],
    )
    assert owned.status_code == 200, owned.text
    assert owned.json()["owner_id"] == t["user_id"]
