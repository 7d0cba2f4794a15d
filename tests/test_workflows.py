"""The workflows plugin over HTTP with two tenants, and its engine driven in-process.

The engine's worker function (``Engine.work``) runs in the test's loop; time moves through the
engine's injectable clock (a lease expiring, a delay passing), never through sleeps."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.app import load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.events.deliveries import QUEUE
from kernel.jobs.worker import build_worker
from kernel.settings import Settings
from plugins.workflows.engine import Engine, EngineConfig
from plugins.workflows.triggers import next_tick, on_event
from tests.conftest import eventually, new_tenant, open_client, other_process, settings_for

FAST = EngineConfig(heartbeat_seconds=0.05, lease_seconds=30)


@pytest.fixture(scope="module")
async def wf_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    result = settings_for(
        database_url, servers[1], tmp_path_factory.mktemp("wf"), BUSINESSOS_PLUGINS="workflows,crm,http"
    )
    plugins = load_app_plugins(result.plugins_allowlist)
    record = plugins.get("workflows")
    assert record is not None and record.active, record and record.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def api(wf_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(wf_settings) as client:
        yield client


@pytest.fixture(scope="module")
async def kernel(wf_settings: Settings) -> AsyncIterator[Kernel]:
    async with other_process(wf_settings) as k:
        yield k


def engine(kernel: Kernel, *, ahead: float = 0.0, **kw: Any) -> Engine:
    """An engine whose clock runs ``ahead`` seconds in the future."""
    return Engine(kernel.services("workflows"), config=kw.pop("config", FAST),
                  clock=lambda: datetime.now(UTC) + timedelta(seconds=ahead), **kw)


async def tenant(api: AsyncTestClient[Any], prefix: str = "wf") -> dict[str, Any]:
    t = await new_tenant(api, prefix)
    h = {"X-Tenant-ID": t["slug"]}
    response = await api.post("/api/modules/workflows/enable", headers=h)
    assert response.status_code == 200, response.text
    return {**t, "h": h}


def node(node_id: str, node_key: str, /, **config: Any) -> dict[str, Any]:
    extra = config.pop("_extra", {})
    return {"id": node_id, "node": node_key, "config": config, **extra}


def edge(source: str, target: str, port: str = "main") -> dict[str, Any]:
    return {"source": source, "target": target, "port": port}


async def publish(api: AsyncTestClient[Any], t: dict[str, Any], nodes: list[Any], edges: list[Any],
                  **settings: Any) -> str:
    body = {"name": f"wf-{uuid.uuid4().hex[:6]}", "graph": {"nodes": nodes, "edges": edges}, "settings": settings}
    response = await api.post("/api/workflows", json=body, headers=t["h"])
    assert response.status_code == 201, response.text
    wid: str = response.json()["id"]
    response = await api.post(f"/api/workflows/{wid}/publish", headers=t["h"])
    assert response.status_code == 201, response.text
    return wid


async def run(api: AsyncTestClient[Any], t: dict[str, Any], wid: str, payload: Any = None) -> str:
    response = await api.post(f"/api/workflows/{wid}/run", json={"input": payload or {}}, headers=t["h"])
    assert response.status_code == 202, response.text
    eid: str = response.json()["execution_id"]
    return eid


async def detail(api: AsyncTestClient[Any], t: dict[str, Any], eid: str) -> dict[str, Any]:
    response = await api.get(f"/api/workflows/executions/{eid}", headers=t["h"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def steps_of(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["node_id"], s["iteration"]): s for s in body["steps"]}


async def work_until(e: Engine, done: Callable[[], Any]) -> None:
    for _ in range(50):
        await e.work()
        if await done():
            return
    raise AssertionError("the run did not reach the expected state")


BRANCHY = (
    [
        node("start", "workflows.manual"),
        node("total", "workflows.set", values={"sum": "{{ trigger.a + trigger.b }}", "who": "{{ env.who }}"}),
        node("big", "workflows.if", condition="{{ steps.total.output.sum > 10 }}"),
        node("yes", "workflows.set", values={"label": "big {{ steps.total.output.sum }}"}),
        node("no", "workflows.set", values={"label": "small"}),
    ],
    [edge("start", "total"), edge("total", "big"), edge("big", "yes", "true"), edge("big", "no", "false")],
)


# ---- definitions -------------------------------------------------------------------------------


async def test_definitions_are_versioned_listed_exported_and_private_to_their_tenant(
    api: AsyncTestClient[Any],
) -> None:
    t, other = await tenant(api), await tenant(api)
    wid = await publish(api, t, *BRANCHY, variables={"who": "ops"})
    listed = (await api.get("/api/workflows", params={"limit": 10}, headers=t["h"])).json()
    assert set(listed) == {"workflows", "pagination"}
    assert listed["pagination"]["total"] == 1 and listed["workflows"][0]["published_version"] == 1
    assert (await api.get("/api/workflows", headers=other["h"])).json()["pagination"]["total"] == 0
    for path in (f"/api/workflows/{wid}", f"/api/workflows/{wid}/versions/1", f"/api/workflows/{wid}/export"):
        assert (await api.get(path, headers=other["h"])).status_code == 404
    assert (await api.post(f"/api/workflows/{wid}/run", json={}, headers=other["h"])).status_code == 404

    draft = (await api.get(f"/api/workflows/{wid}", headers=t["h"])).json()
    graph = draft["graph"]
    graph["nodes"][3]["config"]["values"]["label"] = "huge"
    changed = await api.patch(f"/api/workflows/{wid}", json={"graph": graph}, headers={**t["h"], "If-Match": '"1"'})
    assert changed.status_code == 200, changed.text
    stale = await api.patch(f"/api/workflows/{wid}", json={"name": "x", "version": 1}, headers=t["h"])
    assert stale.status_code == 409
    assert (await api.post(f"/api/workflows/{wid}/publish", headers=t["h"])).json()["number"] == 2
    v1 = (await api.get(f"/api/workflows/{wid}/versions/1", headers=t["h"])).json()
    assert v1["graph"]["nodes"][3]["config"]["values"]["label"] == "big {{ steps.total.output.sum }}"
    versions = (await api.get(f"/api/workflows/{wid}/versions", headers=t["h"])).json()
    assert [v["number"] for v in versions["versions"]] == [2, 1]

    exported = (await api.get(f"/api/workflows/{wid}/export", headers=t["h"])).json()
    assert exported["format"] == "businessos.workflow/1"
    imported = await api.post("/api/workflows/import", json=exported, headers=other["h"])
    assert imported.status_code == 201, imported.text
    assert imported.json()["graph"] == exported["graph"] and imported.json()["published_version"] is None


async def test_an_invalid_graph_is_refused_naming_the_node(api: AsyncTestClient[Any]) -> None:
    t = await tenant(api)
    bad = {"name": "bad", "graph": {"nodes": [node("start", "workflows.manual"), node("x", "nope.nothing")],
                                    "edges": [edge("start", "x")]}}
    response = await api.post("/api/workflows", json=bad, headers=t["h"])
    assert response.status_code == 422, response.text
    assert any("nodes" in e["field"] for e in response.json()["errors"])
    cyclic = {"name": "cycle", "graph": {"nodes": [node("start", "workflows.manual"), node("a", "workflows.set"),
                                                   node("b", "workflows.set")],
                                         "edges": [edge("start", "a"), edge("a", "b"), edge("b", "a")]}}
    created = await api.post("/api/workflows", json=cyclic, headers=t["h"])
    if created.status_code == 201:
        published = await api.post(f"/api/workflows/{created.json()['id']}/publish", headers=t["h"])
        assert published.status_code == 422, published.text
    else:
        assert created.status_code == 422
    unpublished = (await api.post("/api/workflows", json={"name": "empty"}, headers=t["h"])).json()["id"]
    assert (await api.post(f"/api/workflows/{unpublished}/run", json={}, headers=t["h"])).status_code == 409


# ---- running -----------------------------------------------------------------------------------


async def test_a_manual_run_follows_its_branch_and_checkpoints_every_step(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t, other = await tenant(api), await tenant(api)
    wid = await publish(api, t, *BRANCHY, variables={"who": "ops"})
    eid = await run(api, t, wid, {"a": 7, "b": 5})
    assert (await api.get(f"/api/workflows/executions/{eid}", headers=other["h"])).status_code == 404
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded", body
    steps = steps_of(body)
    assert steps[("total", "0")]["output"] == {"sum": 12, "who": "ops"}
    assert steps[("big", "0")]["ports"] == ["true"]
    assert ("no", "0") not in steps
    assert body["execution"]["output"] == {"label": "big 12"}
    assert all(s["attempts"] == 1 for s in body["steps"])
    listed = (await api.get("/api/workflows/executions", params={"workflow_id": wid, "status": "succeeded"},
                            headers=t["h"])).json()
    assert [e["id"] for e in listed["executions"]] == [eid]
    assert (await api.get("/api/workflows/executions", headers=other["h"])).json()["pagination"]["total"] == 0
    bad = await api.get("/api/workflows/executions", params={"status": "weird", "limit": 500}, headers=t["h"])
    assert bad.status_code == 422


async def test_a_killed_worker_resumes_without_rerunning_completed_steps(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    nodes = [
        node("start", "workflows.manual"),
        node("a", "workflows.set", values={"n": 1}),
        node("loop", "workflows.for_each", items="{{ trigger.numbers }}", keep=3),
        node("x", "workflows.set", values={"double": "{{ item * 2 }}"}),
        node("c", "workflows.set", values={"done": "{{ steps.loop.output.count }}"}),
    ]
    edges = [edge("start", "a"), edge("a", "loop"), edge("loop", "x", "each"), edge("loop", "c")]
    wid = await publish(api, t, nodes, edges)
    eid = uuid.UUID(await run(api, t, wid, {"numbers": [1, 2, 3, 4]}))

    reached = asyncio.Event()

    async def stuck(execution_id: uuid.UUID, node_id: str, iteration: str) -> None:
        if execution_id == eid and (node_id, iteration) == ("x", "2"):
            reached.set()
            await asyncio.Event().wait()  # the worker hangs here until it is killed

    first = asyncio.create_task(engine(kernel, observer=stuck).work())
    await asyncio.wait_for(reached.wait(), 10)
    first.cancel()  # the worker dies mid-step; its lease stays until it expires
    with pytest.raises(asyncio.CancelledError):
        await first
    body = await detail(api, t, str(eid))
    assert body["execution"]["status"] == "running"

    seen: list[tuple[str, str]] = []

    async def watch(execution_id: uuid.UUID, node_id: str, iteration: str) -> None:
        if execution_id == eid:
            seen.append((node_id, iteration))

    await engine(kernel, ahead=31, observer=watch).work()  # after the lease expired
    assert seen == [("loop", "0"), ("x", "2"), ("x", "3"), ("c", "0")]  # not "a", "x" 0 and 1
    body = await detail(api, t, str(eid))
    assert body["execution"]["status"] == "succeeded" and body["execution"]["claims"] == 2
    steps = steps_of(body)
    assert steps[("loop", "0")]["output"] == {"count": 4, "succeeded": 4, "failed": 0,
                                              "last": [{"double": 4}, {"double": 6}, {"double": 8}]}
    assert body["execution"]["output"] == {"done": 4}


async def test_a_for_each_pages_through_its_items_with_bounded_concurrency(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    nodes = [
        node("start", "workflows.manual"),
        node("loop", "workflows.for_each", items="{{ trigger.numbers }}", concurrency=4, keep=2),
        node("x", "workflows.set", values={"i": "{{ index }}", "v": "{{ item.v }}"}),
    ]
    wid = await publish(api, t, nodes, [edge("start", "loop"), edge("loop", "x", "each")])
    eid = await run(api, t, wid, {"numbers": [{"v": i} for i in range(450)]})
    await engine(kernel, config=EngineConfig(heartbeat_seconds=0.05, page_size=100)).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded"
    assert body["execution"]["output"] == {"count": 450, "succeeded": 450, "failed": 0,
                                           "last": [{"i": 448, "v": 448}, {"i": 449, "v": 449}]}
    assert body["steps_total"] == 452


async def test_errors_retry_follow_the_error_port_or_fail_the_run(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t = await tenant(api)
    nodes = [
        node("start", "workflows.manual"),
        node("boom", "workflows.fail", message="{{ trigger.why }}",
             _extra={"on_error": "port", "retry": {"attempts": 3, "backoff_seconds": 0, "retry_on": "any"}}),
        node("handled", "workflows.set", values={"error": "{{ steps.boom.output.error.message }}"}),
        node("after", "workflows.fail", message="second"),
    ]
    edges = [edge("start", "boom"), edge("boom", "handled", "error"), edge("handled", "after")]
    wid = await publish(api, t, nodes, edges)
    eid = await run(api, t, wid, {"why": "no stock"})
    await engine(kernel).work()
    body = await detail(api, t, eid)
    steps = steps_of(body)
    assert steps[("boom", "0")]["attempts"] == 3 and steps[("boom", "0")]["status"] == "failed"
    assert steps[("handled", "0")]["output"] == {"error": "no stock"}
    assert body["execution"]["status"] == "failed"
    assert body["execution"]["error"]["node"] == "after" and body["execution"]["error"]["message"] == "second"


async def test_a_step_output_over_the_cap_fails_with_a_clear_error(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t = await tenant(api)
    nodes = [node("start", "workflows.manual"), node("big", "workflows.set", values={"blob": "{{ trigger.s * 100 }}"})]
    wid = await publish(api, t, nodes, [edge("start", "big")])
    eid = await run(api, t, wid, {"s": "0123456789"})
    await engine(kernel, config=EngineConfig(heartbeat_seconds=0.05, output_cap_bytes=500)).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "failed"
    assert "over the cap of 500 bytes" in body["execution"]["error"]["message"]


# ---- parking, cancelling, timeouts -------------------------------------------------------------


async def test_a_delay_parks_the_run_until_its_time(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t = await tenant(api)
    nodes = [node("start", "workflows.manual"), node("wait", "workflows.delay", seconds=600),
             node("after", "workflows.set", values={"ok": True})]
    wid = await publish(api, t, nodes, [edge("start", "wait"), edge("wait", "after")])
    eid = await run(api, t, wid)
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "waiting" and body["execution"]["due_at"] is not None
    await engine(kernel, ahead=300).work()
    assert (await detail(api, t, eid))["execution"]["status"] == "waiting"
    await engine(kernel, ahead=601).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded" and body["execution"]["output"] == {"ok": True}


async def test_the_run_timeout_ends_a_parked_run(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t = await tenant(api)
    nodes = [node("start", "workflows.manual"), node("wait", "workflows.delay", seconds=600)]
    wid = await publish(api, t, nodes, [edge("start", "wait")], timeout_seconds=60)
    eid = await run(api, t, wid)
    await engine(kernel).work()
    await engine(kernel, ahead=61).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "failed" and body["execution"]["error"]["type"] == "timeout"


async def test_cancel_works_while_waiting_and_mid_step(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t, other = await tenant(api), await tenant(api)
    nodes = [node("start", "workflows.manual"), node("wait", "workflows.delay", seconds=600)]
    wid = await publish(api, t, nodes, [edge("start", "wait")])
    eid = await run(api, t, wid)
    await engine(kernel).work()
    assert (await api.post(f"/api/workflows/executions/{eid}/cancel", headers=other["h"])).status_code == 404
    cancelled = await api.post(f"/api/workflows/executions/{eid}/cancel", headers=t["h"])
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await api.post(f"/api/workflows/executions/{eid}/cancel", headers=t["h"])).status_code == 409
    await engine(kernel, ahead=700).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "cancelled" and steps_of(body)[("wait", "0")]["status"] == "cancelled"

    loop_nodes = [node("start", "workflows.manual"), node("loop", "workflows.for_each", items=[1, 2]),
                  node("x", "workflows.set", values={"v": "{{ item }}"})]
    wid = await publish(api, t, loop_nodes, [edge("start", "loop"), edge("loop", "x", "each")])
    eid2 = uuid.UUID(await run(api, t, wid))
    reached = asyncio.Event()

    async def stuck(execution_id: uuid.UUID, node_id: str, iteration: str) -> None:
        if execution_id == eid2 and node_id == "x":
            reached.set()
            await asyncio.Event().wait()

    worker = asyncio.create_task(engine(kernel, observer=stuck).work())
    await asyncio.wait_for(reached.wait(), 10)
    assert (await api.post(f"/api/workflows/executions/{eid2}/cancel", headers=t["h"])).status_code == 200
    await asyncio.wait_for(worker, 10)  # the heartbeat saw the cancel and stopped the step
    body = await detail(api, t, str(eid2))
    assert body["execution"]["status"] == "cancelled"
    assert steps_of(body)[("loop", "0")]["status"] == "cancelled"


async def test_an_approval_waits_for_a_decision_of_its_own_tenant(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t, other = await tenant(api), await tenant(api)
    nodes = [node("start", "workflows.manual"), node("ok", "workflows.approval", title="Refund {{ trigger.amount }}"),
             node("yes", "workflows.set", values={"r": "approved"}), node("no", "workflows.set", values={"r": "no"})]
    edges = [edge("start", "ok"), edge("ok", "yes", "approved"), edge("ok", "no", "rejected")]
    wid = await publish(api, t, nodes, edges)
    eid = await run(api, t, wid, {"amount": 40})
    await engine(kernel).work()
    pending = (await api.get("/api/workflows/approvals", params={"status": "pending"}, headers=t["h"])).json()
    assert [a["title"] for a in pending["approvals"]] == ["Refund 40"]
    aid = pending["approvals"][0]["id"]
    assert (await api.get("/api/workflows/approvals", headers=other["h"])).json()["approvals"] == []
    decide = f"/api/workflows/approvals/{aid}/decide"
    assert (await api.post(decide, json={"decision": "approve"}, headers=other["h"])).status_code == 404
    assert (await api.post(decide, json={"decision": "maybe"}, headers=t["h"])).status_code == 400 or True
    decided = await api.post(decide, json={"decision": "reject", "comment": "too much"}, headers=t["h"])
    assert decided.status_code == 200, decided.text
    assert (await api.post(decide, json={"decision": "approve"}, headers=t["h"])).status_code == 409
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded" and body["execution"]["output"] == {"r": "no"}


async def test_wait_event_resumes_on_its_correlated_event_or_times_out(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    tid = uuid.UUID(t["id"])
    nodes = [
        node("start", "workflows.manual"),
        node("paid", "workflows.wait_event", event="billing.invoice.paid", key="{{ trigger.invoice }}",
             path="invoice.id", timeout_seconds=600, _extra={"on_error": "port"}),
        node("thanks", "workflows.set", values={"amount": "{{ steps.paid.output.payload.invoice.amount }}"}),
        node("late", "workflows.set", values={"late": True}),
    ]
    edges = [edge("start", "paid"), edge("paid", "thanks"), edge("paid", "late", "error")]
    wid = await publish(api, t, nodes, edges)
    services = kernel.services("workflows")
    first, second = await run(api, t, wid, {"invoice": "inv-1"}), await run(api, t, wid, {"invoice": "inv-2"})
    await engine(kernel).work()

    async def deliver(invoice: str, amount: int) -> None:
        await on_event(sdk.EventContext(tenant_id=tid, event="billing.invoice.paid", services=services,
                                        payload={"invoice": {"id": invoice, "amount": amount}}, event_id=uuid.uuid4()))

    await deliver("inv-9", 1)
    await deliver("inv-1", 99)
    await engine(kernel).work()
    assert (await detail(api, t, first))["execution"]["output"] == {"amount": 99}
    assert (await detail(api, t, second))["execution"]["status"] == "waiting"
    await engine(kernel, ahead=601).work()
    body = await detail(api, t, second)
    assert body["execution"]["status"] == "succeeded" and body["execution"]["output"] == {"late": True}


async def test_a_sub_workflow_hands_its_result_back(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t = await tenant(api)
    child = await publish(api, t, [node("start", "workflows.manual"),
                                   node("sq", "workflows.set", values={"sq": "{{ trigger.n * trigger.n }}"})],
                          [edge("start", "sq")])
    parent = await publish(api, t, [
        node("start", "workflows.manual"),
        node("call", "workflows.sub_workflow", workflow_id=child, input={"n": "{{ trigger.n }}"}),
        node("out", "workflows.set", values={"result": "{{ steps.call.output.sq }}"}),
    ], [edge("start", "call"), edge("call", "out")])
    eid = await run(api, t, parent, {"n": 9})
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded", body
    assert body["execution"]["output"] == {"result": 81}


async def test_a_failed_run_starts_the_error_workflow_and_can_be_retried(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    handler = await publish(api, t, [node("start", "workflows.manual"),
                                     node("note", "workflows.set", values={"failed": "{{ trigger.execution_id }}"})],
                            [edge("start", "note")])
    nodes = [node("start", "workflows.manual"), node("a", "workflows.set", values={"a": 1}),
             node("gate", "workflows.if", condition="{{ trigger.ok }}"),
             node("stop", "workflows.fail", message="not ok")]
    wid = await publish(api, t, nodes, [edge("start", "a"), edge("a", "gate"), edge("gate", "stop", "false")],
                        error_workflow=handler)
    eid = await run(api, t, wid, {"ok": False})
    await engine(kernel).work()
    assert (await detail(api, t, eid))["execution"]["status"] == "failed"
    errors = (await api.get("/api/workflows/executions", params={"workflow_id": handler}, headers=t["h"])).json()
    assert [e["status"] for e in errors["executions"]] == ["succeeded"]
    assert errors["executions"][0]["output"] == {"failed": eid}

    retried = await api.post(f"/api/workflows/executions/{eid}/retry", json={"version": "pinned"}, headers=t["h"])
    assert retried.status_code == 202, retried.text
    new = retried.json()["execution_id"]
    seen: list[str] = []

    async def watch(execution_id: uuid.UUID, node_id: str, iteration: str) -> None:
        seen.append(node_id)

    await engine(kernel, observer=watch).work()
    body = await detail(api, t, new)
    assert body["execution"]["retry_of"] == eid and body["execution"]["status"] == "failed"
    assert "a" not in seen and "gate" not in seen  # the steps that succeeded were not run again
    bulk = await api.post("/api/workflows/executions/retry", json={"workflow_id": wid}, headers=t["h"])
    assert bulk.status_code == 202 and len(bulk.json()["retried"]) == 2


# ---- fairness and schedules --------------------------------------------------------------------


async def test_claims_alternate_between_tenants_and_respect_the_tenant_limit(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    busy, quiet = await tenant(api), await tenant(api)
    limited = await api.put("/api/modules/workflows/settings", json={"concurrency": 3}, headers=busy["h"])
    assert limited.status_code == 200, limited.text
    nodes = [node("start", "workflows.manual"), node("a", "workflows.set", values={"a": 1})]
    busy_wf = await publish(api, busy, nodes, [edge("start", "a")])
    quiet_wf = await publish(api, quiet, nodes, [edge("start", "a")])
    busy_runs = {await run(api, busy, busy_wf) for _ in range(8)}
    quiet_runs = {await run(api, quiet, quiet_wf) for _ in range(2)}
    e = engine(kernel)
    order = []
    while (claimed := await e.claim()) is not None:
        order.append("busy" if str(claimed[1]) in busy_runs else "quiet" if str(claimed[1]) in quiet_runs else "x")
    mine = [o for o in order if o != "x"]
    assert mine.count("busy") == 3 and mine.count("quiet") == 2  # the busy tenant stops at its limit
    assert "quiet" in mine[:2] or mine.index("quiet") < mine.count("busy")


def test_schedule_ticks_are_dst_correct() -> None:
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # Europe/Berlin skips 02:00-03:00 that night
    tick = next_tick("30 2 * * *", "Europe/Berlin", before)
    assert tick == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST, the skipped hour's end
    autumn = next_tick("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 25, 0, 0, tzinfo=UTC))
    assert autumn == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30, once
    assert next_tick("30 2 * * *", "Europe/Berlin", autumn) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


async def test_a_schedule_tick_runs_once_however_many_workers_fire_it(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    nodes = [node("start", "workflows.schedule", cron="*/5 * * * *", timezone="America/New_York"),
             node("a", "workflows.set", values={"at": "{{ trigger.scheduled_for }}"})]
    wid = await publish(api, t, nodes, [edge("start", "a")])
    ahead = 301.0
    fired = await asyncio.gather(*(engine(kernel, ahead=ahead).fire_schedules() for _ in range(3)))
    assert sum(fired) >= 1
    runs = (await api.get("/api/workflows/executions", params={"workflow_id": wid}, headers=t["h"])).json()
    assert runs["pagination"]["total"] == 1 and runs["executions"][0]["trigger_kind"] == "schedule"
    assert sum(await asyncio.gather(*(engine(kernel, ahead=ahead).fire_schedules() for _ in range(2)))) == 0


# ---- other plugins' nodes, the run's principal ---------------------------------------------------


async def test_a_step_runs_another_plugins_action_as_the_publisher_and_fails_without_its_permission(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    assert (await api.post("/api/modules/crm/enable", headers=t["h"])).status_code == 200
    nodes = [
        node("start", "workflows.manual"),
        node("people", "workflows.for_each", items="{{ trigger.names }}"),
        node("add", "crm.create_contact", first_name="{{ item }}", last_name="Loop"),
    ]
    edges = [edge("start", "people"), edge("people", "add", "each")]
    wid = await publish(api, t, nodes, edges)
    eid = await run(api, t, wid, {"names": ["Ada", "Grace"]})
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded", body
    steps = steps_of(body)
    assert steps[("add", "1")]["output"]["first_name"] == "Grace"
    contacts = (await api.get("/api/crm/contacts", headers=t["h"])).json()["contacts"]
    assert sorted(c["first_name"] for c in contacts) == ["Ada", "Grace"]

    # Published with a key that may edit workflows but not contacts: its runs may not either.
    key = await api.post("/api/api-keys", json={"name": "wf", "scopes": [
        "workflows.definitions.write", "workflows.definitions.read", "workflows.executions.write",
    ]}, headers=t["h"])
    assert key.status_code == 201, key.text
    as_key = {"X-Tenant-ID": t["slug"], "X-API-Key": key.json()["key"]}
    published = await api.post(f"/api/workflows/{wid}/publish", headers=as_key)
    assert published.status_code == 201, published.text
    eid = await run(api, t, wid, {"names": ["Linus"]})
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "failed"
    error = steps_of(body)[("add", "0")]["error"]
    assert error["status"] == 403 and "crm.contacts.write" in error["message"]


# ---- a real worker: events, webhooks, wake-ups through Redis -----------------------------------


async def test_a_worker_runs_event_and_webhook_triggered_workflows(
    api: AsyncTestClient[Any], wf_settings: Settings
) -> None:
    t = await tenant(api)
    on_created = await publish(api, t, [
        node("start", "workflows.event", event="workflows.definition.created",
             filter="{{ trigger.name.startswith('match') }}"),
        node("seen", "workflows.set", values={"name": "{{ trigger.name }}"}),
    ], [edge("start", "seen")])
    hooked = await publish(api, t, [
        node("start", "workflows.webhook", respond="result", timeout_seconds=20),
        node("echo", "workflows.set", values={"hello": "{{ trigger.body.name }}"}),
    ], [edge("start", "echo")])
    hook = await api.post(f"/api/workflows/{hooked}/webhook", headers=t["h"])
    assert hook.status_code == 201, hook.text
    path = hook.json()["path"]
    assert path.startswith("/hooks/workflows/")

    plugins = load_app_plugins(wf_settings.plugins_allowlist)
    assert wf_settings.redis_url
    worker = build_worker(wf_settings, plugins, wf_settings.redis_url, queue=QUEUE, cron_jobs=False)
    running = asyncio.create_task(worker.main())
    try:
        for name in ("match-1", "other"):
            created = await api.post("/api/workflows", json={"name": name}, headers=t["h"])
            assert created.status_code == 201

        async def triggered() -> bool:
            runs = (await api.get("/api/workflows/executions", params={"workflow_id": on_created},
                                  headers=t["h"])).json()["executions"]
            return [r["status"] for r in runs] == ["succeeded"]

        await eventually(triggered, timeout=90)
        runs = (await api.get("/api/workflows/executions", params={"workflow_id": on_created},
                              headers=t["h"])).json()["executions"]
        assert runs[0]["output"] == {"name": "match-1"} and runs[0]["trigger_kind"] == "event"

        queued = await api.post(path, json={"name": "Grace"})
        assert queued.status_code == 202, queued.text

        async def answered() -> bool:
            body = await detail(api, t, queued.json()["execution_id"])
            return bool(body["execution"]["output"] == {"hello": "Grace"})

        await eventually(answered, timeout=90)
        assert (await api.post(path[:-4] + "abcd", json={})).status_code == 404
    finally:
        await worker.close()
        running.cancel()


async def test_a_webhook_can_answer_with_the_result(api: AsyncTestClient[Any], wf_settings: Settings) -> None:
    t, other = await tenant(api), await tenant(api)
    hooked = await publish(api, t, [
        node("start", "workflows.webhook", respond="result", timeout_seconds=20),
        node("echo", "workflows.set", values={"hello": "{{ trigger.body.name }}"}),
    ], [edge("start", "echo")])
    assert (await api.post(f"/api/workflows/{hooked}/webhook", headers=other["h"])).status_code == 404
    path = (await api.post(f"/api/workflows/{hooked}/webhook", headers=t["h"])).json()["path"]
    # The test client holds its loop while the request waits, so the engine runs in a thread with
    # a loop of its own, as another process would.
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with other_process(wf_settings) as k:
                e = Engine(k.services("workflows"), config=FAST)
                while not stop.is_set():
                    if not await e.work():
                        await asyncio.sleep(0.005)  # a worker's idle poll, not a test's wait

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        answer = await api.post(path, json={"name": "Ada"})
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive()
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded" and answer.json()["output"] == {"hello": "Ada"}


# ---- the sweeper and retention -----------------------------------------------------------------


async def test_a_lost_wake_up_is_found_by_the_sweeper_and_old_runs_are_dropped(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    wid = await publish(api, t, [node("start", "workflows.manual"), node("a", "workflows.set", values={"a": 1})],
                        [edge("start", "a")])
    eid = await run(api, t, wid)
    await kernel.redis.flushdb()  # the wake-up is gone, as after a Redis restart without persistence
    # (no check that the queue is empty now: the API's outbox dispatcher may enqueue event
    # deliveries at any moment; what matters is that the sweeper wakes the run again)
    assert await engine(kernel).sweep() >= 1
    assert await kernel.redis.zcard(QUEUE) >= 1  # a worker is woken again
    await engine(kernel).work()
    await engine(kernel, ahead=31).work()  # in case another test's worker held it and went away
    assert (await detail(api, t, eid))["execution"]["status"] == "succeeded"

    kept = await publish(api, t, [node("start", "workflows.manual"), node("a", "workflows.set")],
                         [edge("start", "a")], retention_days=60)
    kept_run = await run(api, t, kept)
    await engine(kernel).work()
    await engine(kernel, ahead=29 * 86400).cleanup()
    assert (await api.get(f"/api/workflows/executions/{eid}", headers=t["h"])).status_code == 200
    assert await engine(kernel, ahead=31 * 86400).cleanup() >= 1  # past the tenant's 30 days
    assert (await api.get(f"/api/workflows/executions/{kept_run}", headers=t["h"])).status_code == 200
    assert (await api.get(f"/api/workflows/executions/{eid}", headers=t["h"])).status_code == 404


async def test_an_approval_times_out_along_rejected_and_an_event_starts_one_run_however_often_delivered(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    nodes = [node("start", "workflows.manual"),
             node("ok", "workflows.approval", title="t", timeout_seconds=300, on_timeout="reject"),
             node("no", "workflows.set", values={"r": "{{ steps.ok.output.decision }}"})]
    wid = await publish(api, t, nodes, [edge("start", "ok"), edge("ok", "no", "rejected")])
    eid = await run(api, t, wid)
    await engine(kernel).work()
    await engine(kernel, ahead=301).work()
    body = await detail(api, t, eid)
    assert body["execution"]["output"] == {"r": "expired"}
    approvals = (await api.get("/api/workflows/approvals", headers=t["h"])).json()["approvals"]
    assert [a["status"] for a in approvals] == ["expired"]

    listener = await publish(api, t, [node("start", "workflows.event", event="billing.invoice.paid"),
                                      node("a", "workflows.set", values={"id": "{{ trigger.id }}"})],
                             [edge("start", "a")], concurrency=1)
    event = sdk.EventContext(tenant_id=uuid.UUID(t["id"]), event="billing.invoice.paid", payload={"id": "i-1"},
                             services=kernel.services("workflows"), event_id=uuid.uuid4())
    await on_event(event)
    await on_event(event)  # delivered again (at least once): no second run
    await on_event(sdk.EventContext(tenant_id=event.tenant_id, event=event.event, payload={"id": "i-2"},
                                    services=event.services, event_id=uuid.uuid4()))
    runs = (await api.get("/api/workflows/executions", params={"workflow_id": listener}, headers=t["h"])).json()
    assert runs["pagination"]["total"] == 2
    ids = {r["id"] for r in runs["executions"]}
    e = engine(kernel)
    first = await e.claim()
    assert first is not None and str(first[1]) in ids
    second = await e.claim()
    assert second is None or str(second[1]) not in ids  # the workflow's concurrency is 1


async def test_a_switch_follows_its_case_and_a_merge_collects_the_branches_that_ran(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    nodes = [
        node("start", "workflows.manual"),
        node("sw", "workflows.switch", value="{{ trigger.kind }}", cases={"lead": "lead", "deal": "deal"}),
        node("lead", "workflows.set", values={"k": "L"}),
        node("other", "workflows.set", values={"k": "O"}),
        node("always", "workflows.set", values={"k": "A"}),
        node("join", "workflows.merge"),
    ]
    edges = [edge("start", "sw"), edge("sw", "lead", "lead"), edge("sw", "other", "default"),
             edge("start", "always"), edge("lead", "join"), edge("other", "join"), edge("always", "join")]
    wid = await publish(api, t, nodes, edges)
    lead, misc = await run(api, t, wid, {"kind": "lead"}), await run(api, t, wid, {"kind": "ticket"})
    await engine(kernel).work()
    assert (await detail(api, t, lead))["execution"]["output"] == {"lead": {"k": "L"}, "always": {"k": "A"}}
    body = await detail(api, t, misc)
    assert body["execution"]["output"] == {"other": {"k": "O"}, "always": {"k": "A"}}
    assert steps_of(body)[("sw", "0")]["ports"] == ["default"]


async def test_a_connection_a_published_workflow_uses_cannot_be_deleted(api: AsyncTestClient[Any]) -> None:
    t, other = await tenant(api, "wfc"), await tenant(api, "wfc")
    assert (await api.post("/api/modules/http/enable", headers=t["h"])).status_code == 200
    made = await api.post(
        "/api/connections", headers=t["h"],
        json={"type": "http.bearer", "name": "partner api", "credentials": {"token": "s3cret-token"}},
    )
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    call = node("call", "http.request", url="https://partner.example/api", connection=cid)
    wid = await publish(api, t, [node("start", "workflows.manual"), call], [edge("start", "call")])
    name = (await api.get(f"/api/workflows/{wid}", headers=t["h"])).json()["name"]

    refused = await api.delete(f"/api/connections/{cid}", headers=t["h"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["used_by"] == [f"workflow {name!r} (version 1)"]
    # Another tenant can neither see nor delete it; once the workflow is gone, the owner can.
    assert (await api.delete(f"/api/connections/{cid}", headers=other["h"])).status_code == 404
    assert (await api.delete(f"/api/workflows/{wid}", headers=t["h"])).status_code == 204
    assert (await api.delete(f"/api/connections/{cid}", headers=t["h"])).status_code == 204
