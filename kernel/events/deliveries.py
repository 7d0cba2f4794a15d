"""Event deliveries: at-least-once, per (event, handler), with retries and a dead letter.

An outbox row records that an event happened. When the dispatcher moves it, it creates one
delivery row per handler of a tenant-enabled plugin, in the same transaction that marks the
event dispatched; then, after the commit, it enqueues one arq job per delivery. PostgreSQL holds
the state, Redis only the queue:

- a job *claims* its delivery (``pending`` and due, or ``running`` with an expired lease) in one
  statement, so two copies of a job never run the handler at once;
- the handler runs outside that transaction; success marks the row ``succeeded``, a failure sets
  it back to ``pending`` after an exponential backoff with full jitter, and the last allowed
  attempt makes it ``dead`` (``POST /api/events/deliveries/{id}/redeliver`` starts it over);
- the sweeper re-enqueues deliveries that are due but on no queue (Redis flushed or restarted,
  a crash between commit and enqueue, a worker that died mid-run and left its lease to expire).

Job ids are ``delivery:<id>:<attempt>``, results are not kept: a copy of a job still queued is
refused, a later attempt or a redelivery is not. An event is done when none of its deliveries is
``pending`` or ``running``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db.engine import Database
from kernel.db.models import uuid7
from kernel.errors import Conflict, FieldError, NotFound, Unprocessable
from kernel.plugins.contract import EventContext, EventHandler

if TYPE_CHECKING:
    from kernel.context import Kernel

__all__ = [
    "DELIVER_JOB",
    "QUEUE",
    "STATUSES",
    "Deliveries",
    "Delivery",
    "DeliveryPage",
    "backoff",
    "handler_key",
]

log = logging.getLogger("businessos.events")

DELIVER_JOB = "kernel.deliver_event"
QUEUE = "businessos:jobs"
"""The worker's arq queue (the API enqueues redeliveries on it)."""
STATUSES = ("pending", "running", "succeeded", "dead")
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_SWEEP_BATCH = 500
_MAX_FILTER = 200


ANY_EVENT = "*"
"""An ``EventHandler.event`` that receives every event (workflow triggers, outgoing webhooks,
metering)."""


def handler_key(plugin: str, handler: EventHandler) -> str:
    """``<plugin>:<name>``: the handler's declared name, or its function's qualified name."""
    return f"{plugin}:{handler.name or getattr(handler.handler, '__qualname__', repr(handler.handler))}"


def backoff(attempt: int) -> float:
    """Seconds before the retry that follows failed ``attempt`` (1-based): full jitter over an
    exponential ceiling, so that a burst of failures does not come back as one burst."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempt - 1, 30))
    return random.uniform(0, ceiling)  # jitter, not a secret


class Delivery(msgspec.Struct, frozen=True):
    id: uuid.UUID
    event_id: uuid.UUID
    event: str
    handler: str
    """``<plugin>:<handler name>``."""
    status: str
    """``pending``, ``running``, ``succeeded`` or ``dead``."""
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    """The exception's type of the last failed attempt (never its message: it may hold secrets)."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DeliveryPage(msgspec.Struct, frozen=True):
    items: list[Delivery]
    """Newest first."""
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; ``null`` on the last page."""


@dataclass(frozen=True)
class _Claim:
    attempt: int
    handler: str
    event: str
    event_id: uuid.UUID
    payload: dict[str, Any]


_COLUMNS = (
    "id, event_id, event, handler, status, attempts, next_attempt_at, last_error, created_at, "
    "started_at, finished_at"
)

_REDELIVER = (
    "update event_deliveries set status = 'pending', attempts = 0, next_attempt_at = now(), "
    "lease_until = null, finished_at = null where id = :id and status in ('succeeded', 'dead') "
    "returning id, event_id, event, handler, status, attempts, next_attempt_at, last_error, created_at, "
    "started_at, finished_at"
)


@asynccontextmanager
async def across_tenants(db: Database) -> AsyncIterator[AsyncSession]:
    """A transaction that sees every tenant's outbox rows and deliveries (the dispatcher's and
    the sweeper's; no other table opens to it)."""
    async with db.global_() as session:
        await session.execute(text("select set_config('app.outbox_dispatch', 'on', true)"))
        yield session


