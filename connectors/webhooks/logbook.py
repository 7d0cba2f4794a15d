"""The delivery log: deliveries and attempts per subscription, one delivery with its attempts,
redelivering one, and replaying a time range."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Select, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from connectors.webhooks import delivery, service
from connectors.webhooks import schemas as s
from connectors.webhooks.models import Attempt, Delivery, Message, Replay
from kernel import sdk

__all__ = [
    "REPLAY_LIMIT",
    "STATUSES",
    "get_delivery",
    "list_attempts",
    "list_deliveries",
    "redeliver",
    "replay",
]

STATUSES = ("pending", "running", "succeeded", "failed")
REPLAY_LIMIT = 10_000
"""The most events one replay may re-send; a wider range answers 422 (split it)."""


def to_delivery(row: Delivery) -> s.DeliveryOut:
    return s.DeliveryOut(
        id=row.id, subscription_id=row.subscription_id, event_id=row.message_id,
        message_id=delivery.message_id(row.message_id), event_type=row.event_type,
        origin=f"replay:{row.origin}" if row.origin else "event", status=row.status, attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None, last_status=row.last_status,
        last_error=row.last_error, created_at=row.created_at, finished_at=row.finished_at,
    )


def to_attempt(row: Attempt) -> s.AttemptOut:
    return s.AttemptOut(
        id=row.id, delivery_id=row.delivery_id, number=row.number, url=row.url, succeeded=row.succeeded,
        duration_ms=row.duration_ms, request_headers=row.request_headers, request_body=row.request_body,
        response_status=row.response_status, response_headers=row.response_headers,
        response_body=row.response_body, error=row.error, created_at=row.created_at,
    )


def _range(column: Any, since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    where = []
    if since is not None:
        where.append(column >= since)
    if until is not None:
        where.append(column < until)
    if since is not None and until is not None and until <= since:
        raise sdk.Unprocessable("empty time range", errors=[sdk.FieldError("until", "must be after since")])
    return where


def _order(model: Any, sort: str) -> list[ColumnElement[Any]]:
    if sort.startswith("-"):
        return [model.created_at.desc(), model.id.desc()]
    return [model.created_at, model.id]


async def list_deliveries(
    session: AsyncSession, subscription_id: uuid.UUID, *, page: int, limit: int, sort: str, status: str | None,
    event_type: str | None, since: datetime | None, until: datetime | None,
) -> tuple[list[s.DeliveryOut], int]:
    """The subscription's deliveries (404 for an unknown subscription), filtered."""
    sdk.check_list(page, limit, sort, service.SORTS)
    if status is not None and status not in STATUSES:
        raise sdk.Unprocessable("invalid filter", errors=[sdk.FieldError("status", f"one of {', '.join(STATUSES)}")])
    await service.get(session, subscription_id)
    stmt: Select[Any] = select(Delivery).where(
        Delivery.subscription_id == subscription_id, *_range(Delivery.created_at, since, until)
    )
    if status is not None:
        stmt = stmt.where(Delivery.status == status)
    if event_type is not None:
        stmt = stmt.where(Delivery.event_type == event_type)
    rows, total = await sdk.list_and_count(session, stmt, _order(Delivery, sort), page, limit)
    return [to_delivery(r) for r in rows], total


async def list_attempts(
    session: AsyncSession, subscription_id: uuid.UUID, *, page: int, limit: int, sort: str,
    succeeded: bool | None, since: datetime | None, until: datetime | None,
) -> tuple[list[s.AttemptOut], int]:
    """The subscription's attempts, filtered (404 for an unknown subscription)."""
    sdk.check_list(page, limit, sort, service.SORTS)
    await service.get(session, subscription_id)
    stmt: Select[Any] = select(Attempt).where(
        Attempt.subscription_id == subscription_id, *_range(Attempt.created_at, since, until)
    )
    if succeeded is not None:
        stmt = stmt.where(Attempt.succeeded.is_(succeeded))
    rows, total = await sdk.list_and_count(session, stmt, _order(Attempt, sort), page, limit)
    return [to_attempt(r) for r in rows], total


async def _delivery(session: AsyncSession, delivery_id: uuid.UUID) -> Delivery:
    row = (await session.scalars(select(Delivery).where(Delivery.id == delivery_id))).first()
    if row is None:
        raise sdk.NotFound("no such delivery")
    return row


