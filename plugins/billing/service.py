"""Billing as the routes, handlers, jobs and the entitlement provider use it: one tenant at a time,
in that tenant's transaction, at that tenant's ``now`` (its test clock or the wall clock)."""

from __future__ import annotations

import asyncio
import logging
import time
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
RATE_LIMIT = "kernel.rate_limit"
"""The kernel's question for a tenant's requests per minute (the plan's ``rate_limit``)."""
logger = logging.getLogger("businessos.billing")

# The usage read in one statement: the live subscription, the tenant's now, the plan version and
# the period's rollups and AI tokens (the AI ledger's (tenant_id, created_at) index).
_CURRENT_USAGE = sdk.Query(text(
    """
    select s.current_period_start, s.current_period_end, p.code, p.name, v.entitlements, v.charges,
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


@dataclass(frozen=True)
class _Current:
    """The current period of the live subscription with its plan's terms and the usage so far."""

    start: datetime
    end: datetime
    code: str
    name: str
    entitlements: dict[str, Any]
    charges: list[dict[str, Any]]
    used: dict[str, Decimal]


@dataclass
class _Tokens:
    """One tenant's AI-token allowance and use as this process last read them."""

    read_at: float
    plan: str
    limit: Any
    used: Decimal


AI_TOKENS_SECONDS = 1.0
"""Longest this process answers the AI-token allowance without reading the ledger again."""
_AI_TOKENS: dict[uuid.UUID, _Tokens] = {}


def _aggregations(charges: list[dict[str, Any]]) -> dict[str, str]:
    aggregations = {c["metric"]: c.get("aggregation", "sum") for c in charges}
    aggregations.setdefault("workflow_executions", "count")
    aggregations.setdefault("seats", "max")
    aggregations.setdefault("api_calls", "sum")
    return aggregations


def _against(plan: str, name: str, limit: Any, used: Decimal, amount: int) -> sdk.Entitlement:
    """Allowed while ``used + amount`` stays within ``limit`` (``None``: unlimited)."""
    if limit is None:
        return sdk.Entitlement(allowed=True)
    left = int(Decimal(limit) - used)
    after = left - amount
    if after >= 0:
        return sdk.Entitlement(allowed=True, remaining=after)
    return sdk.Entitlement(
        allowed=False, remaining=max(left, 0), limit=name,
        detail=f"the {plan} plan allows {limit} {name.replace('_', ' ')}; {max(left, 0)} remain",
        lift="upgrade to a plan with more " + name.replace("_", " "),
    )


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
        # The same code may now be another version (a renewal onto a migrated one): every process
        # drops what it cached of the tenant's terms (its rate limit).
        await self.services.entitlements.changed(tenant_id)

    async def operator_plan(self, tenant_id: uuid.UUID, code: str, actor: str) -> None:
        """An operator's plan change (the kernel's ``PUT /api/admin/tenants/{id}/plan``): the
        subscription moves to the plan's newest version now, without prorations, and records who
        overrode it (audited and emitted as ``billing.subscription.updated``). The kernel then
        records the new code on the tenant."""
        log = self.log(sdk.Actor.system(actor), tenant_id)
        async with self.services.data.tenant(tenant_id) as session:
            await self.current(session, log)
            await self.subscriptions.override(session, log, code, actor)

    async def flush_api_calls(self) -> dict[str, int]:
        """Turn the API calls the kernel counted in Redis into ``api_calls`` usage events: one
        event per tenant and take, idempotent on ``api_calls:<take id>`` (a take that failed half
        way is answered again and its stored events are duplicates). A take is forgotten only
        once every tenant in it is stored."""
        from plugins.billing.schemas import UsageEvent

        totals = {"takes": 0, "tenants": 0, "calls": 0}
        for take_id, counts in await self.services.api_calls.take():
            try:
                for tenant_ref, calls in sorted(counts.items()):
                    tenant = await self.services.tenants.find(tenant_ref)
                    if tenant is None or calls <= 0:  # a tenant deleted since: nothing to bill
                        continue
                    event = UsageEvent(transaction_id=f"api_calls:{take_id}", metric="api_calls", value=calls)
                    await self.ingest(tenant.id, SYSTEM, [event])
                    totals["tenants"] += 1
                    totals["calls"] += calls
            except Exception:  # kept for the next run; the tenants already stored are duplicates then
                logger.exception("API calls of take %s not stored", take_id)
                continue
            await self.services.api_calls.done(take_id)
            totals["takes"] += 1
        return totals

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
        return await usage.quantities(session, row.current_period_start, row.current_period_end,
                                      _aggregations(terms.charges))

    async def _quick(self, tenant_id: uuid.UUID) -> _Current | None:
        """The live subscription's period, plan terms and usage in one statement on the read path
        (rollups and the AI ledger's sum for the period); ``None`` when the subscription must be
        made or renewed first (the slow path)."""
        async with self.services.data.read(tenant_id) as reader:
            found = await reader.fetchrow(_CURRENT_USAGE)
        if found is None or found["now"] >= found["current_period_end"]:
            return None
        charges = _json(found["charges"])
        aggregations = _aggregations(charges)
        rollups = _rollup_rows(_json(found["rollups"]))
        used = {r.metric: usage.pick(aggregations.get(r.metric, "sum"), r) for r in rollups}
        used["ai_tokens"] = used.get("ai_tokens", Decimal(0)) + int(found["ai_tokens"])
        used["ai_cost"] = Decimal(found["ai_cost"])
        return _Current(found["current_period_start"], found["current_period_end"], found["code"], found["name"],
                        _json(found["entitlements"]), charges, used)

    async def _slow(self, tenant_id: uuid.UUID, actor: sdk.Actor) -> _Current:
        async with self.services.data.tenant(tenant_id) as session:
            row, terms = await self.current(session, self.log(actor, tenant_id))
            used = await self._used(session, row, terms)
        return _Current(row.current_period_start, row.current_period_end, terms.code, terms.name,
                        terms.entitlements, terms.charges, used)

    async def usage_report(self, tenant_id: uuid.UUID, actor: sdk.Actor) -> dict[str, Any]:
        """The current period's usage per metric against the plan's allowances. The usual case
        (a live subscription in its period) is one statement over the rollups; otherwise the
        subscription is made or renewed first."""
        now = await self._quick(tenant_id) or await self._slow(tenant_id, actor)
        included = {c["metric"]: c.get("included") for c in now.charges}
        for feature, metric in usage.ALLOWANCE_METRICS.items():
            included.setdefault(metric, now.entitlements.get(feature))
        metrics = []
        for metric in sorted(set(now.used) | set(included)):
            amount = now.used.get(metric, Decimal(0))
            limit = included.get(metric)
            metrics.append({
                "metric": metric, "used": text_of(amount), "included": limit,
                "remaining": text_of(max(Decimal(limit) - amount, Decimal(0))) if limit is not None else None,
            })
        return {"period": {"start": now.start, "end": now.end}, "plan": now.code, "metrics": metrics}

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
        """Billing's answer to the kernel's entitlement question.

        What each costs: modules, seats and API keys open one tenant transaction (the live
        subscription, then a count); the rate limit reads the live subscription (the kernel caches
        the answer for a minute per process); workflow executions are one statement on the read
        path (:meth:`_quick`: the period, the plan's terms, the rollups and the AI ledger's sum over
        the period through its ``(tenant_id, created_at)`` index), falling back to the transaction
        only when the subscription must be made or renewed; AI tokens are that statement at most
        once a second per tenant and process (:meth:`_ai_tokens`), otherwise no I/O."""
        feature = query.feature
        if feature == "kernel.module.billing":
            return sdk.Entitlement(allowed=True)
        metered = {"workflows.executions": "workflow_executions", "workflows.runs": "workflow_executions",
                   "kernel.workflow_executions": "workflow_executions", "kernel.ai.tokens": "ai_tokens"}
        name = metered.get(feature) or ("ai_tokens" if feature.endswith(".ai_tokens") else None)
        if name == "ai_tokens":
            return await self._ai_tokens(query)
        if name is not None:
            now = await self._quick(query.tenant_id) or await self._slow(query.tenant_id, SYSTEM)
            return _against(now.name, name, now.entitlements.get(name), now.used.get(name, Decimal(0)), query.amount)
        async with self.services.data.tenant(query.tenant_id) as session:
            row, terms = await self.current(session, self.log(SYSTEM, query.tenant_id))
            if feature == RATE_LIMIT:
                limit = terms.entitlements.get("rate_limit")
                return sdk.Entitlement(allowed=True, remaining=int(limit) if limit is not None else None)
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
            if feature not in counted:
                return sdk.Entitlement(allowed=True)
            name, query_text = counted[feature]
            limit = terms.entitlements.get(name)
            if limit is None:
                return sdk.Entitlement(allowed=True)
            used = Decimal((await session.execute(text(query_text))).scalar_one())
        return _against(terms.name, name, limit, used, query.amount)

    async def _ai_tokens(self, query: sdk.EntitlementQuery) -> sdk.Entitlement:
        """The AI-token allowance, asked before every AI call: answered from this process's copy
        of the allowance and the tokens used (read at most every :data:`AI_TOKENS_SECONDS` per
        tenant, one statement) plus what this process allowed since (each allowed ``amount`` is
        counted as used until the next read brings the ledger's real figure). Several processes
        may each allow up to what remained at their last read, for that long: the overrun is
        bounded by one interval's calls."""
        clock = time.monotonic()
        cached = _AI_TOKENS.get(query.tenant_id)
        if cached is None or cached.read_at + AI_TOKENS_SECONDS < clock:
            now = await self._quick(query.tenant_id) or await self._slow(query.tenant_id, SYSTEM)
            cached = _Tokens(time.monotonic(), now.name, now.entitlements.get("ai_tokens"),
                             now.used.get("ai_tokens", Decimal(0)))
            if len(_AI_TOKENS) >= 10_000:
                _AI_TOKENS.clear()
            _AI_TOKENS[query.tenant_id] = cached
        answer = _against(cached.plan, "ai_tokens", cached.limit, cached.used, query.amount)
        if answer.allowed and query.amount > 0:
            cached.used += query.amount
        return answer

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
