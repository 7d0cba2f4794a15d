"""Billing over HTTP with two tenants: the operator's catalogue, subscriptions from sign-up,
entitlements, metering, invoices, credits, payments and dunning, all driven by a test clock."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pypdfium2 as pdfium
import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import _dsn, new_tenant, open_client, other_process, settings_for
from tests.fake_stripe import FakeStripe, fake_stripe, signed

PASSWORD = "a long operator passphrase 7f3"


@pytest.fixture(scope="module")
async def billing_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    result = settings_for(
        database_url, servers[1], tmp_path_factory.mktemp("billing"), BUSINESSOS_PLUGINS="billing,crm,projects,slack"
    )
    plugins = load_app_plugins(result.plugins_allowlist)
    billing = plugins.get("billing")
    assert billing is not None and billing.active, billing and billing.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def api(billing_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(billing_settings) as client:
        yield client


@pytest.fixture(scope="module")
async def kernel(billing_settings: Settings) -> AsyncIterator[Kernel]:
    async with other_process(billing_settings) as opened:
        yield opened


@pytest.fixture(scope="module")
async def op(api: AsyncTestClient[Any], kernel: Kernel) -> dict[str, str]:
    """An operator's headers (a token of no tenant)."""
    email = f"op-{uuid.uuid4().hex[:10]}@example.com"
    await kernel.operators.create(email, PASSWORD)
    response = await api.post("/api/admin/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def tenant(api: AsyncTestClient[Any], prefix: str = "bill", **extra: Any) -> dict[str, Any]:
    made = await new_tenant(api, prefix, **extra)
    return {**made, "h": {"X-Tenant-ID": made["slug"]}}


async def subscription(api: AsyncTestClient[Any], t: dict[str, Any]) -> dict[str, Any]:
    subs = ok(await api.get("/api/billing/subscriptions", headers=t["h"]))["subscriptions"]
    live = [s for s in subs if s["status"] != "canceled"]
    assert len(live) == 1, subs
    result: dict[str, Any] = live[0]
    return result


async def on_clock(
    api: AsyncTestClient[Any], op: dict[str, str], t: dict[str, Any], at: datetime, **profile: Any
) -> str:
    """Attach ``t`` to a new test clock frozen at ``at``; returns the clock's id."""
    clock = ok(await api.post("/api/admin/billing/clocks", json={"name": "test", "frozen_at": at.isoformat()},
                              headers=op), 201)
    if profile:
        ok(await api.put(f"/api/admin/billing/tenants/{t['slug']}/profile", json=profile, headers=op))
    ok(await api.post(f"/api/admin/billing/tenants/{t['slug']}/clock/{clock['id']}", headers=op))
    return str(clock["id"])


async def advance(api: AsyncTestClient[Any], op: dict[str, str], clock: str, to: datetime) -> dict[str, Any]:
    result: dict[str, Any] = ok(
        await api.post(f"/api/admin/billing/clocks/{clock}/advance", json={"to": to.isoformat()}, headers=op)
    )
    return result


# --- catalogue -----------------------------------------------------------------------------------


async def test_seeded_plans_and_versions_are_the_operators(api: AsyncTestClient[Any], op: dict[str, str]) -> None:
    plans = {p["code"]: p for p in ok(await api.get("/api/admin/billing/plans", headers=op))["plans"]}
    assert {"free", "pro", "enterprise"} <= set(plans)
    assert plans["pro"]["current"]["prices"] == {"monthly": 4900, "yearly": 49000}
    code = f"team-{uuid.uuid4().hex[:6]}"
    body = {"code": code, "name": "Team", "currency": "EUR", "prices": {"monthly": 1999}, "trial_days": 7,
            "entitlements": {"modules": ["crm"], "seats": 5},
            "charges": [{"metric": "calls", "aggregation": "count", "model": "package", "package_size": 100,
                         "package_price": "1.50", "included": 100}]}
    made = ok(await api.post("/api/admin/billing/plans", json=body, headers=op), 201)
    assert made["current"]["version"] == 1 and made["current"]["currency"] == "EUR"
    problem(await api.post("/api/admin/billing/plans", json=body, headers=op), 409)
    bad = problem(await api.post("/api/admin/billing/plans", json={**body, "code": code + "x", "currency": "XYZ"},
                                 headers=op), 422)
    assert bad["errors"][0]["field"] == "currency"
    changed = ok(await api.patch(f"/api/admin/billing/plans/{code}", json={"prices": {"monthly": 2499}}, headers=op))
    assert changed["current"]["version"] == 2 and changed["versions"] == 2
    assert changed["current"]["prices"]["monthly"] == 2499 and changed["current"]["trial_days"] == 7

    # Tenants see the catalogue but cannot manage it: operator routes refuse tenant credentials.
    t = await tenant(api)
    assert code in {p["code"] for p in ok(await api.get("/api/billing/plans", headers=t["h"]))["plans"]}
    refused = await api.post("/api/admin/billing/plans", json={**body, "code": code + "y"}, headers=t["h"])
    assert refused.status_code == 401
    refused = await api.patch(f"/api/admin/billing/plans/{code}", json={"trial_days": 1}, headers=t["h"])
    assert refused.status_code == 401


# --- subscriptions -------------------------------------------------------------------------------


async def test_every_tenant_has_a_subscription_and_paid_signup_only_trials(api: AsyncTestClient[Any]) -> None:
    free = await tenant(api)
    sub = await subscription(api, free)
    assert (sub["plan"], sub["status"], sub["plan_version"]) == ("free", "active", 1)
    assert sub["current_period"]["start"] < sub["current_period"]["end"]
    pro = await tenant(api, plan="pro")
    sub = await subscription(api, pro)
    assert (sub["plan"], sub["status"]) == ("pro", "trialing")
    start, trial_end = datetime.fromisoformat(sub["current_period"]["start"]), datetime.fromisoformat(sub["trial_end"])
    assert trial_end - start == timedelta(days=14)
    # The other tenant's subscription is not found.
    assert (await api.get(f"/api/billing/subscriptions/{sub['id']}", headers=free["h"])).status_code == 404
    assert (await api.get(f"/api/billing/subscriptions/{sub['id']}", headers=pro["h"])).status_code == 200


async def test_a_paid_plan_without_a_trial_cannot_be_signed_up_for(
    api: AsyncTestClient[Any], op: dict[str, str]
) -> None:
    code = f"paid-{uuid.uuid4().hex[:6]}"
    ok(await api.post("/api/admin/billing/plans", json={"code": code, "name": "Paid", "prices": {"monthly": 900}},
                      headers=op), 201)
    t = await tenant(api, plan=code)
    assert t["plan"] == "free"
    assert (await subscription(api, t))["plan"] == "free"


async def test_upgrade_prorates_and_downgrade_waits_for_the_period_end(
    api: AsyncTestClient[Any], op: dict[str, str]
) -> None:
    a, b = await tenant(api), await tenant(api)
    start = datetime(2027, 1, 31, 12, 0, tzinfo=UTC)
    clock = await on_clock(api, op, a, start)
    sub = await subscription(api, a)
    assert sub["current_period"] == {"start": "2027-01-31T12:00:00Z", "end": "2027-02-28T12:00:00Z"}
    ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/clock/{clock}", headers=op))
    # Half-way through February (14 of 28 days), upgrade to Pro.
    await advance(api, op, clock, start + timedelta(days=14))
    up = ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=a["h"]))
    assert (up["plan"], up["status"]) == ("pro", "active")
    assert ok(await api.get("/api/tenants/current", headers=a["h"]))["plan"] == "pro"  # the kernel's record follows
    down = ok(await api.post("/api/billing/subscriptions/change", json={"plan": "free"}, headers=a["h"]))
    assert (down["plan"], down["pending_plan"]) == ("pro", "free")
    ok(await api.post("/api/billing/subscriptions/resume", headers=a["h"]))
    # The period ends: one invoice, with the proration (no credit: free had nothing to refund).
    ran = await advance(api, op, clock, datetime(2027, 3, 2, 12, 0, tzinfo=UTC))
    assert ran["ran"]["periods"] == 1 and ran["ran"]["finalized"] == 1
    sub = await subscription(api, a)
    assert sub["current_period"] == {"start": "2027-02-28T12:00:00Z", "end": "2027-03-31T12:00:00Z"}
    invoices = ok(await api.get("/api/billing/invoices", headers=a["h"]))
    assert invoices["pagination"]["total"] == 1
    invoice = invoices["invoices"][0]
    assert invoice["status"] == "open" and invoice["number"].startswith("INV-")
    amounts = [(line["type"], line["amount_minor"]) for line in invoice["lines"]]
    assert amounts == [("subscription", 0), ("proration", 0), ("proration", 2450)]  # half of 49.00
    assert invoice["total_minor"] == 2450
    # The other tenant sees none of it.
    assert ok(await api.get("/api/billing/invoices", headers=b["h"]))["invoices"] == []
    assert (await api.get(f"/api/billing/invoices/{invoice['id']}", headers=b["h"])).status_code == 404
    # Running the period again changes nothing.
    again = await advance(api, op, clock, datetime(2027, 3, 2, 12, 0, tzinfo=UTC))
    assert again["ran"]["periods"] == 0
    assert ok(await api.get("/api/billing/invoices", headers=a["h"]))["pagination"]["total"] == 1


