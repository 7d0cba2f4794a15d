"""The tenant's side of billing, under ``/api/billing``: its subscription, usage, invoices, credits.

Handlers are thin: parse, open the tenant's transaction through :class:`Billing`, answer. Every
query runs under the tenant's row-level security, so another tenant's ids are simply not found.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, Response, get, post
from sqlalchemy import text

from kernel import sdk
from plugins.billing import invoices, render
from plugins.billing.schemas import Amendment, CancelRequest, ChangePlan, UsageBatch
from plugins.billing.service import Billing
from plugins.billing.usage import amend

__all__ = ["INVOICES_READ", "ROUTES", "SUBSCRIPTION_MANAGE", "SUBSCRIPTION_READ", "USAGE_WRITE"]

SUBSCRIPTION_READ = "billing.subscription.read"
SUBSCRIPTION_MANAGE = "billing.subscription.manage"
USAGE_WRITE = "billing.usage.write"
INVOICES_READ = "billing.invoices.read"
TAGS = ["billing"]
AnyRequest = Request[Any, Any, Any]


def _log(services: sdk.Services, tenant: sdk.Tenant, request: AnyRequest) -> sdk.ChangeLog:
    return services.changes.by(sdk.Actor.of_request(request), tenant.id)


@get("/api/billing/subscriptions", tags=TAGS, opt={"permission": SUBSCRIPTION_READ})
async def list_subscriptions(tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> dict[str, Any]:
    """The tenant's subscriptions (the live one last): plan and version, status, current period."""
    billing = Billing(services)
    async with services.data.tenant(tenant.id) as session:
        await billing.current(session, _log(services, tenant, request))
        subs = await billing.subscriptions.list(session, _log(services, tenant, request), tenant.plan)
    return {"subscriptions": subs}


