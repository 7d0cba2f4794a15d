"""Plugin jobs and schedules from the outside: a route enqueues a job through the facade (with a
dedup key), the worker runs it with the plugin's facade and retries a failure; two workers run
each schedule tick once; the plugin's lifespan runs in the worker; DST-correct ticks."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from sqlalchemy import text

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.events.deliveries import QUEUE
from kernel.jobs.schedules import ticks
from kernel.jobs.worker import build_worker
from kernel.plugins.contract import Schedule
from kernel.settings import Settings
from tests.conftest import eventually, new_tenant, open_client, other_process
from tests.plugin_factory import FakePlugin, installed, table_plugin, unique


def jobs_plugin(name: str, log: Path) -> FakePlugin:
    body = f'''
    import uuid
    from contextlib import asynccontextmanager

    from sqlalchemy import Text, select
    from sqlalchemy.orm import Mapped, mapped_column

    Base = sdk.declarative_base()
    LOG = Path({str(log)!r})

    class Row(sdk.TenantScoped, Base):
        __tablename__ = "{name}_rows"
        note: Mapped[str] = mapped_column(Text)

    async def record(ctx: sdk.JobContext) -> None:
        note = ctx.payload["note"]
        if note.startswith("flaky") and ctx.attempt == 1:
            raise RuntimeError("fails once")
        assert ctx.tenant_id is not None
        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            ident = uuid.uuid5(uuid.NAMESPACE_URL, ctx.job_id)  # idempotent per job
            if (await session.execute(select(Row).where(Row.id == ident))).first() is None:
                session.add(Row(tenant_id=ctx.tenant_id, id=ident, note=f"{{note}}:{{ctx.attempt}}"))

    async def tick(ctx: sdk.JobContext) -> None:
        with LOG.open("a") as out:
            out.write(f"tick {{ctx.job_id}}\\n")

    @asynccontextmanager
    async def lifespan():
        with LOG.open("a") as out:
            out.write("lifespan started\\n")
        yield

    @post("/api/{name}/work/{{note:str}}", opt={{"permission": sdk.AUTHENTICATED}})
    async def work(note: str, tenant: sdk.Tenant, services: sdk.Services) -> dict:
        job_id = await services.jobs.enqueue("record", tenant_id=tenant.id, payload={{"note": note}}, dedup_key=note)
        return {{"job_id": job_id}}

    @sdk.hookimpl
    def businessos_routes():
        return [work]

    @sdk.hookimpl
    def businessos_lifespan():
        return lifespan

    @sdk.hookimpl
    def businessos_jobs():
        return [sdk.JobSpec("{name}.record", record, max_attempts=3), sdk.JobSpec("{name}.tick", tick)]

    @sdk.hookimpl
    def businessos_schedules():
        return [sdk.Schedule("{name}.every_minute", "* * * * *", "{name}.tick", timezone="Europe/Berlin")]
    '''
    return table_plugin(name, body, f"{name}_rows", 'sa.Column("note", sa.Text(), nullable=False)')


async def test_plugin_jobs_run_once_per_dedup_key_with_retries_and_schedules_tick_once(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("job")
    log = tmp_path / "jobs.log"
    log.touch()
    with installed(tmp_path, jobs_plugin(name, log)):
        plugins = load_app_plugins(frozenset({name}))
        assert plugins.get(name) and plugins.get(name).active, plugins.get(name)  # type: ignore[union-attr]
        assert settings.database_url and settings.redis_url
        await migrate.upgrade(settings, settings.database_url, plugins.migration_folders())
        scoped = msgspec.structs.replace(settings, plugins_allowlist=frozenset({name}))
        started = datetime.now(UTC)
        # Two workers on one queue, as two processes would be.
        workers = [build_worker(scoped, plugins, settings.redis_url, queue=QUEUE, cron_jobs=False) for _ in range(2)]
        running = [asyncio.create_task(worker.main()) for worker in workers]
        try:
            async with open_client(scoped, plugins) as client:
                one, two = await new_tenant(client, "job-a"), await new_tenant(client, "job-b")
                for tenant in (one, two):
                    await client.post(f"/api/modules/{name}/enable", headers={"X-Tenant-ID": tenant["slug"]})
                a, b = {"X-Tenant-ID": one["slug"]}, {"X-Tenant-ID": two["slug"]}
                first = (await client.post(f"/api/{name}/work/plain", headers=a)).json()
                assert first["job_id"]
                # The same dedup key, the same tenant: refused; another tenant has its own keys.
                assert (await client.post(f"/api/{name}/work/plain", headers=a)).json()["job_id"] is None
                assert (await client.post(f"/api/{name}/work/plain", headers=b)).json()["job_id"]
                assert (await client.post(f"/api/{name}/work/flaky", headers=a)).json()["job_id"]

            async with other_process(scoped) as kernel:

                async def notes(tenant: dict[str, str]) -> list[str]:
                    async with kernel.db.tenant(uuid.UUID(tenant["id"])) as session:
                        return sorted((await session.execute(text(f"select note from {name}_rows"))).scalars())

                async def done() -> bool:
                    return await notes(one) == ["flaky:2", "plain:1"] and await notes(two) == ["plain:1"]

                await eventually(done, timeout=20)

            # Each minute tick of the last five, once, whichever of the two workers offered it.
            async def ticked() -> bool:
                return len([line for line in log.read_text().splitlines() if line.startswith("tick ")]) >= 4

            await eventually(ticked, timeout=20)
        finally:
            for worker in workers:
                await worker.close()
            for task in running:
                task.cancel()
    lines = log.read_text().splitlines()
    assert lines.count("lifespan started") == 3  # the API process and each of the two workers
    runs = [line.removeprefix("tick ") for line in lines if line.startswith("tick ")]
    assert len(runs) == len(set(runs)), runs
    # The ticks of the last four minutes before the workers started were offered by both.
    every = Schedule(f"{name}.every_minute", "* * * * *", f"{name}.tick")
    offered = ticks(every, started - timedelta(minutes=4), started)
    expected = {f"schedule:{name}.every_minute:{t.isoformat()}" for t in offered}
    assert len(expected) == 4 and expected <= set(runs), (expected, runs)


def test_ticks_follow_the_time_zone_through_daylight_saving_changes() -> None:
    berlin = Schedule("x.nightly", "30 2 * * *", "x.job", timezone="Europe/Berlin")
    start = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    found = list(ticks(berlin, start, datetime(2026, 3, 31, 0, 0, tzinfo=UTC)))
    # 02:30 CET is 01:30 UTC; on the 29th 02:30 does not exist (clocks jump to 03:00 CEST = 01:00
    # UTC): the tick runs at the end of the gap; from the 30th it is 02:30 CEST = 00:30 UTC.
    assert found == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]
    autumn = list(ticks(berlin, datetime(2026, 10, 24, 0, 0, tzinfo=UTC), datetime(2026, 10, 27, 0, 0, tzinfo=UTC)))
    # On the 25th 02:30 happens twice (CEST, then CET): one tick.
    assert len([t for t in autumn if t.date() == datetime(2026, 10, 25).date()]) == 1