async def test_cancel_at_period_end_then_now(api: AsyncTestClient[Any], op: dict[str, str]) -> None:
    a = await tenant(api, plan="pro")
    clock = await on_clock(api, op, a, datetime(2027, 5, 1, tzinfo=UTC))
    sub = await subscription(api, a)
    assert sub["status"] == "trialing"
    await advance(api, op, clock, datetime(2027, 5, 16, tzinfo=UTC))  # the trial is over: active, billed
    sub = await subscription(api, a)
    assert sub["status"] == "active" and sub["current_period"]["start"] == "2027-05-15T00:00:00Z"
    canceled = ok(await api.post("/api/billing/subscriptions/cancel", json={"at": "period_end"}, headers=a["h"]))
    assert canceled["cancel_at_period_end"] is True
    ok(await api.post("/api/billing/subscriptions/resume", headers=a["h"]))
    now = ok(await api.post("/api/billing/subscriptions/cancel", json={"at": "now"}, headers=a["h"]))
    assert now["status"] == "canceled"
    bad = problem(await api.post("/api/billing/subscriptions/cancel", json={"at": "later"}, headers=a["h"]), 422)
    assert bad["errors"][0]["field"] == "at"
    # Canceled now: the part of the period used is invoiced, and a new read starts no free lunch.
    listed = ok(await api.get("/api/billing/subscriptions", headers=a["h"]))["subscriptions"]
    assert [s["status"] for s in listed] == ["canceled", "active"] and listed[1]["plan"] == "free"


