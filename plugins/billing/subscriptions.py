"""Subscriptions: one live subscription per tenant, its periods, plan changes and renewals.

Every function takes the tenant's session and works at ``now`` as :func:`clock_now` reads it:
the tenant's test clock when the operator attached one, else the wall clock. Nothing here asks
the system time directly, so a test clock drives trials, renewals, invoices and dunning.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.billing import invoices
from plugins.billing.catalogue import DEFAULT_PLAN, Catalogue, PlanTerms
from plugins.billing.periods import add_days, period_at, prorate
from plugins.billing.schemas import Subscription
from plugins.billing.usage import GRACE

__all__ = ["Profile", "Subscriptions", "clock_now", "profile_of"]

CATALOGUE = Catalogue()


@dataclass(frozen=True)
class Profile:
    timezone: str
    tax_rate: Decimal
    tax_id: str | None
    clock_id: uuid.UUID | None


async def profile_of(session: AsyncSession) -> Profile:
    """The tenant's billing profile (UTC, no tax, wall clock until the operator sets one)."""
    row = (
        await session.execute(text("select timezone, tax_rate, tax_id, clock_id from billing_profiles limit 1"))
    ).one_or_none()
    if row is None:
        return Profile("UTC", Decimal(0), None, None)
    return Profile(row.timezone, Decimal(row.tax_rate), row.tax_id, row.clock_id)


async def _signed_up_itself(session: AsyncSession) -> bool:
    """Whether the tenant ``session`` is scoped to was made by a self-service sign-up (its
    ``tenant.created`` audit row names a user), not by an operator or the CLI."""
    found = await session.execute(text(
        "select exists (select 1 from audit_logs where action = 'tenant.created' and actor like 'user:%')"))
    return bool(found.scalar_one())


async def clock_now(session: AsyncSession) -> datetime:
    """Now, for the tenant ``session`` is scoped to: its test clock's time, or the wall clock."""
    frozen = (
        await session.execute(
            text("select c.frozen_at from billing_profiles p join billing_clocks c on c.id = p.clock_id limit 1")
        )
    ).scalar_one_or_none()
    return frozen if frozen is not None else datetime.now(UTC)


_SUB_COLUMNS = """
s.id, s.plan_code, s.plan_version_id, s.period_plan_version_id, s.status, s.billing_interval, s.currency,
s.timezone, s.anchor, s.current_period_start, s.current_period_end, s.trial_end, s.cancel_at_period_end,
s.pending_plan_version_id, s.pending_interval, s.canceled_at, s.past_due_since, s.created_at, s.override_by,
s.override_at
"""
_ALL_SUBS = f"select {_SUB_COLUMNS} from billing_subscriptions s order by s.created_at, s.id"  # noqa: S608
_ONE_SUB = f"select {_SUB_COLUMNS} from billing_subscriptions s where s.id = :id"  # noqa: S608


def _out(row: Any, version: int, pending: str | None) -> Subscription:
    return Subscription(
        id=row.id, plan=row.plan_code, plan_version=version, plan_version_id=row.plan_version_id,
        status=row.status, interval=row.billing_interval, currency=row.currency, timezone=row.timezone,
        current_period={"start": row.current_period_start, "end": row.current_period_end},
        trial_end=row.trial_end, cancel_at_period_end=row.cancel_at_period_end, pending_plan=pending,
        pending_interval=row.pending_interval, canceled_at=row.canceled_at, override_by=row.override_by,
        override_at=row.override_at,
    )


