"""Event deliveries: at-least-once, per (event, handler), with retries and a dead letter.

An outbox row records that an event happened. When the dispatcher moves it, it creates one
delivery row per handler of a tenant-enabled plugin, in the same transaction that marks the
event dispatched (one INSERT for the whole batch of events); then, after the commit, it enqueues
one arq job per chunk of deliveries (:data:`BATCH_JOB`; Redis only wakes a worker and names the
rows). PostgreSQL holds the state, Redis only the queue:

- a job *claims* its deliveries (``pending`` and due, or ``running`` with an expired lease) in one
  statement (``for update skip locked``), so two copies of a job never run a handler at once;
- the handlers run outside that transaction (a handler that declares ``batch`` gets all its
  deliveries of one tenant in one call); their outcomes are recorded in one statement: success
  marks a row ``succeeded``, a failure sets it back to ``pending`` after an exponential backoff
  with full jitter, and the last allowed attempt makes it ``dead``
  (``POST /api/events/deliveries/{id}/redeliver`` starts it over);
- a handler that declares ``accepts`` gets no delivery for the events it refuses;
- the sweeper re-enqueues deliveries that are due but on no queue (Redis flushed or restarted,
  a crash between commit and enqueue, a worker that died mid-run and left its lease to expire).

Retries and redeliveries are single jobs with ids ``delivery:<id>:<attempt>``; batches are
``deliveries:<first id>:<attempt>``, the sweeper's with ``:swept<n>`` after it (one set per sweep
period: a job that a dead worker took keeps its id in arq for minutes). Results are not kept: a
copy of a job still queued is refused, a later attempt or a redelivery is not, and a copy that
runs anyway finds its rows claimed or finished and skips them. An event is done when none of its deliveries is
``pending`` or ``running``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
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
    "BATCH_JOB",
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
BATCH_JOB = "kernel.deliver_events"
BATCH_SIZE = 50
"""Deliveries per batch job: enough to share the round trips, few enough that several workers
(and several jobs of one worker) share a burst."""
CONCURRENCY = 10
"""Handler runs at once per process (as many as arq runs jobs); a batch handler counts once."""
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
    tenant_id: uuid.UUID
    id: uuid.UUID
    attempt: int
    handler: str
    event: str
    event_id: uuid.UUID
    payload: dict[str, Any]


@dataclass(frozen=True)
class _Outcome:
    claim: _Claim
    status: str
    """What the row becomes: ``succeeded``, ``pending`` (again, after ``delay``) or ``dead``."""
    error: str | None
    delay: float
    uncount: bool
    """Give the attempt back (it was not the handler's)."""
    result: str
    """What :meth:`Deliveries.run` answers: ``succeeded``, ``retry``, ``dead``, ``unknown-handler``,
    ``postponed`` (no turn in time)."""


_CREATE = text(
    "insert into event_deliveries (tenant_id, id, event_id, event, handler) "
    "select * from unnest(cast(:t as uuid[]), cast(:i as uuid[]), cast(:ev as uuid[]), cast(:e as text[]), "
    "cast(:h as text[])) on conflict (tenant_id, event_id, handler) do nothing returning tenant_id, id"
)
_CLAIM = text(
    # The due ones among the given rows, locked (others' locks skipped), then taken for one
    # attempt; the event's payload comes back with each.
    "update event_deliveries d set status = 'running', attempts = d.attempts + 1, started_at = now(), "
    "lease_until = now() + make_interval(secs => :lease) "
    "from (select e.tenant_id, e.id from event_deliveries e "
    "join unnest(cast(:t as uuid[]), cast(:i as uuid[])) as v(t, i) on e.tenant_id = v.t and e.id = v.i "
    "where (e.status = 'pending' and e.next_attempt_at <= now() + interval '1 second') "
    "or (e.status = 'running' and e.lease_until < now()) for update of e skip locked) as c "
    "where d.tenant_id = c.tenant_id and d.id = c.id "
    "returning d.tenant_id, d.id, d.attempts, d.handler, d.event, d.event_id, "
    "(select o.payload from events_outbox o where o.tenant_id = d.tenant_id and o.id = d.event_id) as payload"
)
_RECORD = text(
    "update event_deliveries d set status = v.s, lease_until = null, last_error = v.err, "
    "attempts = d.attempts - v.undo, finished_at = case when v.s = 'pending' then null else now() end, "
    "next_attempt_at = case when v.s = 'pending' then now() + make_interval(secs => v.d) "
    "else d.next_attempt_at end "
    "from unnest(cast(:t as uuid[]), cast(:i as uuid[]), cast(:a as int[]), cast(:s as text[]), "
    "cast(:err as text[]), cast(:undo as int[]), cast(:d as float8[])) as v(t, i, a, s, err, undo, d) "
    "where d.tenant_id = v.t and d.id = v.i and d.status = 'running' and d.attempts = v.a"
)

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
        self._targets: dict[str, list[tuple[str, str]]] = {}
        self._limit: asyncio.Semaphore | None = None

    # -- dispatch -------------------------------------------------------------------------------

    async def create(
        self, session: AsyncSession, events: Iterable[tuple[uuid.UUID, uuid.UUID, str]]
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Insert the deliveries of ``(tenant_id, event_id, event)`` in ``session`` (the
        dispatcher's cross-tenant transaction), in one statement; returns ``(tenant_id,
        delivery_id)`` of those created, to enqueue once it commits. Only plugins the tenant has
        enabled get one, and a handler's ``accepts`` may refuse the event."""
        tenants: list[uuid.UUID] = []
        ids: list[uuid.UUID] = []
        event_ids: list[uuid.UUID] = []
        names: list[str] = []
        keys: list[str] = []
        for tenant_id, event_id, event in events:
            targets = self.targets(event)
            if not targets:
                continue
            enabled = await self.kernel.modules.enabled(tenant_id)
            for plugin, key in targets:
                if plugin in enabled:
                    tenants.append(tenant_id)
                    ids.append(uuid7())
                    event_ids.append(event_id)
                    names.append(event)
                    keys.append(key)
        if not ids:
            return []
        rows = (
            await session.execute(
                _CREATE, {"t": tenants, "i": ids, "ev": event_ids, "e": names, "h": keys}
            )
        ).all()
        return [(row.tenant_id, row.id) for row in rows]

    def targets(self, event: str) -> list[tuple[str, str]]:
        """``(plugin, handler key)`` of the handlers that get a delivery of ``event`` (before the
        tenant's modules are considered); remembered per event name."""
        found = self._targets.get(event)
        if found is None:
            found = [
                (plugin, key)
                for plugin, key in self.by_event.get(event, []) + self.by_event.get(ANY_EVENT, [])
                if (accepts := self.handlers[key][1].accepts) is None or accepts(event)
            ]
            if len(self._targets) < 10_000:  # event names are few; an unbounded stream is not
                self._targets[event] = found
        return found

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

    @staticmethod
    async def enqueue_batches(
        queue: ArqRedis, queue_name: str, deliveries: Sequence[tuple[uuid.UUID, uuid.UUID]], attempt: int = 1,
        tag: str = "",
    ) -> None:
        """Put ``(tenant_id, delivery_id)`` on the queue in jobs of :data:`BATCH_SIZE`, grouped by
        tenant so that a batch handler gets as many of its tenant's events at once as it can.
        ``tag`` ends the job ids (the sweeper's, see :meth:`sweep`)."""
        ordered = sorted(deliveries, key=lambda item: item[0].bytes)
        for start in range(0, len(ordered), BATCH_SIZE):
            chunk = ordered[start:start + BATCH_SIZE]
            await queue.enqueue_job(
                BATCH_JOB, [f"{tenant_id}:{delivery_id}" for tenant_id, delivery_id in chunk],
                _job_id=f"deliveries:{chunk[0][1]}:{attempt}{tag}", _queue_name=queue_name,
            )

    # -- running --------------------------------------------------------------------------------

    async def run(
        self, tenant_id: uuid.UUID, delivery_id: uuid.UUID, queue: ArqRedis, queue_name: str
    ) -> str:
        """Claim the delivery, run its handler, record the outcome; returns what happened
        (``skipped`` when another copy holds it or it is not due). A failing handler is recorded,
        never raised: the other handlers of the event have deliveries of their own."""
        outcomes = await self.run_many([(tenant_id, delivery_id)], queue, queue_name)
        return outcomes.get(delivery_id, "skipped")

    async def run_many(
        self, deliveries: Sequence[tuple[uuid.UUID, uuid.UUID]], queue: ArqRedis, queue_name: str
    ) -> dict[uuid.UUID, str]:
        """:meth:`run` for ``(tenant_id, delivery_id)`` pairs: one statement claims those that are
        due, the handlers run (at most :data:`CONCURRENCY` at once; a batch handler once per
        tenant), one statement records every outcome. Returns the outcome of each claimed one."""
        # A claimed delivery waits at most half its lease for a turn (then it is given back
        # uncounted and queued again), and its handler at most the other half: either way the
        # outcome is recorded before the lease lets another worker take the row.
        deadline = asyncio.get_running_loop().time() + self.lease / 2
        claims = await self._claim(deliveries)
        if not claims:
            return {}
        outcomes: dict[uuid.UUID, _Outcome] = {}
        runnable: dict[tuple[uuid.UUID, str], list[_Claim]] = {}
        for claim in claims:
            plugin, handler = self.handlers.get(claim.handler, ("", None))
            if handler is None:
                # Another worker (a newer deploy) knows this handler: leave it to that one.
                outcomes[claim.id] = _Outcome(
                    claim, "pending", "no worker here knows this handler", self.lease, True, "unknown-handler"
                )
            elif plugin not in await self.kernel.modules.enabled(claim.tenant_id):
                outcomes[claim.id] = _Outcome(claim, "dead", f"the tenant disabled {plugin}", 0.0, False, "dead")
            else:
                runnable.setdefault((claim.tenant_id, claim.handler), []).append(claim)
        semaphore = self._semaphore()
        work = []
        for (_, key), group in runnable.items():
            plugin, handler = self.handlers[key]
            if handler.batch is not None and len(group) > 1:
                work.append(self._run_batch(semaphore, deadline, plugin, handler, group))
            else:
                work.extend(self._run_one(semaphore, deadline, plugin, handler, claim) for claim in group)
        for done in await asyncio.gather(*work):
            for outcome in done:
                outcomes[outcome.claim.id] = outcome
        await self._record(list(outcomes.values()))
        retries = [o for o in outcomes.values() if o.result in ("retry", "postponed")]
        try:
            for outcome in retries:
                claim = outcome.claim
                attempt = claim.attempt if outcome.uncount else claim.attempt + 1
                await self.enqueue(queue, queue_name, claim.tenant_id, claim.id, attempt, outcome.delay)
        except Exception:  # Redis down: the sweeper enqueues them when due
            log.debug("could not enqueue %d retries; the sweeper will", len(retries))
        return {delivery_id: outcome.result for delivery_id, outcome in outcomes.items()}

    def _semaphore(self) -> asyncio.Semaphore:
        if self._limit is None:
            self._limit = asyncio.Semaphore(CONCURRENCY)
        return self._limit

    def _context(self, plugin: str, claim: _Claim) -> EventContext:
        return EventContext(
            tenant_id=claim.tenant_id, event=claim.event, payload=claim.payload,
            services=self.kernel.services(plugin), event_id=claim.event_id,
        )

    async def _run_one(
        self, semaphore: asyncio.Semaphore, deadline: float, plugin: str, handler: EventHandler, claim: _Claim
    ) -> list[_Outcome]:
        try:
            async with asyncio.timeout_at(deadline):
                await semaphore.acquire()
        except TimeoutError:
            return [self._postponed(claim)]
        try:
            async with asyncio.timeout(self.lease / 2):
                await handler.handler(self._context(plugin, claim))
        except Exception as exc:
            return [self._failed(claim, exc)]
        finally:
            semaphore.release()
        return [_Outcome(claim, "succeeded", None, 0.0, False, "succeeded")]

    async def _run_batch(
        self, semaphore: asyncio.Semaphore, deadline: float, plugin: str, handler: EventHandler,
        claims: list[_Claim],
    ) -> list[_Outcome]:
        assert handler.batch is not None
        try:
            async with asyncio.timeout_at(deadline):
                await semaphore.acquire()
        except TimeoutError:
            return [self._postponed(claim) for claim in claims]
        try:
            async with asyncio.timeout(self.lease / 2):
                await handler.batch([self._context(plugin, claim) for claim in claims])
        except Exception as exc:
            return [self._failed(claim, exc) for claim in claims]
        finally:
            semaphore.release()
        return [_Outcome(claim, "succeeded", None, 0.0, False, "succeeded") for claim in claims]

    @staticmethod
    def _postponed(claim: _Claim) -> _Outcome:
        """A claim whose handler never got a turn: given back, due again at once."""
        return _Outcome(claim, "pending", None, 0.0, True, "postponed")

    def _failed(self, claim: _Claim, exc: Exception) -> _Outcome:
        log.warning(
            "event handler %s failed on %s (attempt %d of %d)", claim.handler, claim.event_id,
            claim.attempt, self.max_attempts, exc_info=exc,
        )
        error = type(exc).__name__
        if isinstance(exc, TimeoutError):
            error = "TimeoutError (the handler ran out of time)"
        if claim.attempt >= self.max_attempts:
            log.error("event delivery %s to %s is dead after %d attempts", claim.id, claim.handler, claim.attempt)
            return _Outcome(claim, "dead", error, 0.0, False, "dead")
        return _Outcome(claim, "pending", error, backoff(claim.attempt), False, "retry")

    async def _claim(self, deliveries: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> list[_Claim]:
        # Shielded, like _record: a job cancelled mid-statement (its worker lost Redis) must not
        # leave a connection idle in a transaction that holds the rows' locks.
        return await asyncio.shield(self._claim_now(deliveries))

    async def _claim_now(self, deliveries: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> list[_Claim]:
        # A job may start a moment before its row is due (arq uses the worker's clock, the row
        # the database's): a claim within a second of the due time is taken, not dropped.
        if not deliveries:
            return []
        async with across_tenants(self.db) as session:
            rows = (
                await session.execute(
                    _CLAIM,
                    {"t": [t for t, _ in deliveries], "i": [i for _, i in deliveries], "lease": self.lease},
                )
            ).all()
        claims = []
        for row in rows:
            payload = row.payload
            if isinstance(payload, str | bytes):
                payload = msgspec.json.decode(payload)
            claims.append(_Claim(row.tenant_id, row.id, row.attempts, row.handler, row.event, row.event_id, payload))
        return claims

    async def _record(self, outcomes: Sequence[_Outcome]) -> None:
        """The outcomes of their claims, unless another worker has taken one over since.
        ``pending`` is due again after its delay; ``uncount`` gives the attempt back."""
        if outcomes:
            await asyncio.shield(self._record_now(outcomes))

    async def _record_now(self, outcomes: Sequence[_Outcome]) -> None:
        async with across_tenants(self.db) as session:
            await session.execute(
                _RECORD,
                {
                    "t": [o.claim.tenant_id for o in outcomes],
                    "i": [o.claim.id for o in outcomes],
                    "a": [o.claim.attempt for o in outcomes],
                    "s": [o.status for o in outcomes],
                    "err": [o.error for o in outcomes],
                    "undo": [int(o.uncount) for o in outcomes],
                    "d": [o.delay for o in outcomes],
                },
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
        if rows:
            # Job ids of their own, one set per sweep period: a row still pending past the grace
            # may belong to a job that a worker took and died with before claiming it. arq keeps
            # such a job's id (its in-progress mark outlives the dead worker by the longest job
            # timeout), and a copy under the same id would be refused for minutes. A copy that
            # runs beside the original finds its rows claimed and skips them.
            tag = f":swept{int(time.time() // max(grace, 1.0))}"
            await self.enqueue_batches(
                queue, queue_name, [(row.tenant_id, row.id) for row in rows], min(r.attempts for r in rows) + 1,
                tag=tag,
            )
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