async def billing_events(database_url: str, tenant_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The tenant's billing events in the outbox, oldest first."""
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        rows = await conn.fetch(
            "select event, payload::text as payload from events_outbox "
            "where tenant_id = $1 and event like 'billing.%' order by created_at, id",
            uuid.UUID(tenant_id),
        )
    finally:
        await conn.close()
    return [(r["event"], json.loads(r["payload"])) for r in rows]


# --- entitlements --------------------------------------------------------------------------------


async def test_the_plan_decides_modules_and_api_keys(api: AsyncTestClient[Any]) -> None:
    free, pro = await tenant(api), await tenant(api, plan="pro")
    assert (await api.post("/api/modules/crm/enable", headers=free["h"])).status_code == 200
    assert (await api.post("/api/modules/projects/enable", headers=free["h"])).status_code == 200
    body = problem(await api.post("/api/modules/slack/enable", headers=free["h"]), 402)
    assert body["limit"] == "modules" and "pro" in body["lift"] and "slack" in body["detail"]
    assert (await api.post("/api/modules/slack/enable", headers=pro["h"])).status_code == 200
    for n in range(2):
        ok(await api.post("/api/api-keys", json={"name": f"k{n}", "role": "viewer"}, headers=free["h"]), 201)
    body = problem(await api.post("/api/api-keys", json={"name": "k3", "role": "viewer"}, headers=free["h"]), 402)
    assert body["limit"] == "api_keys" and body["remaining"] == 0
    ok(await api.post("/api/api-keys", json={"name": "k3", "role": "viewer"}, headers=pro["h"]), 201)
    # Billing is every tenant's, and cannot be switched off.
    problem(await api.post("/api/modules/billing/disable", headers=free["h"]), 409)


async def test_workflow_executions_past_the_plan_are_refused_with_what_remains(
    api: AsyncTestClient[Any], kernel: Kernel, database_url: str
) -> None:
    free = await tenant(api)
    events = [{"transaction_id": f"wf-{i}", "metric": "workflow_executions"} for i in range(800)]
    assert ok(await api.post("/api/billing/usage", json={"events": events}, headers=free["h"]))["accepted"] == 800
    assert [p["percent"] for e, p in await billing_events(database_url, free["id"])
            if e == "billing.allowance.threshold_reached"] == [80]
    tenant_id = uuid.UUID(free["id"])
    assert (await kernel.entitlements.ask(tenant_id, "workflows.executions", 1)).remaining == 199
    refused = await kernel.entitlements.ask(tenant_id, "workflows.executions", 201)
    assert not refused.allowed and refused.remaining == 200 and refused.limit == "workflow_executions"
    more = [{"transaction_id": f"wf-{i}", "metric": "workflow_executions"} for i in range(790, 1000)]
    assert ok(await api.post("/api/billing/usage", json={"events": more}, headers=free["h"])) == {
        "accepted": 200, "duplicates": 10, "rejected": []}
    assert [p["percent"] for e, p in await billing_events(database_url, free["id"])
            if e == "billing.allowance.threshold_reached"] == [80, 100]
    assert not (await kernel.entitlements.ask(tenant_id, "workflows.executions", 1)).allowed


# --- metering ------------------------------------------------------------------------------------


async def test_usage_is_idempotent_per_tenant_and_read_from_rollups(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant(api), await tenant(api)
    batch = [
        {"transaction_id": "t1", "metric": "storage_gb", "value": 3},
        {"transaction_id": "t2", "metric": "storage_gb", "value": "4.5"},
        {"transaction_id": "t3", "metric": "active_users", "unique_key": "u1"},
        {"transaction_id": "t4", "metric": "active_users", "unique_key": "u1"},
        {"transaction_id": "t5", "metric": "active_users", "unique_key": "u2"},
        {"transaction_id": "t1", "metric": "storage_gb", "value": 100},
    ]
    assert ok(await api.post("/api/billing/usage", json={"events": batch}, headers=a["h"])) == {
        "accepted": 5, "duplicates": 1, "rejected": []}
    assert ok(await api.post("/api/billing/usage", json={"events": batch}, headers=a["h"]))["duplicates"] == 6
    # The same transaction ids are another tenant's own.
    assert ok(await api.post("/api/billing/usage", json={"events": batch[:1]}, headers=b["h"]))["accepted"] == 1
    used = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=a["h"]))["metrics"]}
    assert used["storage_gb"]["used"] == "7.5"
    assert used["active_users"]["used"] == "3"  # summed: no charge names another aggregation
    assert used["workflow_executions"]["included"] == 1000
    other = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=b["h"]))["metrics"]}
    assert other["storage_gb"]["used"] == "3"
    amended = ok(await api.post("/api/billing/usage/amendments", json={"transaction_id": "t2", "value": 1},
                                headers=a["h"]))
    assert (amended["previous"], amended["value"]) == ("4.5", "1")
    used = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=a["h"]))["metrics"]}
    assert used["storage_gb"]["used"] == "4"
    problem(await api.post("/api/billing/usage/amendments", json={"transaction_id": "t2", "value": 1},
                           headers=b["h"]), 404)
    bad = problem(await api.post("/api/billing/usage", json={"events": [{"transaction_id": "x", "metric": "a",
                                                                         "value": "lots"}]}, headers=a["h"]), 422)
    assert bad["errors"][0]["field"] == "events[0].value"
    too_many = [{"transaction_id": f"n{i}", "metric": "a"} for i in range(1001)]
    problem(await api.post("/api/billing/usage", json={"events": too_many}, headers=a["h"]), 422)


