"""Prepaid credits: an append-only ledger (the runtime role may only insert and read it).

A grant adds an entry (+amount, maybe an expiry); an invoice's usage consumes from the grants
that expire first; a grant past its expiry gets one ``expire`` entry for what was left. The
balance is, by construction, the sum of the entries: nothing is ever updated.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk

__all__ = ["balance", "consume", "expire", "grant", "ledger"]

_REMAINING = text(
    """
    select g.id, g.expires_at, g.amount_minor + coalesce(sum(e.amount_minor), 0) as remaining
      from billing_credit_entries g
      left join billing_credit_entries e on e.grant_id = g.id and e.kind <> 'grant'
     where g.kind = 'grant' and g.currency = :c
     group by g.id, g.expires_at, g.amount_minor
    having g.amount_minor + coalesce(sum(e.amount_minor), 0) > 0
     order by g.expires_at nulls last, g.id
    """
)


async def _entry(session: AsyncSession, tenant_id: uuid.UUID, kind: str, amount: int, currency: str, *,
                 grant_id: uuid.UUID | None = None, expires_at: datetime | None = None,
                 invoice_id: uuid.UUID | None = None, note: str = "") -> uuid.UUID:
    entry_id = sdk.uuid7()
    await session.execute(
        text("insert into billing_credit_entries (tenant_id, id, kind, amount_minor, currency, grant_id, expires_at, "
             "invoice_id, note) values (:t, :id, :k, :a, :c, :g, :x, :i, :n)"),
        {"t": tenant_id, "id": entry_id, "k": kind, "a": amount, "c": currency, "g": grant_id or entry_id,
         "x": expires_at, "i": invoice_id, "n": note},
    )
    return entry_id


async def grant(session: AsyncSession, tenant_id: uuid.UUID, amount: int, currency: str,
                expires_at: datetime | None, note: str) -> uuid.UUID:
    return await _entry(session, tenant_id, "grant", amount, currency, expires_at=expires_at, note=note)


async def expire(session: AsyncSession, tenant_id: uuid.UUID, currency: str, now: datetime) -> None:
    # One tenant's ledger at a time: concurrent consumers must not spend a grant twice.
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended('billing-credits:' || :t, 0))"),
                          {"t": str(tenant_id)})
    for row in (await session.execute(_REMAINING, {"c": currency})).all():
        if row.expires_at is not None and row.expires_at <= now:
            await _entry(session, tenant_id, "expire", -int(row.remaining), currency, grant_id=row.id,
                         note="expired")


async def consume(session: AsyncSession, tenant_id: uuid.UUID, currency: str, amount: int,
                  invoice_id: uuid.UUID, now: datetime) -> int:
    """Spend up to ``amount`` from live grants (soonest expiry first); returns what was spent."""
    await expire(session, tenant_id, currency, now)
    spent = 0
    for row in (await session.execute(_REMAINING, {"c": currency})).all():
        if spent >= amount:
            break
        take = min(int(row.remaining), amount - spent)
        await _entry(session, tenant_id, "consume", -take, currency, grant_id=row.id, invoice_id=invoice_id,
                     note="applied to an invoice")
        spent += take
    return spent


async def balance(session: AsyncSession, currency: str) -> int:
    return int((await session.execute(
        text("select coalesce(sum(amount_minor), 0) from billing_credit_entries where currency = :c"), {"c": currency}
    )).scalar_one())


async def ledger(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.execute(text(
        "select id, kind, amount_minor, currency, grant_id, expires_at, invoice_id, note, created_at "
        "from billing_credit_entries order by created_at, id"
    ))).all()
    return [dict(r._mapping) for r in rows]
