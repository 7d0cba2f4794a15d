"""The arq worker: runs the kernel's jobs with the same services the API uses.

arq delivers at least once, so every job here must be idempotent, and durable state belongs in
PostgreSQL; Redis only carries the queue. :func:`build_worker` is one arq worker (tests drive it
directly); :class:`Supervisor` is what ``businessos worker`` runs: it opens the kernel once, runs
the outbox dispatcher and the delivery sweeper beside arq, and rebuilds the arq worker whenever
Redis drops it, so that neither a Redis nor a PostgreSQL outage ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import Retry, Worker, func
from redis.asyncio import ConnectionPool
from sqlalchemy.exc import SQLAlchemyError

from kernel.context import Kernel
from kernel.events.deliveries import BATCH_JOB, DELIVER_JOB, QUEUE, backoff
from kernel.events.loop import TROUBLE_INTERVAL, BackgroundLoop
from kernel.events.outbox import OutboxDispatcher
from kernel.jobs.facade import RUN_JOB
from kernel.jobs.schedules import Scheduler
from kernel.observability.logs import limit_repeats
from kernel.observability.metrics import instrument_worker
from kernel.plugins.contract import EventContext, JobContext, open_lifespan
from kernel.plugins.loader import PluginSet
from kernel.runtime import DatabaseNotReady, open_kernel
from kernel.settings import Settings

__all__ = [
    "QUEUE",
    "Supervisor",
    "build_worker",
    "deliver_event",
    "deliver_events",
    "run_event_handlers",
    "run_job",
    "sweep_ai_reservations",
]

log = logging.getLogger("businessos.worker")

LEGACY_EVENT_JOB = "kernel.run_event_handlers"
# arq's default of 0.5 s between polls is slow for event-driven work; 50 ms costs little.
POLL_DELAY = 0.05
# Seconds the supervisor waits before rebuilding a worker Redis dropped: doubling, capped.
RESTART_MIN, RESTART_MAX = 0.5, 5.0


_trouble = limit_repeats(log, TROUBLE_INTERVAL)


async def deliver_event(ctx: dict[str, Any], tenant_id: str, delivery_id: str) -> str:
    """Run one delivery (one handler of one event); see ``kernel.events.deliveries``.

    PostgreSQL unreachable: the delivery stays as it is in the database (pending, or running
    with a lease) and the sweeper offers it again; one warning per interval, not one per job.
    """
    kernel: Kernel = ctx["kernel"]
    try:
        return await kernel.deliveries.run(
            uuid.UUID(tenant_id), uuid.UUID(delivery_id), ctx["redis"], ctx["queue"]
        )
    except (SQLAlchemyError, OSError) as exc:
        log.warning("event deliveries wait for PostgreSQL (%s)", exc, extra={"repeat_key": "db"})
        return "postponed"


async def deliver_events(ctx: dict[str, Any], deliveries: list[str]) -> int:
    """Run a batch of deliveries, each ``<tenant id>:<delivery id>`` (see
    ``kernel.events.deliveries``); returns how many were claimed. PostgreSQL unreachable: as
    :func:`deliver_event`, the rows stay as they are and the sweeper offers them again."""
    kernel: Kernel = ctx["kernel"]
    pairs = []
    for item in deliveries:
        tenant_id, _, delivery_id = item.partition(":")
        pairs.append((uuid.UUID(tenant_id), uuid.UUID(delivery_id)))
    try:
        return len(await kernel.deliveries.run_many(pairs, ctx["redis"], ctx["queue"]))
    except (SQLAlchemyError, OSError) as exc:
        log.warning("event deliveries wait for PostgreSQL (%s)", exc, extra={"repeat_key": "db"})
        return 0


async def run_event_handlers(
    ctx: dict[str, Any], tenant_id: str, event: str, payload: dict[str, Any], event_id: str | None = None
) -> int:
    """Jobs of the dispatcher before deliveries existed (still queued during an upgrade): run
    every handler of ``event`` whose plugin the tenant has enabled, each on its own, without
    retries. Returns how many succeeded."""
    kernel: Kernel = ctx["kernel"]
    tenant = uuid.UUID(tenant_id)
    ident = uuid.UUID(event_id) if event_id else None
    enabled = await kernel.modules.enabled(tenant)
    ran = 0
    for record in kernel.plugins.active():
        if record.name not in enabled:
            continue
        for handler in record.event_handlers:
            if handler.event != event:
                continue
            try:
                await handler.handler(
                    EventContext(
                        tenant_id=tenant, event=event, payload=payload,
                        services=kernel.services(record.name), event_id=ident,
                    )
                )
                ran += 1
            except Exception:
                log.exception("event handler of %s failed on %s", record.name, event)
    return ran


async def run_job(ctx: dict[str, Any], name: str, tenant_id: str | None, payload: dict[str, Any]) -> str:
    """Run a plugin's job (``sdk.Jobs.enqueue`` or a schedule). An exception is retried with
    backoff until the job's ``max_attempts``; a job for a tenant that has not enabled the plugin,
    or that no plugin here declares, is skipped with a warning."""
    kernel: Kernel = ctx["kernel"]
    plugin = name.split(".", 1)[0]
    record = kernel.plugins.get(plugin)
    spec = next((job for job in record.jobs if job.name == name), None) if record and record.active else None
    if spec is None:
        log.warning("no plugin here declares job %s; skipped", name)
        return "unknown"
    tenant = uuid.UUID(tenant_id) if tenant_id else None
    if tenant is not None and plugin not in await kernel.modules.enabled(tenant):
        log.warning("job %s skipped: the tenant %s has not enabled %s", name, tenant, plugin)
        return "skipped"
    attempt = int(ctx.get("job_try") or 1)
    context = JobContext(
        name=name, tenant_id=tenant, payload=payload, services=kernel.services(plugin),
        job_id=str(ctx.get("job_id")), attempt=attempt,
    )
    try:
        async with asyncio.timeout(spec.timeout):
            await spec.run(context)
    except Exception as exc:
        if attempt < spec.max_attempts:
            log.warning("job %s failed (attempt %d of %d): %s", name, attempt, spec.max_attempts, type(exc).__name__)
            raise Retry(defer=backoff(attempt)) from exc
        log.exception("job %s failed for good after %d attempts", name, attempt)
        raise
    return "done"


async def sweep_ai_reservations(ctx: dict[str, Any]) -> int:
    """Release AI budget reservations whose call outlived its expiry (its process died mid-call);
    idempotent. Returns how many were released."""
    kernel: Kernel = ctx["kernel"]
    released = await kernel.ai.budgets.sweep_expired()
    if released:
        log.warning("released %d expired AI budget reservation(s)", released)
    return released


async def refresh_connections(ctx: dict[str, Any]) -> int:
    """Refresh OAuth 2.0 connections whose token expires within ten minutes (a refused refresh
    marks one broken and emits ``kernel.connection.broken``); idempotent."""
    kernel: Kernel = ctx["kernel"]
    return await kernel.connections.refresh_expiring()


class Sweeper(BackgroundLoop):
    """Every ``interval`` seconds, re-enqueue deliveries that are due but on no queue."""

    name = "delivery sweep"

    def __init__(self, kernel: Kernel, queue: ArqRedis, queue_name: str, interval: float) -> None:
        super().__init__(log, interval)
        self.kernel = kernel
        self.queue = queue
        self.queue_name = queue_name

    async def step(self) -> bool:
        await self.kernel.deliveries.sweep(self.queue, self.queue_name, grace=self.interval)
        return False


def _arq_pool(redis_url: str) -> ArqRedis:
    """An arq client that connects lazily (no ping): it can be made while Redis is down, and
    redis-py reconnects on the next command once Redis is back."""
    return ArqRedis(
        connection_pool=ConnectionPool.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    )


async def _start_background(stack: AsyncExitStack, kernel: Kernel, queue: ArqRedis, queue_name: str) -> None:
    dispatcher = OutboxDispatcher(kernel.deliveries, queue, queue_name)
    dispatcher.start()
    stack.push_async_callback(dispatcher.stop)
    sweeper = Sweeper(kernel, queue, queue_name, float(kernel.settings.event_sweep_seconds))
    sweeper.start()
    stack.push_async_callback(sweeper.stop)
    scheduler = Scheduler(kernel.plugins, queue, queue_name)
    if scheduler.schedules:
        scheduler.start()
        stack.push_async_callback(scheduler.stop)


def _longest_job(plugins: PluginSet) -> float:
    return max([300.0, *(job.timeout for record in plugins.active() for job in record.jobs)])


async def _enter_lifespans(stack: AsyncExitStack, plugins: PluginSet, kernel: Kernel) -> None:
    """The plugins' lifespans, as in the API process."""
    for record in plugins.active():
        if record.lifespan is not None:
            await stack.enter_async_context(open_lifespan(record.lifespan, kernel.services(record.name)))


