"""The CRM's pipeline and stage management, and the deal and activity lists, over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel.settings import Settings
from tests.conftest import other_process
from tests.test_crm import api, crm_settings, crm_tenant, make, problem
from tests.test_crm_deals import sales_pipeline

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py


def stages_of(pipeline: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(st["name"], st["position"], st["kind"]) for st in pipeline["stages"]]


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def audit_actions(api: AsyncTestClient[Any], t: dict[str, Any], pattern: str) -> list[str]:
    logs = ok(await api.get("/api/audit/logs", params={"action": pattern, "limit": 200}, headers=t["h"]))["items"]
    return [e["action"] for e in logs]


# ---- pipelines ---------------------------------------------------------------------------------


async def test_a_pipeline_is_renamed_and_made_the_default_one_at_a_time(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    sales, hiring = await sales_pipeline(api, t), await sales_pipeline(api, t)
    assert sales["is_default"] is False
    url = f"/api/crm/pipelines/{sales['id']}"

    renamed = ok(await api.patch(url, json={"name": "Enterprise", "is_default": True}, headers=t["h"]))
    assert (renamed["name"], renamed["is_default"], renamed["stages"]) == ("Enterprise", True, sales["stages"])
    moved = ok(await api.patch(f"/api/crm/pipelines/{hiring['id']}", json={"is_default": True}, headers=t["h"]))
    assert moved["is_default"] is True
    listed = ok(await api.get("/api/crm/pipelines", headers=t["h"]))["pipelines"]
    assert [(p["name"], p["is_default"]) for p in listed] == [("Enterprise", False), ("Sales", True)]

    # A deal with no pipeline goes to the default one, in its first stage.
    deal = await make(api, t, "deals", title="Default")
    assert (deal["pipeline_id"], deal["stage_id"]) == (hiring["id"], hiring["stages"][0]["id"])
    ok(await api.patch(f"/api/crm/pipelines/{hiring['id']}", json={"is_default": False}, headers=t["h"]))
    body = problem(await api.post("/api/crm/deals", json={"title": "Nowhere"}, headers=t["h"]), 422)
    assert body["errors"][0]["field"] == "pipeline_id"

    # Bad input names the field and changes nothing.
    body = problem(await api.patch(url, json={"name": ""}, headers=t["h"]), 422)
    body = problem(await api.patch(url, json={"colour": "red"}, headers=t["h"]), 422)
    assert ok(await api.get(url, headers=t["h"]))["name"] == "Enterprise"

    # Another tenant's pipeline is not there for it.
    problem(await api.patch(url, json={"name": "Mine"}, headers=other["h"]), 404)
    problem(await api.delete(url, headers=other["h"]), 404)
    assert await audit_actions(api, t, "crm.pipeline.*") == [
        "crm.pipeline.updated",
        "crm.pipeline.updated",
        "crm.pipeline.updated",
        "crm.pipeline.created",
        "crm.pipeline.created",
    ]


async def test_a_pipeline_in_use_is_not_deleted(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    deals = [await make(api, t, "deals", title=f"D{i}", pipeline_id=p["id"]) for i in range(3)]
    url = f"/api/crm/pipelines/{p['id']}"
    body = problem(await api.delete(url, headers=t["h"]), 409)
    assert body["deals"] == 3 and "3 deals" in body["detail"]
    assert ok(await api.get(url, headers=t["h"]))["stages"] == p["stages"]
    for d in deals:
        assert (await api.delete(f"/api/crm/deals/{d['id']}", headers=t["h"])).status_code == 204
    assert (await api.delete(url, headers=t["h"])).status_code == 204
    problem(await api.get(url, headers=t["h"]), 404)
    problem(await api.delete(url, headers=t["h"]), 404)
    assert (await audit_actions(api, t, "crm.pipeline.deleted")) == ["crm.pipeline.deleted"]


# ---- stages ------------------------------------------------------------------------------------


async def test_stages_are_added_reordered_and_marked_with_dense_positions(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    p = await sales_pipeline(api, t)
    base = f"/api/crm/pipelines/{p['id']}/stages"

    added = ok(await api.post(base, json={"name": "Demo", "position": 1}, headers=t["h"]), 201)
    assert stages_of(added) == [
        ("Lead", 0, "open"),
        ("Demo", 1, "open"),
        ("Proposal", 2, "open"),
        ("Won", 3, "won"),
        ("Lost", 4, "lost"),
    ]
    last = ok(await api.post(base, json={"name": "Parked", "kind": "lost", "position": 99}, headers=t["h"]), 201)
    assert stages_of(last)[-1] == ("Parked", 5, "lost")
    demo = added["stages"][1]["id"]

    # Move Demo to the end, rename it and make it a won stage.
    changed = ok(
        await api.patch(f"{base}/{demo}", json={"name": "Signed", "kind": "won", "position": 7}, headers=t["h"])
    )
    assert stages_of(changed) == [
        ("Lead", 0, "open"),
        ("Proposal", 1, "open"),
        ("Won", 2, "won"),
        ("Lost", 3, "lost"),
        ("Parked", 4, "lost"),
        ("Signed", 5, "won"),
    ]
    first = ok(await api.patch(f"{base}/{demo}", json={"position": 0}, headers=t["h"]))
    assert [name for name, _, _ in stages_of(first)] == ["Signed", "Lead", "Proposal", "Won", "Lost", "Parked"]
    assert ok(await api.get(f"/api/crm/pipelines/{p['id']}", headers=t["h"])) == first

    # Invalid input: 4xx naming it, nothing changed.
    problem(await api.patch(f"{base}/{demo}", json={"kind": "maybe"}, headers=t["h"]), 422)
    problem(await api.patch(f"{base}/{demo}", json={"position": -1}, headers=t["h"]), 422)
    problem(await api.post(base, json={"kind": "open"}, headers=t["h"]), 422)
    problem(await api.patch(f"{base}/{uuid.uuid4()}", json={"name": "x"}, headers=t["h"]), 404)
    assert ok(await api.get(f"/api/crm/pipelines/{p['id']}", headers=t["h"])) == first

    # A stage of another pipeline is not reachable through this one; another tenant sees nothing.
    q = await sales_pipeline(api, t)
    problem(await api.patch(f"{base}/{q['stages'][0]['id']}", json={"name": "x"}, headers=t["h"]), 404)
    problem(await api.post(base, json={"name": "Theirs"}, headers=other["h"]), 404)
    problem(await api.patch(f"{base}/{demo}", json={"name": "Theirs"}, headers=other["h"]), 404)
    problem(await api.delete(f"{base}/{demo}", headers=other["h"]), 404)

    actions = await audit_actions(api, t, "crm.stage.*")
    assert sorted(actions) == ["crm.stage.created"] * 2 + ["crm.stage.updated"] * 2


async def test_a_stage_with_deals_is_deleted_only_by_moving_them(
    api: AsyncTestClient[Any], crm_settings: Settings
) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    lead, proposal, won, _ = (st["id"] for st in p["stages"])
    base = f"/api/crm/pipelines/{p['id']}/stages"
    deals = [await make(api, t, "deals", title=f"D{i}", pipeline_id=p["id"]) for i in range(2)]

    body = problem(await api.delete(f"{base}/{lead}", headers=t["h"]), 409)
    assert body["deals"] == 2 and "2 deals" in body["detail"]
    other = await sales_pipeline(api, t)
    body = problem(
        await api.delete(f"{base}/{lead}", params={"move_to": other["stages"][1]["id"]}, headers=t["h"]), 422
    )
    assert body["errors"][0]["field"] == "move_to"
    body = problem(await api.delete(f"{base}/{lead}", params={"move_to": lead}, headers=t["h"]), 422)
    assert body["errors"][0]["field"] == "move_to"
    problem(await api.delete(f"{base}/{lead}", params={"move_to": "nope"}, headers=t["h"]), 422)
    assert ok(await api.get(f"/api/crm/pipelines/{p['id']}", headers=t["h"]))["stages"] == p["stages"]

    left = ok(await api.delete(f"{base}/{lead}", params={"move_to": won}, headers=t["h"]))
    assert stages_of(left) == [("Proposal", 0, "open"), ("Won", 1, "won"), ("Lost", 2, "lost")]
    for d in deals:
        moved = ok(await api.get(f"/api/crm/deals/{d['id']}", headers=t["h"]))
        assert (moved["stage_id"], moved["version"]) == (won, 2)
        history = ok(await api.get(f"/api/crm/deals/{d['id']}/history", headers=t["h"]))
        assert [(h["from_stage_id"], h["to_stage_id"]) for h in history] == [(None, lead), (lead, won)]
    # An empty stage goes without move_to.
    assert stages_of(ok(await api.delete(f"{base}/{proposal}", headers=t["h"]))) == [
        ("Won", 0, "won"),
        ("Lost", 1, "lost"),
    ]
    assert await audit_actions(api, t, "crm.stage.deleted") == ["crm.stage.deleted"] * 2

    async with other_process(crm_settings) as kernel, kernel.db.tenant(uuid.UUID(t["id"])) as session:
        rows = (await session.execute(text("select event, payload from events_outbox"))).all()
    events = sorted(r.event for r in rows if r.event.startswith(("crm.deal.stage", "crm.deal.won", "crm.stage")))
    assert events == ["crm.deal.stage_changed"] * 2 + ["crm.deal.won"] * 2 + ["crm.stage.deleted"] * 2


async def test_the_last_stage_stays(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    p = ok(
        await api.post("/api/crm/pipelines", json={"name": "One", "stages": [{"name": "Only"}]}, headers=t["h"]), 201
    )
    problem(await api.delete(f"/api/crm/pipelines/{p['id']}/stages/{p['stages'][0]['id']}", headers=t["h"]), 409)


async def test_concurrent_stage_reorders_keep_positions_dense(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    base = f"/api/crm/pipelines/{p['id']}/stages"
    ids = [st["id"] for st in p["stages"]]
    moves = [(ids[i % 4], (i * 3) % 4) for i in range(12)]
    answers = await asyncio.gather(
        *(api.patch(f"{base}/{sid}", json={"position": pos}, headers=t["h"]) for sid, pos in moves)
    )
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    final = ok(await api.get(f"/api/crm/pipelines/{p['id']}", headers=t["h"]))
    assert [st["position"] for st in final["stages"]] == [0, 1, 2, 3]
    assert sorted(st["id"] for st in final["stages"]) == sorted(ids)


# ---- deal and activity lists -------------------------------------------------------------------


async def test_deal_list_filters_sorts_and_pages_in_the_contacts_shape(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    p = await sales_pipeline(api, t)
    lead, proposal, won, lost = (st["id"] for st in p["stages"])
    small = await make(api, t, "deals", title="Small", amount="10.00", pipeline_id=p["id"])
    mid = await make(api, t, "deals", title="Mid", amount="500.00", pipeline_id=p["id"], owner_id=t["user_id"])
    big = await make(api, t, "deals", title="Big", amount="9000.00", pipeline_id=p["id"], stage_id=won)
    gone = await make(api, t, "deals", title="Gone", amount="75.50", pipeline_id=p["id"], stage_id=lost)
    await make(api, other, "deals", title="Theirs", pipeline_id=(await sales_pipeline(api, other))["id"])
    ok(await api.post(f"/api/crm/deals/{mid['id']}/move", json={"stage_id": proposal}, headers=t["h"]))

    async def titles(**params: Any) -> list[str]:
        body = ok(await api.get("/api/crm/deals", params=params, headers=t["h"]))
        assert set(body) == {"deals", "pagination"}
        return [d["title"] for d in body["deals"]]

    assert await titles() == ["Gone", "Big", "Mid", "Small"]
    assert await titles(sort="amount") == ["Small", "Gone", "Mid", "Big"]
    assert await titles(sort="-amount") == ["Big", "Mid", "Gone", "Small"]
    assert await titles(sort="title") == ["Big", "Gone", "Mid", "Small"]
    assert await titles(stage_id=lead) == ["Small"]
    assert await titles(owner_id=t["user_id"]) == ["Mid"]
    assert await titles(status="open", sort="created_at") == ["Small", "Mid"]
    assert await titles(status="won") == ["Big"] and await titles(status="lost") == ["Gone"]
    assert await titles(amount_min="75.50", amount_max="500", sort="amount") == ["Gone", "Mid"]
    assert await titles(created_after=big["created_at"], sort="created_at") == ["Big", "Gone"]
    assert await titles(created_before=big["created_at"], sort="created_at") == ["Small", "Mid"]
    assert await titles(pipeline_id=str(uuid.uuid4())) == []

    page = ok(await api.get("/api/crm/deals", params={"limit": 3, "page": 2}, headers=t["h"]))
    assert page["pagination"] == {"page": 2, "limit": 3, "total": 4, "pages": 2}
    assert [d["id"] for d in page["deals"]] == [small["id"]]
    assert gone["stage_id"] == lost

    for params, field in (
        ({"status": "maybe"}, "status"),
        ({"sort": "colour"}, "sort"),
        ({"limit": 101}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"amount_min": "NaN"}, "amount_min"),
    ):
        assert problem(await api.get("/api/crm/deals", params=params, headers=t["h"]), 422)["errors"][0]["field"] == (
            field
        )
    problem(await api.get("/api/crm/deals", params={"amount_min": "lots"}, headers=t["h"]), 422)


async def test_deal_search_covers_title_company_and_contact_names(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    p = await sales_pipeline(api, t)
    globex = await make(api, t, "companies", name="Globex")
    grace = await make(api, t, "contacts", first_name="Grace", last_name="Hopper")
    await make(api, t, "deals", title="Renewal", pipeline_id=p["id"], company_id=globex["id"])
    hopper = await make(api, t, "deals", title="Upsell", pipeline_id=p["id"], contact_id=grace["id"])
    assert (hopper["contact_name"], hopper["company_name"]) == ("Grace Hopper", None)
    await make(api, t, "deals", title="Cobol training", pipeline_id=p["id"])
    await make(api, other, "deals", title="Renewal", pipeline_id=(await sales_pipeline(api, other))["id"])

    async def found(q: str) -> list[str]:
        return sorted(d["title"] for d in ok(await api.get("/api/crm/deals", params={"q": q}, headers=t["h"]))["deals"])

    assert await found("renewal") == ["Renewal"]
    assert await found("globex") == ["Renewal"]
    assert await found("hopper") == ["Upsell"]
    assert await found("cobol or grace") == ["Cobol training", "Upsell"]
    # Renaming or removing the company or contact reaches the deals' search.
    ok(await api.patch(f"/api/crm/companies/{globex['id']}", json={"name": "Initech", "version": 1}, headers=t["h"]))
    assert await found("initech") == ["Renewal"] and await found("globex") == []
    ok(await api.patch(f"/api/crm/contacts/{grace['id']}", json={"last_name": "Murray", "version": 1}, headers=t["h"]))
    assert await found("murray") == ["Upsell"] and await found("hopper") == []
    assert (await api.delete(f"/api/crm/contacts/{grace['id']}", headers=t["h"])).status_code == 204
    assert await found("murray") == []
    upsell = ok(await api.get(f"/api/crm/deals/{hopper['id']}", headers=t["h"]))
    assert (upsell["contact_id"], upsell["contact_name"]) == (None, None)
    # Linking through PATCH fills the name in.
    acme = await make(api, t, "companies", name="Acme")
    ok(await api.patch(f"/api/crm/deals/{hopper['id']}", json={"company_id": acme["id"], "version": 1}, headers=t["h"]))
    assert await found("acme") == ["Upsell"]


async def test_deal_cursor_walks_every_deal_once(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    p = await sales_pipeline(api, t)
    ids = [(await make(api, t, "deals", title=f"D{i}", pipeline_id=p["id"]))["id"] for i in range(5)]
    seen: list[str] = []
    cursor = ""
    while True:
        body = ok(
            await api.get("/api/crm/deals", params={"cursor": cursor, "limit": 2, "status": "open"}, headers=t["h"])
        )
        assert set(body) == {"deals", "next_cursor"}
        seen += [d["id"] for d in body["deals"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert seen == list(reversed(ids))
    problem(await api.get("/api/crm/deals", params={"cursor": "", "sort": "amount"}, headers=t["h"]), 422)


async def test_activity_list_filters_by_kind_due_dates_and_done_with_a_cursor(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    ada = await make(api, t, "contacts", first_name="Ada")
    p = await sales_pipeline(api, t)
    deal = await make(api, t, "deals", title="Deal", pipeline_id=p["id"])
    await make(api, t, "activities", kind="note", subject="Met", contact_id=ada["id"])
    await make(
        api, t, "activities", kind="task", subject="Call back", contact_id=ada["id"], due_at="2030-01-02T09:00:00Z"
    )
    await make(
        api, t, "activities", kind="task", subject="Send", deal_id=deal["id"], due_at="2030-03-01T09:00:00Z", done=True
    )
    await make(api, t, "activities", kind="meeting", subject="Demo", deal_id=deal["id"], due_at="2030-02-01T10:00:00Z")
    await make(
        api,
        other,
        "activities",
        kind="task",
        subject="Theirs",
        contact_id=(await make(api, other, "contacts", first_name="Z"))["id"],
    )

    async def subjects(**params: Any) -> list[str]:
        body = ok(await api.get("/api/crm/activities", params=params, headers=t["h"]))
        return [a["subject"] for a in body["activities"]]

    assert await subjects(kind="task", sort="due_at") == ["Call back", "Send"]
    assert await subjects(sort="-due_at") == ["Send", "Demo", "Call back", "Met"]
    assert await subjects(due_after="2030-01-15T00:00:00Z", due_before="2030-03-01T09:00:00Z") == ["Demo"]
    assert await subjects(deal_id=deal["id"], done="false") == ["Demo"]
    assert await subjects(contact_id=ada["id"], sort="created_at") == ["Met", "Call back"]

    seen: list[str] = []
    cursor = ""
    while True:
        body = ok(await api.get("/api/crm/activities", params={"cursor": cursor, "limit": 3}, headers=t["h"]))
        seen += [a["subject"] for a in body["activities"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert seen == ["Demo", "Send", "Call back", "Met"]
    assert (
        problem(await api.get("/api/crm/activities", params={"kind": "lunch"}, headers=t["h"]), 422)["errors"][0][
            "field"
        ]
        == "kind"
    )
    problem(await api.get("/api/crm/activities", params={"due_after": "soon"}, headers=t["h"]), 422)
