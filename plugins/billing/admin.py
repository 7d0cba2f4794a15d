"""The operator's side, mounted under ``/api/admin/billing``: the catalogue, tenants' billing
profiles, credits, invoices' corrections and payments, test clocks and the period-end run.

Operators only (the kernel's admin guard); what changes a tenant is recorded in that tenant's
audit log with ``operator:<id>`` as the actor."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import get, patch, post, put
from sqlalchemy import text

from kernel import sdk
from plugins.billing import invoices, payments
from plugins.billing.catalogue import Catalogue
from plugins.billing.models import SWEEP
from plugins.billing.schemas import (
    ClockAdvance,
    ClockCreate,
    CreditGrant,
    PaymentRecord,
    PlanChange,
    PlanCreate,
    ProfileUpdate,
)
from plugins.billing.service import Billing, run_due
from plugins.billing.subscriptions import clock_now

__all__ = ["ADMIN_ROUTES"]

_CATALOGUE = Catalogue()
PERM = {"permission": sdk.OPERATOR}


def _actor(operator: sdk.Operator) -> sdk.Actor:
    return sdk.Actor.system(operator.actor)


async def _tenant(services: sdk.Services, ref: str) -> sdk.Tenant:
    tenant = await services.tenants.find(ref)
    if tenant is None:
        raise sdk.NotFound(f"tenant {ref!r} does not exist")
    return tenant


@get("/plans", opt=PERM)
async def admin_list_plans(services: sdk.Services) -> dict[str, Any]:
    async with services.data.untenanted() as session:
        return {"plans": await _CATALOGUE.list(session)}


@post("/plans", opt=PERM)
async def admin_create_plan(data: PlanCreate, services: sdk.Services) -> Any:
    async with services.data.untenanted() as session:
        return await _CATALOGUE.create(session, data)


@get("/plans/{code:str}", opt=PERM)
async def admin_get_plan(code: str, services: sdk.Services) -> Any:
    async with services.data.untenanted() as session:
        return await _CATALOGUE.get(session, code)


@patch("/plans/{code:str}", opt=PERM)
async def admin_change_plan(code: str, data: PlanChange, services: sdk.Services) -> Any:
    """A new version of the plan; subscriptions keep the version they have until migrated."""
    async with services.data.untenanted() as session:
        return await _CATALOGUE.change(session, code, data)


@post("/tenants/{ref:str}/subscription/migrate", status_code=200, opt=PERM)
async def admin_migrate(ref: str, services: sdk.Services, operator: sdk.Operator) -> Any:
    """Move the tenant's subscription to the newest version of its plan at the next period."""
    tenant = await _tenant(services, ref)
    billing = Billing(services)
    log = billing.log(_actor(operator), tenant.id)
    async with services.data.tenant(tenant.id) as session:
        row, _ = await billing.current(session, log)
        latest = await _CATALOGUE.latest(session, row.plan_code)
        assert latest is not None
        before = await billing.subscriptions.view(session, row)
        await session.execute(
            text("update billing_subscriptions set pending_plan_version_id = :v, version = version + 1 where id = :id"),
            {"v": latest.version_id, "id": row.id},
        )
        after = await billing.subscriptions.view(session, await billing.subscriptions.live(session))
        await log.record(session, "billing.subscription.updated", row.id, before=before, after=after)
    return {"subscription": after, "to_version": latest.version}


@post("/plans/{code:str}/migrate", status_code=200, opt=PERM)
async def admin_migrate_plan(code: str, services: sdk.Services, operator: sdk.Operator) -> Any:
    """Move every subscription on an older version of the plan to its newest version, each at
    its next period end (one transaction per tenant, audited in its log)."""
    async with services.data.untenanted() as session:
        await session.execute(text(SWEEP))
        latest = await _CATALOGUE.latest(session, code)
        tenants = (await session.execute(text("select tenant_id from billing_due order by tenant_id"))).scalars().all()
    if latest is None:
        raise sdk.NotFound(f"plan {code!r} does not exist")
    billing = Billing(services)
    moved = 0
    for tenant_id in tenants:
        log = billing.log(_actor(operator), tenant_id)
        async with services.data.tenant(tenant_id) as session:
            row = await billing.subscriptions.live(session, lock=True)
            # Already there, on another plan, or a change already waits for the period end (it wins).
            if (row is None or row.plan_code != code or row.plan_version_id == latest.version_id
                    or row.pending_plan_version_id is not None):
                continue
            before = await billing.subscriptions.view(session, row)
            await session.execute(
                text("update billing_subscriptions set pending_plan_version_id = :v, version = version + 1 "
                     "where id = :id"),
                {"v": latest.version_id, "id": row.id},
            )
            after = await billing.subscriptions.view(session, await billing.subscriptions.live(session))
            await log.record(session, "billing.subscription.updated", row.id, before=before, after=after)
            moved += 1
    return {"plan": code, "to_version": latest.version, "subscriptions": moved}


