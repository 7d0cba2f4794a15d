"""The transactional outbox and its dispatcher.

``emit`` inserts the event in the caller's transaction, so the change and its events commit
together or not at all. The dispatcher (in the job worker) moves pending rows onto the arq queue,
one job per event with the event id as the job id, and marks them dispatched in the same
transaction that locked them. A crash between enqueue and commit leaves the row pending: it is
enqueued again, and arq's job id plus idempotent handlers make the second delivery harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db.engine import Database
from kernel.db.models import uuid7

__all__ = ["JOB", "OutboxDispatcher", "emit", "emit_many"]

log = logging.getLogger("businessos.events")

JOB = "kernel.run_event_handlers"
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


class OutboxDispatcher:
    """Moves pending outbox rows onto the job queue."""

    def __init__(self, db: Database, queue: ArqRedis, queue_name: str, poll_interval: float = 0.1) -> None:
        self.db = db
        self.queue = queue
        self.queue_name = queue_name
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None

    async def dispatch_once(self) -> int:
        """Enqueue up to one batch of pending events; returns how many."""
        async with self.db.global_() as session:
            await session.execute(text("select set_config('app.outbox_dispatch', 'on', true)"))
            rows = (
                await session.execute(
                    text(
                        "select tenant_id, id, event, payload from events_outbox where status = 'pending' "
                        "order by created_at, id limit :n for update skip locked"
                    ),
                    {"n": _BATCH},
                )
            ).all()
            for row in rows:
                payload = msgspec.json.decode(row.payload) if isinstance(row.payload, str | bytes) else row.payload
                await self.queue.enqueue_job(
                    JOB, str(row.tenant_id), row.event, payload, str(row.id),
                    _job_id=f"event:{row.id}", _queue_name=self.queue_name,
                )
            if rows:
                await session.execute(
                    text(
                        "update events_outbox set status = 'dispatched', dispatched_at = now() "
                        "where id = any(:ids)"
                    ),
                    {"ids": [row.id for row in rows]},
                )
        return len(rows)

    async def run(self) -> None:
        while True:
            try:
                if await self.dispatch_once() == _BATCH:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox dispatch failed; retrying")
            await asyncio.sleep(self.poll_interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="businessos-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