# --- invoices, credits, tax, PDF -------------------------------------------------------------------


async def test_invoice_lines_credits_tax_number_pdf_and_void(
    api: AsyncTestClient[Any], op: dict[str, str], database_url: str
) -> None:
    code = f"metered-{uuid.uuid4().hex[:6]}"
    ok(await api.post("/api/admin/billing/plans", json={
        "code": code, "name": "Metered", "prices": {"monthly": 1000},
        "entitlements": {"modules": ["*"]},
        "charges": [{"metric": "calls", "aggregation": "count", "model": "graduated", "included": 10,
                     "tiers": [{"up_to": 100, "unit_price": "0.10"}, {"up_to": None, "unit_price": "0.05"}]},
                    {"metric": "peak", "aggregation": "max", "model": "per_unit", "unit_price": "2"}],
    }, headers=op), 201)
    a, b = await tenant(api), await tenant(api)
    start = datetime(2027, 10, 1, tzinfo=UTC)
    clock = await on_clock(api, op, a, start, timezone="Europe/Paris", tax_rate="20", tax_id="FR12345678901")
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": code}, headers=a["h"]))
    sub = await subscription(api, a)
    assert sub["plan"] == code and sub["timezone"] == "Europe/Paris"
    await advance(api, op, clock, datetime(2027, 10, 15, tzinfo=UTC))
    events = [{"transaction_id": f"c{i}", "metric": "calls"} for i in range(160)]
    events += [{"transaction_id": "p1", "metric": "peak", "value": 2}, {"transaction_id": "p2", "metric": "peak",
                                                                          "value": 1}]
    ok(await api.post("/api/billing/usage", json={"events": events}, headers=a["h"]))
    ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/credits",
                      json={"amount_minor": 500, "expires_at": "2028-01-01T00:00:00Z"}, headers=op), 201)
    ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/credits",
                      json={"amount_minor": 999, "expires_at": "2027-10-20T00:00:00Z"}, headers=op), 201)
    end = sub["current_period"]["end"]
    # The period ends: a draft first; late usage within the grace period still counts.
    ran = await advance(api, op, clock, datetime.fromisoformat(end) + timedelta(hours=1))
    assert ran["ran"]["periods"] == 1 and ran["ran"]["finalized"] == 0
    draft = ok(await api.get("/api/billing/invoices", headers=a["h"]))["invoices"][0]
    assert draft["status"] == "draft" and draft["number"] is None
    late = {"transaction_id": "late", "metric": "calls", "timestamp": (datetime.fromisoformat(end)
                                                                        - timedelta(minutes=5)).isoformat()}
    assert ok(await api.post("/api/billing/usage", json={"events": [late]}, headers=a["h"]))["accepted"] == 1
    ran = await advance(api, op, clock, datetime.fromisoformat(end) + timedelta(days=2))
    assert ran["ran"]["finalized"] == 1
    invoice = ok(await api.get(f"/api/billing/invoices/{draft['id']}", headers=a["h"]))
    lines = [(line["type"], line["amount_minor"]) for line in invoice["lines"]]
    # Fee 10.00 (full period: the change from free happened at its start, prorations 0 and 1000);
    # calls 161 - 10 included: 100 x 0.10 + 51 x 0.05 = 12.55; peak 2 x 2.00; credits: 5.00 (the
    # other grant expired); tax 20% of the rest.
    assert lines[:3] == [("subscription", 0), ("proration", 0), ("proration", 1000)]
    assert lines[3:6] == [("usage", 1000), ("usage", 255), ("usage", 400)]
    assert ("credit", -500) in lines
    subtotal = sum(amount for kind, amount in lines if kind != "tax")
    assert invoice["tax_minor"] == round(subtotal * 0.2) and invoice["tax_id"] == "FR12345678901"
    assert invoice["total_minor"] == subtotal + invoice["tax_minor"]
    assert invoice["number"].startswith("INV-") and invoice["status"] == "open"
    credits = ok(await api.get("/api/billing/credits", headers=a["h"]))
    assert credits["balance_minor"] == 0 == sum(e["amount_minor"] for e in credits["entries"])
    assert sorted(e["kind"] for e in credits["entries"]) == ["consume", "expire", "grant", "grant"]
    assert ok(await api.get("/api/billing/credits", headers=b["h"]))["entries"] == []

    html = await api.get(f"/api/billing/invoices/{invoice['id']}/html", headers=a["h"])
    assert html.status_code == 200 and invoice["number"] in html.text
    pdf = await api.get(f"/api/billing/invoices/{invoice['id']}/pdf", headers=a["h"])
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    document = pdfium.PdfDocument(pdf.content)
    page = document[0]
    assert invoice["number"] in page.get_textpage().get_text_range()
    image = page.render(scale=1).to_pil().convert("L")
    assert image.getextrema()[0] < 128  # some ink on the page, not a blank one
    assert (await api.get(f"/api/billing/invoices/{invoice['id']}/pdf", headers=b["h"])).status_code == 404

    # Finalized means frozen: the database refuses a change even from the owner role.
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        with pytest.raises(asyncpg.RaiseError):
            await conn.execute("update billing_invoices set total_minor = 1 where id = $1", uuid.UUID(invoice["id"]))
    finally:
        await conn.close()
    note = ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/invoices/{invoice['id']}/void", headers=op))
    assert note["kind"] == "credit_note" and note["total_minor"] == -invoice["total_minor"]
    assert note["number"].startswith("CN-") and note["corrects_id"] == invoice["id"]
    assert ok(await api.get(f"/api/billing/invoices/{invoice['id']}", headers=a["h"]))["status"] == "void"
    problem(await api.post(f"/api/admin/billing/tenants/{b['slug']}/invoices/{invoice['id']}/void", headers=op), 404)


