"""Billing's joins with the kernel, over HTTP with two tenants: the plan's rate limit, API calls
metered, Stripe's one operator-level webhook, the catalogue across processes, the operator's plan
change through the subscription, seats and thresholds."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from kernel.context import Kernel
from kernel.settings import Settings
from plugins.billing.schemas import UsageEvent
from plugins.billing.service import SYSTEM, Billing
from tests.conftest import _dsn
from tests.fake_stripe import FakeStripe, fake_stripe, signed
from tests.servers import api_servers
from tests.test_billing import (  # the module fixtures and helpers of test_billing
    PASSWORD,
    advance,
    api,
    billing_events,
    billing_settings,
    kernel,
    ok,
    on_clock,
    op,
    problem,
    subscription,
    tenant,
)

FIXTURES = (api, billing_settings, kernel, op)  # used here by name, as pytest passes them

STRIPE_KEY, WEBHOOK_SECRET = "sk_test_billing_gaps", "whsec_billing_gaps"
WEBHOOK = "/api/billing/stripe/webhook"


async def new_plan(api: AsyncTestClient[Any], op: dict[str, str], prefix: str, **terms: Any) -> str:
    code = f"{prefix}-{uuid.uuid4().hex[:6]}"
    body = {"code": code, "name": prefix.title(), "currency": "USD", "prices": {"monthly": 0},
            "entitlements": {"modules": ["crm"]}, **terms}
    ok(await api.post("/api/admin/billing/plans", json=body, headers=op), 201)
    return code


async def usage_of(api: AsyncTestClient[Any], t: dict[str, Any], metric: str) -> int:
    metrics = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=t["h"]))["metrics"]}
    return int(metrics[metric]["used"]) if metric in metrics else 0


# --- 1. the plan's rate limit --------------------------------------------------------------------


async def test_the_plan_sets_the_tenants_rate_limit(
    api: AsyncTestClient[Any], op: dict[str, str], database_url: str
) -> None:
    tiny = await new_plan(api, op, "tiny", entitlements={"modules": ["crm"], "rate_limit": 3})
    a, b = await tenant(api), await tenant(api)
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": tiny}, headers=a["h"]))
    # a's next requests are held to 3 a minute (less what its earlier ones spent), b's are not.
    answers = [await api.get("/api/billing/plans", headers=a["h"]) for _ in range(4)]
    assert all(r.headers["ratelimit-limit"] == "3" for r in answers)
    refused = answers[-1]
    assert refused.status_code == 429, [r.status_code for r in answers]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/rate-limited") and int(refused.headers["retry-after"]) >= 1
    for _ in range(8):
        answer = await api.get("/api/billing/plans", headers=b["h"])
        assert answer.status_code == 200 and answer.headers["ratelimit-limit"] == "60"  # the free plan's
    # A plan change reaches the limit at once.
    ok(await api.put(f"/api/admin/tenants/{b['slug']}/plan", json={"plan": "pro"}, headers=op))
    assert (await api.get("/api/billing/plans", headers=b["h"])).headers["ratelimit-limit"] == "600"
    assert (await api.get("/api/billing/plans", headers=a["h"])).headers["ratelimit-limit"] == "3"
    # A new version of a's plan leaves a on its version (grandfathered) until the operator moves
    # it: the same plan code, and still the limit follows at once.
    ok(await api.patch(f"/api/admin/billing/plans/{tiny}", json={"entitlements": {"modules": ["crm"],
                                                                                  "rate_limit": 7}}, headers=op))
    assert (await api.get("/api/billing/plans", headers=a["h"])).headers["ratelimit-limit"] == "3"
    ok(await api.put(f"/api/admin/tenants/{a['slug']}/plan", json={"plan": tiny}, headers=op))
    conn = await asyncpg.connect(_dsn(database_url))  # a is held to its limit: read as the owner
    try:
        version = await conn.fetchval(
            "select v.version from billing_subscriptions s join billing_plan_versions v on v.id = s.plan_version_id "
            "where s.tenant_id = $1 and s.status <> 'canceled'", uuid.UUID(a["id"]))
    finally:
        await conn.close()
    assert version == 2
    assert (await api.get("/api/billing/plans", headers=a["h"])).headers["ratelimit-limit"] == "7"


# --- 2. API calls metered -------------------------------------------------------------------------


async def test_api_calls_are_counted_in_redis_and_metered_once(
    api: AsyncTestClient[Any], op: dict[str, str], kernel: Kernel
) -> None:
    a, b = await tenant(api), await tenant(api)
    ok(await api.post("/api/admin/billing/api-calls/flush", headers=op))
    start_a, start_b = await usage_of(api, a, "api_calls"), await usage_of(api, b, "api_calls")
    for _ in range(5):
        ok(await api.get("/api/billing/plans", headers=a["h"]))
    for _ in range(2):
        ok(await api.get("/api/billing/plans", headers=b["h"]))
    # A flush that stored a's events and stopped before forgetting the take: the next flush
    # answers the take again, and its events are duplicates.
    services = kernel.services("billing")
    takes = await services.api_calls.take()
    taken = {t: n for _, counts in takes for t, n in counts.items()}
    assert taken[a["id"]] == 5 + 1 and taken[b["id"]] == 2 + 1  # each usage read counts too
    for take_id, counts in takes:
        if a["id"] in counts:
            event = UsageEvent(transaction_id=f"api_calls:{take_id}", metric="api_calls", value=counts[a["id"]])
            await Billing(services).ingest(uuid.UUID(a["id"]), SYSTEM, [event])
    flushed = ok(await api.post("/api/admin/billing/api-calls/flush", headers=op))
    assert flushed["takes"] >= 1 and flushed["calls"] >= 9
    assert await usage_of(api, a, "api_calls") == start_a + 6
    assert await usage_of(api, b, "api_calls") == start_b + 3
    # Flushing again with nothing new counted for a: a's figure only grows by its own reads.
    ok(await api.post("/api/admin/billing/api-calls/flush", headers=op))
    assert await usage_of(api, a, "api_calls") == start_a + 7


# --- 3. Stripe's operator-level webhook --------------------------------------------------------


@pytest.fixture
def stripe_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    with fake_stripe(STRIPE_KEY) as fake:
        monkeypatch.setenv("BUSINESSOS_BILLING_STRIPE_SECRET_KEY", STRIPE_KEY)
        monkeypatch.setenv("BUSINESSOS_BILLING_STRIPE_API_BASE", fake.url)
        monkeypatch.setenv("BUSINESSOS_BILLING_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        yield fake


async def _processing_invoice(
    api: AsyncTestClient[Any], op: dict[str, str], stripe_api: FakeStripe, customer: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A tenant on Pro whose first invoice's PaymentIntent is still processing."""
    t = await tenant(api)
    clock = await on_clock(api, op, t, datetime(2030, 3, 1, tzinfo=UTC), stripe_customer=customer,
                           stripe_payment_method="pm_card_processing")
    ok(await api.post("/api/billing/subscriptions/change", json={"plan": "pro"}, headers=t["h"]))
    await advance(api, op, clock, datetime(2030, 4, 3, tzinfo=UTC))
    invoice = ok(await api.get("/api/billing/invoices", headers=t["h"]))["invoices"][0]
    intent = next(i["intent"] for i in stripe_api.intents if i["intent"]["customer"] == customer)
    assert invoice["status"] == "open" and intent["status"] == "processing"
    return t, invoice, intent


