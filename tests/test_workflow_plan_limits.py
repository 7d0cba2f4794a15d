"""The plan's monthly runs through every way a run starts over HTTP: a webhook delivery and a retry
past the limit are refused with the kernel's 402 problem naming the limit and record nothing,
while a tenant on another plan goes on. (Manual starts: tests/test_workflows_limits.py, whose
plan provider this module installs again under a name of its own.)"""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import new_tenant
from tests.test_access import problem
from tests.test_workflow_semantics import standard_headers, whsec
from tests.test_workflows_limits import api, billing, plugin_dir, scoped

__all__ = ["api", "billing", "plugin_dir", "scoped"]  # the fixtures, shared with tests/test_workflows_limits.py

GRAPH = {"nodes": [{"id": "start", "node": "workflows.webhook"},
                   {"id": "fail", "node": "workflows.fail", "config": {"message": "no"}}],
         "edges": [{"source": "start", "target": "fail"}]}


async def hooked_tenant(api: AsyncTestClient[Any], plan: str) -> tuple[dict[str, str], str, str]:
    t = await new_tenant(api, f"wf-{plan}", plan=plan)
    h = {"X-Tenant-ID": t["slug"]}
    assert (await api.post("/api/modules/workflows/enable", headers=h)).status_code == 200
    wid = (await api.post("/api/workflows", json={"name": "w", "graph": GRAPH}, headers=h)).json()["id"]
    assert (await api.post(f"/api/workflows/{wid}/publish", headers=h)).status_code == 201
    path = (await api.post(f"/api/workflows/{wid}/webhook", headers=h)).json()["path"]
    return h, wid, path


async def test_webhook_deliveries_and_retries_past_the_plan_answer_402_and_record_nothing(
    api: AsyncTestClient[Any],
) -> None:
    tiny_h, tiny_wf, tiny_path = await hooked_tenant(api, "tiny")
    free_h, free_wf, free_path = await hooked_tenant(api, "free")
    first = await api.post(tiny_path, json={"n": 1})
    assert first.status_code == 202, first.text
    assert (await api.post(tiny_path, json={"n": 2})).status_code == 202
    body = problem(await api.post(tiny_path, json={"n": 3}), 402)
    assert body["limit"] == "workflow_runs" and "upgrade" in body["lift"]
    runs = (await api.get("/api/workflows/executions", params={"workflow_id": tiny_wf}, headers=tiny_h)).json()
    assert runs["pagination"]["total"] == 2

    # A retry is a new run: past the limit it is refused the same way (the run is cancelled
    # first: only failed or cancelled runs are retried).
    eid = first.json()["execution_id"]
    assert (await api.post(f"/api/workflows/executions/{eid}/cancel", headers=tiny_h)).status_code == 200
    retried = await api.post(f"/api/workflows/executions/{eid}/retry", json={"version": "pinned"}, headers=tiny_h)
    assert problem(retried, 402)["limit"] == "workflow_runs"
    runs = (await api.get("/api/workflows/executions", params={"workflow_id": tiny_wf}, headers=tiny_h)).json()
    assert runs["pagination"]["total"] == 2

    # The other tenant's plan is its own.
    for n in range(3):
        assert (await api.post(free_path, json={"n": n})).status_code == 202
    runs = (await api.get("/api/workflows/executions", params={"workflow_id": free_wf}, headers=free_h)).json()
    assert runs["pagination"]["total"] == 3


async def test_a_redelivered_signed_webhook_answers_its_first_run_even_past_the_plan(
    api: AsyncTestClient[Any],
) -> None:
    """A Standard Webhooks sender retrying a message whose run exists gets that run's id, also once
    the month's runs are spent, and the retry does not count as a run."""
    t = await new_tenant(api, "wf-redeliver", plan="tiny")
    h = {"X-Tenant-ID": t["slug"]}
    assert (await api.post("/api/modules/workflows/enable", headers=h)).status_code == 200
    secret = whsec()
    assert (await api.put("/api/workflows/secrets/inbound.std", json={"value": secret}, headers=h)).status_code == 204
    graph = {"nodes": [{"id": "start", "node": "workflows.webhook",
                        "config": {"verify": "standard", "secret": "inbound.std"}},
                       {"id": "fail", "node": "workflows.fail", "config": {"message": "no"}}],
             "edges": [{"source": "start", "target": "fail"}]}
    wid = (await api.post("/api/workflows", json={"name": "w", "graph": graph}, headers=h)).json()["id"]
    assert (await api.post(f"/api/workflows/{wid}/publish", headers=h)).status_code == 201
    path = (await api.post(f"/api/workflows/{wid}/webhook", headers=h)).json()["path"]

    async def deliver(msg_id: str) -> Any:
        body = f'{{"msg": "{msg_id}"}}'.encode()
        return await api.post(path, content=body, headers=standard_headers(secret, body, msg_id=msg_id))

    first = await deliver("msg_a")
    assert first.status_code == 202, first.text
    first_id = first.json()["execution_id"]
    again = await deliver("msg_a")  # within the plan: the same run, and not a second one counted
    assert again.status_code == 202 and again.json()["execution_id"] == first_id, again.text
    assert (await deliver("msg_b")).status_code == 202
    assert problem(await deliver("msg_c"), 402)["limit"] == "workflow_runs"
    late = await deliver("msg_a")  # the month's runs are spent now
    assert late.status_code == 202, late.text
    assert late.json()["execution_id"] == first_id
    runs = (await api.get("/api/workflows/executions", params={"workflow_id": wid}, headers=h)).json()
    assert runs["pagination"]["total"] == 2
