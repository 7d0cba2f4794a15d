"""Metering: idempotent usage events, per-period rollups kept on ingest, allowance thresholds.

One statement ingests a batch: the events go in with ``ON CONFLICT (tenant_id, transaction_id)
DO NOTHING`` and the rows actually inserted (``RETURNING``) update the period's rollup (count,
sum, max, latest) and its set of unique keys in the same statement, so the rollup is exactly
the sum of the events behind it and a repeated batch changes nothing. Reading the current period
is then one indexed lookup per metric, whatever the number of events.

AI calls are not copied into events: the kernel's AI ledger (``ai_usage``, the tenant's own rows
under row-level security, indexed by ``(tenant_id, created_at)``) is already the record of
them, and billing sums it for the period rather than keeping a second ledger that could drift.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.billing.schemas import UsageEvent

__all__ = ["ALLOWANCE_METRICS", "GRACE", "Ingested", "ai_tokens", "ingest", "quantities", "thresholds"]

GRACE = timedelta(hours=24)
"""How long after a period ends its late events are still taken (and its draft invoice waits)."""

# Plan entitlements that are monthly allowances of a metric.
ALLOWANCE_METRICS = {"ai_tokens": "ai_tokens", "workflow_executions": "workflow_executions"}

def _ingest_sql(uniques: bool) -> str:
    """The ingest statement; without unique keys in the batch, the unique-set step is left out.

    Values travel as text and are cast in SQL (asyncpg encodes text arrays in C, Decimals one by
    one in Python); rollups and unique keys are written in one lock order (no deadlocks between
    concurrent batches of a tenant)."""
    unique_ctes = """
    , uq as (
      insert into billing_usage_uniques (tenant_id, id, metric, period_start, unique_key)
      select distinct on (metric, period_start, unique_key) :t, gen_random_uuid(), metric, period_start, unique_key
        from ins where unique_key is not null order by metric, period_start, unique_key
      on conflict (tenant_id, metric, period_start, unique_key) do nothing
      returning metric, period_start
    ), uqc as (
      select metric, period_start, count(*) as n from uq group by metric, period_start
    )""" if uniques else """
    , uqc as (select null::text as metric, null::timestamptz as period_start, 0::bigint as n where false)"""
    head = """
    with batch as (
      select b.transaction_id, b.metric, coalesce(b.occurred_at, cast(:now as timestamptz)) as occurred_at,
             cast(b.value as numeric) as value, b.unique_key, b.period_start
        from unnest(cast(:tx as text[]), cast(:metric as text[]), cast(:at as timestamptz[]),
                    cast(:value as text[]), cast(:ukey as text[]), cast(:period as timestamptz[]))
             as b(transaction_id, metric, occurred_at, value, unique_key, period_start)
    ), ins as (
      insert into billing_usage_events (tenant_id, id, transaction_id, metric, occurred_at, value, unique_key,
                                        period_start)
      select :t, gen_random_uuid(), transaction_id, metric, occurred_at, value, unique_key, period_start from batch
      on conflict (tenant_id, transaction_id) do nothing
      returning metric, period_start, occurred_at, value, unique_key
    )"""
    tail = """
    , agg as (
      select metric, period_start, count(*) as events, sum(value) as total, max(value) as maximum,
             (array_agg(value order by occurred_at desc))[1] as latest, max(occurred_at) as latest_at
        from ins group by metric, period_start
    ), up as (
      insert into billing_usage_rollups as r (tenant_id, id, metric, period_start, events, total, maximum, latest,
                                              latest_at, uniques)
      select :t, gen_random_uuid(), a.metric, a.period_start, a.events, a.total, a.maximum, a.latest, a.latest_at,
             coalesce(u.n, 0)
        from agg a left join uqc u using (metric, period_start)
       order by a.metric, a.period_start
      on conflict (tenant_id, metric, period_start) do update
        set events = r.events + excluded.events, total = r.total + excluded.total,
            maximum = greatest(r.maximum, excluded.maximum),
            latest = case when r.latest_at is null or excluded.latest_at >= r.latest_at then excluded.latest
                          else r.latest end,
            latest_at = greatest(r.latest_at, excluded.latest_at), uniques = r.uniques + excluded.uniques
      returning metric
    )
    select (select count(*) from ins) as accepted, (select count(*) from up) as rollups
    """
    return head + unique_ctes + tail


_INGEST = {True: text(_ingest_sql(True)), False: text(_ingest_sql(False))}


@dataclass(frozen=True)
class Ingested:
    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]]


def _value(raw: float | str, index: int) -> Decimal:
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise sdk.Unprocessable(
            "a usage value must be a number",
            errors=[sdk.FieldError(field=f"events[{index}].value", message="a non-negative number")],
        ) from None
    if not value.is_finite() or value < 0 or value >= 10**15 or int(value.as_tuple().exponent) < -12:
        raise sdk.Unprocessable(
            "a usage value must be a non-negative number below 10^15 with at most 12 decimals",
            errors=[sdk.FieldError(field=f"events[{index}].value", message="a non-negative number below 10^15")],
        )
    return value


async def ingest(
    session: AsyncSession, tenant_id: uuid.UUID, events: list[UsageEvent], *, now: datetime,
    period_start: datetime, previous_start: datetime | None,
) -> Ingested:
    """Store ``events`` once each (by ``transaction_id``) in the period they happened in: the
    current one, or the previous one within :data:`GRACE` of its end; older or future events are
    rejected one by one (the rest of the batch goes in)."""
    columns: dict[str, list[Any]] = {k: [] for k in ("tx", "metric", "at", "value", "ukey", "period")}
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates_in_batch = 0
    for index, event in enumerate(events):
        at = event.timestamp or now
        if at.tzinfo is None:
            raise sdk.Unprocessable("timestamps need a time zone",
                                    errors=[sdk.FieldError(field=f"events[{index}].timestamp",
                                                           message="with an offset")])
        if at > now + timedelta(minutes=5):
            rejected.append({"index": index, "transaction_id": event.transaction_id, "reason": "in the future"})
            continue
        if at >= period_start:
            period = period_start
        elif previous_start is not None and at >= previous_start and now < period_start + GRACE:
            period = previous_start
        else:
            rejected.append({"index": index, "transaction_id": event.transaction_id,
                             "reason": "too late: its period is closed"})
            continue
        if event.transaction_id in seen:
            duplicates_in_batch += 1
            continue
        seen.add(event.transaction_id)
        columns["tx"].append(event.transaction_id)
        columns["metric"].append(event.metric)
        columns["at"].append(event.timestamp)
        columns["value"].append(str(_value(event.value, index)))
        columns["ukey"].append(event.unique_key)
        columns["period"].append(period)
    accepted = 0
    if columns["tx"]:
        statement = _INGEST[any(key is not None for key in columns["ukey"])]
        accepted = int((await session.execute(statement, {"t": tenant_id, "now": now, **columns})).one().accepted)
    return Ingested(accepted, len(columns["tx"]) - accepted + duplicates_in_batch, rejected)


async def amend(session: AsyncSession, transaction_id: str, raw: float | str) -> dict[str, Any]:
    """Replace one event's value; its rollup moves by the difference (max and latest recomputed
    from the period's events of that metric)."""
    value = _value(raw, 0)
    row = (
        await session.execute(
            text("select metric, period_start, value from billing_usage_events where transaction_id = :tx for update"),
            {"tx": transaction_id},
        )
    ).one_or_none()
    if row is None:
        raise sdk.NotFound(f"usage event {transaction_id!r} does not exist")
    await session.execute(
        text("update billing_usage_events set value = :v, amended_at = now() where transaction_id = :tx"),
        {"v": value, "tx": transaction_id},
    )
    await session.execute(
        text(
            "update billing_usage_rollups r set total = r.total + :delta, "
            "maximum = (select max(value) from billing_usage_events e where e.metric = r.metric "
            "and e.period_start = r.period_start), "
            "latest = (select value from billing_usage_events e where e.metric = r.metric "
            "and e.period_start = r.period_start order by occurred_at desc, id desc limit 1) "
            "where r.metric = :m and r.period_start = :p"
        ),
        {"delta": value - row.value, "m": row.metric, "p": row.period_start},
    )
    return {"transaction_id": transaction_id, "metric": row.metric, "previous": text_of(row.value),
            "value": text_of(value)}


