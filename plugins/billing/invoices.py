"""Invoices: a draft per subscription period, finalized with a gapless number, then immutable.

The period-end run drafts one invoice per subscription period (a unique index makes a repeat a
no-op). The draft waits :data:`~plugins.billing.usage.GRACE` for late usage, then
:func:`finalize` prices the period's usage from the rollups, applies credits, adds tax, takes
the next number from the operator's sequence (its row locked ``FOR UPDATE`` in the same
transaction, so a rollback leaves no hole) and freezes the invoice (a trigger refuses changes
to a finalized invoice's lines, totals and number). Corrections are a void plus a credit note.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.billing import credits
from plugins.billing.catalogue import Catalogue
from plugins.billing.pricing import Charge, price_usage
from plugins.billing.schemas import Invoice
from plugins.billing.usage import GRACE, quantities

__all__ = ["add_item", "draft_for_period", "finalize", "finalize_due", "get", "void"]

_CATALOGUE = Catalogue()
_COLUMNS = """
id, kind, number, status, currency, period_start, period_end, lines, subtotal_minor, credits_minor, tax_rate,
tax_id, tax_minor, total_minor, amount_paid_minor, finalized_at, paid_at, voided_at, corrects_id, created_at,
subscription_id, finalize_after
"""
_ONE = text(f"select {_COLUMNS} from billing_invoices where id = :id")  # noqa: S608
_LOCKED = text(f"select {_COLUMNS} from billing_invoices where id = :id for update")  # noqa: S608


def to_invoice(row: Any) -> Invoice:
    return Invoice(
        id=row.id, kind=row.kind, number=row.number, status=row.status, currency=row.currency,
        period_start=row.period_start, period_end=row.period_end, lines=list(row.lines),
        subtotal_minor=row.subtotal_minor, credits_minor=row.credits_minor, tax_rate=str(row.tax_rate),
        tax_id=row.tax_id, tax_minor=row.tax_minor, total_minor=row.total_minor,
        amount_paid_minor=row.amount_paid_minor, finalized_at=row.finalized_at, paid_at=row.paid_at,
        voided_at=row.voided_at, corrects_id=row.corrects_id, created_at=row.created_at,
    )


async def add_item(
    session: AsyncSession, tenant_id: uuid.UUID, sub_id: uuid.UUID, currency: str, description: str, amount: int
) -> None:
    """A one-off line (a proration) for the subscription's next invoice."""
    await session.execute(
        text("insert into billing_pending_items (tenant_id, id, subscription_id, description, amount_minor, currency) "
             "values (:t, :id, :s, :d, :a, :c)"),
        {"t": tenant_id, "id": sdk.uuid7(), "s": sub_id, "d": description, "a": amount, "c": currency},
    )


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def draft_for_period(
    session: AsyncSession, log: sdk.ChangeLog, sub: Any, start: datetime, end: datetime
) -> uuid.UUID | None:
    """The draft of ``[start, end)``: the period's fee and the prorations waiting for it (a period
    cut short carries the credit for its unused time as one of them); ``None`` when the draft
    exists already."""
    terms = await _CATALOGUE.version(session, sub.period_plan_version_id)
    trial = sub.status == "trialing"
    fee = 0 if trial else terms.price(sub.billing_interval)
    label = f"{terms.name} ({sub.billing_interval}{', trial' if trial else ''})"
    lines: list[dict[str, Any]] = [
        {"type": "subscription", "description": label, "quantity": "1", "amount_minor": fee,
         "plan_version_id": str(terms.version_id),
         # Usage is priced at the version in force when the period closes (after any upgrade).
         "usage_version_id": str(sub.plan_version_id)},
    ]
    invoice_id = sdk.uuid7()
    made = await session.execute(
        text(
            "insert into billing_invoices (tenant_id, id, kind, subscription_id, period_start, period_end, status, "
            "currency, lines, subtotal_minor, total_minor, finalize_after) values (:t, :id, 'invoice', :s, :ps, :pe, "
            "'draft', :c, cast(:lines as jsonb), 0, 0, :fa) "
            "on conflict (tenant_id, subscription_id, period_start) where kind = 'invoice' do nothing returning id"
        ),
        {"t": log.tenant_id, "id": invoice_id, "s": sub.id, "ps": start, "pe": end, "c": sub.currency,
         "lines": _json(lines), "fa": end + GRACE},
    )
    if made.scalar_one_or_none() is None:
        return None
    items = (
        await session.execute(
            text("update billing_pending_items set invoice_id = :i where subscription_id = :s and invoice_id is null "
                 "returning id, description, amount_minor"),
            {"i": invoice_id, "s": sub.id},
        )
    ).all()
    lines += [{"type": "proration", "description": r.description, "quantity": "1", "amount_minor": r.amount_minor}
              for r in sorted(items, key=lambda r: r.id)]  # uuid7: the order they were added
    subtotal = sum(int(line["amount_minor"]) for line in lines)
    await session.execute(
        text("update billing_invoices set lines = cast(:lines as jsonb), subtotal_minor = :st, total_minor = :st "
             "where id = :id"),
        {"lines": _json(lines), "st": subtotal, "id": invoice_id},
    )
    # A draft is the run's own bookkeeping (its finalization is audited): an event, no audit row.
    await log.emit(session, event="billing.invoice.created",
                   payload={"id": str(invoice_id), "period_start": start.isoformat(), "period_end": end.isoformat()})
    return invoice_id