def job_id(delivery_id: uuid.UUID, attempt: int) -> str:
    return f"delivery:{delivery_id}:{attempt}"


class Deliveries:
    """Creating, running, listing and redelivering the deliveries of one process's plugins."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.db = kernel.db
        settings = kernel.settings
        self.max_attempts = settings.event_max_attempts
        self.lease = float(settings.event_lease_seconds)
        self.handlers: dict[str, tuple[str, EventHandler]] = {}
        self.by_event: dict[str, list[tuple[str, str]]] = {}
        for record in kernel.plugins.active():
            for handler in record.event_handlers:
                key = handler_key(record.name, handler)
                if key in self.handlers:
                    continue  # one delivery per (event, handler key); a repeat is the same handler
                self.handlers[key] = (record.name, handler)
                self.by_event.setdefault(handler.event, []).append((record.name, key))

    # -- dispatch -------------------------------------------------------------------------------

    async def create(
        self, session: AsyncSession, events: Iterable[tuple[uuid.UUID, uuid.UUID, str]]
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Insert the deliveries of ``(tenant_id, event_id, event)`` in ``session`` (the
        dispatcher's cross-tenant transaction); returns ``(tenant_id, delivery_id)`` to enqueue
        once it commits. Only plugins the tenant has enabled get one."""
        rows: list[dict[str, Any]] = []
        for tenant_id, event_id, event in events:
            targets = self.by_event.get(event, []) + self.by_event.get(ANY_EVENT, [])
            if not targets:
                continue
            enabled = await self.kernel.modules.enabled(tenant_id)
            for plugin, key in targets:
                if plugin in enabled:
                    rows.append({"t": tenant_id, "i": uuid7(), "ev": event_id, "e": event, "h": key})
        if rows:
            await session.execute(
                text(
                    "insert into event_deliveries (tenant_id, id, event_id, event, handler) "
                    "values (:t, :i, :ev, :e, :h) on conflict (tenant_id, event_id, handler) do nothing"
                ),
                rows,
            )
        return [(row["t"], row["i"]) for row in rows]

    @staticmethod
    async def enqueue(
        queue: ArqRedis, queue_name: str, tenant_id: uuid.UUID, delivery_id: uuid.UUID, attempt: int,
        defer: float = 0.0,
    ) -> None:
        """Put one attempt of a delivery on the queue (a copy already queued is refused)."""
        await queue.enqueue_job(
            DELIVER_JOB, str(tenant_id), str(delivery_id),
            _job_id=job_id(delivery_id, attempt), _queue_name=queue_name,
            _defer_by=defer if defer > 0 else None,
        )

    # -- running --------------------------------------------------------------------------------

    async def run(
        self, tenant_id: uuid.UUID, delivery_id: uuid.UUID, queue: ArqRedis, queue_name: str
    ) -> str:
        """Claim the delivery, run its handler, record the outcome; returns what happened
        (``skipped`` when another copy holds it or it is not due). A failing handler is recorded,
        never raised: the other handlers of the event have deliveries of their own."""
        claim = await self._claim(tenant_id, delivery_id)
        if claim is None:
            return "skipped"
        plugin, handler = self.handlers.get(claim.handler, ("", None))
        if handler is None:
            # Another worker (a newer deploy) knows this handler: leave it to that one.
            await self._record(
                tenant_id, delivery_id, claim.attempt, "pending", "no worker here knows this handler",
                delay=self.lease, uncount=True,
            )
            return "unknown-handler"
        if plugin not in await self.kernel.modules.enabled(tenant_id):
            await self._record(tenant_id, delivery_id, claim.attempt, "dead", f"the tenant disabled {plugin}")
            return "dead"
        context = EventContext(
            tenant_id=tenant_id, event=claim.event, payload=claim.payload,
            services=self.kernel.services(plugin), event_id=claim.event_id,
        )
        try:
            async with asyncio.timeout(self.lease / 2):
                await handler.handler(context)
        except Exception as exc:
            log.warning(
                "event handler %s failed on %s (attempt %d of %d)", claim.handler, claim.event_id,
                claim.attempt, self.max_attempts, exc_info=True,
            )
            error = type(exc).__name__
            if isinstance(exc, TimeoutError):
                error = "TimeoutError (the handler ran out of time)"
            if claim.attempt >= self.max_attempts:
                await self._record(tenant_id, delivery_id, claim.attempt, "dead", error)
                log.error(
                    "event delivery %s to %s is dead after %d attempts", delivery_id, claim.handler, claim.attempt
                )
                return "dead"
            delay = backoff(claim.attempt)
            await self._record(tenant_id, delivery_id, claim.attempt, "pending", error, delay=delay)
            try:
                await self.enqueue(queue, queue_name, tenant_id, delivery_id, claim.attempt + 1, delay)
            except Exception:  # Redis down: the sweeper enqueues it when due
                log.debug("could not enqueue the retry of %s; the sweeper will", delivery_id)
            return "retry"
        await self._record(tenant_id, delivery_id, claim.attempt, "succeeded", None)
        return "succeeded"

    async def _claim(self, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> _Claim | None:
        # Shielded, like _record: a job cancelled mid-statement (its worker lost Redis) must not
        # leave a connection idle in a transaction that holds the row's lock.
        return await asyncio.shield(self._claim_now(tenant_id, delivery_id))

    async def _claim_now(self, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> _Claim | None:
        # A job may start a moment before its row is due (arq uses the worker's clock, the row
        # the database's): a claim within a second of the due time is taken, not dropped.
        async with self.db.tenant(tenant_id) as session:
            row = (
                await session.execute(
                    text(
                        "update event_deliveries set status = 'running', attempts = attempts + 1, "
                        "started_at = now(), lease_until = now() + make_interval(secs => :lease) "
                        "where id = (select id from event_deliveries where id = :id and ((status = 'pending' "
                        "and next_attempt_at <= now() + interval '1 second') or (status = 'running' and "
                        "lease_until < now())) for update skip locked) "
                        "returning attempts, handler, event, event_id"
                    ),
                    {"id": delivery_id, "lease": self.lease},
                )
            ).first()
            if row is None:
                return None
            payload = (
                await session.execute(
                    text("select payload from events_outbox where id = :id"), {"id": row.event_id}
                )
            ).scalar_one()
        if isinstance(payload, str | bytes):
            payload = msgspec.json.decode(payload)
        return _Claim(row.attempts, row.handler, row.event, row.event_id, payload)

    async def _record(
        self, tenant_id: uuid.UUID, delivery_id: uuid.UUID, attempt: int, status: str, error: str | None,
        *, delay: float = 0.0, uncount: bool = False,
    ) -> None:
        """The outcome of the claim ``attempt``, unless another worker has taken it over since.
        ``pending`` is due again after ``delay``; ``uncount`` gives the attempt back."""
        await asyncio.shield(self._record_now(tenant_id, delivery_id, attempt, status, error, delay, uncount))

    async def _record_now(
        self, tenant_id: uuid.UUID, delivery_id: uuid.UUID, attempt: int, status: str, error: str | None,
        delay: float, uncount: bool,
    ) -> None:
        async with self.db.tenant(tenant_id) as session:
            await session.execute(
                text(
                    "update event_deliveries set status = :s, lease_until = null, last_error = :err, "
                    "attempts = attempts - :undo, "
                    "finished_at = case when :s = 'pending' then null else now() end, "
                    "next_attempt_at = case when :s = 'pending' then now() + make_interval(secs => :d) "
                    "else next_attempt_at end "
                    "where id = :id and status = 'running' and attempts = :a"
                ),
                {"s": status, "err": error, "undo": int(uncount), "d": delay, "id": delivery_id, "a": attempt},
            )

    # -- sweeping -------------------------------------------------------------------------------

    async def sweep(self, queue: ArqRedis, queue_name: str, grace: float) -> int:
        """Enqueue this process's handlers' deliveries that are due since ``grace`` seconds, or
        whose lease expired; returns how many were offered (copies still queued are refused)."""
        if not self.handlers:
            return 0
        async with across_tenants(self.db) as session:
            rows = (
                await session.execute(
                    text(
                        "select tenant_id, id, attempts from event_deliveries where handler = any(:h) and ("
                        "(status = 'pending' and next_attempt_at <= now() - make_interval(secs => :g)) "
                        "or (status = 'running' and lease_until < now())) "
                        "order by next_attempt_at limit :n"
                    ),
                    {"h": list(self.handlers), "g": grace, "n": _SWEEP_BATCH},
                )
            ).all()
        for row in rows:
            await self.enqueue(queue, queue_name, row.tenant_id, row.id, row.attempts + 1)
        return len(rows)

    # -- the API --------------------------------------------------------------------------------

    async def list(
        self,
        tenant_id: uuid.UUID,
        *,
        status: str | None = None,
        event: str | None = None,
        handler: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> DeliveryPage:
        """One page of the tenant's deliveries, newest first. ``event`` is an event id or an
        event name; an invalid filter answers 422 naming it."""
        errors: list[FieldError] = []
        where = ["true"]
        params: dict[str, Any] = {}
        if status:
            if status not in STATUSES:
                errors.append(FieldError("status", f"must be one of {', '.join(STATUSES)}"))
            where.append("status = :status")
            params["status"] = status
        for name, value in (("event", event), ("handler", handler)):
            if value and (len(value) > _MAX_FILTER or "\x00" in value):
                errors.append(FieldError(name, f"must be at most {_MAX_FILTER} characters of text"))
        if event:
            try:
                params["event_id"] = uuid.UUID(event)
                where.append("event_id = :event_id")
            except ValueError:
                params["event"] = event
                where.append("event = :event")
        if handler:
            params["handler"] = handler
            where.append("handler = :handler")
        size = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= size <= MAX_LIMIT:
            errors.append(FieldError("limit", f"must be between 1 and {MAX_LIMIT}"))
        if cursor:
            try:
                params["cursor"] = uuid.UUID(cursor)
                where.append("id < :cursor")
            except ValueError:
                errors.append(FieldError("cursor", "is not a cursor this API handed out"))
        if errors:
            raise Unprocessable("invalid delivery filters", errors=errors)
        params["n"] = size + 1
        async with self.db.tenant(tenant_id) as session:
            rows = (
                await session.execute(
                    text(f"select {_COLUMNS} from event_deliveries where {' and '.join(where)} "  # noqa: S608
                         "order by id desc limit :n"),
                    params,
                )
            ).all()
        items = [Delivery(**row._asdict()) for row in rows[:size]]
        more = len(rows) > size
        return DeliveryPage(items=items, next_cursor=str(items[-1].id) if more and items else None)

    async def redeliver(
        self, tenant_id: uuid.UUID, delivery_id: uuid.UUID, queue: ArqRedis | None, queue_name: str
    ) -> Delivery:
        """Start a finished delivery over (a fresh set of attempts, due now). One still pending
        or running answers 409; another tenant's or an unknown id, 404."""
        async with self.db.tenant(tenant_id) as session:
            row = (
                await session.execute(
                    text(_REDELIVER),
                    {"id": delivery_id},
                )
            ).first()
            if row is None:
                found = (
                    await session.execute(
                        text("select status from event_deliveries where id = :id"), {"id": delivery_id}
                    )
                ).scalar()
                if found is None:
                    raise NotFound("no such delivery")
                raise Conflict(f"the delivery is {found}; only a succeeded or dead one can be redelivered")
        if queue is not None:
            try:
                await self.enqueue(queue, queue_name, tenant_id, delivery_id, 1)
            except Exception:  # Redis down: the row is pending, the sweeper enqueues it
                log.warning("could not enqueue redelivery %s now; the worker's sweeper will", delivery_id)
        return Delivery(**row._asdict())

