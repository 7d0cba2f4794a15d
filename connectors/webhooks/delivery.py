"""Delivering events to subscriptions: Standard Webhooks signatures, Svix's retry schedule.

PostgreSQL holds the truth; Redis only wakes workers up:

1. ``fan_out`` (an event handler on every event, ``"*"``; ``fan_out_many`` takes the kernel's
   batch of one tenant's events at once) stores the event as a message (the exact body every
   subscriber gets), inserts one delivery per matching enabled subscription (unique per message,
   subscription and origin, so a handler run twice creates nothing twice), commits, and makes the
   first attempt at once.
2. Each attempt signs the body (``webhook-id`` = the message id, ``webhook-timestamp``,
   ``webhook-signature`` with one ``v1,`` signature per live secret) and POSTs it through the
   egress client (``services.http``: the URL is judged again, so a name that now resolves to a
   private address is refused). A 2xx within 15 s is a success; anything else is recorded and the
   delivery is due again after the next step of :data:`SCHEDULE`, or ``failed`` once it is spent.
3. A retry is a job (``webhooks.attempt``) enqueued with the delay. The job *claims* the delivery
   (``pending`` and due, or ``running`` with an expired lease) in one statement, so copies of a
   job never attempt twice at once. ``webhooks.sweep`` (every minute) re-enqueues deliveries that
   are due but on no queue: Redis flushed, a worker killed mid-attempt (its lease expires).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks import Webhook

from connectors.webhooks import schemas as s
from connectors.webhooks import service
from kernel import sdk

__all__ = [
    "ATTEMPT_SECONDS",
    "LEASE_SECONDS",
    "SCHEDULE",
    "GroupCommit",
    "Outcome",
    "Target",
    "fan_out",
    "fan_out_many",
    "message_id",
    "retry_delay",
    "run_attempt",
    "send",
    "send_all",
    "sweep",
]

log = logging.getLogger("businessos.webhooks")

SCHEDULE: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
"""Seconds before each attempt, counted from the failure of the one before (Svix's schedule):
immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Eight attempts over about 27.6 hours."""
ATTEMPT_SECONDS = 15.0
"""An attempt succeeds with a 2xx answered within this time (resolution and body included)."""
LEASE_SECONDS = 60.0
"""How long a claimed delivery is left to its worker before the sweeper offers it again."""
SWEEP_GRACE_SECONDS = 30.0
"""The sweeper leaves a due delivery this long to the job enqueued for it."""
SWEEP_BATCH = 1000
LOG_LIMIT = 4096
"""Request and response bodies are kept to this many characters in the attempt log."""
READ_LIMIT = 1 << 20
"""The largest answer read from a receiver (a larger one fails the attempt)."""
_HEADERS_KEPT = 50
_USER_AGENT = "BusinessOS-Webhooks/1"


def retry_delay(step: int) -> int | None:
    """Seconds before the attempt that follows a failed attempt at schedule position ``step``
    (0-based); ``None`` when the schedule is spent."""
    return SCHEDULE[step + 1] if step + 1 < len(SCHEDULE) else None


def message_id(event_id: uuid.UUID) -> str:
    """The ``webhook-id`` of an event's message: the same on every attempt, redelivery and replay."""
    return f"msg_{event_id.hex}"


def occurred_at(event_id: uuid.UUID) -> datetime:
    """When the event was recorded: the time a version 7 UUID carries (else now)."""
    if event_id.version == 7:
        return datetime.fromtimestamp((event_id.int >> 80) / 1000, UTC)
    return datetime.now(UTC)


def message_body(event: str, occurred: datetime, payload: Any) -> str:
    """``{"type", "timestamp", "data"}``: the body of every delivery of the event."""
    return msgspec.json.encode({"type": event, "timestamp": occurred.isoformat(), "data": payload}).decode()


@dataclass(frozen=True)
class Target:
    """One claimed attempt: where to send what, signed with which secrets."""

    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    attempt: int
    step: int
    url: str
    message: str
    body: str
    secrets: tuple[str, ...]
    failing: bool = False
    """The subscription has been failing: a success must clear its streak."""


@dataclass(frozen=True)
class Outcome:
    target: Target
    succeeded: bool
    duration_ms: int
    request_headers: dict[str, str]
    status: int | None = None
    response_headers: dict[str, str] | None = None
    response_body: str | None = None
    error: str | None = None


def sign(target: Target, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: one ``v1,`` signature per live secret."""
    signatures = " ".join(Webhook(secret).sign(target.message, now, target.body) for secret in target.secrets)
    return {
        "content-type": "application/json",
        "user-agent": _USER_AGENT,
        "webhook-id": target.message,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }


async def send(http: sdk.EgressClient, target: Target) -> Outcome:
    """Make one attempt; never raises for what the receiver or the network does."""
    if not target.secrets:
        return Outcome(target, False, 0, {}, error="the signing secret cannot be opened; rotate it")
    headers = sign(target, datetime.now(UTC))
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        response = await http.post(
            target.url, content=target.body.encode(), headers=headers, field="url", seconds=ATTEMPT_SECONDS,
            max_redirects=0, max_bytes=READ_LIMIT,
        )
    except sdk.EgressRefused as refused:
        return Outcome(target, False, elapsed(), headers, error=f"refused: {refused.reason}")
    except sdk.EgressFailed as failed:
        return Outcome(target, False, elapsed(), headers, error=failed.detail or "the call failed")
    except Exception as exc:  # whatever else, the attempt is recorded, never lost
        log.warning("webhook attempt %s failed unexpectedly", target.delivery_id, exc_info=True)
        return Outcome(target, False, elapsed(), headers, error=type(exc).__name__)
    ok = 200 <= response.status_code < 300
    kept = dict(list(response.headers.items())[:_HEADERS_KEPT])
    return Outcome(
        target, ok, elapsed(), headers, status=response.status_code, response_headers=kept,
        response_body=response.text[:LOG_LIMIT], error=None if ok else f"HTTP {response.status_code}",
    )


# -- recording ------------------------------------------------------------------------------------

_RECORD = text(
    # One round trip for a batch: log every attempt, then move each delivery on (unless another
    # worker took it over meanwhile: status and attempt number must still be ours).
    "with logged as (insert into webhooks_attempts (tenant_id, id, delivery_id, subscription_id, number, url, "
    "succeeded, duration_ms, request_headers, request_body, response_status, response_headers, response_body, "
    "error) select :t, a.id, a.delivery, a.sub, a.n, a.url, a.ok, a.ms, a.qh::jsonb, a.qb, a.rs, a.rh::jsonb, "
    "a.rb, a.err from unnest(cast(:ids as uuid[]), cast(:deliveries as uuid[]), cast(:subs as uuid[]), "
    "cast(:ns as int[]), cast(:urls as text[]), cast(:oks as bool[]), cast(:mss as int[]), cast(:qhs as text[]), "
    "cast(:qbs as text[]), cast(:rss as int[]), cast(:rhs as text[]), cast(:rbs as text[]), cast(:errs as text[])) "
    "as a(id, delivery, sub, n, url, ok, ms, qh, qb, rs, rh, rb, err) "
    "where exists (select from webhooks_deliveries d where d.id = a.delivery)) "  # deleted with its subscription
    "update webhooks_deliveries d set "
    "status = case when v.ok then 'succeeded' when v.delay is null then 'failed' else 'pending' end, "
    "lease_until = null, last_status = v.rs, last_error = v.err, "
    "step = case when v.ok or v.delay is null then d.step else d.step + 1 end, "
    "next_attempt_at = case when v.ok or v.delay is null then d.next_attempt_at "
    "else now() + make_interval(secs => v.delay) end, "
    "finished_at = case when v.ok or v.delay is null then now() else null end "
    "from unnest(cast(:deliveries as uuid[]), cast(:ns as int[]), cast(:oks as bool[]), cast(:rss as int[]), "
    "cast(:errs as text[]), cast(:delays as float8[])) as v(id, n, ok, rs, err, delay) "
    "where d.id = v.id and d.status = 'running' and d.attempts = v.n returning d.id, d.status"
)
_HEALTHY = text(
    "update webhooks_subscriptions set failing_since = null where id = any(:ids) and failing_since is not null"
)
_FAILING = text(
    "update webhooks_subscriptions set failing_since = coalesce(failing_since, now()) where id = any(:ids) "
    "and enabled and failing_since is null"
)


def _json(value: dict[str, str] | None) -> str | None:
    return msgspec.json.encode(value).decode() if value is not None else None


async def record(
    services: sdk.Services, tenant_id: uuid.UUID, outcomes: Sequence[Outcome]
) -> list[tuple[uuid.UUID, int]]:
    """Log the attempts and move their deliveries on, in one transaction; returns the retries to
    enqueue as ``(delivery id, delay)``. A delivery another worker took over meanwhile is left to it."""
    if not outcomes:
        return []
    delays = {o.target.delivery_id: None if o.succeeded else retry_delay(o.target.step) for o in outcomes}
    async with services.data.tenant(tenant_id) as session:
        moved = (
            await session.execute(
                _RECORD,
                {
                    "t": tenant_id,
                    "ids": [sdk.uuid7() for _ in outcomes],
                    "deliveries": [o.target.delivery_id for o in outcomes],
                    "subs": [o.target.subscription_id for o in outcomes],
                    "ns": [o.target.attempt for o in outcomes],
                    "urls": [o.target.url for o in outcomes],
                    "oks": [o.succeeded for o in outcomes],
                    "mss": [o.duration_ms for o in outcomes],
                    "qhs": [_json(o.request_headers) for o in outcomes],
                    "qbs": [o.target.body[:LOG_LIMIT] for o in outcomes],
                    "rss": [o.status for o in outcomes],
                    "rhs": [_json(o.response_headers) for o in outcomes],
                    "rbs": [o.response_body for o in outcomes],
                    "errs": [o.error for o in outcomes],
                    "delays": [delays[o.target.delivery_id] for o in outcomes],
                },
            )
        ).all()
        recovered = list({o.target.subscription_id for o in outcomes if o.succeeded and o.target.failing})
        if recovered:
            await session.execute(_HEALTHY, {"ids": recovered})
        failed = list({o.target.subscription_id for o in outcomes if not o.succeeded})
        if failed:
            await _failures(session, services, tenant_id, failed)
    retries: list[tuple[uuid.UUID, int]] = []
    for delivery_id, status in moved:
        delay = delays.get(delivery_id)
        if status == "pending" and delay is not None:
            retries.append((delivery_id, delay))
    return retries


async def _failures(
    session: AsyncSession, services: sdk.Services, tenant_id: uuid.UUID, subscriptions: list[uuid.UUID]
) -> None:
    """Start (or continue) the subscriptions' failure streaks; disable those failing for too long."""
    await session.execute(_FAILING, {"ids": subscriptions})
    settings: s.WebhookSettings = await services.settings(tenant_id)
    changes = services.changes.by(sdk.Actor.system("webhooks"), tenant_id)
    for subscription_id in subscriptions:
        await service.disable_failing(session, changes, subscription_id, settings.disable_after_days)


class GroupCommit:
    """Outcomes that finish while a recording transaction of the same tenant is under way wait
    for the next one, which records them all: under load, one transaction logs many attempts.
    Each caller still returns only once its own outcomes are committed."""

    def __init__(self) -> None:
        self._waiting: dict[uuid.UUID, list[tuple[list[Outcome], asyncio.Future[list[tuple[uuid.UUID, int]]]]]] = {}
        self._busy: set[uuid.UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(
        self, services: sdk.Services, tenant_id: uuid.UUID, outcomes: Sequence[Outcome]
    ) -> list[tuple[uuid.UUID, int]]:
        """:func:`record`, shared with whatever else is waiting."""
        if not outcomes:
            return []
        future: asyncio.Future[list[tuple[uuid.UUID, int]]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant_id, []).append((list(outcomes), future))
        if tenant_id not in self._busy:
            self._busy.add(tenant_id)
            task = asyncio.create_task(self._drain(services, tenant_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, services: sdk.Services, tenant_id: uuid.UUID) -> None:
        try:
            while batch := self._waiting.pop(tenant_id, None):
                try:
                    retries = dict(await record(services, tenant_id, [o for outs, _ in batch for o in outs]))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for outs, future in batch:
                    if not future.done():
                        future.set_result([
                            (o.target.delivery_id, retries[o.target.delivery_id])
                            for o in outs if o.target.delivery_id in retries
                        ])
        finally:
            self._busy.discard(tenant_id)


_COMMITS: weakref.WeakKeyDictionary[sdk.EgressClient, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit(services: sdk.Services) -> GroupCommit:
    """The process's :class:`GroupCommit` (one per running platform, whose egress client names it)."""
    found = _COMMITS.get(services.http)
    if found is None:
        found = _COMMITS[services.http] = GroupCommit()
    return found


_SENDING: weakref.WeakKeyDictionary[sdk.EgressClient, dict[str, asyncio.Semaphore]] = weakref.WeakKeyDictionary()


def _sending(services: sdk.Services, url: str) -> asyncio.Semaphore:
    """The process's bound on first attempts in flight to ``url``'s host (see
    :data:`SEND_CONCURRENCY`); a slow receiver holds only its own turns."""
    hosts = _SENDING.get(services.http)
    if hosts is None:
        hosts = _SENDING[services.http] = {}
    host = urlsplit(url).netloc.lower()
    found = hosts.get(host)
    if found is None:
        if len(hosts) >= 10_000:  # forget idle hosts rather than grow without bound
            for name in [name for name, held in hosts.items() if not held.locked()]:
                del hosts[name]
        found = hosts[host] = asyncio.Semaphore(SEND_CONCURRENCY)
    return found


async def enqueue_attempts(services: sdk.Services, tenant_id: uuid.UUID, due: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Wake a worker for each delivery when it is due; with Redis away, the sweeper will."""
    for delivery_id, delay in due:
        try:
            await services.jobs.enqueue(
                "attempt", tenant_id=tenant_id, payload={"delivery_id": str(delivery_id)}, delay=delay or None
            )
        except sdk.Problem:
            log.warning("could not enqueue webhook delivery %s; the sweeper will", delivery_id)
            return


# -- the first attempt, from the event ------------------------------------------------------------

_SUBSCRIBED = text(
    "select id, url, event_types, filter, secret_version, previous_secret_version, "
    "coalesce(previous_secret_until > now(), false) as rotating, failing_since is not null as failing "
    "from webhooks_subscriptions where enabled"
)
_STORE_AND_DELIVER = text(
    # The events' messages and their deliveries in one round trip (the foreign key is checked at
    # the end of the statement, when the message rows are there). Deliveries start claimed:
    # attempt 1 is ours. An event no subscription wants is stored all the same (for replays).
    "with message as (insert into webhooks_messages (tenant_id, id, event_type, occurred_at, body) "
    "select :t, m.id, m.e, m.o, m.b from unnest(cast(:mids as uuid[]), cast(:mes as text[]), "
    "cast(:mos as timestamptz[]), cast(:mbs as text[])) as m(id, e, o, b) on conflict do nothing) "
    "insert into webhooks_deliveries (tenant_id, id, subscription_id, message_id, event_type, origin, status, "
    "attempts, lease_until) select :t, v.id, v.sub, v.m, v.e, '', 'running', 1, "
    "now() + make_interval(secs => :lease) from unnest(cast(:ids as uuid[]), cast(:subs as uuid[]), "
    "cast(:dms as uuid[]), cast(:des as text[])) as v(id, sub, m, e) "
    "on conflict do nothing returning id, subscription_id, message_id"
)
SEND_CONCURRENCY = 8
"""First attempts in flight at once per worker process and receiving host. Measured with
bench/webhook_deliveries.py on the egress client's aiohttp pool, where more connections no longer
cost CPU at each request: 8 took less CPU per delivery in the worker than 4 (0.7-0.9 ms against
1.0 ms) and 16 no less than 8. A distant receiver (100 ms away) gets about 80 first attempts a
second per worker process."""


async def _secrets(
    services: sdk.Services, session: AsyncSession, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
    version: int, previous: int | None, rotating: bool,
) -> tuple[str, ...]:
    """The live secrets, newest first; none when the current one does not open (the attempt then
    fails without a call: an unsigned delivery would be worse)."""
    names = [service.secret_name(subscription_id, version)]
    if rotating and previous is not None:
        names.append(service.secret_name(subscription_id, previous))
    opened = []
    for name in names:
        try:
            opened.append(await services.vault.open(tenant_id, name, session=session))
        except sdk.Problem:
            log.warning("webhook secret %s of tenant %s does not open", name, tenant_id)
            if not opened:
                return ()
    return tuple(opened)


async def send_all(services: sdk.Services, targets: Sequence[Target]) -> list[Outcome]:
    """Send every target, at most :data:`SEND_CONCURRENCY` at once per receiving host (counting
    the process's other batches, through :func:`_sending`). Each host gets that many runners taking
    its targets in turn, rather than one task per target waiting on the host's semaphore: the same
    bound for fewer tasks and waiters per delivery."""
    queues: dict[str, list[int]] = {}
    for index, target in enumerate(targets):
        queues.setdefault(target.url, []).append(index)
    outcomes: list[Outcome | None] = [None] * len(targets)

    async def runner(indexes: list[int]) -> None:
        while indexes:
            index = indexes.pop()
            target = targets[index]
            async with _sending(services, target.url):
                outcomes[index] = await send(services.http, target)

    runners = [
        runner(indexes) for indexes in _by_host(queues).values()
        for _ in range(min(SEND_CONCURRENCY, len(indexes)))
    ]
    await asyncio.gather(*runners)
    return [outcome for outcome in outcomes if outcome is not None]


def _by_host(queues: dict[str, list[int]]) -> dict[str, list[int]]:
    """Target indexes per receiving host (as :func:`_sending` names it), last first."""
    hosts: dict[str, list[int]] = {}
    for url, indexes in queues.items():
        hosts.setdefault(urlsplit(url).netloc.lower(), []).extend(indexes)
    for indexes in hosts.values():
        indexes.sort(reverse=True)  # pop() takes them in the order they came
    return hosts


async def fan_out(ctx: sdk.EventContext) -> None:
    """Store the event and deliver it to the tenant's matching subscriptions (see the module)."""
    await fan_out_many([ctx])


async def fan_out_many(contexts: Sequence[sdk.EventContext]) -> None:
    """:func:`fan_out` for several events of one tenant (the kernel's batch of deliveries): one
    transaction stores every message and delivery, the first attempts go out together and are
    logged together."""
    contexts = [ctx for ctx in contexts if ctx.event_id is not None]
    if not contexts:
        return
    services, tenant_id = contexts[0].services, contexts[0].tenant_id
    assert all(ctx.tenant_id == tenant_id for ctx in contexts)
    bodies: dict[uuid.UUID, str] = {}
    params: dict[str, list[Any]] = {key: [] for key in ("mids", "mes", "mos", "mbs", "ids", "subs", "dms", "des")}
    targets: list[Target] = []
    async with services.data.tenant(tenant_id) as session:
        subscribed = (await session.execute(_SUBSCRIBED)).all()
        for ctx in contexts:
            assert ctx.event_id is not None
            occurred = occurred_at(ctx.event_id)
            body = bodies[ctx.event_id] = message_body(ctx.event, occurred, ctx.payload)
            for key, value in (("mids", ctx.event_id), ("mes", ctx.event), ("mos", occurred), ("mbs", body)):
                params[key].append(value)
            for row in subscribed:
                if service.matches(row.event_types, ctx.event) and service.passes_filter(row.filter, ctx.payload):
                    for key, value in (("ids", sdk.uuid7()), ("subs", row.id), ("dms", ctx.event_id),
                                       ("des", ctx.event)):
                        params[key].append(value)
        created = (
            await session.execute(_STORE_AND_DELIVER, {"t": tenant_id, "lease": LEASE_SECONDS, **params})
        ).all()
        rows = {row.id: row for row in subscribed}
        secrets: dict[uuid.UUID, tuple[str, ...]] = {}
        for delivery_id, subscription_id, event_id in created:
            row = rows[subscription_id]
            if subscription_id not in secrets:
                secrets[subscription_id] = await _secrets(
                    services, session, tenant_id, row.id, row.secret_version, row.previous_secret_version,
                    row.rotating,
                )
            targets.append(Target(
                delivery_id, row.id, 1, 0, row.url, message_id(event_id), bodies[event_id],
                secrets[subscription_id], row.failing,
            ))
    if not targets:
        return
    outcomes = await send_all(services, targets)
    retries = await group_commit(services).record(services, tenant_id, outcomes)
    await enqueue_attempts(services, tenant_id, retries)


# -- later attempts, from jobs --------------------------------------------------------------------

_CLAIM = text(
    "update webhooks_deliveries set status = 'running', attempts = attempts + 1, "
    "lease_until = now() + make_interval(secs => :lease) "
    "where id = (select id from webhooks_deliveries where id = :id and ((status = 'pending' and "
    "next_attempt_at <= now() + interval '1 second') or (status = 'running' and lease_until < now())) "
    "for update skip locked) returning attempts, step, subscription_id, message_id"
)
_TARGET = text(
    "select s.url, s.enabled, s.secret_version, s.previous_secret_version, "
    "coalesce(s.previous_secret_until > now(), false) as rotating, s.failing_since is not null as failing, m.body "
    "from webhooks_subscriptions s, webhooks_messages m where s.id = :s and m.id = :m"
)
_ABANDON = text(
    "update webhooks_deliveries set status = 'failed', lease_until = null, last_error = :e, finished_at = now() "
    "where id = :id"
)


async def claim(services: sdk.Services, tenant_id: uuid.UUID, delivery_id: uuid.UUID) -> Target | None:
    """Take the delivery for one attempt if it is due (or its lease expired); ``None`` otherwise.
    A delivery of a disabled subscription is closed as ``failed`` instead."""
    async with services.data.tenant(tenant_id) as session:
        claimed = (await session.execute(_CLAIM, {"id": delivery_id, "lease": LEASE_SECONDS})).first()
        if claimed is None:
            return None
        row = (await session.execute(_TARGET, {"s": claimed.subscription_id, "m": claimed.message_id})).first()
        if row is None or not row.enabled:
            await session.execute(_ABANDON, {"id": delivery_id, "e": "the subscription is disabled"})
            return None
        secrets = await _secrets(
            services, session, tenant_id, claimed.subscription_id, row.secret_version, row.previous_secret_version,
            row.rotating,
        )
    return Target(
        delivery_id, claimed.subscription_id, claimed.attempts, claimed.step, row.url,
        message_id(claimed.message_id), row.body, secrets, row.failing,
    )


async def run_attempt(ctx: sdk.JobContext) -> None:
    """``webhooks.attempt``: one attempt of the delivery named in the payload, if it is due."""
    assert ctx.tenant_id is not None
    delivery_id = uuid.UUID(str(ctx.payload["delivery_id"]))
    target = await claim(ctx.services, ctx.tenant_id, delivery_id)
    if target is None:
        return
    outcome = await send(ctx.services.http, target)
    retries = await group_commit(ctx.services).record(ctx.services, ctx.tenant_id, [outcome])
    await enqueue_attempts(ctx.services, ctx.tenant_id, retries)


_PURGE = text(
    "delete from webhooks_messages where id in (select m.id from webhooks_messages m "
    "where m.occurred_at < now() - make_interval(days => :days) and not exists (select from webhooks_deliveries d "
    "where d.message_id = m.id and d.status in ('pending', 'running')) limit :n)"
)
_DUE = text(
    "select id from webhooks_deliveries where (status = 'pending' and "
    "next_attempt_at <= now() - make_interval(secs => :grace)) or (status = 'running' and lease_until < now()) "
    "order by next_attempt_at limit :n"
)


async def sweep(ctx: sdk.JobContext) -> None:
    """``webhooks.sweep`` (every minute): re-enqueue every tenant's deliveries that are due but were
    left behind (a flushed Redis, a killed worker whose lease expired), and forget events older
    than the tenant's ``retention_days`` (a batch per run)."""
    services = ctx.services
    grace = float(ctx.payload.get("grace_seconds", SWEEP_GRACE_SECONDS))
    offered = 0
    for tenant_id in await services.tenants.enabled_ids():
        settings: s.WebhookSettings = await services.settings(tenant_id)
        async with services.data.tenant(tenant_id) as session:
            due = (await session.execute(_DUE, {"grace": grace, "n": SWEEP_BATCH})).scalars().all()
            await session.execute(_PURGE, {"days": settings.retention_days, "n": SWEEP_BATCH})
        await enqueue_attempts(services, tenant_id, [(delivery_id, 0) for delivery_id in due])
        offered += len(due)
    if offered:
        log.info("webhooks sweep offered %d delivery(ies) again", offered)