def build_worker(
    settings: Settings,
    plugins: PluginSet,
    redis_url: str,
    *,
    burst: bool = False,
    queue: str = QUEUE,
    dispatch: bool = True,
    cron_jobs: bool = True,
    kernel: Kernel | None = None,
) -> Worker:
    """An arq worker bound to ``redis_url``.

    Without ``kernel`` the kernel's services open on start-up and close on shut-down, and
    (``dispatch``) the outbox dispatcher, the delivery sweeper and the scheduler run beside it; the
    :class:`Supervisor` passes its own ``kernel`` and runs those itself. ``cron_jobs=False``
    leaves the kernel's periodic jobs out (tests that count jobs).
    """

    async def startup(ctx: dict[str, Any]) -> None:
        if "kernel" in ctx:
            return
        stack = AsyncExitStack()
        ctx["stack"] = stack
        opened = ctx["kernel"] = await stack.enter_async_context(open_kernel(settings, plugins))
        await _enter_lifespans(stack, plugins, opened)
        if dispatch:
            await _start_background(stack, opened, ctx["redis"], queue)
        log.info("worker ready on queue %s", queue)

    async def shutdown(ctx: dict[str, Any]) -> None:
        stack: AsyncExitStack | None = ctx.get("stack")
        if stack is not None:
            await stack.aclose()

    ctx: dict[str, Any] = {"queue": queue}
    redis_settings = RedisSettings.from_dsn(redis_url)
    if kernel is not None:
        ctx["kernel"] = kernel
        redis_settings.conn_retries = 0  # the Supervisor retries, and logs it once per interval
    worker = Worker(
        functions=[
            # Results are not kept, so a job id is free again once its job ends: the next attempt
            # or a redelivery can be enqueued, a copy of a queued or running one cannot. The
            # delivery's lease, not arq's retries, decides when a stuck one runs again.
            func(deliver_event, name=DELIVER_JOB, keep_result=0, max_tries=3,  # type: ignore[arg-type]
                 timeout=settings.event_lease_seconds),
            func(deliver_events, name=BATCH_JOB, keep_result=0, max_tries=3,  # type: ignore[arg-type]
                 timeout=settings.event_lease_seconds),
            func(run_event_handlers, name=LEGACY_EVENT_JOB),  # type: ignore[arg-type]
            # The job's own max_attempts and timeout decide; arq's limits only stand behind them.
            func(run_job, name=RUN_JOB, max_tries=1000, timeout=_longest_job(plugins) + 30),  # type: ignore[arg-type]
        ],
        # Every minute; arq runs a cron job once per tick across all workers (unique job id).
        cron_jobs=[
            cron(sweep_ai_reservations, name="kernel.sweep_ai_reservations", second=17),  # type: ignore[arg-type]
            cron(refresh_connections, name="kernel.refresh_connections", second=41),  # type: ignore[arg-type]
        ]
        if cron_jobs
        else None,
        queue_name=queue,
        redis_settings=redis_settings,
        ctx=ctx,
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=POLL_DELAY,
        burst=burst,
        handle_signals=False if kernel is not None else not burst,
    )
    instrument_worker(worker)  # jobs by name and outcome, for /metrics
    return worker