async def test_invoice_numbers_are_gapless_across_tenants(api: AsyncTestClient[Any], op: dict[str, str]) -> None:
    numbers = []
    for _ in range(3):
        t = await tenant(api)
        clock = await on_clock(api, op, t, datetime(2028, 3, 1, tzinfo=UTC))
        ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=t["h"]))
        await advance(api, op, clock, datetime(2028, 4, 5, tzinfo=UTC))
        invoice = ok(await api.get("/api/billing/invoices", headers=t["h"]))["invoices"][0]
        numbers.append(int(invoice["number"].split("-")[1]))
    assert numbers == list(range(numbers[0], numbers[0] + 3))


# --- payments and dunning ------------------------------------------------------------------------


async def test_unpaid_invoice_goes_past_due_then_suspends_and_payment_reactivates(
    api: AsyncTestClient[Any], op: dict[str, str], database_url: str
) -> None:
    a, b = await tenant(api), await tenant(api)
    clock = await on_clock(api, op, a, datetime(2028, 6, 1, tzinfo=UTC))
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=a["h"]))
    await advance(api, op, clock, datetime(2028, 7, 3, tzinfo=UTC))
    invoice = ok(await api.get("/api/billing/invoices", headers=a["h"]))["invoices"][0]
    assert invoice["status"] == "open" and invoice["total_minor"] == 4900
    assert (await subscription(api, a))["status"] == "active"
    await advance(api, op, clock, datetime(2028, 7, 11, tzinfo=UTC))  # 7 days after finalizing: overdue
    assert (await subscription(api, a))["status"] == "past_due"
    ran = await advance(api, op, clock, datetime(2028, 7, 26, tzinfo=UTC))
    assert ran["ran"]["dunning"]["suspended"] == 1
    assert (await api.get("/api/tenants/current", headers=a["h"])).status_code == 403
    assert (await api.get("/api/tenants/current", headers=b["h"])).status_code == 200
    paid = ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/invoices/{invoice['id']}/payments",
                             json={"amount_minor": 4900, "reference": "wire-1"}, headers=op))
    assert paid["status"] == "paid"
    assert (await api.get("/api/tenants/current", headers=a["h"])).status_code == 200
    assert (await subscription(api, a))["status"] == "active"
    names = [e for e, _ in await billing_events(database_url, a["id"])]
    for name in ("billing.subscription.past_due", "billing.invoice.paid", "billing.subscription.reactivated"):
        assert name in names


