"""Payments and dunning.

A payment provider collects an open invoice; the operator can also record a payment received
outside any provider. An invoice still unpaid :data:`DUE_DAYS` after it was finalized (or whose
provider charge failed) makes the subscription ``past_due``; retries follow :data:`RETRIES`;
:data:`SUSPEND_AFTER` past due, the tenant is suspended (the kernel's suspension, as an operator's);
a payment that settles the last open invoice reactivates both. Each change is an event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.billing import invoices
from plugins.billing.models import SWEEP
from plugins.billing.subscriptions import clock_now

__all__ = [
    "DUE_DAYS", "RETRIES", "SUSPEND_AFTER", "ChargeResult", "PaymentProvider", "apply_result", "collect", "record",
    "run_dunning",
]

DUE_DAYS = timedelta(days=7)
RETRIES = (timedelta(days=1), timedelta(days=3), timedelta(days=5))
SUSPEND_AFTER = timedelta(days=14)
SYSTEM = sdk.Actor.system("billing")


@dataclass(frozen=True)
class ChargeResult:
    status: str
    """``succeeded``, ``failed`` or ``pending`` (the provider will tell through a webhook)."""
    reference: str | None = None
    error: str = ""


class PaymentProvider(Protocol):
    """Collects an invoice's amount; the Stripe provider is one, tests bring others."""

    name: str

    async def charge(
        self, tenant_id: uuid.UUID, invoice: Any, idempotency_key: str, *, customer: str, payment_method: str
    ) -> ChargeResult:
        """Collect what ``invoice`` still owes from the customer's payment method, once per key."""
        ...


async def settle(
    session: AsyncSession, log: sdk.ChangeLog, invoice_id: uuid.UUID, amount: int, provider: str,
    reference: str | None, now: datetime,
) -> tuple[Any, bool]:
    """Apply a received payment to the invoice; returns the invoice and whether the tenant has
    nothing left open (time to reactivate)."""
    invoice = await invoices.get(session, invoice_id)
    if invoice.kind != "invoice" or invoice.status not in ("open", "paid"):
        raise sdk.Conflict(f"invoice {invoice_id} is {invoice.status}: it takes no payment")
    inserted = await session.execute(
        text("insert into billing_payments (tenant_id, id, invoice_id, provider, reference, amount_minor, currency, "
             "status) values (:t, :id, :i, :p, :r, :a, :c, 'succeeded') on conflict do nothing returning id"),
        {"t": log.tenant_id, "id": sdk.uuid7(), "i": invoice_id, "p": provider, "r": reference, "a": amount,
         "c": invoice.currency},
    )
    if inserted.scalar_one_or_none() is None:  # the same provider reference twice: already applied
        return invoice, False
    await session.execute(
        text("update billing_invoices set amount_paid_minor = amount_paid_minor + :a, "
             "status = case when amount_paid_minor + :a >= total_minor then 'paid' else status end, "
             "paid_at = case when amount_paid_minor + :a >= total_minor then cast(:now as timestamptz) end "
             "where id = :i"),
        {"a": amount, "i": invoice_id, "now": now},
    )
    paid = await invoices.get(session, invoice_id)
    if paid.status == "paid":
        await log.record(session, "billing.invoice.paid", invoice_id,
                         after={"id": str(invoice_id), "amount_paid_minor": paid.amount_paid_minor})
    still_open = (await session.execute(
        text("select count(*) from billing_invoices where kind = 'invoice' and status = 'open' "
             "and finalized_at <= :due"), {"due": now - DUE_DAYS},
    )).scalar_one()
    reactivate = False
    if not still_open:
        sub = (await session.execute(
            text("update billing_subscriptions set status = 'active', past_due_since = null, version = version + 1 "
                 "where status = 'past_due' returning id"))).scalar_one_or_none()
        if sub is not None:
            reactivate = True
            await log.record(session, "billing.subscription.reactivated", sub, after={"id": str(sub),
                                                                                       "status": "active"})
    return paid, reactivate


async def record(
    services: sdk.Services, tenant_id: uuid.UUID, actor: sdk.Actor, invoice_id: uuid.UUID, amount: int,
    provider: str, reference: str | None,
) -> Any:
    """Record a payment of ``amount`` minor units on the invoice; reactivates a tenant that
    dunning suspended once nothing is overdue."""
    log = services.changes.by(actor, tenant_id)
    async with services.data.tenant(tenant_id) as session:
        paid, reactivate = await settle(session, log, invoice_id, amount, provider, reference,
                                        await clock_now(session))
    if reactivate:
        tenant = await services.tenants.find(str(tenant_id))
        if tenant is not None and tenant.status == "suspended":
            await services.tenants.set_status(tenant_id, "active", actor)
    return paid


async def fail(session: AsyncSession, log: sdk.ChangeLog, invoice_id: uuid.UUID, provider: str,
               reference: str | None, error: str, now: datetime) -> None:
    """A failed collection: the subscription goes past due and a retry is scheduled."""
    attempts = int((await session.execute(
        text("select count(*) from billing_payments where invoice_id = :i and status = 'failed'"), {"i": invoice_id}
    )).scalar_one())
    retry = now + RETRIES[attempts] if attempts < len(RETRIES) else None
    await session.execute(
        text("insert into billing_payments (tenant_id, id, invoice_id, provider, reference, amount_minor, currency, "
             "status, attempt, next_retry_at) select :t, :id, id, :p, :r, total_minor - amount_paid_minor, currency, "
             "'failed', :n, :retry from billing_invoices where id = :i on conflict do nothing"),
        {"t": log.tenant_id, "id": sdk.uuid7(), "p": provider, "r": reference, "n": attempts + 1, "retry": retry,
         "i": invoice_id},
    )
    await log.emit(session, event="billing.payment.failed",
                   payload={"invoice_id": str(invoice_id), "attempt": attempts + 1, "error": error,
                            "next_retry_at": retry.isoformat() if retry else None})
    await past_due(session, log, now)


