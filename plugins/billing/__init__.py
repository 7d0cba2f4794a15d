"""billing: the operator bills tenants.

Versioned plans (grandfathered), one subscription per tenant from sign-up with periods in the
tenant's time zone and prorated changes, idempotent usage events with rollups, invoices
finalized with gapless numbers (void + credit note after), an append-only credit ledger,
payments and dunning, test clocks, and the kernel's entitlement hook. Money is integer minor
units of the currency. Routes under ``/api/billing`` (tenants) and ``/api/admin/billing``
(operators); tables ``billing_*``; enabled for every tenant (``always_enabled``).
It imports nothing from the kernel but ``kernel.sdk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kernel import sdk
from plugins.billing.admin import ADMIN_ROUTES
from plugins.billing.catalogue import DEFAULT_PLAN, KNOWN, SYNC_SECONDS, Catalogue
from plugins.billing.models import METADATA
from plugins.billing.routes import INVOICES_READ, ROUTES, SUBSCRIPTION_MANAGE, SUBSCRIPTION_READ, USAGE_WRITE
from plugins.billing.service import EVENTS, SYSTEM, Billing, run_due

logger = logging.getLogger("businessos.billing")

manifest = sdk.Manifest(
    name="billing",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    always_enabled=True,
    title="Billing",
    description="Plans, subscriptions, usage metering, invoices, payments and entitlements.",
)


class Plans(sdk.EntitlementProvider):
    """Billing's answers to the kernel's entitlement questions."""

    plans = None  # the operator's catalogue changes at run time: any code passes the gate
    default_plan = DEFAULT_PLAN

    def signup_plan(self, requested: str) -> str:
        paid, trial_days = KNOWN.get(requested, (True, 0))
        return requested if not paid or trial_days > 0 else DEFAULT_PLAN

    async def check(self, query: sdk.EntitlementQuery, services: sdk.Services) -> sdk.Entitlement:
        return await Billing(services).entitlement(query)

    async def operator_plan(self, tenant_id: uuid.UUID, plan: str, actor: str, services: sdk.Services) -> None:
        await Billing(services).operator_plan(tenant_id, plan, actor)


async def _on_event(ctx: sdk.EventContext) -> None:
    """Meter kernel and plugin events (each at most once: the event id is the transaction id)."""
    billing = Billing(ctx.services)
    if ctx.event == "kernel.tenant.created":
        log = billing.log(SYSTEM, ctx.tenant_id)
        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            await billing.subscriptions.ensure(session, log, str(ctx.payload.get("plan") or DEFAULT_PLAN))
        await billing.sync_plan(ctx.tenant_id, SYSTEM)  # sign-up's guess of the plan may be corrected
        return
    from plugins.billing.schemas import UsageEvent

    tx = f"event:{ctx.event_id}"
    events: list[UsageEvent] = []
    if ctx.event == "workflows.execution.started":
        events.append(UsageEvent(transaction_id=tx, metric="workflow_executions", value=1))
    elif ctx.event in ("kernel.member.added", "kernel.member.removed"):
        from sqlalchemy import text

        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            seats = (await session.execute(text("select count(*) from memberships"))).scalar_one()
        events.append(UsageEvent(transaction_id=tx, metric="seats", value=float(seats)))
    if events:
        await billing.ingest(ctx.tenant_id, SYSTEM, events)


async def _stripe_webhook(hook: sdk.InboundWebhook) -> sdk.WebhookReply:
    """The per-tenant alias of ``POST /api/billing/stripe/webhook``: the same verification, and
    only events whose metadata names this endpoint's tenant are applied."""
    from plugins.billing.stripe_events import StripeUnavailable, receive

    try:
        answer = await receive(hook.services, hook.body, hook.headers.get("stripe-signature", ""),
                               only_tenant=hook.tenant_id)
    except StripeUnavailable:
        return sdk.WebhookReply(status=503, content={"error": "stripe is not configured"})
    except sdk.BadRequest:
        return sdk.WebhookReply(status=400, content={"error": "invalid signature"})
    return sdk.WebhookReply(status=200, content=answer)


async def _period_end(ctx: sdk.JobContext) -> dict[str, int]:
    return await run_due(ctx.services)


async def _api_calls(ctx: sdk.JobContext) -> dict[str, int]:
    return await Billing(ctx.services).flush_api_calls()


@asynccontextmanager
async def _catalogue_sync(services: sdk.Services) -> AsyncIterator[None]:
    """Keep this process's copy of the catalogue current: one primary-key read every
    ``SYNC_SECONDS``, a reload only when another process changed the catalogue."""
    catalogue = Catalogue()

    async def loop() -> None:
        while True:
            try:
                async with services.data.untenanted() as session:
                    await catalogue.sync(session)
            except Exception as exc:  # an outage: try again at the next tick
                logger.warning("billing catalogue not checked: %s", type(exc).__name__)
            await asyncio.sleep(SYNC_SECONDS)

    task = asyncio.create_task(loop(), name="billing-catalogue-sync")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _dunning(ctx: sdk.JobContext) -> dict[str, int]:
    from plugins.billing.payments import run_dunning

    return await run_dunning(ctx.services)


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return list(ROUTES)


@sdk.hookimpl
def businessos_admin_routes() -> list[Any]:
    return list(ADMIN_ROUTES)


@sdk.hookimpl
def businessos_metadata() -> Any:
    return METADATA


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [
        sdk.Permission(SUBSCRIPTION_READ, "See the tenant's subscription, plans and usage"),
        sdk.Permission(SUBSCRIPTION_MANAGE, "Change, cancel or resume the subscription", roles=("admin",)),
        sdk.Permission(USAGE_WRITE, "Report usage events", roles=("admin", "member")),
        sdk.Permission(INVOICES_READ, "See invoices and credits", roles=("admin",)),
    ]


@sdk.hookimpl
def businessos_event_types() -> list[sdk.EventType]:
    return [sdk.EventType(name, description) for name, description in EVENTS.items()]


@sdk.hookimpl
def businessos_event_handlers() -> list[sdk.EventHandler]:
    # Only these events are metered: the others get no delivery for this handler at all.
    metered = frozenset({"kernel.tenant.created", "workflows.execution.started", "kernel.member.added",
                         "kernel.member.removed"})
    return [sdk.EventHandler(event="*", handler=_on_event, name="meter", accepts=metered.__contains__)]


@sdk.hookimpl
def businessos_entitlements() -> sdk.EntitlementProvider:
    return Plans()


@sdk.hookimpl
def businessos_webhook_routes() -> list[sdk.WebhookRoute]:
    return [sdk.WebhookRoute("stripe", _stripe_webhook, "Stripe events about the tenant's PaymentIntents")]


@sdk.hookimpl
def businessos_jobs() -> list[sdk.JobSpec]:
    return [
        sdk.JobSpec(name="billing.period_end", run=_period_end, timeout=3000.0),
        sdk.JobSpec(name="billing.dunning", run=_dunning, timeout=3000.0),
        sdk.JobSpec(name="billing.api_calls", run=_api_calls, timeout=300.0),
    ]


@sdk.hookimpl
def businessos_schedules() -> list[sdk.Schedule]:
    return [
        sdk.Schedule(name="billing.period_end", cron="* * * * *", job="billing.period_end"),
        sdk.Schedule(name="billing.dunning", cron="17 * * * *", job="billing.dunning"),
        sdk.Schedule(name="billing.api_calls", cron="* * * * *", job="billing.api_calls"),
    ]


@sdk.hookimpl
def businessos_lifespan() -> Any:
    return _catalogue_sync