# --- Stripe --------------------------------------------------------------------------------------

STRIPE_KEY, WEBHOOK_SECRET = "sk_test_billing_suite", "whsec_billing_suite"


@pytest.fixture
def stripe_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    with fake_stripe(STRIPE_KEY) as fake:
        monkeypatch.setenv("BUSINESSOS_BILLING_STRIPE_SECRET_KEY", STRIPE_KEY)
        monkeypatch.setenv("BUSINESSOS_BILLING_STRIPE_API_BASE", fake.url)
        monkeypatch.setenv("BUSINESSOS_BILLING_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        yield fake


async def test_stripe_declines_then_a_retry_collects(
    api: AsyncTestClient[Any], op: dict[str, str], stripe_api: FakeStripe, database_url: str
) -> None:
    a = await tenant(api)
    clock = await on_clock(api, op, a, datetime(2029, 1, 10, tzinfo=UTC), stripe_customer="cus_A1",
                           stripe_payment_method="pm_card_chargeDeclined")
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=a["h"]))
    await advance(api, op, clock, datetime(2029, 2, 12, tzinfo=UTC))
    invoice = ok(await api.get("/api/billing/invoices", headers=a["h"]))["invoices"][0]
    assert invoice["status"] == "open"
    assert [i["status"] for i in stripe_api.intents] == [402]
    sent = stripe_api.intents[0]["params"]
    assert (sent["amount"], sent["currency"], sent["customer"]) == ("4900", "usd", "cus_A1")
    assert sent["metadata"] == {"tenant_id": a["id"], "invoice_id": invoice["id"]}
    assert (await subscription(api, a))["status"] == "past_due"
    # The customer fixes the card; the retry a day later collects.
    ok(await api.put(f"/api/admin/billing/tenants/{a['slug']}/profile",
                     json={"stripe_payment_method": "pm_card_visa"}, headers=op))
    ran = await advance(api, op, clock, datetime(2029, 2, 13, 1, tzinfo=UTC))
    assert ran["ran"]["dunning"].get("retried") == 1
    assert [i["status"] for i in stripe_api.intents] == [402, 200]
    assert stripe_api.intents[0]["idempotency_key"] != stripe_api.intents[1]["idempotency_key"]
    assert ok(await api.get(f"/api/billing/invoices/{invoice['id']}", headers=a["h"]))["status"] == "paid"
    assert (await subscription(api, a))["status"] == "active"
    names = [e for e, _ in await billing_events(database_url, a["id"])]
    assert names.count("billing.payment.failed") == 1 and "billing.subscription.reactivated" in names