@get("/api/billing/subscriptions/{subscription_id:uuid}", tags=TAGS, opt={"permission": SUBSCRIPTION_READ})
async def get_subscription(subscription_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> Any:
    async with services.data.tenant(tenant.id) as session:
        return await Billing(services).subscriptions.get(session, subscription_id)


@get("/api/billing/plans", tags=TAGS, opt={"permission": SUBSCRIPTION_READ})
async def list_plans(tenant: sdk.Tenant, services: sdk.Services) -> dict[str, Any]:
    """The plans a tenant can choose (current versions of the operator's catalogue)."""
    async with services.data.tenant(tenant.id) as session:
        plans = [p for p in await Billing(services).catalogue.list(session) if not p.archived]
    return {"plans": plans}


@post("/api/billing/subscriptions/change", status_code=200, tags=TAGS, opt={"permission": SUBSCRIPTION_MANAGE})
async def change_plan(data: ChangePlan, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> Any:
    """Upgrade now (prorated) or downgrade at the end of the period; ``interval`` switches between
    monthly and yearly."""
    billing = Billing(services)
    async with services.data.tenant(tenant.id) as session:
        answer = await billing.subscriptions.change_plan(
            session, _log(services, tenant, request), data.plan, data.interval
        )
    await billing.sync_plan(tenant.id, sdk.Actor.of_request(request))
    return answer


@post("/api/billing/subscriptions/cancel", status_code=200, tags=TAGS, opt={"permission": SUBSCRIPTION_MANAGE})
async def cancel(data: CancelRequest, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> Any:
    billing = Billing(services)
    async with services.data.tenant(tenant.id) as session:
        answer = await billing.subscriptions.cancel(session, _log(services, tenant, request), data.at)
    await billing.sync_plan(tenant.id, sdk.Actor.of_request(request))
    return answer


@post("/api/billing/subscriptions/resume", status_code=200, tags=TAGS, opt={"permission": SUBSCRIPTION_MANAGE})
async def resume(tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> Any:
    billing = Billing(services)
    async with services.data.tenant(tenant.id) as session:
        answer = await billing.subscriptions.resume(session, _log(services, tenant, request))
    await billing.sync_plan(tenant.id, sdk.Actor.of_request(request))
    return answer


@post("/api/billing/usage", status_code=200, tags=TAGS, opt={"permission": USAGE_WRITE})
async def ingest_usage(data: UsageBatch, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> Any:
    """Up to 1,000 usage events, each stored once per ``transaction_id``: answers how many were
    accepted, how many were duplicates, and which were rejected (too late, in the future) and why."""
    result = await Billing(services).ingest(tenant.id, sdk.Actor.of_request(request), data.events)
    return {"accepted": result.accepted, "duplicates": result.duplicates, "rejected": result.rejected}


@post("/api/billing/usage/amendments", status_code=200, tags=TAGS, opt={"permission": USAGE_WRITE})
async def amend_usage(data: Amendment, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> Any:
    """Correct one event's value (its period's rollup follows); audited."""
    log = _log(services, tenant, request)
    async with services.data.tenant(tenant.id) as session:
        changed = await amend(session, data.transaction_id, data.value)
        await log.audit(session, action="billing.usage.amended", resource_type="billing.usage",
                        resource_id=data.transaction_id, details=changed)
    return changed


@get("/api/billing/usage", tags=TAGS, opt={"permission": SUBSCRIPTION_READ})
async def current_usage(tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest) -> Any:
    """The current period's usage per metric against the plan's allowance (from rollups)."""
    return await Billing(services).usage_report(tenant.id, sdk.Actor.of_request(request))


@get("/api/billing/invoices", tags=TAGS, opt={"permission": INVOICES_READ})
async def list_invoices(
    tenant: sdk.Tenant, services: sdk.Services, page: int = 1, limit: int = 25
) -> dict[str, Any]:
    """The tenant's invoices and credit notes, newest first."""
    sdk.check_list(page, limit, "-created_at", ("-created_at",))
    async with services.data.tenant(tenant.id) as session:
        total = int((await session.execute(text("select count(*) from billing_invoices"))).scalar_one())
        ids = (await session.execute(
            text("select id from billing_invoices order by created_at desc, id desc limit :l offset :o"),
            {"l": limit, "o": (page - 1) * limit},
        )).scalars().all()
        found = [await invoices.get(session, i) for i in ids]
    return {"invoices": found, "pagination": sdk.Pagination.of(page, limit, total)}


@get("/api/billing/invoices/{invoice_id:uuid}", tags=TAGS, opt={"permission": INVOICES_READ})
async def get_invoice(invoice_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> Any:
    async with services.data.tenant(tenant.id) as session:
        return await invoices.get(session, invoice_id)


@get("/api/billing/invoices/{invoice_id:uuid}/html", tags=TAGS, opt={"permission": INVOICES_READ})
async def invoice_html(invoice_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> Response[str]:
    async with services.data.tenant(tenant.id) as session:
        invoice = await invoices.get(session, invoice_id)
    return Response(render.to_html(invoice, tenant.name), media_type="text/html")


@get("/api/billing/invoices/{invoice_id:uuid}/pdf", tags=TAGS, opt={"permission": INVOICES_READ})
async def invoice_pdf(invoice_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> Response[bytes]:
    async with services.data.tenant(tenant.id) as session:
        invoice = await invoices.get(session, invoice_id)
    name = (invoice.number or str(invoice.id)) + ".pdf"
    return Response(render.to_pdf(invoice, tenant.name), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{name}"'})


@get("/api/billing/credits", tags=TAGS, opt={"permission": INVOICES_READ})
async def credit_balance(tenant: sdk.Tenant, services: sdk.Services, currency: str = "USD") -> Any:
    """The prepaid balance and the ledger behind it (the balance is the sum of the entries)."""
    return await Billing(services).credit_summary(tenant.id, currency)


@post("/api/billing/stripe/webhook", status_code=200, tags=TAGS,
      opt={"permission": sdk.PUBLIC, "module": None}, include_in_schema=True)
async def stripe_webhook(request: AnyRequest, services: sdk.Services) -> Any:
    """The installation's one Stripe endpoint (give Stripe this URL): the body is verified with
    the operator's webhook secret (400 problem when it does not verify), then the PaymentIntent
    event is applied to the tenant and invoice its metadata names, if they are Stripe's customer's."""
    from plugins.billing.stripe_events import receive

    return await receive(services, await request.body(), request.headers.get("stripe-signature", ""))


ROUTES = [
    list_subscriptions, get_subscription, list_plans, change_plan, cancel, resume, ingest_usage, amend_usage,
    current_usage, list_invoices, get_invoice, invoice_html, invoice_pdf, credit_balance, stripe_webhook,
]