async def _next_number(session: AsyncSession, sequence: str, prefix: str) -> str:
    value = (
        await session.execute(text("select next_value from billing_sequences where name = :n for update"),
                              {"n": sequence})
    ).scalar_one()
    await session.execute(text("update billing_sequences set next_value = next_value + 1 where name = :n"),
                          {"n": sequence})
    return f"{prefix}-{value:06d}"


async def finalize(session: AsyncSession, log: sdk.ChangeLog, invoice_id: uuid.UUID, now: datetime) -> Invoice:
    """Price the usage, apply credits and tax, number and freeze the draft ``invoice_id``."""
    row = await _row(session, invoice_id, lock=True)
    if row.status != "draft":
        return to_invoice(row)
    lines = [line for line in row.lines if line["type"] in ("subscription", "proration")]
    version_id = uuid.UUID(lines[0].get("usage_version_id") or lines[0]["plan_version_id"])
    terms = await _CATALOGUE.version(session, version_id)
    charges = [msgspec.convert(c, Charge) for c in terms.charges]
    used = await quantities(session, row.period_start, row.period_end, {c.metric: c.aggregation for c in charges})
    usage_total = 0
    for charge in charges:
        for line in price_usage(charge, used.get(charge.metric, Decimal(0)), row.currency):
            if line.amount_minor or line.quantity != "0":
                lines.append({"type": "usage", "description": line.description, "quantity": line.quantity,
                              "unit_price": line.unit_price, "amount_minor": line.amount_minor})
                usage_total += line.amount_minor
    applied = 0
    if usage_total:
        applied = await credits.consume(session, log.tenant_id, row.currency, usage_total, invoice_id, now)
    if applied:
        lines.append({"type": "credit", "description": "Prepaid credits", "quantity": "1", "amount_minor": -applied})
    subtotal = sum(int(line["amount_minor"]) for line in lines)
    profile = (
        await session.execute(text("select tax_rate, tax_id from billing_profiles limit 1"))
    ).one_or_none()
    rate = Decimal(profile.tax_rate) if profile else Decimal(0)
    tax = int((Decimal(max(subtotal, 0)) * rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if tax:
        lines.append({"type": "tax", "description": f"Tax {rate.normalize()}%", "quantity": "1", "amount_minor": tax})
    total = subtotal + tax
    number = await _next_number(session, "invoices", "INV")
    status = "open" if total > 0 else "paid"
    await session.execute(
        text("update billing_invoices set lines = cast(:lines as jsonb), subtotal_minor = :st, credits_minor = :cr, "
             "tax_rate = :rate, tax_id = :tid, tax_minor = :tax, total_minor = :total, number = :num, "
             "status = :status, "
             "finalized_at = :now, paid_at = case when :status = 'paid' then cast(:now as timestamptz) end "
             "where id = :id"),
        {"lines": _json(lines), "st": subtotal, "cr": applied, "rate": rate,
         "tid": profile.tax_id if profile else None, "tax": tax, "total": total, "num": number, "status": status,
         "now": now, "id": invoice_id},
    )
    invoice = await get(session, invoice_id)
    await log.record(session, "billing.invoice.finalized", invoice_id, after=invoice)
    return invoice


async def finalize_due(session: AsyncSession, log: sdk.ChangeLog, now: datetime) -> list[Invoice]:
    """Finalize every draft of the tenant whose grace period is over."""
    due = (
        await session.execute(
            text("select id from billing_invoices where status = 'draft' and finalize_after <= :now "
                 "order by period_start, id"), {"now": now},
        )
    ).scalars().all()
    return [await finalize(session, log, invoice_id, now) for invoice_id in due]


async def _row(session: AsyncSession, invoice_id: uuid.UUID, *, lock: bool = False) -> Any:
    """The invoice's row (locked for the transaction with ``lock``); 404 when the tenant has none."""
    row = (await session.execute(_LOCKED if lock else _ONE, {"id": invoice_id})).one_or_none()
    if row is None:
        raise sdk.NotFound(f"invoice {invoice_id} does not exist")
    return row


async def get(session: AsyncSession, invoice_id: uuid.UUID) -> Invoice:
    return to_invoice(await _row(session, invoice_id))


async def void(session: AsyncSession, log: sdk.ChangeLog, invoice_id: uuid.UUID, now: datetime) -> Invoice:
    """Void a finalized invoice and issue its credit note (numbered from its own sequence)."""
    row = await _row(session, invoice_id, lock=True)
    if row.kind != "invoice":
        raise sdk.NotFound(f"invoice {invoice_id} does not exist")
    if row.status not in ("open", "paid"):
        raise sdk.Conflict(f"only a finalized invoice can be voided (this one is {row.status})")
    await session.execute(text("update billing_invoices set status = 'void', voided_at = :now where id = :id"),
                          {"now": now, "id": invoice_id})
    note_id = sdk.uuid7()
    lines = [{**line, "amount_minor": -int(line["amount_minor"])} for line in row.lines]
    number = await _next_number(session, "credit_notes", "CN")
    await session.execute(
        text("insert into billing_invoices (tenant_id, id, kind, subscription_id, period_start, period_end, status, "
             "number, currency, lines, subtotal_minor, credits_minor, tax_rate, tax_id, tax_minor, total_minor, "
             "finalize_after, finalized_at, corrects_id) values (:t, :id, 'credit_note', :s, :ps, :pe, 'open', :num, "
             ":c, cast(:lines as jsonb), :st, :cr, :rate, :tid, :tax, :total, :now, :now, :corrects)"),
        {"t": log.tenant_id, "id": note_id, "s": row.subscription_id, "ps": row.period_start, "pe": row.period_end,
         "num": number, "c": row.currency, "lines": _json(lines), "st": -row.subtotal_minor,
         "cr": -row.credits_minor, "rate": row.tax_rate, "tid": row.tax_id, "tax": -row.tax_minor,
         "total": -row.total_minor, "now": now, "corrects": invoice_id},
    )
    await log.record(session, "billing.invoice.voided", invoice_id, after={"id": str(invoice_id),
                                                                           "credit_note_id": str(note_id)})
    return await get(session, note_id)
