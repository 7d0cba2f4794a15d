"""``sdk.Jobs``: how plugin code enqueues its background jobs.

Jobs go straight onto the arq queue in Redis; they are not written to PostgreSQL. A job is
therefore as durable as the queue: a Redis flush loses the jobs queued in it. Work that must
survive that belongs in an event (``sdk.emit`` in the change's transaction; event deliveries are
kept in PostgreSQL and re-enqueued by the worker's sweeper) whose handler enqueues the job or
does the work itself.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from kernel.errors import ServiceUnavailable
from kernel.events.deliveries import QUEUE

if TYPE_CHECKING:
    from kernel.context import Kernel

__all__ = ["RUN_JOB", "Jobs", "enqueue_job"]

RUN_JOB = "kernel.run_job"


async def enqueue_job(
    queue: ArqRedis,
    queue_name: str,
    name: str,
    *,
    tenant_id: uuid.UUID | None,
    payload: dict[str, Any],
    at: datetime | None = None,
    delay: float | None = None,
    job_id: str | None = None,
) -> str | None:
    """Enqueue job ``name``; the job id, or ``None`` when arq already holds that job id."""
    job = await queue.enqueue_job(
        RUN_JOB, name, str(tenant_id) if tenant_id else None, payload,
        _job_id=job_id, _queue_name=queue_name, _defer_until=at, _defer_by=delay,
    )
    return job.job_id if job is not None else None


class Jobs:
    """The plugin's background jobs (declared with ``businessos_jobs``)."""

    def __init__(self, kernel: Kernel, plugin: str) -> None:
        self._kernel = kernel
        self._plugin = plugin

    async def enqueue(
        self,
        name: str,
        *,
        tenant_id: uuid.UUID | None = None,
        payload: dict[str, Any] | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        dedup_key: str | None = None,
    ) -> str | None:
        """Queue job ``name`` (``<plugin>.<job>`` or just ``<job>``) for ``tenant_id``, now, after
        ``delay`` seconds or ``at`` a time (aware datetime). With ``dedup_key``, a second enqueue
        with the same name, tenant and key is refused while the first is queued, running, or
        finished less than an hour ago; the answer is then ``None``, otherwise the job id.
        ``payload`` must be JSON-like. Raises ``ValueError`` for a job the plugin did not declare,
        and the 503 problem ``ServiceUnavailable`` while Redis is unreachable."""
        full = name if name.startswith(self._plugin + ".") else f"{self._plugin}.{name}"
        record = self._kernel.plugins.get(self._plugin)
        if record is None or full not in {job.name for job in record.jobs}:
            raise ValueError(f"{self._plugin} declares no job {full!r}")
        if delay is not None and at is not None:
            raise ValueError("give delay or at, not both")
        if at is not None and at.tzinfo is None:
            raise ValueError("at must be an aware datetime")
        job_id = f"job:{full}:{tenant_id or '-'}:{dedup_key}" if dedup_key is not None else None
        queue = ArqRedis(connection_pool=self._kernel.redis.connection_pool)
        try:
            return await enqueue_job(
                queue, QUEUE, full, tenant_id=tenant_id, payload=payload or {},
                at=at.astimezone(UTC) if at else None, delay=delay, job_id=job_id,
            )
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("the job queue is unreachable; try again shortly") from exc
