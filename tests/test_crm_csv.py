"""CSV import and export of CRM contacts and companies."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel.settings import Settings
from tests.conftest import other_process
from tests.test_crm import api, crm_settings, crm_tenant, make, problem

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py

CSV = {"Content-Type": "text/csv"}

MIXED = (
    "first_name,last_name,email,phone,company,tags\r\n"
    "Ada,Lovelace,ada@example.com,+44 20 1234,Acme,vip;uk\r\n"  # row 2
    "Bob,,not-an-email,,,\r\n"  # row 3: bad e-mail
    ",Nameless,n@example.com,,,\r\n"  # row 4: no first name
    "Cy,,ADA@example.com,,,\r\n"  # row 5: same e-mail as row 2
    "Di,,di@example.com,,Nowhere Inc,\r\n"  # row 6: unknown company
    "Ed,,,,,\r\n"  # row 7
)


async def _import(
    api: AsyncTestClient[Any], t: dict[str, Any], body: str, mode: str | None = None, what: str = "contacts"
) -> Any:
    params = {"mode": mode} if mode else {}
    return await api.post(f"/api/crm/{what}/import", params=params, content=body.encode(), headers={**t["h"], **CSV})


async def test_all_or_nothing_import_reports_every_bad_row_and_imports_nothing(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    await make(api, t, "companies", name="Acme")
    body = problem(await _import(api, t, MIXED), 422)
    assert body["imported"] == 0
    assert [(e["row"], e["field"]) for e in body["errors"]] == [
        (3, "email"),
        (4, "first_name"),
        (5, "email"),
        (6, "company"),
    ]
    assert "row 2" in body["errors"][2]["message"]
    assert (await api.get("/api/crm/contacts", headers=t["h"])).json()["pagination"]["total"] == 0


async def test_per_row_import_keeps_the_good_rows_and_reports_the_rest(
    api: AsyncTestClient[Any], crm_settings: Settings
) -> None:
    t = await crm_tenant(api)
    acme = await make(api, t, "companies", name="Acme")
    await make(api, t, "contacts", first_name="Old", email="ed@example.com")
    body = MIXED + "Eddie,,ED@example.com,,,\r\n"  # row 8: e-mail already in the tenant
    response = await _import(api, t, body, "per_row")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["imported"] == 2
    assert [(e["row"], e["field"]) for e in report["errors"]] == [
        (3, "email"),
        (4, "first_name"),
        (5, "email"),
        (6, "company"),
        (8, "email"),
    ]
    contacts = (await api.get("/api/crm/contacts", params={"sort": "created_at"}, headers=t["h"])).json()["contacts"]
    ada = next(c for c in contacts if c["first_name"] == "Ada")
    assert (ada["company_id"], ada["company_name"], ada["tags"], ada["phone"]) == (
        acme["id"],
        "Acme",
        ["vip", "uk"],
        "+44 20 1234",
    )
    assert sorted(c["first_name"] for c in contacts) == ["Ada", "Ed", "Old"]
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.imported"}, headers=t["h"])).json()
    assert logs["items"][0]["after"] == {"mode": "per_row", "rows": 7, "imported": 2, "failed": 5}
    # Imported contacts announce themselves like created ones.
    async with other_process(crm_settings) as kernel, kernel.db.tenant(uuid.UUID(t["id"])) as session:
        payloads = (
            await session.execute(text("select payload from events_outbox where event = 'crm.contact.created'"))
        ).scalars()
        imported = sorted(p["first_name"] for p in payloads if p.get("imported"))
    assert imported == ["Ada", "Ed"]


async def test_export_then_import_round_trips_contacts_and_companies(api: AsyncTestClient[Any]) -> None:
    t, other = await crm_tenant(api), await crm_tenant(api)
    await make(api, t, "companies", name="Acme, Inc.", domain="acme.example", industry="Rockets")
    await make(
        api,
        t,
        "contacts",
        first_name="Ada",
        last_name='O"Hara',
        email="ada@example.com",
        phone="+1 555 0100",
        company_id=(await api.get("/api/crm/companies", headers=t["h"])).json()["companies"][0]["id"],
        tags=["a", "b"],
    )
    await make(api, t, "contacts", first_name="=HYPERLINK(1)", last_name="Zed")

    companies = await api.get("/api/crm/companies/export", headers=t["h"])
    assert companies.status_code == 200 and companies.headers["content-type"].startswith("text/csv")
    contacts = await api.get("/api/crm/contacts/export", headers=t["h"])
    assert contacts.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(contacts.text)))
    assert rows[1]["first_name"] == "'=HYPERLINK(1)"  # a spreadsheet shows it, never runs it

    assert (await _import(api, other, companies.text, what="companies")).json() == {"imported": 1, "errors": []}
    assert (await _import(api, other, contacts.text)).json() == {"imported": 2, "errors": []}

    def comparable(body: dict[str, Any], key: str) -> list[tuple[Any, ...]]:
        skip = {"id", "created_at", "updated_at", "company_id", "version"}
        return sorted((tuple(v for k, v in sorted(x.items()) if k not in skip) for x in body[key]), key=repr)

    for what in ("contacts", "companies"):
        mine = (await api.get(f"/api/crm/{what}", headers=t["h"])).json()
        theirs = (await api.get(f"/api/crm/{what}", headers=other["h"])).json()
        assert comparable(mine, what) == comparable(theirs, what)
    # The imported contact points at the importing tenant's own company.
    own = (await api.get("/api/crm/companies", headers=other["h"])).json()["companies"][0]["id"]
    theirs = (await api.get("/api/crm/contacts", params={"q": "ada"}, headers=other["h"])).json()["contacts"]
    assert theirs[0]["company_id"] == own


async def test_a_file_with_unknown_columns_or_mode_is_refused(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    assert "salary" in problem(await _import(api, t, "first_name,salary\r\nA,1\r\n"), 422)["detail"]
    problem(await _import(api, t, "last_name\r\nA\r\n"), 422)
    problem(await _import(api, t, "first_name\r\nA\r\n", "some"), 422)
    problem(
        await api.post("/api/crm/contacts/import", content=b"first_name\r\n\xff\r\n", headers={**t["h"], **CSV}), 422
    )