class Subscriptions:
    """The rules of a tenant's subscription; ``log`` records each change (audit and event)."""

    def __init__(self, catalogue: Catalogue = CATALOGUE) -> None:
        self.catalogue = catalogue

    async def live(self, session: AsyncSession, *, lock: bool = False) -> Any:
        query = f"select {_SUB_COLUMNS} from billing_subscriptions s where s.status <> 'canceled'"  # noqa: S608
        return (await session.execute(text(query + (" for update" if lock else "")))).one_or_none()

    async def ensure(self, session: AsyncSession, log: sdk.ChangeLog, plan_code: str | None) -> Any:
        """The tenant's live subscription, created when it has none (idempotent: the partial
        unique index keeps one live subscription per tenant whoever gets here first).

        A paid plan starts as a trial when its version has trial days; otherwise (a sign-up that
        cannot have got here, an unknown code) the tenant gets the free plan."""
        existing = await self.live(session)
        if existing is not None:
            return existing
        now = await clock_now(session)
        profile = await profile_of(session)
        # A tenant whose subscription ended starts again on the free plan: no second trial.
        ended = (await session.execute(text("select exists (select 1 from billing_subscriptions)"))).scalar_one()
        terms = await self.catalogue.latest(session, DEFAULT_PLAN if ended else plan_code or DEFAULT_PLAN)
        if terms is not None and terms.paid and not terms.trial_days and await _signed_up_itself(session):
            # Sign-up chose the plan from this process's copy of the catalogue, which may predate a
            # change in another process: the database decides. No paid plan for free.
            terms = None
        if terms is None:
            terms = await self.catalogue.latest(session, DEFAULT_PLAN)
        assert terms is not None, "the free plan is seeded by the migration"
        trial_end = add_days(now, terms.trial_days, profile.timezone) if terms.paid and terms.trial_days else None
        status = "trialing" if trial_end else "active"
        anchor = trial_end or now
        start, end = (now, trial_end) if trial_end else _first(anchor, "monthly", profile.timezone)
        sub_id = sdk.uuid7()
        inserted = await session.execute(
            text(
                "insert into billing_subscriptions (tenant_id, id, plan_code, plan_version_id, "
                "period_plan_version_id, status, billing_interval, currency, timezone, anchor, current_period_start, "
                "current_period_end, trial_end) values (:t, :id, :code, :v, :v, :status, 'monthly', :cur, :tz, "
                ":anchor, :start, :end, :trial) on conflict (tenant_id) where status <> 'canceled' do nothing "
                "returning id"
            ),
            {"t": log.tenant_id, "id": sub_id, "code": terms.code, "v": terms.version_id, "status": status,
             "cur": terms.currency, "tz": profile.timezone, "anchor": anchor, "start": start, "end": end,
             "trial": trial_end},
        )
        if inserted.scalar_one_or_none() is not None:
            await _due(session, log.tenant_id, end, profile.clock_id)
            row = await self.live(session)
            await log.record(session, "billing.subscription.created", sub_id, after=await self.view(session, row))
            return row
        row = await self.live(session)
        assert row is not None
        return row

    async def view(self, session: AsyncSession, row: Any) -> Subscription:
        version = await self.catalogue.version(session, row.plan_version_id)
        pending = None
        if row.pending_plan_version_id is not None:
            pending = (await self.catalogue.version(session, row.pending_plan_version_id)).code
        return _out(row, version.version, pending)

    async def list(self, session: AsyncSession, log: sdk.ChangeLog, plan_code: str | None) -> list[Subscription]:
        await self.ensure(session, log, plan_code)
        rows = (
            await session.execute(text(_ALL_SUBS))
        ).all()
        return [await self.view(session, r) for r in rows]

    async def get(self, session: AsyncSession, sub_id: uuid.UUID) -> Subscription:
        row = (
            await session.execute(text(_ONE_SUB),
                                  {"id": sub_id})
        ).one_or_none()
        if row is None:
            raise sdk.NotFound(f"subscription {sub_id} does not exist")
        return await self.view(session, row)

    async def _current(self, session: AsyncSession, log: sdk.ChangeLog) -> Any:
        await self.ensure(session, log, None)
        row = await self.live(session, lock=True)
        assert row is not None
        # Work due before now (a renewal the run has not reached yet) happens first.
        await self.advance(session, log, row)
        row = await self.live(session, lock=True)
        if row is None:
            raise sdk.Conflict("the subscription is canceled")
        return row

    async def change_plan(
        self, session: AsyncSession, log: sdk.ChangeLog, code: str, interval: str | None
    ) -> Subscription:
        """Upgrade now with proration (credit for the unused time, charge for the rest at the new
        price); downgrade at the end of the period. An interval change closes the period now."""
        row = await self._current(session, log)
        now = await clock_now(session)
        new = await self.catalogue.latest(session, code)
        if new is None:
            raise sdk.Unprocessable(f"plan {code!r} does not exist",
                                    errors=[sdk.FieldError(field="plan", message="an existing plan code")])
        if new.currency != row.currency:
            raise sdk.Unprocessable("the plan is in another currency",
                                    errors=[sdk.FieldError(field="plan", message=f"a plan in {row.currency}")])
        old = await self.catalogue.version(session, row.plan_version_id)
        interval = interval or row.billing_interval
        if new.prices.get(interval) is None:
            raise sdk.Unprocessable(f"plan {code!r} has no {interval} price",
                                    errors=[sdk.FieldError(field="interval", message="an interval the plan prices")])
        before = await self.view(session, row)
        old_amount, new_amount = old.price(row.billing_interval), new.price(interval)
        # Monthly-equivalent comparison: an upgrade costs more per unit of time.
        per_month_old = Decimal(old_amount) / (12 if row.billing_interval == "yearly" else 1)
        per_month_new = Decimal(new_amount) / (12 if interval == "yearly" else 1)
        if row.status == "trialing":
            await self._set(session, row.id, plan_code=new.code, plan_version_id=new.version_id,
                            period_plan_version_id=new.version_id, billing_interval=interval,
                            pending_plan_version_id=None, pending_interval=None)
        elif per_month_new >= per_month_old:
            if interval != row.billing_interval:
                await self._close_period_now(session, log, row, now)
                start, end = _first(now, interval, row.timezone)
                await self._set(session, row.id, plan_code=new.code, plan_version_id=new.version_id,
                                period_plan_version_id=new.version_id, billing_interval=interval, anchor=now,
                                current_period_start=start, current_period_end=end,
                                pending_plan_version_id=None, pending_interval=None)
                await _due(session, log.tenant_id, end, (await profile_of(session)).clock_id)
            else:
                ps, pe = row.current_period_start, row.current_period_end
                unused = prorate(old_amount, ps, pe, now, pe)
                remaining = prorate(new_amount, ps, pe, now, pe)
                await invoices.add_item(session, log.tenant_id, row.id, row.currency,
                                        f"Unused time on {old.name} after {now:%Y-%m-%d %H:%M} UTC", -unused)
                await invoices.add_item(session, log.tenant_id, row.id, row.currency,
                                        f"Remaining time on {new.name} from {now:%Y-%m-%d %H:%M} UTC", remaining)
                await self._set(session, row.id, plan_code=new.code, plan_version_id=new.version_id,
                                pending_plan_version_id=None, pending_interval=None)
        else:
            await self._set(session, row.id, pending_plan_version_id=new.version_id, pending_interval=interval)
        after = await self.view(session, await self.live(session))
        await log.record(session, "billing.subscription.updated", row.id, before=before, after=after)
        return after

    async def override(self, session: AsyncSession, log: sdk.ChangeLog, code: str, by: str) -> Subscription:
        """The operator puts the tenant on ``code``'s newest version now: no prorations (the
        current period keeps the fee it started with), pending changes dropped, the override
        recorded on the subscription (``override_by``, ``override_at``) and in the audit log."""
        row = await self._current(session, log)
        now = await clock_now(session)
        new = await self.catalogue.latest(session, code)
        if new is None:
            raise sdk.Unprocessable(f"plan {code!r} does not exist",
                                    errors=[sdk.FieldError(field="plan", message="an existing plan code")])
        if new.currency != row.currency:
            raise sdk.Unprocessable("the plan is in another currency",
                                    errors=[sdk.FieldError(field="plan", message=f"a plan in {row.currency}")])
        before = await self.view(session, row)
        changes: dict[str, Any] = {"plan_code": new.code, "plan_version_id": new.version_id,
                                   "pending_plan_version_id": None, "pending_interval": None,
                                   "override_by": by, "override_at": now}
        if new.prices.get(row.billing_interval) is None:
            raise sdk.Unprocessable(f"plan {code!r} has no {row.billing_interval} price", errors=[
                sdk.FieldError(field="plan", message=f"a plan with a {row.billing_interval} price")])
        if row.status == "trialing":  # nothing was charged yet: the trial goes on, on the new plan
            changes["period_plan_version_id"] = new.version_id
        await self._set(session, row.id, **changes)
        after = await self.view(session, await self.live(session))
        await log.record(session, "billing.subscription.updated", row.id, before=before, after=after)
        return after

    async def cancel(self, session: AsyncSession, log: sdk.ChangeLog, at: str) -> Subscription:
        row = await self._current(session, log)
        before = await self.view(session, row)
        if at == "period_end":
            await self._set(session, row.id, cancel_at_period_end=True)
            after = await self.view(session, await self.live(session))
            await log.record(session, "billing.subscription.updated", row.id, before=before, after=after)
            return after
        now = await clock_now(session)
        await self._close_period_now(session, log, row, now)
        await self._set(session, row.id, status="canceled", canceled_at=now, current_period_end=now)
        # The last invoice is a draft until its grace is over: the run comes back for it.
        await _due(session, log.tenant_id, now + GRACE, (await profile_of(session)).clock_id)
        after = await self.get(session, row.id)
        await log.record(session, "billing.subscription.canceled", row.id, before=before, after=after)
        return after

    async def resume(self, session: AsyncSession, log: sdk.ChangeLog) -> Subscription:
        """Undo a cancellation at period end or a pending downgrade; reactivate a paused one."""
        row = await self._current(session, log)
        before = await self.view(session, row)
        status = "active" if row.status == "paused" else row.status
        await self._set(session, row.id, cancel_at_period_end=False, pending_plan_version_id=None,
                        pending_interval=None, status=status)
        after = await self.view(session, await self.live(session))
        await log.record(session, "billing.subscription.updated", row.id, before=before, after=after)
        return after

    async def _close_period_now(self, session: AsyncSession, log: sdk.ChangeLog, row: Any, now: datetime) -> None:
        """Invoice ``[period start, now)`` before the period is cut short: what was charged up to
        the period's end (its fee, the prorations of upgrades) less the unused time of the
        current plan, all prorated on the period's own bounds so that the pieces add up."""
        if row.status != "trialing":
            current = await self.catalogue.version(session, row.plan_version_id)
            unused = prorate(current.price(row.billing_interval), row.current_period_start, row.current_period_end,
                             now, row.current_period_end)
            if unused:
                await invoices.add_item(session, log.tenant_id, row.id, row.currency,
                                        f"Unused time on {current.name} after {now:%Y-%m-%d %H:%M} UTC", -unused)
        await invoices.draft_for_period(session, log, row, row.current_period_start, now)

    async def advance(self, session: AsyncSession, log: sdk.ChangeLog, row: Any) -> int:
        """Renew every period that ended by now: invoice it, apply what waits for the period end
        (cancellation, downgrade, interval change, the end of a trial), start the next. Returns
        how many periods ended. Idempotent: invoices are unique per period."""
        now = await clock_now(session)
        profile = await profile_of(session)
        ended = 0
        while row is not None and row.current_period_end <= now:
            ended += 1
            pe = row.current_period_end
            await invoices.draft_for_period(session, log, row, row.current_period_start, pe)
            if row.cancel_at_period_end:
                await self._set(session, row.id, status="canceled", canceled_at=pe)
                await _due(session, log.tenant_id, pe + GRACE, profile.clock_id)
                await log.record(session, "billing.subscription.canceled", row.id,
                                 after=await self.get(session, row.id))
                return ended
            version_id = row.pending_plan_version_id or row.plan_version_id
            interval = row.pending_interval or row.billing_interval
            anchor = row.anchor
            if interval != row.billing_interval or row.status == "trialing":
                anchor = pe
            period = period_at(anchor, interval, row.timezone, pe)
            terms: PlanTerms = await self.catalogue.version(session, version_id)
            status = "active" if row.status == "trialing" else row.status
            await self._set(session, row.id, plan_code=terms.code, plan_version_id=version_id,
                            period_plan_version_id=version_id, billing_interval=interval, anchor=anchor,
                            current_period_start=period.start, current_period_end=period.end, status=status,
                            pending_plan_version_id=None, pending_interval=None)
            await _due(session, log.tenant_id, period.end, profile.clock_id)
            row = await self.live(session, lock=True)
            await log.record(session, "billing.subscription.renewed", row.id, after=await self.view(session, row))
        return ended

    async def _set(self, session: AsyncSession, sub_id: uuid.UUID, **values: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        await session.execute(
            # Column names come from this module's keyword arguments, never from input.
            text(f"update billing_subscriptions set {sets}, version = version + 1, "  # noqa: S608
                 "updated_at = now() where id = :id"),
            {**values, "id": sub_id},
        )


def _first(anchor: datetime, interval: str, timezone: str) -> tuple[datetime, datetime]:
    period = period_at(anchor, interval, timezone, anchor)
    return period.start, period.end


async def _due(session: AsyncSession, tenant_id: uuid.UUID, due_at: datetime, clock_id: uuid.UUID | None) -> None:
    """Tell the period-end run when this tenant next needs it (an installation table). An earlier
    time already there wins (a canceled subscription's last draft still waits for its grace when a
    new free subscription begins); the run sets the exact next time after its work."""
    await session.execute(
        text("insert into billing_due as d (tenant_id, due_at, clock_id) values (:t, :d, :c) "
             "on conflict (tenant_id) do update set due_at = case when d.clock_id is not distinct from "
             "excluded.clock_id then least(d.due_at, excluded.due_at) else excluded.due_at end, "
             "clock_id = excluded.clock_id"),
        {"t": tenant_id, "d": due_at, "c": clock_id},
    )
