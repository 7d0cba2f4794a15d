"""The arq worker: runs the kernel's jobs with the same services the API uses.

arq delivers at least once, so every job here must be idempotent, and durable state belongs in
PostgreSQL; Redis only carries the queue.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import AsyncExitStack
from typing import Any

from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Worker, func

from kernel.context import Kernel
from kernel.events.outbox import JOB, OutboxDispatcher
from kernel.observability.metrics import instrument_worker
from kernel.plugins.contract import EventContext
from kernel.plugins.loader import PluginSet
from kernel.runtime import open_kernel
from kernel.settings import Settings

__all__ = ["QUEUE", "build_worker", "run_event_handlers", "sweep_ai_reservations"]

log = logging.getLogger("businessos.worker")

QUEUE = "businessos:jobs"
# arq's default of 0.5 s between polls is slow for event-driven work; 50 ms costs little.
POLL_DELAY = 0.05


async def run_event_handlers(
    ctx: dict[str, Any], tenant_id: str, event: str, payload: dict[str, Any], event_id: str | None = None
) -> int:
    """Run every handler of ``event`` whose plugin the tenant has enabled; returns how many ran."""
    kernel: Kernel = ctx["kernel"]
    tenant = uuid.UUID(tenant_id)
    ident = uuid.UUID(event_id) if event_id else None
    enabled = await kernel.modules.enabled(tenant)
    ran = 0
    for record in kernel.plugins.active():
        if record.name not in enabled:
            continue
        for handler in record.event_handlers:
            if handler.event == event:
                await handler.handler(
                    EventContext(
                        tenant_id=tenant, event=event, payload=payload, kernel=kernel,
                        services=kernel.services(record.name), event_id=ident,
                    )
                )
                ran += 1
    return ran


async def sweep_ai_reservations(ctx: dict[str, Any]) -> int:
    """Release AI budget reservations whose call outlived its expiry (its process died mid-call);
    idempotent. Returns how many were released."""
    kernel: Kernel = ctx["kernel"]
    released = await kernel.ai.budgets.sweep_expired()
    if released:
        log.warning("released %d expired AI budget reservation(s)", released)
    return released


def build_worker(
    settings: Settings,
    plugins: PluginSet,
    redis_url: str,
    *,
    burst: bool = False,
    queue: str = QUEUE,
    dispatch: bool = True,
) -> Worker:
    """An arq worker bound to ``redis_url``; the kernel's services open on start-up."""

    async def startup(ctx: dict[str, Any]) -> None:
        stack = AsyncExitStack()
        ctx["stack"] = stack
        kernel = ctx["kernel"] = await stack.enter_async_context(open_kernel(settings, plugins))
        if dispatch:
            dispatcher = OutboxDispatcher(kernel.db, ctx["redis"], queue)
            dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
        log.info("worker ready on queue %s", queue)

    async def shutdown(ctx: dict[str, Any]) -> None:
        stack: AsyncExitStack | None = ctx.get("stack")
        if stack is not None:
            await stack.aclose()

    worker = Worker(
        functions=[func(run_event_handlers, name=JOB)],  # type: ignore[arg-type]
        # Every minute; arq runs a cron job once per tick across all workers (unique job id).
        cron_jobs=[cron(sweep_ai_reservations, name="kernel.sweep_ai_reservations", second=17)],  # type: ignore[arg-type]
        queue_name=queue,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=POLL_DELAY,
        burst=burst,
        handle_signals=not burst,
    )
    instrument_worker(worker)  # jobs by name and outcome, for /metrics
    return worker
