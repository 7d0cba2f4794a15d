"""The ``workflows.work`` job: one claiming job per process, wake-ups joining it.

A wake-up job that finds another claiming in its process ends at once and the claiming one
takes the new run, even while a slow step of another run is still in flight. The engine runs in
the test's loop; the slow step is held by the engine's observer until the test lets it go."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from kernel.context import Kernel
from plugins.workflows.engine import work_job
from tests.test_workflows import api, detail, engine, kernel, node, publish, run, tenant, wf_settings

__all__ = ["api", "kernel", "wf_settings"]  # the module-scoped fixtures, shared with test_workflows


async def test_a_wake_up_joins_the_claiming_job_which_takes_the_new_run_while_a_slow_step_runs(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api, "wfjob")
    wid = await publish(api, t, [node("start", "workflows.manual"), node("a", "workflows.set", values={"x": 1})],
                        [{"source": "start", "target": "a"}])
    first = uuid.UUID(await run(api, t, wid))
    entered, release, second_ran = asyncio.Event(), asyncio.Event(), asyncio.Event()
    second: uuid.UUID | None = None

    async def watch(execution_id: uuid.UUID, node_id: str, iteration: str) -> None:
        if execution_id == first and node_id == "a":
            entered.set()
            await release.wait()  # a slow step: the run stays in flight until the test lets it go
        elif execution_id == second:
            second_ran.set()

    services = kernel.services("workflows")
    claiming = asyncio.create_task(work_job(services, batch=50, parallel=4, engine=engine(kernel, observer=watch)))
    try:
        await asyncio.wait_for(entered.wait(), 30)
        second = uuid.UUID(await run(api, t, wid))
        # Another wake-up job of this process: it only tells the claiming job to look again.
        assert await work_job(services, batch=50, parallel=4) == 0
        await asyncio.wait_for(second_ran.wait(), 30)  # taken while the first run's step still runs
        assert (await detail(api, t, str(first)))["execution"]["status"] == "running"
    finally:
        release.set()
    assert await asyncio.wait_for(claiming, 60) >= 2
    for eid in (first, second):
        body = await detail(api, t, str(eid))
        assert body["execution"]["status"] == "succeeded", body["execution"]
        assert body["execution"]["claims"] == 1


async def test_a_start_in_flight_does_not_keep_the_tenants_due_runs_from_being_claimed(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    """Claims skip a tenant whose row another transaction holds: a start still open (a webhook's
    transaction not committed yet) must not hold it, or a burst of starts starves the claims."""
    t = await tenant(api, "wfjob")
    wid = await publish(api, t, [node("start", "workflows.manual"), node("a", "workflows.set", values={"x": 1})],
                        [{"source": "start", "target": "a"}])
    due = uuid.UUID(await run(api, t, wid))
    services = kernel.services("workflows")
    tenant_id = uuid.UUID(t["id"])
    claiming = engine(kernel)
    async with services.data.tenant(tenant_id) as session:
        pending = await engine(kernel).start(
            session, tenant_id=tenant_id, workflow_id=uuid.UUID(wid), trigger_kind="manual", payload={},
            started_by="test",
        )
        claimed = await asyncio.wait_for(claiming.claim_many(10), 30)
        assert claimed == [(tenant_id, due)]  # the pending one is not committed yet: unseen
    assert await claiming.run(tenant_id, due) == "succeeded"
    assert await claiming.work() == 1
    for eid in (due, pending):
        assert (await detail(api, t, str(eid)))["execution"]["status"] == "succeeded"