async def past_due(session: AsyncSession, log: sdk.ChangeLog, now: datetime) -> bool:
    sub = (await session.execute(
        text("update billing_subscriptions set status = 'past_due', past_due_since = :now, version = version + 1 "
             "where status in ('active', 'trialing') returning id"), {"now": now},
    )).scalar_one_or_none()
    if sub is not None:
        await log.record(session, "billing.subscription.past_due", sub, after={"id": str(sub), "status": "past_due"})
    return sub is not None


async def run_dunning(services: sdk.Services, *, clock_id: uuid.UUID | None = None) -> dict[str, int]:
    """Overdue invoices make their subscriptions past due; a subscription past due longer than
    :data:`SUSPEND_AFTER` gets its tenant suspended. Idempotent (state transitions only)."""
    async with services.data.untenanted() as session:
        await session.execute(text(SWEEP))
        which = "clock_id = :c" if clock_id else "clock_id is null"
        query = "select tenant_id from billing_due where " + which  # noqa: S608 (a constant)
        tenants = (await session.execute(text(query), {"c": clock_id})).scalars().all()
    counts = {"past_due": 0, "suspended": 0}
    for tenant_id in tenants:
        log = services.changes.by(SYSTEM, tenant_id)
        async with services.data.tenant(tenant_id) as session:
            now = await clock_now(session)
            retry = await retries_due(session, now)
            overdue = (await session.execute(
                text("select count(*) from billing_invoices where kind = 'invoice' and status = 'open' "
                     "and finalized_at <= :due"), {"due": now - DUE_DAYS},
            )).scalar_one()
            if overdue and await past_due(session, log, now):
                counts["past_due"] += 1
            since = (await session.execute(
                text("select past_due_since from billing_subscriptions where status = 'past_due'")
            )).scalar_one_or_none()
        for invoice_id in retry:
            await collect(services, tenant_id, invoice_id)
            counts["retried"] = counts.get("retried", 0) + 1
        if since is not None and since <= now - SUSPEND_AFTER:
            tenant = await services.tenants.find(str(tenant_id))
            if tenant is not None and tenant.status == "active":
                await services.tenants.set_status(tenant_id, "suspended", SYSTEM)
                counts["suspended"] += 1
    return counts


async def collect(services: sdk.Services, tenant_id: uuid.UUID, invoice_id: uuid.UUID) -> str:
    """Ask the payment provider for what the invoice owes (when Stripe is configured and the
    tenant's profile names a customer); the network call runs between two transactions, never
    inside one. Returns ``succeeded``, ``failed``, ``pending`` or ``skipped``."""
    from plugins.billing.stripe_provider import configured

    provider = configured()
    if provider is None:
        return "skipped"
    async with services.data.tenant(tenant_id) as session:
        profile = (await session.execute(
            text("select stripe_customer, stripe_payment_method from billing_profiles limit 1"))).one_or_none()
        invoice = await invoices.get(session, invoice_id)
        attempt = 1 + int((await session.execute(
            text("select count(*) from billing_payments where invoice_id = :i and status = 'failed'"),
            {"i": invoice_id})).scalar_one())
    if profile is None or not profile.stripe_customer or not profile.stripe_payment_method:
        return "skipped"
    if invoice.status != "open" or invoice.kind != "invoice":
        return "skipped"
    result = await provider.charge(
        tenant_id, invoice, f"billing:{invoice_id}:{attempt}", customer=profile.stripe_customer,
        payment_method=profile.stripe_payment_method,
    )
    await apply_result(services, tenant_id, invoice_id, result, invoice.total_minor - invoice.amount_paid_minor)
    return result.status


async def apply_result(
    services: sdk.Services, tenant_id: uuid.UUID, invoice_id: uuid.UUID, result: ChargeResult, amount: int
) -> None:
    """Record how a provider's collection ended (from its answer or its webhook)."""
    log = services.changes.by(SYSTEM, tenant_id)
    reactivate = False
    async with services.data.tenant(tenant_id) as session:
        now = await clock_now(session)
        if result.status == "succeeded":
            _, reactivate = await settle(session, log, invoice_id, amount, "stripe", result.reference, now)
        elif result.status == "failed":
            reference = f"{result.reference}:failed" if result.reference else None
            await fail(session, log, invoice_id, "stripe", reference, result.error, now)
    if reactivate:
        tenant = await services.tenants.find(str(tenant_id))
        if tenant is not None and tenant.status == "suspended":
            await services.tenants.set_status(tenant_id, "active", SYSTEM)


async def retries_due(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Open invoices whose last failed collection scheduled a retry that is due."""
    rows = await session.execute(text(
        "select i.id from billing_invoices i where i.status = 'open' and i.kind = 'invoice' and "
        "(select p.next_retry_at from billing_payments p where p.invoice_id = i.id and p.status = 'failed' "
        " order by p.attempt desc limit 1) <= :now order by i.id"), {"now": now})
    return list(rows.scalars().all())
