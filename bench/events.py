"""Kernel events per second through the delivery path, with N ``"*"`` handlers that do nothing.

On embedded PostgreSQL and Redis (a temporary data directory), with the ``webhooks`` plugin
loaded only as a host: its event handlers are replaced by ``--handlers`` no-op ``"*"`` handlers
(each a delivery per event), or by none for the baseline. Each run and each handler count:

1. starts the job worker in this process (as ``businessos worker`` runs it: outbox dispatcher,
   delivery batches, sweeper), waits until it is ready, then
2. records ``--events`` events in the outbox (batches of 200, inside the clock) and times until
   every delivery is ``succeeded`` (for the baseline: until every event is dispatched).

The baseline, with no handler, is what the outbox and its dispatcher cost alone; the ratio says
how much of that rate is left once every event has handlers to run. Counts alternate within a
run; medians over the runs are printed with the CPU time this process spent per event (steadier
than rates on a busy machine; PostgreSQL and Redis run in other processes).

    python bench/events.py [--events 2000] [--runs 3] [--handlers 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.events.outbox import emit_many
from kernel.jobs.worker import build_worker
from kernel.plugins.contract import EventContext, EventHandler
from kernel.runtime import open_kernel
from kernel.tenants.schemas import TenantCreate
from kernel.testing import running_servers, settings_for

EVENT = "kernel.api_key.created"
BATCH = 200
PAYLOAD = {"api_key_id": str(uuid.uuid4()), "name": "bench", "prefix": "bos_abcd", "role": "viewer"}


async def _noop(ctx: EventContext) -> None:
    return None


def _plugins(settings: Any, handlers: int) -> Any:
    plugins = load_app_plugins(settings.plugins_allowlist)
    record = plugins.get("webhooks")
    assert record is not None
    record.event_handlers = [EventHandler("*", _noop, name=f"noop{n}") for n in range(handlers)]
    return plugins


async def _count(kernel: Any, tenant_id: uuid.UUID, sql: str) -> int:
    async with kernel.db.tenant(tenant_id) as session:
        return int((await session.execute(text(sql))).scalar_one())


async def _timed(kernel: Any, settings: Any, plugins: Any, redis_url: str, events: int, handlers: int
                 ) -> tuple[float, float]:
    """Seconds and CPU seconds until ``events`` new events of a fresh tenant are done."""
    tenant = await kernel.tenants.create(TenantCreate(name="Bench", slug=f"e-{uuid.uuid4().hex[:8]}"))
    await kernel.modules.enable(tenant.id, "webhooks")
    worker = build_worker(settings, plugins, redis_url, cron_jobs=False)
    task = asyncio.create_task(worker.main())
    while "kernel" not in worker.ctx:  # noqa: ASYNC110 - arq offers no ready event
        await asyncio.sleep(0.05)
    before = await _count(kernel, tenant.id, "select count(*) from events_outbox")
    if handlers:
        sql = "select count(*) from event_deliveries where status = 'succeeded' and event = 'kernel.api_key.created'"
        expected = events * handlers
    else:
        sql = "select count(*) from events_outbox where status = 'dispatched'"
        expected = events + before
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, events, BATCH):
        async with kernel.db.tenant(tenant.id) as session:
            await emit_many(session, tenant_id=tenant.id, events=[(EVENT, PAYLOAD)] * min(BATCH, events - start))
    while await _count(kernel, tenant.id, sql) < expected:  # noqa: ASYNC110 - polling the database
        await asyncio.sleep(0.02)
    elapsed, spent = time.perf_counter() - started, time.process_time() - cpu
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
    return elapsed, spent


async def run(events: int, runs: int, counts: list[int]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-events-"))
    rates: dict[int, list[float]] = {n: [] for n in [0, *counts]}
    cpus: dict[int, list[float]] = {n: [] for n in rates}
    try:
        with running_servers(data_dir / "servers") as (database_url, redis_url):
            settings = settings_for(database_url, redis_url, data_dir, BUSINESSOS_PLUGINS="webhooks",
                                    BUSINESSOS_LOG_LEVEL="WARNING")
            base_plugins = load_app_plugins(settings.plugins_allowlist)
            await migrate.upgrade(settings, database_url, base_plugins.migration_folders())
            async with open_kernel(settings, base_plugins) as kernel:
                for number in range(runs):
                    line = []
                    for handlers in rates:
                        elapsed, spent = await _timed(
                            kernel, settings, _plugins(settings, handlers), redis_url, events, handlers
                        )
                        rates[handlers].append(events / elapsed)
                        cpus[handlers].append(spent / events * 1000)
                        line.append(f"{handlers} handler(s) {events / elapsed:8.1f} events/s "
                                    f"({spent / events * 1000:.2f} ms CPU/event)")
                    print(f"run {number + 1}: " + "; ".join(line), flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    base = statistics.median(rates[0])
    print(f"median of {runs} runs, {events} events each; baseline (no handler: outbox and dispatch only) "
          f"{base:.1f} events/s, {statistics.median(cpus[0]):.2f} ms CPU/event")
    for handlers in counts:
        rate = statistics.median(rates[handlers])
        print(f"  {handlers} no-op \"*\" handler(s): {rate:.1f} events/s = {rate * handlers:.1f} deliveries/s "
              f"(ratio to baseline {rate / base:.2f}), {statistics.median(cpus[handlers]):.2f} ms CPU/event")


def main() -> None:
    parser = argparse.ArgumentParser(description="Kernel events per second with N no-op handlers")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--handlers", default="1,3", help="comma-separated handler counts")
    args = parser.parse_args()
    asyncio.run(run(args.events, args.runs, [int(n) for n in args.handlers.split(",") if int(n) > 0]))


if __name__ == "__main__":
    main()