@put("/tenants/{ref:str}/profile", opt=PERM)
async def admin_profile(ref: str, data: ProfileUpdate, services: sdk.Services, operator: sdk.Operator) -> Any:
    """The tenant's billing time zone and tax (rate in percent, tax id)."""
    tenant = await _tenant(services, ref)
    if data.timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(data.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise sdk.Unprocessable("unknown time zone", errors=[
                sdk.FieldError(field="timezone", message="an IANA time zone name")]) from None
    changes = services.changes.by(_actor(operator), tenant.id)
    async with services.data.tenant(tenant.id) as session:
        await session.execute(
            text("insert into billing_profiles (tenant_id, id) values (:t, :id) on conflict (tenant_id) do nothing"),
            {"t": tenant.id, "id": sdk.uuid7()},
        )
        given = (("timezone", data.timezone), ("tax_rate", data.tax_rate), ("tax_id", data.tax_id),
                 ("stripe_customer", data.stripe_customer), ("stripe_payment_method", data.stripe_payment_method))
        sets = {k: v for k, v in given if v is not None}
        if sets:
            await session.execute(
                text("update billing_profiles set "  # noqa: S608 (column names are the fixed keys above)
                     + ", ".join(f"{k} = :{k}" for k in sets) + ", updated_at = now()"),
                sets,
            )
        query = text("select timezone, tax_rate, tax_id, stripe_customer from billing_profiles")
        row = (await session.execute(query)).one()
        profile = {"timezone": row.timezone, "tax_rate": str(row.tax_rate), "tax_id": row.tax_id,
                   "stripe_customer": row.stripe_customer}
        if data.timezone is not None:
            # The next periods follow the new zone; the current one keeps its instants.
            await session.execute(text("update billing_subscriptions set timezone = :tz where status <> 'canceled'"),
                                  {"tz": data.timezone})
        await changes.audit(session, action="billing.profile.updated", resource_type="billing.profile",
                            resource_id=str(tenant.id), after=profile)
    return profile


@post("/tenants/{ref:str}/credits", opt=PERM)
async def admin_grant(ref: str, data: CreditGrant, services: sdk.Services, operator: sdk.Operator) -> Any:
    tenant = await _tenant(services, ref)
    return await Billing(services).grant_credits(tenant.id, _actor(operator), data.amount_minor, data.currency,
                                                 data.expires_at, data.note)


@post("/tenants/{ref:str}/invoices/{invoice_id:uuid}/void", status_code=200, opt=PERM)
async def admin_void(ref: str, invoice_id: uuid.UUID, services: sdk.Services, operator: sdk.Operator) -> Any:
    """Void a finalized invoice; answers the credit note that reverses it."""
    tenant = await _tenant(services, ref)
    log = services.changes.by(_actor(operator), tenant.id)
    async with services.data.tenant(tenant.id) as session:
        return await invoices.void(session, log, invoice_id, await clock_now(session))


@post("/tenants/{ref:str}/invoices/{invoice_id:uuid}/finalize", status_code=200, opt=PERM)
async def admin_finalize(ref: str, invoice_id: uuid.UUID, services: sdk.Services, operator: sdk.Operator) -> Any:
    """Finalize a draft now, without waiting for its grace period."""
    tenant = await _tenant(services, ref)
    log = services.changes.by(_actor(operator), tenant.id)
    async with services.data.tenant(tenant.id) as session:
        return await invoices.finalize(session, log, invoice_id, await clock_now(session))


@post("/tenants/{ref:str}/invoices/{invoice_id:uuid}/payments", status_code=200, opt=PERM)
async def admin_record_payment(
    ref: str, invoice_id: uuid.UUID, data: PaymentRecord, services: sdk.Services, operator: sdk.Operator
) -> Any:
    """Record a payment received outside any provider (a bank transfer)."""
    tenant = await _tenant(services, ref)
    return await payments.record(services, tenant.id, _actor(operator), invoice_id, data.amount_minor,
                                 "manual", data.reference)


@get("/tenants/{ref:str}/invoices", opt=PERM)
async def admin_invoices(ref: str, services: sdk.Services) -> Any:
    tenant = await _tenant(services, ref)
    async with services.data.tenant(tenant.id) as session:
        ids = (await session.execute(text("select id from billing_invoices order by created_at, id"))).scalars().all()
        return {"invoices": [await invoices.get(session, i) for i in ids]}


@post("/clocks", opt=PERM)
async def admin_create_clock(data: ClockCreate, services: sdk.Services) -> Any:
    clock_id = sdk.uuid7()
    async with services.data.untenanted() as session:
        await session.execute(text("insert into billing_clocks (id, name, frozen_at) values (:id, :n, :f)"),
                              {"id": clock_id, "n": data.name, "f": data.frozen_at})
    return {"id": clock_id, "name": data.name, "frozen_at": data.frozen_at}


@post("/tenants/{ref:str}/clock/{clock_id:uuid}", status_code=200, opt=PERM)
async def admin_attach_clock(ref: str, clock_id: uuid.UUID, services: sdk.Services, operator: sdk.Operator) -> Any:
    """Attach a test tenant to a clock: from now on its billing runs at the clock's time. Its
    subscription restarts at the clock's time (a test tenant has no real history to keep)."""
    tenant = await _tenant(services, ref)
    billing = Billing(services)
    log = billing.log(_actor(operator), tenant.id)
    async with services.data.tenant(tenant.id) as session:
        clock = text("select id from billing_clocks where id = :c")
        found = (await session.execute(clock, {"c": clock_id})).one_or_none()
        if found is None:
            raise sdk.NotFound(f"clock {clock_id} does not exist")
        await session.execute(
            text("insert into billing_profiles (tenant_id, id, clock_id) values (:t, :id, :c) "
                 "on conflict (tenant_id) do update set clock_id = excluded.clock_id"),
            {"t": tenant.id, "id": sdk.uuid7(), "c": clock_id},
        )
        await session.execute(text("delete from billing_subscriptions"))
        await session.execute(text("delete from billing_due where tenant_id = :t"), {"t": tenant.id})
        row = await billing.subscriptions.ensure(session, log, tenant.plan)
        await log.audit(session, action="billing.clock.attached", resource_type="billing.clock",
                        resource_id=str(clock_id))
        return {"subscription": await billing.subscriptions.view(session, row)}


@post("/clocks/{clock_id:uuid}/advance", status_code=200, opt=PERM)
async def admin_advance_clock(clock_id: uuid.UUID, data: ClockAdvance, services: sdk.Services) -> Any:
    """Move the clock forward and run, at its new time, everything due for its tenants
    (renewals, invoices, trial ends, dunning)."""
    async with services.data.untenanted() as session:
        current = (await session.execute(text("select frozen_at from billing_clocks where id = :c for update"),
                                         {"c": clock_id})).scalar_one_or_none()
        if current is None:
            raise sdk.NotFound(f"clock {clock_id} does not exist")
        if data.to < current:
            raise sdk.Unprocessable("a clock only moves forward", errors=[
                sdk.FieldError(field="to", message=f"at or after {current.isoformat()}")])
        await session.execute(text("update billing_clocks set frozen_at = :t where id = :c"),
                              {"t": data.to, "c": clock_id})
    ran: dict[str, Any] = dict(await run_due(services, clock_id=clock_id))
    ran["dunning"] = await payments.run_dunning(services, clock_id=clock_id)
    return {"id": clock_id, "frozen_at": data.to, "ran": ran}


@post("/tenants/{ref:str}/stripe/webhook", opt=PERM)
async def admin_stripe_webhook(ref: str, services: sdk.Services, operator: sdk.Operator) -> Any:
    """A per-tenant alias of ``POST /api/billing/stripe/webhook`` (kept for installations that
    configured one): only events whose metadata names this tenant are applied there."""
    tenant = await _tenant(services, ref)
    return await services.webhooks.create(tenant.id, "stripe", actor=_actor(operator))


@post("/api-calls/flush", status_code=200, opt=PERM)
async def admin_flush_api_calls(services: sdk.Services) -> Any:
    """Store the API calls counted so far as ``api_calls`` usage now (the schedule does it every
    minute)."""
    return await Billing(services).flush_api_calls()


@post("/run", status_code=200, opt=PERM)
async def admin_run(services: sdk.Services) -> Any:
    """Run the period-end work due now (what the schedule does every minute)."""
    return await run_due(services)


ADMIN_ROUTES = [
    admin_list_plans, admin_create_plan, admin_get_plan, admin_change_plan, admin_migrate_plan, admin_migrate,
    admin_profile,
    admin_grant, admin_void, admin_finalize, admin_record_payment, admin_invoices, admin_create_clock,
    admin_attach_clock, admin_advance_clock, admin_stripe_webhook, admin_flush_api_calls, admin_run,
]