def text_of(value: Decimal) -> str:
    """A decimal without trailing zeros or an exponent: ``Decimal("1.0")`` -> ``"1"``."""
    return format(value.normalize(), "f")


def pick(aggregation: str, row: Any) -> Decimal:
    """The rollup's figure for ``aggregation``."""
    match aggregation:
        case "count":
            return Decimal(row.events)
        case "max":
            return Decimal(row.maximum or 0)
        case "unique_count":
            return Decimal(row.uniques)
        case "latest":
            return Decimal(row.latest or 0)
        case _:
            return Decimal(row.total)


async def rollups(session: AsyncSession, period_start: datetime) -> dict[str, Any]:
    rows = (
        await session.execute(
            text("select metric, events, total, maximum, latest, uniques from billing_usage_rollups "
                 "where period_start = :p"),
            {"p": period_start},
        )
    ).all()
    return {r.metric: r for r in rows}


async def ai_tokens(session: AsyncSession, start: datetime, end: datetime) -> tuple[int, Decimal]:
    """Tokens and cost of the tenant's AI calls in ``[start, end)``, from the kernel's AI ledger."""
    row = (
        await session.execute(
            text("select coalesce(sum(prompt_tokens + completion_tokens), 0) as tokens, "
                 "coalesce(sum(cost), 0) as cost from ai_usage where created_at >= :s and created_at < :e"),
            {"s": start, "e": end},
        )
    ).one()
    return int(row.tokens), Decimal(row.cost)