async def get_delivery(session: AsyncSession, delivery_id: uuid.UUID) -> s.DeliveryDetail:
    row = await _delivery(session, delivery_id)
    attempts = await session.scalars(
        select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.number, Attempt.created_at)
    )
    out = to_delivery(row)
    return s.DeliveryDetail(**{f: getattr(out, f) for f in out.__struct_fields__},
                            attempt_log=[to_attempt(a) for a in attempts])


_REDELIVER = text(
    "update webhooks_deliveries set status = 'pending', step = 0, next_attempt_at = now(), lease_until = null, "
    "finished_at = null where id = :id and status in ('succeeded', 'failed')"
)


async def redeliver(session: AsyncSession, log: sdk.ChangeLog, delivery_id: uuid.UUID) -> s.DeliveryOut:
    """Start a finished delivery over from the first step of the schedule (the same message id);
    one still pending or running answers 409, one of a disabled subscription 409 too."""
    row = await _delivery(session, delivery_id)
    subscription = await service.get(session, row.subscription_id)
    if not subscription.enabled:
        raise sdk.Conflict("the subscription is disabled; enable it first")
    if row.status not in ("succeeded", "failed"):
        raise sdk.Conflict(f"the delivery is {row.status}; only a succeeded or failed one can be redelivered")
    await session.execute(_REDELIVER, {"id": delivery_id})
    await log.audit(session, action="webhooks.delivery.redelivered", resource_type="webhooks.delivery",
                    resource_id=delivery_id)
    await session.refresh(row)
    return to_delivery(row)


async def replay(
    session: AsyncSession, log: sdk.ChangeLog, subscription_id: uuid.UUID, data: s.ReplayCreate
) -> tuple[s.ReplayOut, list[uuid.UUID]]:
    """Re-send to the subscription every stored event of its types (and filter) that occurred in
    ``[from, to)``: one delivery per event and replay, so a replay job run twice, or the same
    ``idempotency_key`` sent twice, sends nothing twice. Returns the replay and the deliveries to
    wake up."""
    if data.end <= data.start:
        raise sdk.Unprocessable("empty time range", errors=[sdk.FieldError("to", "must be after from")])
    subscription = await service.get(session, subscription_id)
    if not subscription.enabled:
        raise sdk.Conflict("the subscription is disabled; enable it first")
    if data.idempotency_key is not None:
        found = (
            await session.scalars(
                select(Replay).where(
                    Replay.subscription_id == subscription_id, Replay.idempotency_key == data.idempotency_key
                )
            )
        ).first()
        if found is not None:
            return _replay_out(found), []
    messages = (
        await session.execute(
            select(Message.id, Message.event_type, Message.body)
            .where(Message.occurred_at >= data.start, Message.occurred_at < data.end)
            .order_by(Message.occurred_at, Message.id)
            .limit(REPLAY_LIMIT + 1)
        )
    ).all()
    if len(messages) > REPLAY_LIMIT:
        raise sdk.Unprocessable(
            "too many events", errors=[sdk.FieldError("to", f"the range holds more than {REPLAY_LIMIT} events")]
        )
    chosen = [
        m for m in messages
        if service.matches(subscription.event_types, m.event_type)
        and service.passes_filter(subscription.filter, _data(m.body))
    ]
    row = Replay(
        tenant_id=log.tenant_id, id=sdk.uuid7(), subscription_id=subscription_id, from_at=data.start, to_at=data.end,
        idempotency_key=data.idempotency_key, deliveries=len(chosen),
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    made: list[uuid.UUID] = []
    if chosen:
        values = [
            {"tenant_id": log.tenant_id, "id": sdk.uuid7(), "subscription_id": subscription_id, "message_id": m.id,
             "event_type": m.event_type, "origin": str(row.id)}
            for m in chosen
        ]
        for start in range(0, len(values), 1000):  # within PostgreSQL's bind-parameter limit
            result = await session.execute(
                insert(Delivery).values(values[start : start + 1000]).on_conflict_do_nothing().returning(Delivery.id)
            )
            made.extend(result.scalars())
    await log.audit(
        session, action="webhooks.subscription.replayed", resource_type="webhooks.subscription",
        resource_id=subscription_id,
        details={"replay_id": str(row.id), "from": data.start.isoformat(), "to": data.end.isoformat(),
                 "deliveries": len(chosen)},
    )
    return _replay_out(row), made


def _data(body: str) -> Any:
    return msgspec.json.decode(body).get("data")


def _replay_out(row: Replay) -> s.ReplayOut:
    return s.ReplayOut(
        id=row.id, subscription_id=row.subscription_id, start=row.from_at, end=row.to_at, deliveries=row.deliveries,
        created_at=row.created_at,
    )