def _event(intent: dict[str, Any], kind: str = "payment_intent.succeeded", **changes: Any) -> bytes:
    body = {**intent, "status": "succeeded", "amount_received": intent["amount"], **changes}
    return json.dumps({"id": f"evt_{uuid.uuid4().hex[:12]}", "object": "event", "type": kind,
                       "data": {"object": body}}).encode()


async def _status(api: AsyncTestClient[Any], t: dict[str, Any], invoice: dict[str, Any]) -> str:
    return str(ok(await api.get(f"/api/billing/invoices/{invoice['id']}", headers=t["h"]))["status"])


async def test_one_stripe_endpoint_routes_verified_events_to_their_tenant_only(
    api: AsyncTestClient[Any], op: dict[str, str], stripe_api: FakeStripe
) -> None:
    a, inv_a, intent_a = await _processing_invoice(api, op, stripe_api, f"cus_{uuid.uuid4().hex[:8]}")
    b, inv_b, intent_b = await _processing_invoice(api, op, stripe_api, f"cus_{uuid.uuid4().hex[:8]}")
    good = _event(intent_a)
    # Forged, missing or stale signatures: a 400 problem, nothing applied.
    for headers in ({"Stripe-Signature": signed(good, "whsec_forged")}, {},
                    {"Stripe-Signature": signed(good, WEBHOOK_SECRET, at=1_000_000_000)}):
        body = problem(await api.post(WEBHOOK, content=good, headers=headers), 400)
        assert body["errors"][0]["field"] == "Stripe-Signature"
    tampered = good.replace(intent_a["id"].encode(), b"pi_tampered")
    problem(await api.post(WEBHOOK, content=tampered, headers={"Stripe-Signature": signed(good, WEBHOOK_SECRET)}),
            400)
    assert (await _status(api, a, inv_a), await _status(api, b, inv_b)) == ("open", "open")
    # Signed, but pointing tenant b at a's invoice, or a at b's customer: ignored by both.
    crossed = [
        _event(intent_a, metadata={"tenant_id": b["id"], "invoice_id": inv_a["id"]}),
        _event(intent_b, metadata={"tenant_id": a["id"], "invoice_id": inv_b["id"]}),
        _event(intent_a, customer=intent_b["customer"]),
    ]
    for payload in crossed:
        answer = ok(await api.post(WEBHOOK, content=payload, headers={"Stripe-Signature": signed(payload,
                                                                                                  WEBHOOK_SECRET)}))
        assert "ignored" in answer
    assert (await _status(api, a, inv_a), await _status(api, b, inv_b)) == ("open", "open")
    # The genuine event settles a's invoice once, however often Stripe delivers it.
    for _ in range(2):
        answer = ok(await api.post(WEBHOOK, content=good, headers={"Stripe-Signature": signed(good,
                                                                                               WEBHOOK_SECRET)}))
        assert answer == {"received": True}
    paid = ok(await api.get(f"/api/billing/invoices/{inv_a['id']}", headers=a["h"]))
    assert (paid["status"], paid["amount_paid_minor"]) == ("paid", 4900)
    assert await _status(api, b, inv_b) == "open"
    # A failure reported for b makes b past due, and only b.
    failed = _event(intent_b, "payment_intent.payment_failed", status="requires_payment_method",
                    last_payment_error={"code": "card_declined"})
    ok(await api.post(WEBHOOK, content=failed, headers={"Stripe-Signature": signed(failed, WEBHOOK_SECRET)}))
    assert (await subscription(api, b))["status"] == "past_due"
    assert (await subscription(api, a))["status"] == "active"


