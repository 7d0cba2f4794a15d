"""The AI proxy's services for one request, built from the kernel's handles, and usage reports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from litestar.connection import ASGIConnection
from sqlalchemy import text

from kernel.ai.proxy import Caller
from kernel.ai.schemas import UsageReport, UsageRow
from kernel.audit.log import request_meta
from kernel.db.engine import Database
from kernel.errors import FieldError, Unprocessable
from kernel.identity.auth import principal_of

__all__ = ["caller_of", "usage_report"]


def caller_of(connection: ASGIConnection[Any, Any, Any, Any], tenant_id: uuid.UUID, surface: str) -> Caller:
    return Caller(
        tenant_id=tenant_id, principal=principal_of(connection), meta=request_meta(connection), surface=surface
    )


def _moment(name: str, value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Unprocessable(
            f"{name} must be an ISO 8601 date or time",
            errors=[FieldError(field=name, message="not an ISO 8601 date or time")],
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_REPORT = text(
    """select (created_at at time zone 'UTC')::date as day, model,
              case when principal_kind is null then null else principal_kind || ':' || principal_id end as principal,
              count(*) as calls, sum(prompt_tokens) as prompt_tokens, sum(completion_tokens) as completion_tokens,
              sum(cached_tokens) as cached_tokens, sum(cost) as cost,
              count(*) filter (where status <> 'ok') as failed
         from ai_usage where created_at >= :since and created_at < :until
        group by 1, 2, 3 order by 1, 2, 3"""
)


async def usage_report(db: Database, tenant_id: uuid.UUID, since: str | None, until: str | None) -> UsageReport:
    """Calls, tokens and cost by day (UTC), model and principal between ``since`` (inclusive,
    default: the first of this month) and ``until`` (exclusive, default: now)."""
    now = datetime.now(UTC)
    start = _moment("from", since, now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    end = _moment("to", until, now + timedelta(seconds=1))
    async with db.tenant(tenant_id) as session:
        rows = (await session.execute(_REPORT, {"since": start, "until": end})).all()
    totals: dict[str, Any] = {"calls": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    cost = Decimal(0)
    out = []
    for r in rows:
        out.append(
            UsageRow(
                day=r.day, model=r.model, principal=r.principal, calls=r.calls, prompt_tokens=int(r.prompt_tokens),
                completion_tokens=int(r.completion_tokens), cached_tokens=int(r.cached_tokens), cost=str(r.cost),
            )
        )
        totals["calls"] += r.calls
        totals["failed"] += r.failed
        totals["prompt_tokens"] += int(r.prompt_tokens)
        totals["completion_tokens"] += int(r.completion_tokens)
        totals["cached_tokens"] += int(r.cached_tokens)
        cost += Decimal(r.cost)
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    totals["cost"] = str(cost)
    return UsageReport(since=start, until=end, rows=out, totals=totals)