async def quantities(
    session: AsyncSession, start: datetime, end: datetime, aggregations: dict[str, str]
) -> dict[str, Decimal]:
    """Each metric's quantity in the period starting at ``start`` (``aggregations``: metric ->
    aggregation; metrics without a charge are summed)."""
    found = await rollups(session, start)
    result = {m: pick(aggregations.get(m, "sum"), r) for m, r in found.items()}
    tokens, cost = await ai_tokens(session, start, end)
    result["ai_tokens"] = result.get("ai_tokens", Decimal(0)) + tokens
    result["ai_cost"] = cost  # what the AI ledger priced the calls at (its own price table)
    return result


async def thresholds(
    session: AsyncSession, log: sdk.ChangeLog, period_start: datetime, used: dict[str, Decimal],
    entitlements: dict[str, Any],
) -> list[tuple[str, int]]:
    """Emit ``billing.allowance.threshold_reached`` once per allowance, period and level (80, 100)."""
    reached: list[tuple[str, int]] = []
    for feature, metric in ALLOWANCE_METRICS.items():
        limit = entitlements.get(feature)
        if not limit:
            continue
        share = used.get(metric, Decimal(0)) * 100 / Decimal(limit)
        for percent in (80, 100):
            if share < percent:
                continue
            new = await session.execute(
                text("insert into billing_thresholds (tenant_id, id, feature, period_start, percent) "
                     "values (:t, :id, :f, :p, :pc) on conflict do nothing returning id"),
                {"t": log.tenant_id, "id": sdk.uuid7(), "f": feature, "p": period_start, "pc": percent},
            )
            if new.scalar_one_or_none() is not None:
                reached.append((feature, percent))
                await log.emit(session, event="billing.allowance.threshold_reached", payload={
                    "feature": feature, "percent": percent, "limit": limit,
                    "used": str(used.get(metric, Decimal(0))), "period_start": period_start.isoformat(),
                })
    return reached