class Supervisor:
    """Runs the worker until :meth:`stop`, through Redis and PostgreSQL outages.

    The kernel opens once (retried with backoff while PostgreSQL is unreachable), then the plugin
    lifespans are entered, the dispatcher and the sweeper start, and an arq worker runs; when
    Redis drops that worker, it is closed and a new one built after a backoff. Outages are logged
    once per interval, not once per poll. PostgreSQL failures inside jobs are the jobs' business:
    a delivery that cannot be recorded keeps its lease and is taken up again by the sweeper.
    """

    def __init__(
        self,
        settings: Settings,
        plugins: PluginSet,
        redis_url: str,
        *,
        queue: str = QUEUE,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.redis_url = redis_url
        self.queue = queue
        self._stopping = asyncio.Event()
        self._worker: Worker | None = None

    def stop(self) -> None:
        """Ask the worker to finish (from a signal handler)."""
        self._stopping.set()
        if self._worker is not None and self._worker.main_task is not None:
            self._worker.main_task.cancel()

    async def _retrying(self, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        delay = RESTART_MIN
        while not self._stopping.is_set():
            try:
                return await step()
            except (asyncio.CancelledError, DatabaseNotReady):
                raise  # a schema behind the code is no outage: waiting would not mend it
            except Exception as exc:  # an outage: wait and try again
                log.warning("%s failed (%s); retrying", what, exc, extra={"repeat_key": what})
            await self._pause(delay)
            delay = min(delay * 2, RESTART_MAX)
        return None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> None:
        async with AsyncExitStack() as stack:

            async def open_() -> Kernel:
                kernel: Kernel = await stack.enter_async_context(open_kernel(self.settings, self.plugins))
                return kernel

            kernel = await self._retrying("opening the kernel", open_)
            if kernel is None:
                return
            if _trouble.recovered("opening the kernel"):
                log.warning("kernel open")
            await _enter_lifespans(stack, self.plugins, kernel)
            queue = _arq_pool(self.redis_url)
            stack.push_async_callback(queue.aclose)
            await _start_background(stack, kernel, queue, self.queue)
            log.info("worker ready on queue %s", self.queue)
            await self._run_workers(kernel)

    async def _close(self, worker: Worker) -> None:
        """Close a worker Redis dropped. Its jobs in hand get a while to finish; then arq cancels
        the rest (they run again once their lease expires) and waits for them, which raises the
        cancellation: only a cancellation of the supervisor itself goes on."""
        self._worker = None
        in_hand = [task for task in worker.tasks.values() if not task.done()]
        if in_hand:  # let them finish (they need PostgreSQL, not Redis) rather than cancel them
            await asyncio.wait(in_hand, timeout=min(self.settings.event_lease_seconds / 2, RESTART_MAX))
        try:
            await worker.close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception as exc:
            log.debug("closing the job worker: %s", exc)

    async def _run_workers(self, kernel: Kernel) -> None:
        delay = RESTART_MIN
        while not self._stopping.is_set():
            worker = self._worker = build_worker(
                self.settings, self.plugins, self.redis_url, queue=self.queue, kernel=kernel
            )
            started = time.monotonic()
            try:
                await worker.async_run()
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    break
                raise
            except Exception as exc:  # Redis went away: rebuild the worker
                log.warning("job worker lost Redis (%s); reconnecting", exc, extra={"repeat_key": "redis"})
            finally:
                await self._close(worker)
            if time.monotonic() - started > RESTART_MAX * 4:
                delay = RESTART_MIN  # it had been running fine: this is a new outage
            await self._pause(delay)
            delay = min(delay * 2, RESTART_MAX)