async def test_stripe_webhook_settles_a_processing_payment_once(
    api: AsyncTestClient[Any], op: dict[str, str], stripe_api: FakeStripe
) -> None:
    a, b = await tenant(api), await tenant(api)
    clock = await on_clock(api, op, a, datetime(2029, 5, 1, tzinfo=UTC), stripe_customer="cus_B1",
                           stripe_payment_method="pm_card_processing")
    hook = ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/stripe/webhook", headers=op), 201)
    other_hook = ok(await api.post(f"/api/admin/billing/tenants/{b['slug']}/stripe/webhook", headers=op), 201)
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=a["h"]))
    await advance(api, op, clock, datetime(2029, 6, 3, tzinfo=UTC))
    invoice = ok(await api.get("/api/billing/invoices", headers=a["h"]))["invoices"][0]
    assert invoice["status"] == "open" and stripe_api.intents[-1]["intent"]["status"] == "processing"
    intent = {**stripe_api.intents[-1]["intent"], "status": "succeeded", "amount_received": 4900}
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded",
                          "data": {"object": intent}}).encode()
    forged = await api.post(hook["path"], content=payload, headers={"Stripe-Signature": signed(payload, "whsec_x")})
    assert forged.status_code == 400
    # Delivered to another tenant's endpoint, the event is not applied there (nor here).
    elsewhere = await api.post(other_hook["path"], content=payload,
                               headers={"Stripe-Signature": signed(payload, WEBHOOK_SECRET)})
    assert elsewhere.status_code == 200 and "ignored" in elsewhere.json()
    assert ok(await api.get(f"/api/billing/invoices/{invoice['id']}", headers=a["h"]))["status"] == "open"
    for _ in range(2):  # Stripe delivers at least once
        delivered = await api.post(hook["path"], content=payload,
                                   headers={"Stripe-Signature": signed(payload, WEBHOOK_SECRET)})
        assert delivered.status_code == 200, delivered.text
    paid = ok(await api.get(f"/api/billing/invoices/{invoice['id']}", headers=a["h"]))
    assert (paid["status"], paid["amount_paid_minor"]) == ("paid", 4900)


