"""Plugin schedules: cron ticks in a time zone, each enqueued once however many workers run.

Every worker runs a :class:`Scheduler`. Once a second it walks each schedule's ticks (computed
by ``cronsim`` in the schedule's time zone, so DST changes neither skip nor double a tick) from
where it last looked up to now, and enqueues the schedule's job for each tick with the job id
``schedule:<name>:<tick in UTC>``. arq refuses a job id it already holds (queued, running, or a
result kept for an hour), so when several workers offer the same tick, one job runs. A worker
looks back at most :data:`LOOKBACK` on start, so a tick missed while no worker ran is caught up
once, and older ones are not replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from arq.connections import ArqRedis
from cronsim import CronSim, CronSimError

from kernel.events.loop import BackgroundLoop
from kernel.jobs.facade import enqueue_job
from kernel.plugins.contract import Schedule
from kernel.plugins.loader import PluginSet

__all__ = ["LOOKBACK", "Scheduler", "check_schedule", "ticks"]

log = logging.getLogger("businessos.worker")

LOOKBACK = timedelta(minutes=5)


def check_schedule(schedule: Schedule, jobs: set[str]) -> str | None:
    """What is wrong with ``schedule`` (``None``: nothing)."""
    if schedule.job not in jobs:
        return f"job {schedule.job!r} is not one of the plugin's jobs"
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {schedule.timezone!r}"
    try:
        CronSim(schedule.cron, datetime.now(zone))
    except CronSimError as exc:
        return f"cron expression {schedule.cron!r}: {exc}"
    return None


def ticks(schedule: Schedule, after: datetime, until: datetime) -> Iterator[datetime]:
    """The schedule's ticks in ``(after, until]``, in UTC."""
    zone = ZoneInfo(schedule.timezone)
    for tick in CronSim(schedule.cron, after.astimezone(zone)):
        moment = tick.astimezone(UTC)
        if moment > until:
            return
        if moment > after:
            yield moment


class Scheduler(BackgroundLoop):
    """Enqueues the active plugins' schedules' ticks (see the module's docstring)."""

    name = "scheduler"

    def __init__(self, plugins: PluginSet, queue: ArqRedis, queue_name: str, interval: float = 1.0) -> None:
        super().__init__(log, interval)
        self.queue = queue
        self.queue_name = queue_name
        self.schedules = [s for record in plugins.active() for s in record.schedules]
        self.since = datetime.now(UTC) - LOOKBACK

    async def step(self) -> bool:
        now = datetime.now(UTC)
        for schedule in self.schedules:
            for tick in ticks(schedule, self.since, now):
                await enqueue_job(
                    self.queue, self.queue_name, schedule.job, tenant_id=None, payload=schedule.payload,
                    at=tick, job_id=f"schedule:{schedule.name}:{tick.isoformat()}",
                )
        # Only once every tick is offered: after an outage, the ticks it hid are offered again.
        self.since = now
        return False