async def test_the_stripe_endpoint_answers_503_when_stripe_is_not_configured(
    api: AsyncTestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BUSINESSOS_BILLING_STRIPE_SECRET_KEY", raising=False)
    payload = b'{"type": "payment_intent.succeeded"}'
    problem(await api.post(WEBHOOK, content=payload, headers={"Stripe-Signature": signed(payload, "x")}), 503)


# --- 4. the catalogue across processes ---------------------------------------------------------


async def _eventually(check: Any, what: str, seconds: float = 20.0) -> Any:
    """``await check()`` until it answers something true (another process polls its copy)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = await check()
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


async def test_a_catalogue_change_reaches_every_process(
    billing_settings: Settings, kernel: Kernel, tmp_path: Path
) -> None:
    email = f"op-{uuid.uuid4().hex[:10]}@example.com"
    await kernel.operators.create(email, PASSWORD)
    env = {"BUSINESSOS_PLUGINS": "billing", "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
           "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000"}
    async with api_servers(billing_settings, tmp_path, count=2, env=env) as (one, two), \
            httpx.AsyncClient(timeout=30) as http:
        login = await http.post(one + "/api/admin/auth/login", json={"email": email, "password": PASSWORD})
        op = {"Authorization": f"Bearer {ok(login)['access_token']}"}
        code = f"cat-{uuid.uuid4().hex[:6]}"
        body = {"code": code, "name": "Cat", "currency": "USD", "prices": {"monthly": 1500}, "trial_days": 7,
                "entitlements": {"modules": ["crm"]}}
        ok(await http.post(one + "/api/admin/billing/plans", json=body, headers=op), 201)

        async def signup(url: str) -> dict[str, Any]:
            slug = f"cat-{uuid.uuid4().hex[:8]}"
            owner = {"email": f"o-{slug}@example.com", "password": f"pw-{uuid.uuid4().hex}", "name": "O"}
            made: dict[str, Any] = ok(await http.post(url + "/api/tenants", json={
                "name": slug, "slug": slug, "owner": owner, "plan": code}), 201)
            return made

        async def live(url: str, made: dict[str, Any]) -> dict[str, Any]:
            subs = ok(await http.get(url + "/api/billing/subscriptions",
                                     headers={"Authorization": f"Bearer {made['access_token']}"}))
            found: dict[str, Any] = next(s for s in subs["subscriptions"] if s["status"] != "canceled")
            return found

        async def two_signs_up_to(plan: str) -> dict[str, Any] | None:
            made = await signup(two)
            return made if made["tenant"]["plan"] == plan else None

        # The second process learns of the new plan (it polls the catalogue's version).
        made = await _eventually(lambda: two_signs_up_to(code), "process two never saw the new plan")
        sub = await live(two, made)
        assert (sub["plan"], sub["status"]) == (code, "trialing")
        # The operator withdraws the trial in process one. Whatever process two's copy still says,
        # a sign-up there gets no paid plan for free: its subscription checks the database.
        ok(await http.patch(one + f"/api/admin/billing/plans/{code}", json={"trial_days": 0}, headers=op))
        sub = await live(two, await signup(two))
        assert (sub["plan"], sub["status"]) == ("free", "active")
        await _eventually(lambda: two_signs_up_to("free"), "process two kept the old trial")


# --- 5. the operator's plan change goes through the subscription -------------------------------


async def test_the_operators_plan_change_is_an_override_on_the_subscription(
    api: AsyncTestClient[Any], op: dict[str, str], database_url: str
) -> None:
    a, b = await tenant(api), await tenant(api)
    moved = ok(await api.put(f"/api/admin/tenants/{a['slug']}/plan", json={"plan": "pro"}, headers=op))
    assert moved["plan"] == "pro"
    sub = await subscription(api, a)
    assert (sub["plan"], sub["status"], sub["pending_plan"]) == ("pro", "active", None)
    assert sub["override_by"].startswith("operator:") and sub["override_at"] is not None
    other = await subscription(api, b)
    assert (other["plan"], other["override_by"]) == ("free", None)
    # No prorations: the operator's word is not a purchase.
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        items = await conn.fetchval("select count(*) from billing_pending_items where tenant_id = $1",
                                    uuid.UUID(a["id"]))
    finally:
        await conn.close()
    assert items == 0
    # Recorded in a's audit log and events, by the operator.
    logs = ok(await api.get("/api/audit/logs", params={"action": "billing.subscription.updated"},
                            headers=a["h"]))
    assert any(e["actor"] == sub["override_by"] for e in logs["items"]), logs
    updated = [p for e, p in await billing_events(database_url, a["id"]) if e == "billing.subscription.updated"]
    assert updated and not [e for e, _ in await billing_events(database_url, b["id"])
                            if e == "billing.subscription.updated"]
    # The new plan's modules and limits apply at once.
    assert (await api.post("/api/modules/slack/enable", headers=a["h"])).status_code == 200
    # An unknown plan is refused naming the field, and nothing changes.
    bad = problem(await api.put(f"/api/admin/tenants/{a['slug']}/plan", json={"plan": "no-such-plan"},
                                headers=op), 422)
    assert bad["errors"][0]["field"] == "plan"
    assert (await subscription(api, a))["plan"] == "pro"
    assert ok(await api.get("/api/tenants/current", headers=a["h"]))["plan"] == "pro"


# --- 6. seats past the plan, thresholds per tenant ----------------------------------------------


async def test_seats_past_the_plan_answer_402_with_what_remains(api: AsyncTestClient[Any]) -> None:
    free, pro = await tenant(api), await tenant(api, plan="pro")  # free: 3 seats, owner included
    for t, statuses in ((free, (201, 201, 402)), (pro, (201, 201, 201))):
        for status in statuses:
            email = f"m-{uuid.uuid4().hex[:8]}@example.com"
            invited = ok(await api.post("/api/tenant/invitations", json={"email": email, "role": "member"},
                                        headers=t["h"]), 201)
            joined = await api.post("/api/auth/register", headers=t["h"], json={
                "email": email, "password": f"pw-{uuid.uuid4().hex}", "invitation_token": invited["token"]})
            assert joined.status_code == status, joined.text
            if status == 402:
                body = problem(joined, 402)
                assert (body["limit"], body["remaining"]) == ("seats", 0)
                assert "3 seats" in body["detail"] and body["lift"]


async def test_api_keys_past_the_plan_name_what_remains_per_tenant(api: AsyncTestClient[Any]) -> None:
    a, b = await tenant(api), await tenant(api)  # free: 2 API keys
    ok(await api.post("/api/api-keys", json={"name": "k1", "role": "viewer"}, headers=a["h"]), 201)
    ok(await api.post("/api/api-keys", json={"name": "k2", "role": "viewer"}, headers=a["h"]), 201)
    body = problem(await api.post("/api/api-keys", json={"name": "k3", "role": "viewer"}, headers=a["h"]), 402)
    assert (body["limit"], body["remaining"], body["feature"]) == ("api_keys", 0, "kernel.api_keys")
    # b's keys are its own allowance.
    ok(await api.post("/api/api-keys", json={"name": "k1", "role": "viewer"}, headers=b["h"]), 201)


async def test_thresholds_fire_at_80_and_100_percent_for_that_tenant_only(
    api: AsyncTestClient[Any], database_url: str
) -> None:
    a, b = await tenant(api), await tenant(api)  # free: 1,000 workflow executions a month

    def batch(start: int, end: int) -> dict[str, Any]:
        return {"events": [{"transaction_id": f"wf-{i}", "metric": "workflow_executions"} for i in range(start, end)]}

    ok(await api.post("/api/billing/usage", json=batch(0, 799), headers=a["h"]))
    ok(await api.post("/api/billing/usage", json=batch(0, 999), headers=b["h"]))

    def levels(events: list[tuple[str, dict[str, Any]]]) -> list[int]:
        return [p["percent"] for e, p in events if e == "billing.allowance.threshold_reached"]

    assert levels(await billing_events(database_url, a["id"])) == []  # 79.9%
    assert levels(await billing_events(database_url, b["id"])) == [80]
    ok(await api.post("/api/billing/usage", json=batch(799, 1000), headers=a["h"]))
    assert levels(await billing_events(database_url, a["id"])) == [80, 100]
    assert levels(await billing_events(database_url, b["id"])) == [80]
    used = {m["metric"]: m for m in ok(await api.get("/api/billing/usage", headers=a["h"]))["metrics"]}
    assert (used["workflow_executions"]["used"], used["workflow_executions"]["remaining"]) == ("1000", "0")


# --- AI tokens: the allowance the AI proxy asks before each call ---------------------------------


async def test_ai_tokens_allowed_are_counted_until_the_ledger_is_read_again(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    a, b = await tenant(api), await tenant(api)  # free: 100,000 tokens a month
    a_id, b_id = uuid.UUID(a["id"]), uuid.UUID(b["id"])
    first = await kernel.entitlements.ask(a_id, "kernel.ai.tokens", 60_000)
    assert (first.allowed, first.remaining) == (True, 40_000)
    # The call has not reached the ledger yet, but what was allowed is spoken for.
    second = await kernel.entitlements.ask(a_id, "kernel.ai.tokens", 60_000)
    assert (second.allowed, second.remaining, second.limit) == (False, 40_000, "ai_tokens")
    assert (await kernel.entitlements.ask(a_id, "kernel.ai.tokens", 0)).remaining == 40_000
    # b's allowance is its own.
    assert (await kernel.entitlements.ask(b_id, "kernel.ai.tokens", 60_000)).remaining == 40_000
