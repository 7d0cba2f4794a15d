"""The CRM's pipelines, deals and activities over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel import sdk
from kernel.settings import Settings
from tests.conftest import other_process
from tests.test_crm import api, crm_settings, crm_tenant, make, problem

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py


async def sales_pipeline(api: AsyncTestClient[Any], t: dict[str, Any]) -> dict[str, Any]:
    stages = [{"name": "Lead"}, {"name": "Proposal"}, {"name": "Won", "kind": "won"}, {"name": "Lost", "kind": "lost"}]
    response = await api.post("/api/crm/pipelines", json={"name": "Sales", "stages": stages}, headers=t["h"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_pipelines_are_created_with_ordered_stages_listed_and_read(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    p = await sales_pipeline(api, t)
    assert [(st["name"], st["position"], st["kind"]) for st in p["stages"]] == [
        ("Lead", 0, "open"),
        ("Proposal", 1, "open"),
        ("Won", 2, "won"),
        ("Lost", 3, "lost"),
    ]
    assert (await api.get(f"/api/crm/pipelines/{p['id']}", headers=t["h"])).json() == p
    assert (await api.get("/api/crm/pipelines", headers=t["h"])).json() == {"pipelines": [p]}
    assert (await api.get("/api/crm/pipelines", headers=other["h"])).json() == {"pipelines": []}
    problem(await api.get(f"/api/crm/pipelines/{p['id']}", headers=other["h"]), 404)
    problem(await api.post("/api/crm/pipelines", json={"name": "X", "stages": []}, headers=t["h"]), 422)
    bad = [{"name": "A", "kind": "maybe"}]
    problem(await api.post("/api/crm/pipelines", json={"name": "X", "stages": bad}, headers=t["h"]), 422)


async def test_deal_amount_is_a_decimal_string_with_its_currency(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    d = await make(api, t, "deals", title="Big", amount="1234567890123456.78", currency="EUR", pipeline_id=p["id"])
    assert (d["amount"], d["currency"], d["stage_id"]) == ("1234567890123456.78", "EUR", p["stages"][0]["id"])
    assert d["version"] == 1
    body = {"title": "x", "amount": "1.234", "pipeline_id": p["id"]}
    assert problem(await api.post("/api/crm/deals", json=body, headers=t["h"]), 422)["errors"][0]["field"] == "amount"
    problem(await api.post("/api/crm/deals", json={**body, "amount": "1", "currency": "eur"}, headers=t["h"]), 422)
    changed = await api.patch(
        f"/api/crm/deals/{d['id']}", json={"amount": "10.50"}, headers={**t["h"], "If-Match": '"1"'}
    )
    assert changed.status_code == 200 and changed.json()["amount"] == "10.50"
    problem(await api.patch(f"/api/crm/deals/{d['id']}", json={"amount": "1"}, headers=t["h"]), 428)
    listed = (await api.get("/api/crm/deals", params={"pipeline_id": p["id"]}, headers=t["h"])).json()
    assert [x["id"] for x in listed["deals"]] == [d["id"]] and listed["pagination"]["total"] == 1


async def test_moving_a_deal_records_history_and_emits_stage_events(
    api: AsyncTestClient[Any], crm_settings: Settings
) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    lead, proposal, won = (st["id"] for st in p["stages"][:3])
    d = await make(api, t, "deals", title="Deal", amount="100.00", pipeline_id=p["id"])
    url = f"/api/crm/deals/{d['id']}/move"

    moved = await api.post(url, json={"stage_id": proposal}, headers=t["h"])
    assert moved.status_code == 200, moved.text
    assert (moved.json()["stage_id"], moved.json()["version"]) == (proposal, 2)
    assert (await api.post(url, json={"stage_id": won}, headers=t["h"])).json()["stage_id"] == won

    history = (await api.get(f"/api/crm/deals/{d['id']}/history", headers=t["h"])).json()
    assert [(h["from_stage_id"], h["to_stage_id"]) for h in history] == [
        (None, lead),
        (lead, proposal),
        (proposal, won),
    ]
    assert all(h["actor"] == f"user:{t['user_id']}" for h in history)

    # A stage of another pipeline (or tenant) is not a place this deal can go.
    other_p = await sales_pipeline(api, t)
    body = problem(await api.post(url, json={"stage_id": other_p["stages"][1]["id"]}, headers=t["h"]), 422)
    assert body["errors"][0]["field"] == "stage_id"

    logs = (await api.get("/api/audit/logs", params={"action": "crm.deal.*"}, headers=t["h"])).json()["items"]
    assert [e["action"] for e in logs].count("crm.deal.stage_changed") == 2

    if not hasattr(sdk, "emit"):
        return  # the outbox is not in the SDK yet: events are not recorded
    async with other_process(crm_settings) as kernel, kernel.db.tenant(uuid.UUID(t["id"])) as session:
        rows = (await session.execute(text("select event, payload from events_outbox order by created_at, id"))).all()
    # Events of one transaction share its time: compare them as a set, each move's pair together.
    events = sorted((r.event, r.payload.get("to_stage_id") or "") for r in rows if r.event.startswith("crm.deal."))
    assert events == sorted(
        [
            ("crm.deal.created", ""),
            ("crm.deal.stage_changed", proposal),
            ("crm.deal.stage_changed", won),
            ("crm.deal.won", won),
        ]
    )


async def test_moving_a_deal_to_a_lost_stage_emits_lost(api: AsyncTestClient[Any], crm_settings: Settings) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    d = await make(api, t, "deals", title="Deal", pipeline_id=p["id"])
    lost = p["stages"][3]["id"]
    assert (
        await api.post(f"/api/crm/deals/{d['id']}/move", json={"stage_id": lost}, headers=t["h"])
    ).status_code == 200
    if not hasattr(sdk, "emit"):
        return
    async with other_process(crm_settings) as kernel, kernel.db.tenant(uuid.UUID(t["id"])) as session:
        events = (await session.execute(text("select event from events_outbox"))).scalars().all()
    assert "crm.deal.lost" in events and "crm.deal.won" not in events


async def test_deals_of_another_tenant_answer_404(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    p = await sales_pipeline(api, t)
    d = await make(api, t, "deals", title="Deal", pipeline_id=p["id"])
    problem(await api.get(f"/api/crm/deals/{d['id']}", headers=other["h"]), 404)
    problem(
        await api.post(f"/api/crm/deals/{d['id']}/move", json={"stage_id": p["stages"][1]["id"]}, headers=other["h"]),
        404,
    )
    problem(await api.post("/api/crm/deals", json={"title": "x", "pipeline_id": p["id"]}, headers=other["h"]), 422)
    assert (await api.delete(f"/api/crm/deals/{d['id']}", headers=t["h"])).status_code == 204


async def test_an_activity_needs_a_contact_company_or_deal(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    body = problem(await api.post("/api/crm/activities", json={"kind": "note", "subject": "x"}, headers=t["h"]), 422)
    assert {e["field"] for e in body["errors"]} == {"contact_id", "company_id", "deal_id"}
    problem(
        await api.post(
            "/api/crm/activities",
            json={"kind": "note", "subject": "x", "contact_id": str(uuid.uuid4())},
            headers=t["h"],
        ),
        422,
    )


async def test_activities_are_listed_by_linked_object_and_changed_with_a_version(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    ada = await make(api, t, "contacts", first_name="Ada")
    acme = await make(api, t, "companies", name="Acme")
    call = await make(api, t, "activities", kind="call", subject="Intro", contact_id=ada["id"])
    await make(
        api, t, "activities", kind="task", subject="Send deck", company_id=acme["id"], due_at="2030-01-01T09:00:00Z"
    )
    by_contact = (await api.get("/api/crm/activities", params={"contact_id": ada["id"]}, headers=t["h"])).json()
    assert [a["subject"] for a in by_contact["activities"]] == ["Intro"]
    assert by_contact["pagination"]["total"] == 1
    by_company = (await api.get("/api/crm/activities", params={"company_id": acme["id"]}, headers=t["h"])).json()
    assert [a["subject"] for a in by_company["activities"]] == ["Send deck"]

    url = f"/api/crm/activities/{call['id']}"
    problem(await api.patch(url, json={"done": True}, headers=t["h"]), 428)
    done = await api.patch(url, json={"done": True, "version": 1}, headers=t["h"])
    assert done.status_code == 200 and done.json()["done"] is True and done.json()["version"] == 2
    problem(await api.patch(url, json={"done": False, "version": 1}, headers=t["h"]), 409)
    assert (await api.get("/api/crm/activities", params={"done": "true"}, headers=t["h"])).json()["pagination"][
        "total"
    ] == 1
    assert (await api.delete(url, headers=t["h"])).status_code == 204
    problem(await api.get(url, headers=t["h"]), 404)
