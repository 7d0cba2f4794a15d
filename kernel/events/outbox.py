"""The transactional outbox and its dispatcher.

``emit`` inserts the event in the caller's transaction, so the change and its events commit
together or not at all. The dispatcher (in the job worker) turns pending rows into one delivery per
handler (``kernel.events.deliveries``) in the transaction that marks them dispatched, and then
enqueues a job per batch of deliveries. Delivery state lives in PostgreSQL; a queue lost with Redis is
rebuilt from it by the worker's sweeper.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db.models import uuid7
from kernel.events.deliveries import Deliveries, across_tenants
from kernel.events.loop import BackgroundLoop

__all__ = ["OutboxDispatcher", "emit", "emit_many"]

log = logging.getLogger("businessos.events")

_BATCH = 100


async def emit(session: AsyncSession, *, tenant_id: uuid.UUID, event: str, payload: dict[str, Any]) -> uuid.UUID:
    """Record ``event`` for ``tenant_id`` in ``session``'s transaction (a ``db.tenant()`` one)."""
    event_id = uuid7()
    await session.execute(
        text(
            "insert into events_outbox (tenant_id, id, event, payload) values (:t, :i, :e, cast(:p as jsonb))"
        ),
        {"t": tenant_id, "i": event_id, "e": event, "p": msgspec.json.encode(payload).decode()},
    )
    return event_id


async def emit_many(
    session: AsyncSession, *, tenant_id: uuid.UUID, events: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """:func:`emit` for several ``(event, payload)`` pairs in one statement."""
    if not events:
        return
    await session.execute(
        text(
            "insert into events_outbox (tenant_id, id, event, payload) values (:t, :i, :e, cast(:p as jsonb))"
        ),
        [
            {"t": tenant_id, "i": uuid7(), "e": event, "p": msgspec.json.encode(payload).decode()}
            for event, payload in events
        ],
    )


class OutboxDispatcher(BackgroundLoop):
    """Moves pending outbox rows into deliveries and their jobs onto the queue."""

    name = "outbox dispatch"

    def __init__(
        self, deliveries: Deliveries, queue: ArqRedis, queue_name: str, poll_interval: float = 0.1
    ) -> None:
        super().__init__(log, poll_interval)
        self.deliveries = deliveries
        self.db = deliveries.db
        self.queue = queue
        self.queue_name = queue_name

    async def step(self) -> bool:
        return await self.dispatch_once() == _BATCH

    async def dispatch_once(self) -> int:
        """Turn up to one batch of pending events into deliveries; returns how many events.

        The deliveries are created in the transaction that marks the events dispatched, and
        enqueued only after it commits: a job never looks for a row that is not there, and an
        enqueue that fails (Redis down) leaves a pending delivery the sweeper enqueues later.
        """
        async with across_tenants(self.db) as session:
            rows = (
                await session.execute(
                    text(
                        "select tenant_id, id, event from events_outbox where status = 'pending' "
                        "order by created_at, id limit :n for update skip locked"
                    ),
                    {"n": _BATCH},
                )
            ).all()
            created = await self.deliveries.create(session, [(r.tenant_id, r.id, r.event) for r in rows])
            if rows:
                await session.execute(
                    text(
                        "update events_outbox set status = 'dispatched', dispatched_at = now() "
                        "where id = any(:ids)"
                    ),
                    {"ids": [row.id for row in rows]},
                )
        try:
            await self.deliveries.enqueue_batches(self.queue, self.queue_name, created)
        except Exception as exc:  # the sweeper enqueues what is left
            log.warning("cannot enqueue event deliveries (%s); the sweeper will", exc, extra={"repeat_key": "enqueue"})
        return len(rows)
