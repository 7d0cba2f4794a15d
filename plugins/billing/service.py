"""Billing as the routes, handlers, jobs and the entitlement provider use it: one tenant at a time,
in that tenant's transaction, at that tenant's ``now`` (its test clock or the wall clock)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.billing import credits, invoices, payments, usage
from plugins.billing.catalogue import DEFAULT_PLAN, Catalogue, PlanTerms
from plugins.billing.models import SWEEP
from plugins.billing.pricing import Charge
from plugins.billing.schemas import UsageEvent
from plugins.billing.subscriptions import CATALOGUE, Subscriptions, clock_now, profile_of
from plugins.billing.usage import text_of

__all__ = ["SYSTEM", "Billing", "run_due"]

SYSTEM = sdk.Actor.system("billing")
logger = logging.getLogger("businessos.billing")

# The usage read in one statement: the live subscription, the tenant's now, the plan version and
# the period's rollups and AI tokens (the AI ledger's (tenant_id, created_at) index).
_CURRENT_USAGE = sdk.Query(text(
    """
    select s.current_period_start, s.current_period_end, p.code, v.entitlements, v.charges,
           coalesce((select c.frozen_at from billing_profiles pr join billing_clocks c on c.id = pr.clock_id
                     limit 1), now()) as now,
           (select coalesce(json_agg(json_build_array(r.metric, r.events, r.total::text, r.maximum::text,
                                                      r.latest::text, r.uniques)), '[]')
              from billing_usage_rollups r where r.period_start = s.current_period_start) as rollups,
           ai.tokens as ai_tokens, ai.cost as ai_cost
      from billing_subscriptions s
      cross join lateral (
        select coalesce(sum(a.prompt_tokens + a.completion_tokens), 0) as tokens, coalesce(sum(a.cost), 0) as cost
          from ai_usage a where a.created_at >= s.current_period_start and a.created_at < s.current_period_end
      ) ai
      join billing_plan_versions v on v.id = s.plan_version_id
      join billing_plans p on p.id = v.plan_id
     where s.status <> 'canceled'
    """
))


def _json(value: Any) -> Any:
    """A json/jsonb column as the read path returns it (text) or decoded already."""
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value


@dataclass(frozen=True)
class _Rollup:
    metric: str
    events: int
    total: Decimal
    maximum: Decimal | None
    latest: Decimal | None
    uniques: int


def _rollup_rows(rows: list[list[Any]]) -> list[_Rollup]:
    return [
        _Rollup(m, int(e), Decimal(t), Decimal(x) if x is not None else None, Decimal(la) if la is not None else None,
                int(u))
        for m, e, t, x, la, u in rows
    ]


EVENTS = {
    "billing.subscription.created": "A tenant's subscription began (sign-up or first read)",
    "billing.subscription.updated": "A plan change, cancellation at period end or resumption",
    "billing.subscription.renewed": "A period ended and the next one began",
    "billing.subscription.canceled": "A subscription ended",
    "billing.subscription.past_due": "A payment failed: the subscription is past due",
    "billing.subscription.reactivated": "A past-due subscription was paid",
    "billing.invoice.created": "A draft invoice for a period",
    "billing.invoice.finalized": "An invoice got its number and can no longer change",
    "billing.invoice.voided": "An invoice was voided and a credit note issued",
    "billing.invoice.paid": "An invoice was paid in full",
    "billing.payment.failed": "A payment attempt failed",
    "billing.allowance.threshold_reached": "Usage reached 80% or 100% of a plan allowance",
    "billing.credit.granted": "Prepaid credits were granted",
    "billing.clock.advanced": "The operator moved a test clock",
}


class Billing:
    """The plugin's services bound to one facade."""

    def __init__(self, services: sdk.Services, catalogue: Catalogue = CATALOGUE) -> None:
        self.services = services
        self.catalogue = catalogue
        self.subscriptions = Subscriptions(catalogue)

    def log(self, actor: sdk.Actor, tenant_id: uuid.UUID) -> sdk.ChangeLog:
        return self.services.changes.by(actor, tenant_id)

    async def sync_plan(self, tenant_id: uuid.UUID, actor: sdk.Actor) -> None:
        """Make the kernel's record of the tenant's plan follow its live subscription (after the
        change committed: the kernel writes it in its own transaction)."""
        async with self.services.data.tenant(tenant_id) as session:
            row = await self.subscriptions.live(session)
        tenant = await self.services.tenants.find(str(tenant_id))
        code = row.plan_code if row is not None else DEFAULT_PLAN  # canceled: free from the next read
        if tenant is not None and tenant.plan != code:
            await self.services.tenants.set_plan(tenant_id, code, actor)

    async def signed_up_plan(self, tenant_id: uuid.UUID) -> str | None:
        tenant = await self.services.tenants.find(str(tenant_id))
        return tenant.plan if tenant is not None else None

    async def current(self, session: AsyncSession, log: sdk.ChangeLog) -> tuple[Any, PlanTerms]:
        """The live subscription (made if missing, renewed if due) and its plan version."""
        row = await self.subscriptions.ensure(session, log, await self.signed_up_plan(log.tenant_id))
        if row.current_period_end <= await clock_now(session):
            await self.subscriptions.advance(session, log, await self.subscriptions.live(session, lock=True))
            row = await self.subscriptions.live(session)
            if row is None:
                row = await self.subscriptions.ensure(session, log, None)
        return row, await self.catalogue.version(session, row.plan_version_id)

    async def ingest(self, tenant_id: uuid.UUID, actor: sdk.Actor, events: list[UsageEvent]) -> usage.Ingested:
        log = self.log(actor, tenant_id)
        async with self.services.data.tenant(tenant_id) as session:
            row, terms = await self.current(session, log)
            now = await clock_now(session)
            previous = (
                await session.execute(
                    text("select max(period_start) from billing_invoices where kind = 'invoice' and status = 'draft' "
                         "and subscription_id = :s and period_start < :p"),
                    {"s": row.id, "p": row.current_period_start},
                )
            ).scalar_one_or_none()
            result = await usage.ingest(
                session, tenant_id, events, now=now, period_start=row.current_period_start, previous_start=previous
            )
            if result.accepted and any(e.metric in usage.ALLOWANCE_METRICS.values() for e in events):
                used = await self._used(session, row, terms)
                await usage.thresholds(session, log, row.current_period_start, used, terms.entitlements)
            return result

    async def _used(self, session: AsyncSession, row: Any, terms: PlanTerms) -> dict[str, Decimal]:
        aggregations = {c["metric"]: c.get("aggregation", "sum") for c in terms.charges}
        aggregations.setdefault("workflow_executions", "count")
        aggregations.setdefault("seats", "max")
        return await usage.quantities(session, row.current_period_start, row.current_period_end, aggregations)

    async def usage_report(self, tenant_id: uuid.UUID, actor: sdk.Actor) -> dict[str, Any]:
        """The current period's usage per metric against the plan's allowances. The usual case
        (a live subscription in its period) is one statement over the rollups; otherwise the
        subscription is made or renewed first."""
        async with self.services.data.read(tenant_id) as reader:
            found = await reader.fetchrow(_CURRENT_USAGE)
        if found is None or found["now"] >= found["current_period_end"]:
            async with self.services.data.tenant(tenant_id) as session:
                row, terms = await self.current(session, self.log(actor, tenant_id))
                used = await self._used(session, row, terms)
            start, end, code = row.current_period_start, row.current_period_end, terms.code
            entitlements, charges = terms.entitlements, terms.charges
        else:
            start, end, code = found["current_period_start"], found["current_period_end"], found["code"]
            entitlements, charges = _json(found["entitlements"]), _json(found["charges"])
            aggregations = {c["metric"]: c.get("aggregation", "sum") for c in charges}
            aggregations.setdefault("workflow_executions", "count")
            aggregations.setdefault("seats", "max")
            rollups = _rollup_rows(_json(found["rollups"]))
            used = {r.metric: usage.pick(aggregations.get(r.metric, "sum"), r) for r in rollups}
            used["ai_tokens"] = used.get("ai_tokens", Decimal(0)) + int(found["ai_tokens"])
            used["ai_cost"] = Decimal(found["ai_cost"])
        included = {c["metric"]: c.get("included") for c in charges}
        for feature, metric in usage.ALLOWANCE_METRICS.items():
            included.setdefault(metric, entitlements.get(feature))
        metrics = []
        for metric in sorted(set(used) | set(included)):
            amount = used.get(metric, Decimal(0))
            limit = included.get(metric)
            metrics.append({
                "metric": metric, "used": text_of(amount), "included": limit,
                "remaining": text_of(max(Decimal(limit) - amount, Decimal(0))) if limit is not None else None,
            })
        return {"period": {"start": start, "end": end}, "plan": code, "metrics": metrics}

    async def run_tenant(self, tenant_id: uuid.UUID) -> dict[str, int]:
        """The period-end work of one tenant, due or not: renew ended periods, finalize drafts
        whose grace is over; then record when it is next due. Idempotent."""
        log = self.log(SYSTEM, tenant_id)
        async with self.services.data.tenant(tenant_id) as session:
            row = await self.subscriptions.live(session, lock=True)
            ended = await self.subscriptions.advance(session, log, row) if row is not None else 0
            now = await clock_now(session)
            finalized = await invoices.finalize_due(session, log, now)
            await self._next_due(session, tenant_id)
        for invoice in finalized:
            if invoice.status == "open":
                await payments.collect(self.services, tenant_id, invoice.id)
        if ended:
            await self.sync_plan(tenant_id, SYSTEM)
        return {"periods": ended, "finalized": len(finalized)}

    async def _next_due(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        row = await self.subscriptions.live(session)
        draft = (
            await session.execute(text("select min(finalize_after) from billing_invoices where status = 'draft'"))
        ).scalar_one_or_none()
        candidates = [t for t in (row.current_period_end if row is not None else None, draft) if t is not None]
        if not candidates:
            await session.execute(text("delete from billing_due where tenant_id = :t"), {"t": tenant_id})
            return
        profile = await profile_of(session)
        await session.execute(
            text("insert into billing_due (tenant_id, due_at, clock_id) values (:t, :d, :c) "
                 "on conflict (tenant_id) do update set due_at = excluded.due_at, clock_id = excluded.clock_id"),
            {"t": tenant_id, "d": min(candidates), "c": profile.clock_id},
        )

    async def entitlement(self, query: sdk.EntitlementQuery) -> sdk.Entitlement:
        feature = query.feature
        if feature == "kernel.module.billing":
            return sdk.Entitlement(allowed=True)
        async with self.services.data.tenant(query.tenant_id) as session:
            row, terms = await self.current(session, self.log(SYSTEM, query.tenant_id))
            if row.status in ("canceled", "paused") and feature.startswith("kernel.module."):
                return sdk.Entitlement(allowed=False, limit="modules", detail=f"the subscription is {row.status}",
                                       lift="resume the subscription")
            if feature.startswith("kernel.module."):
                module = feature.removeprefix("kernel.module.")
                if terms.allows_module(module):
                    return sdk.Entitlement(allowed=True)
                better = await self.catalogue.plan_with_module(session, module)
                return sdk.Entitlement(
                    allowed=False, limit="modules", detail=f"the {terms.name} plan does not include {module}",
                    lift=f"upgrade to the {better} plan" if better else "ask the operator for a plan with it",
                )
            counted = {
                "kernel.members": ("seats", "select count(*) from memberships"),
                "kernel.api_keys": ("api_keys", "select count(*) from api_keys where revoked_at is null "
                                                "and (expires_at is null or expires_at > now())"),
            }
            if feature in counted:
                name, query_text = counted[feature]
                used = Decimal((await session.execute(text(query_text))).scalar_one())
            elif feature in ("workflows.executions", "workflows.runs", "kernel.workflow_executions"):
                name = "workflow_executions"
                used = (await self._used(session, row, terms)).get("workflow_executions", Decimal(0))
            elif feature.endswith(".ai_tokens") or feature == "kernel.ai.tokens":
                name = "ai_tokens"
                used = (await self._used(session, row, terms)).get("ai_tokens", Decimal(0))
            else:
                return sdk.Entitlement(allowed=True)
        limit = terms.entitlements.get(name)
        if limit is None:
            return sdk.Entitlement(allowed=True)
        left = int(Decimal(limit) - used)
        after = left - query.amount
        if after >= 0:
            return sdk.Entitlement(allowed=True, remaining=after)
        return sdk.Entitlement(
            allowed=False, remaining=max(left, 0), limit=name,
            detail=f"the {terms.name} plan allows {limit} {name.replace('_', ' ')}; {max(left, 0)} remain",
            lift="upgrade to a plan with more " + name.replace("_", " "),
        )

    async def grant_credits(self, tenant_id: uuid.UUID, actor: sdk.Actor, amount: int, currency: str,
                            expires_at: datetime | None, note: str) -> dict[str, Any]:
        log = self.log(actor, tenant_id)
        async with self.services.data.tenant(tenant_id) as session:
            grant_id = await credits.grant(session, tenant_id, amount, currency, expires_at, note)
            await log.record(session, "billing.credit.granted", grant_id, after={
                "id": str(grant_id), "amount_minor": amount, "currency": currency,
                "expires_at": expires_at.isoformat() if expires_at else None,
            })
            return {"id": grant_id, "balance_minor": await credits.balance(session, currency)}

    async def credit_summary(self, tenant_id: uuid.UUID, currency: str) -> dict[str, Any]:
        async with self.services.data.tenant(tenant_id) as session:
            await credits.expire(session, tenant_id, currency, await clock_now(session))
            entries = await credits.ledger(session)
            return {"currency": currency, "balance_minor": await credits.balance(session, currency),
                    "entries": entries}

    async def charges_of(self, session: AsyncSession, version_id: uuid.UUID) -> list[Charge]:
        import msgspec

        return [msgspec.convert(c, Charge) for c in (await self.catalogue.version(session, version_id)).charges]


async def run_due(
    services: sdk.Services, *, clock_id: uuid.UUID | None = None, limit: int = 10_000, concurrency: int = 4
) -> dict[str, int]:
    """The period-end run: every tenant due by now (the wall clock, or the test clock
    ``clock_id``), one transaction each, so one tenant's failure does not hold the others."""
    billing = Billing(services)
    async with services.data.untenanted() as session:
        await session.execute(text(SWEEP))
        if clock_id is None:
            due = (await session.execute(
                text("select tenant_id from billing_due where clock_id is null and due_at <= :now "
                     "order by due_at limit :n"), {"now": datetime.now(UTC), "n": limit},
            )).scalars().all()
        else:
            due = (await session.execute(
                text("select d.tenant_id from billing_due d join billing_clocks c on c.id = d.clock_id "
                     "where d.clock_id = :c and d.due_at <= c.frozen_at order by d.due_at limit :n"),
                {"c": clock_id, "n": limit},
            )).scalars().all()
    totals = {"tenants": 0, "periods": 0, "finalized": 0}
    # A few tenants at a time: each is its own transaction, and they meet only on the invoice
    # number's row (locked from numbering to commit, which keeps the numbers gapless).
    gate = asyncio.Semaphore(concurrency)

    async def one(tenant_id: uuid.UUID) -> None:
        async with gate:
            try:
                done = await billing.run_tenant(tenant_id)
            except Exception:  # one tenant's failure must not stop the others; it is retried next run
                logger.exception("period-end run failed for tenant %s", tenant_id)
                totals["failed"] = totals.get("failed", 0) + 1
                return
        totals["tenants"] += 1
        totals["periods"] += done["periods"]
        totals["finalized"] += done["finalized"]

    await asyncio.gather(*(one(t) for t in due))
    return totals
