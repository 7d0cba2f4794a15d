"""Billing over HTTP with two tenants: the operator's catalogue, subscriptions from sign-up,
entitlements, metering, invoices, credits, payments and dunning, all driven by a test clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, other_process, settings_for

PASSWORD = "a long operator passphrase 7f3"


@pytest.fixture(scope="module")
async def billing_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    result = settings_for(
        database_url, servers[1], tmp_path_factory.mktemp("billing"), BUSINESSOS_PLUGINS="billing,crm,projects"
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
    assert (await api.post("/api/admin/billing/plans", json={**body, "code": code + "y"}, headers=t["h"])).status_code == 401
    assert (await api.patch(f"/api/admin/billing/plans/{code}", json={"trial_days": 1}, headers=t["h"])).status_code == 401


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