async def test_versions_are_grandfathered_downgrades_and_interval_changes_wait(
    api: AsyncTestClient[Any], op: dict[str, str]
) -> None:
    code = f"gf-{uuid.uuid4().hex[:6]}"
    ok(await api.post("/api/admin/billing/plans", json={"code": code, "name": "Grand", "prices": {
        "monthly": 1000, "yearly": 10000}, "entitlements": {"modules": ["*"]}}, headers=op), 201)
    a = await tenant(api)
    clock = await on_clock(api, op, a, datetime(2030, 1, 31, 5, tzinfo=UTC), timezone="America/New_York")
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": code}, headers=a["h"]))
    ok(await api.patch(f"/api/admin/billing/plans/{code}", json={"prices": {"monthly": 2000, "yearly": 20000}},
                       headers=op))
    sub = await subscription(api, a)
    assert sub["plan_version"] == 1  # the new price is for new subscriptions
    # New York's midnight, the anchor day kept through February.
    assert sub["current_period"]["end"] == "2030-02-28T05:00:00Z"
    await advance(api, op, clock, datetime(2030, 3, 2, tzinfo=UTC))
    sub = await subscription(api, a)
    assert sub["plan_version"] == 1 and sub["current_period"]["end"] == "2030-03-31T04:00:00Z"  # after DST
    b = await tenant(api)  # another subscriber of version 1, moved by the plan-wide migration
    await on_clock(api, op, b, datetime(2030, 3, 2, tzinfo=UTC))
    moved = ok(await api.post(f"/api/admin/billing/plans/{code}/migrate", headers=op))
    assert moved == {"plan": code, "to_version": 2, "subscriptions": 1}  # a; b is on free: untouched
    assert (await subscription(api, b))["pending_plan"] is None
    assert (await subscription(api, a))["pending_plan"] == code
    migrated = ok(await api.post(f"/api/admin/billing/tenants/{a['slug']}/subscription/migrate", headers=op))
    assert migrated["to_version"] == 2 and migrated["subscription"]["plan_version"] == 1
    again = ok(await api.post(f"/api/admin/billing/plans/{code}/migrate", headers=op))
    assert again["to_version"] == 2 and again["subscriptions"] == 0  # a's move is already pending
    # Monthly at 10.00 -> yearly at 200.00 (16.67 a month) is an upgrade: the period closes now
    # (its used part invoiced) and a yearly one starts, at the newest version.
    yearly = ok(await api.post("/api/billing/subscriptions/change", json={"plan": code, "interval": "yearly"},
                               headers=a["h"]))
    assert (yearly["interval"], yearly["plan_version"]) == ("yearly", 2)
    assert yearly["current_period"] == {"start": "2030-03-02T00:00:00Z", "end": "2031-03-02T00:00:00Z"}
    invoices = ok(await api.get("/api/billing/invoices", headers=a["h"]))["invoices"]
    billed = sorted((i["period_start"], i["lines"][0]["amount_minor"], i["total_minor"]) for i in invoices)
    # 31 Jan - 28 Feb: free at its start, then version 1 for all of it (10.00 as a proration);
    # 28 Feb - 2 Mar: 43 of the period's 743 hours (a DST change in it) of version 1's 10.00 (the
    # fee less the unused time).
    assert [(fee, total) for _, fee, total in billed] == [(0, 1000), (1000, round(1000 * 43 / 743))]
    down = ok(await api.post("/api/billing/subscriptions/change", json={"plan": "free", "interval": "monthly"},
                             headers=a["h"]))
    assert down["plan"] == code and down["pending_plan"] == "free"
    await advance(api, op, clock, datetime(2031, 3, 3, tzinfo=UTC))
    sub = await subscription(api, a)
    assert (sub["plan"], sub["interval"]) == ("free", "monthly")
    assert ok(await api.get("/api/tenants/current", headers=a["h"]))["plan"] == "free"


async def test_the_last_invoice_of_a_canceled_subscription_is_finalized(
    api: AsyncTestClient[Any], op: dict[str, str]
) -> None:
    a = await tenant(api)
    clock = await on_clock(api, op, a, datetime(2031, 6, 1, tzinfo=UTC))
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=a["h"]))
    await advance(api, op, clock, datetime(2031, 6, 11, tzinfo=UTC))
    ok(await api.post("/api/billing/subscriptions/cancel", json={"at": "now"}, headers=a["h"]))
    draft = ok(await api.get("/api/billing/invoices", headers=a["h"]))["invoices"][0]
    assert draft["status"] == "draft" and draft["total_minor"] == round(4900 * 10 / 30)
    await advance(api, op, clock, datetime(2031, 6, 13, tzinfo=UTC))
    final = ok(await api.get(f"/api/billing/invoices/{draft['id']}", headers=a["h"]))
    assert final["status"] == "open" and final["number"].startswith("INV-")


async def test_ai_calls_are_metered_from_the_ai_ledger(api: AsyncTestClient[Any], database_url: str) -> None:
    a, b = await tenant(api), await tenant(api)
    await subscription(api, a)
    conn = await asyncpg.connect(_dsn(database_url))
    try:  # two calls in the kernel's AI ledger, as the proxy writes them
        for tokens in ((1200, 300), (500, 0)):
            await conn.execute(
                "insert into ai_usage (tenant_id, id, created_at, provider, model, prompt_tokens, completion_tokens, "
                "cached_tokens, latency_ms, cost, price_version, status, surface, stream) values "
                "($1, $2, now(), 'openai', 'gpt-4o-mini', $3, $4, 0, 10, 0.0042, 'v1', 'ok', 'api', false)",
                uuid.UUID(a["id"]), uuid.uuid4(), *tokens,
            )
    finally:
        await conn.close()
    used = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=a["h"]))["metrics"]}
    assert used["ai_tokens"]["used"] == "2000" and used["ai_tokens"]["remaining"] == "98000"
    assert used["ai_cost"]["used"] == "0.0084"
    other = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=b["h"]))["metrics"]}
    assert other["ai_tokens"]["used"] == "0"
