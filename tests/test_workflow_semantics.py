"""Workflow semantics over HTTP with two tenants: step and run timeouts, webhook signatures
(Standard Webhooks signed with the reference ``standardwebhooks`` package, and HMAC), domain-event
triggers with filters on another plugin's events, retry onto the pinned and the current version,
``run_as`` (a chosen API key never does more than the publisher may), cancel reaching
sub-workflow runs, and who may decide approvals.

The engine's worker function runs in the test's loop (``Engine.work``); time moves through the
engine's injectable clock. A step that must time out calls this module's ``hang`` action, which
waits until it is cancelled."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook

from kernel.app import load_app_plugins
from kernel.context import Kernel
from kernel.db import migrate
from kernel.events.deliveries import QUEUE
from kernel.jobs.worker import build_worker
from kernel.settings import Settings
from tests.conftest import eventually, new_tenant, open_client, other_process, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique
from tests.test_access import at, join, new_key, problem
from tests.test_workflows import detail, edge, engine, node, steps_of

HANG = """
import asyncio


class HangConfig(msgspec.Struct, frozen=True):
    hang: bool = True


class HangOut(msgspec.Struct, frozen=True):
    ok: bool


async def hang(ctx: sdk.NodeContext, config: HangConfig) -> HangOut:
    if config.hang:
        await asyncio.Event().wait()  # until the engine cancels the step
    return HangOut(ok=True)


@sdk.hookimpl
def businessos_workflow_nodes():
    return [sdk.NodeSpec(key=NAME + ".hang", kind="action", title="Hang", config=HangConfig, output=HangOut,
                         run=hang)]
"""


@pytest.fixture(scope="module")
def hang_plugin() -> str:
    return unique("wfhang")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory, hang_plugin: str) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("wf-sem-plugin")
    with installed(path, FakePlugin(name=hang_plugin, source=plugin_source(hang_plugin, HANG))):
        yield path


@pytest.fixture(scope="module")
async def sem_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory, hang_plugin: str,
    plugin_dir: Path,
) -> Settings:
    result = settings_for(database_url, servers[1], tmp_path_factory.mktemp("wfsem"),
                          BUSINESSOS_PLUGINS=f"workflows,crm,{hang_plugin}")
    plugins = load_app_plugins(result.plugins_allowlist)
    for name in ("workflows", "crm", hang_plugin):
        record = plugins.get(name)
        assert record is not None and record.active, record and record.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def api(sem_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(sem_settings) as client:
        yield client


@pytest.fixture(scope="module")
async def kernel(sem_settings: Settings) -> AsyncIterator[Kernel]:
    async with other_process(sem_settings) as k:
        yield k


async def tenant(api: AsyncTestClient[Any], *modules: str) -> dict[str, Any]:
    t = await new_tenant(api, "wfs")
    h = {"X-Tenant-ID": t["slug"]}
    for module in ("workflows", *modules):
        response = await api.post(f"/api/modules/{module}/enable", headers=h)
        assert response.status_code == 200, response.text
    return {**t, "h": h, "owner": at(t, t["access_token"])}


async def draft(api: AsyncTestClient[Any], headers: dict[str, str], nodes: list[Any], edges: list[Any],
                **settings: Any) -> str:
    body = {"name": f"wf-{uuid.uuid4().hex[:6]}", "graph": {"nodes": nodes, "edges": edges}, "settings": settings}
    made = await api.post("/api/workflows", json=body, headers=headers)
    assert made.status_code == 201, made.text
    wid: str = made.json()["id"]
    return wid


async def publish(api: AsyncTestClient[Any], headers: dict[str, str], nodes: list[Any], edges: list[Any],
                  **settings: Any) -> str:
    wid = await draft(api, headers, nodes, edges, **settings)
    published = await api.post(f"/api/workflows/{wid}/publish", headers=headers)
    assert published.status_code == 201, published.text
    return wid


async def start(api: AsyncTestClient[Any], t: dict[str, Any], wid: str, payload: Any = None) -> str:
    response = await api.post(f"/api/workflows/{wid}/run", json={"input": payload or {}}, headers=t["h"])
    assert response.status_code == 202, response.text
    eid: str = response.json()["execution_id"]
    return eid


async def runs_of(api: AsyncTestClient[Any], t: dict[str, Any], wid: str) -> list[dict[str, Any]]:
    response = await api.get("/api/workflows/executions", params={"workflow_id": wid}, headers=t["h"])
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["executions"]
    return runs


# ---- timeouts ----------------------------------------------------------------------------------


async def test_a_step_over_its_timeout_fails_clearly_after_its_retries(
    api: AsyncTestClient[Any], kernel: Kernel, hang_plugin: str
) -> None:
    t = await tenant(api, hang_plugin)
    retry = {"attempts": 2, "backoff_seconds": 0, "retry_on": "transient"}
    nodes = [node("start", "workflows.manual"),
             node("slow", f"{hang_plugin}.hang", _extra={"timeout_seconds": 0.2, "retry": retry}),
             node("quick", f"{hang_plugin}.hang", hang=False, _extra={"timeout_seconds": 5})]
    wid = await publish(api, t["h"], nodes, [edge("start", "quick"), edge("quick", "slow")])
    eid = await start(api, t, wid)
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "failed", body
    step = steps_of(body)[("slow", "0")]
    assert step["status"] == "failed" and step["attempts"] == 2  # timeouts are transient: retried once
    assert step["error"]["type"] == "timeout"
    assert step["error"]["message"] == "step 'slow' exceeded its timeout of 0.2 s"
    assert body["execution"]["error"]["node"] == "slow"
    assert steps_of(body)[("quick", "0")]["output"] == {"ok": True}  # a step within its limit succeeds


async def test_a_run_over_its_timeout_ends_failed_mid_step_and_while_parked(
    api: AsyncTestClient[Any], kernel: Kernel, hang_plugin: str
) -> None:
    t = await tenant(api, hang_plugin)
    nodes = [node("start", "workflows.manual"), node("slow", f"{hang_plugin}.hang")]
    wid = await publish(api, t["h"], nodes, [edge("start", "slow")], timeout_seconds=60)
    eid = await start(api, t, wid)
    # The engine's clock stands 52 s after the start: the run has 8 s left (a wide margin for a
    # loaded machine to claim it and start the step) when its step hangs.
    await engine(kernel, ahead=52).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "failed", body
    error = body["execution"]["error"]
    assert error["type"] == "timeout" and error["node"] == "slow"
    assert error["message"] == "the run exceeded its timeout of 60 s (in step 'slow')"
    step = steps_of(body)[("slow", "0")]
    assert step["status"] == "failed" and step["attempts"] == 1  # the run's limit is not retried

    # A run already past its deadline when a worker claims it does not start its next step.
    late = await start(api, t, wid)
    await engine(kernel, ahead=61).work()
    body = await detail(api, t, late)
    assert body["execution"]["status"] == "failed" and body["execution"]["error"]["type"] == "timeout"
    assert ("slow", "0") not in steps_of(body)


# ---- webhooks ----------------------------------------------------------------------------------


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def standard_headers(secret: str, body: bytes, *, at: datetime | None = None, msg_id: str | None = None
                     ) -> dict[str, str]:
    """What a Standard Webhooks sender attaches, signed with the reference package."""
    at = at or datetime.now(UTC)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode()),
            "content-type": "application/json"}


def github_headers(secret: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


def slack_headers(secret: str, body: bytes, stamp: int) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"x-slack-signature": f"v0={digest}", "x-slack-request-timestamp": str(stamp),
            "content-type": "application/json"}


async def hooked(api: AsyncTestClient[Any], t: dict[str, Any], **trigger: Any) -> tuple[str, str]:
    wid = await publish(api, t["h"], [node("start", "workflows.webhook", **trigger),
                                      node("echo", "workflows.set", values={"n": "{{ trigger.body.n }}"})],
                        [edge("start", "echo")])
    made = await api.post(f"/api/workflows/{wid}/webhook", headers=t["h"])
    assert made.status_code == 201, made.text
    path: str = made.json()["path"]
    return wid, path


def refused(response: Any) -> None:
    body = problem(response, 401)
    assert "signature" in body["detail"]


async def test_standard_webhooks_signatures_are_verified_and_bad_ones_record_nothing(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t, other = await tenant(api), await tenant(api)
    secret = whsec()
    stored = await api.put("/api/workflows/secrets/inbound.std", json={"value": secret}, headers=t["h"])
    assert stored.status_code == 204, stored.text
    assert (await api.put("/api/workflows/secrets/bad name", json={"value": "x"}, headers=t["h"])).status_code == 422
    wid, path = await hooked(api, t, verify="standard", secret="inbound.std")

    body = b'{"n": 1}'
    good = standard_headers(secret, body, msg_id="msg_first")
    accepted = await api.post(path, content=body, headers=good)
    assert accepted.status_code == 202, accepted.text
    first = accepted.json()["execution_id"]
    # The sender retries the same message (within the tolerance): the same run, not a second one.
    again = await api.post(path, content=body, headers=good)
    assert again.status_code == 202 and again.json()["execution_id"] == first

    stale = standard_headers(secret, body, at=datetime.now(UTC) - timedelta(minutes=10))
    tampered = {**standard_headers(secret, body), "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    wrong_key = standard_headers(whsec(), body)
    for headers in (stale, tampered, wrong_key, {"content-type": "application/json"}):
        refused(await api.post(path, content=body, headers=headers))
    refused(await api.post(path, content=b'{"n": 2}', headers=standard_headers(secret, body)))  # body changed
    runs = await runs_of(api, t, wid)
    assert [r["id"] for r in runs] == [first]

    await engine(kernel).work()
    assert (await detail(api, t, first))["execution"]["output"] == {"n": 1}
    # The other tenant can neither rotate this workflow's URL nor see its runs; its own secret of
    # the same name does not make deliveries signed with it valid here.
    assert (await api.post(f"/api/workflows/{wid}/webhook", headers=other["h"])).status_code == 404
    assert (await api.get(f"/api/workflows/executions/{first}", headers=other["h"])).status_code == 404
    theirs = whsec()
    assert (await api.put("/api/workflows/secrets/inbound.std", json={"value": theirs},
                          headers=other["h"])).status_code == 204
    refused(await api.post(path, content=body, headers=standard_headers(theirs, body)))
    # A rotated URL: the old one answers 404, as does a path no tenant has.
    rotated = (await api.post(f"/api/workflows/{wid}/webhook", headers=t["h"])).json()["path"]
    assert (await api.post(path, content=body, headers=standard_headers(secret, body))).status_code == 404
    assert (await api.post(rotated, content=body, headers=standard_headers(secret, body))).status_code == 202
    assert len(await runs_of(api, t, wid)) == 2


async def test_a_webhook_url_follows_its_workflow_republished_or_deactivated(api: AsyncTestClient[Any]) -> None:
    """Each delivery answers for the workflow as it is now, though the process remembers what
    answered at the URL: another published version (which may verify otherwise) and deactivation
    are seen by the next delivery."""
    t = await tenant(api)
    secret = whsec()
    stored = await api.put("/api/workflows/secrets/inbound.std", json={"value": secret}, headers=t["h"])
    assert stored.status_code == 204, stored.text
    wid, path = await hooked(api, t)
    body = b'{"n": 1}'
    plain = {"content-type": "application/json"}

    async def deliver(headers: dict[str, str]) -> int:
        return (await api.post(path, content=body, headers=headers)).status_code

    async def change(**fields: Any) -> None:
        current = (await api.get(f"/api/workflows/{wid}", headers=t["h"])).json()
        patched = await api.patch(f"/api/workflows/{wid}", json={**fields, "version": current["version"]},
                                  headers=t["h"])
        assert patched.status_code == 200, patched.text

    async def republish(**trigger: Any) -> None:
        await change(graph={"nodes": [node("start", "workflows.webhook", **trigger),
                                      node("echo", "workflows.set", values={"n": "{{ trigger.body.n }}"})],
                            "edges": [edge("start", "echo")]})
        assert (await api.post(f"/api/workflows/{wid}/publish", headers=t["h"])).status_code == 201

    assert [await deliver(plain), await deliver(plain)] == [202, 202]
    await republish(verify="standard", secret="inbound.std")  # now it must be signed
    refused(await api.post(path, content=body, headers=plain))
    assert [await deliver(standard_headers(secret, body)), await deliver(standard_headers(secret, body))] == [202, 202]
    await republish()  # and now it need not be
    assert await deliver(plain) == 202
    assert sorted(r["version"] for r in await runs_of(api, t, wid)) == [1, 1, 2, 2, 3]
    await change(active=False)
    assert await deliver(plain) == 404
    await change(active=True)
    assert await deliver(plain) == 202


async def test_hmac_signatures_are_verified_with_an_optional_timestamp(api: AsyncTestClient[Any]) -> None:
    t = await tenant(api)
    secret = f"gh-{uuid.uuid4().hex}"
    assert (await api.put("/api/workflows/secrets/gh", json={"value": secret}, headers=t["h"])).status_code == 204
    github, github_path = await hooked(api, t, verify="hmac", secret="gh", hmac_header="x-hub-signature-256",
                                       hmac_prefix="sha256=")
    body = b'{"n": 7}'
    ok = await api.post(github_path, content=body, headers=github_headers(secret, body))
    assert ok.status_code == 202, ok.text
    refused(await api.post(github_path, content=body, headers=github_headers("other-secret", body)))
    refused(await api.post(github_path, content=body, headers={"content-type": "application/json"}))
    refused(await api.post(github_path, content=b'{"n": 8}', headers=github_headers(secret, body)))
    runs = await runs_of(api, t, github)
    assert [r["id"] for r in runs] == [ok.json()["execution_id"]]
    assert "x-hub-signature-256" not in runs[0]["trigger"]["headers"]  # the signature is not kept

    slack, slack_path = await hooked(
        api, t, verify="hmac", secret="gh", hmac_header="x-slack-signature", hmac_prefix="v0=",
        hmac_timestamp_header="x-slack-request-timestamp", hmac_template="v0:{timestamp}:{body}",
    )
    now = int(time.time())
    assert (await api.post(slack_path, content=body, headers=slack_headers(secret, body, now))).status_code == 202
    refused(await api.post(slack_path, content=body, headers=slack_headers(secret, body, now - 600)))  # replayed
    refused(await api.post(slack_path, content=body, headers=github_headers(secret, body)))  # no timestamp
    assert len(await runs_of(api, t, slack)) == 1

    # Verification without a stored secret fails closed.
    unset, unset_path = await hooked(api, t, verify="hmac", secret="never.stored")
    refused(await api.post(unset_path, content=body, headers=github_headers(secret, body)))
    assert await runs_of(api, t, unset) == []


async def test_a_webhook_asked_for_the_result_answers_202_when_the_run_is_not_done_in_time(
    api: AsyncTestClient[Any],
) -> None:
    t = await tenant(api)
    _, path = await hooked(api, t, respond="result", timeout_seconds=0.3)
    # No worker runs here: the run cannot end within the 0.3 s, so the answer is its id and status.
    answer = await api.post(path, json={"n": 3})
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "queued"
    assert (await detail(api, t, answer.json()["execution_id"]))["execution"]["trigger_kind"] == "webhook"


# ---- domain events -----------------------------------------------------------------------------


async def test_event_triggers_start_on_another_plugins_events_that_pass_their_filter(
    api: AsyncTestClient[Any], sem_settings: Settings
) -> None:
    t, other = await tenant(api, "crm"), await tenant(api, "crm")
    vip = await publish(api, t["h"], [
        node("start", "workflows.event", event="crm.contact.created",
             filter="{{ (trigger.email or '').endswith('@vip.example') }}"),
        node("greet", "workflows.set", values={"who": "{{ trigger.first_name }}"}),
    ], [edge("start", "greet")])
    pipeline = await api.post("/api/crm/pipelines", headers=t["h"], json={
        "name": "Sales", "stages": [{"name": "Lead"}, {"name": "Won", "kind": "won"}, {"name": "Lost", "kind": "lost"}],
    })
    assert pipeline.status_code == 201, pipeline.text
    lead, won, lost = (s["id"] for s in pipeline.json()["stages"])
    on_won = await publish(api, t["h"], [
        node("start", "crm.deal_stage_changed", to_stage_id=won),
        node("note", "workflows.set", values={"deal": "{{ trigger.deal_id }}", "stage": "{{ trigger.stage_name }}"}),
    ], [edge("start", "note")])

    worker = build_worker(sem_settings, load_app_plugins(sem_settings.plugins_allowlist), sem_settings.redis_url or "",
                          queue=QUEUE, cron_jobs=False)
    running = asyncio.create_task(worker.main())
    try:
        for first, email in (("Vera", "vera@vip.example"), ("Otto", "otto@plain.example"), ("Nil", None)):
            made = await api.post("/api/crm/contacts", json={"first_name": first, "email": email}, headers=t["h"])
            assert made.status_code == 201, made.text
        # The other tenant's contact from a VIP domain starts nothing in this tenant.
        theirs = await api.post("/api/crm/contacts", json={"first_name": "Ines", "email": "ines@vip.example"},
                                headers=other["h"])
        assert theirs.status_code == 201, theirs.text
        deals = []
        for title in ("won deal", "lost deal"):
            made = await api.post("/api/crm/deals", json={"title": title, "pipeline_id": pipeline.json()["id"]},
                                  headers=t["h"])
            assert made.status_code == 201, made.text
            deals.append(made.json()["id"])
        for deal, stage in zip(deals, (won, lost), strict=True):
            moved = await api.post(f"/api/crm/deals/{deal}/move", json={"stage_id": stage}, headers=t["h"])
            assert moved.status_code == 200, moved.text

        async def done() -> bool:
            runs = await runs_of(api, t, vip) + await runs_of(api, t, on_won)
            return len(runs) >= 2 and all(r["status"] == "succeeded" for r in runs)

        await eventually(done, timeout=90)
        # Let the dispatcher deliver the rest, then check nothing else started: the marker
        # contact is created last, and once its own run exists every earlier event was handled.
        marker = await api.post("/api/crm/contacts", json={"first_name": "Zed", "email": "zed@vip.example"},
                                headers=t["h"])
        assert marker.status_code == 201

        async def marked() -> bool:
            return any(r["output"] == {"who": "Zed"} for r in await runs_of(api, t, vip))

        await eventually(marked, timeout=90)
    finally:
        await worker.close()
        running.cancel()
    outputs = sorted(str(r["output"]) for r in await runs_of(api, t, vip))
    assert outputs == [str({"who": "Vera"}), str({"who": "Zed"})]
    won_runs = await runs_of(api, t, on_won)
    assert [r["output"] for r in won_runs] == [{"deal": deals[0], "stage": "Won"}]
    assert all(r["trigger_kind"] == "event" for r in won_runs)
    assert lead != won
    assert (await api.get("/api/workflows/executions", headers=other["h"])).json()["pagination"]["total"] == 0


async def test_events_handled_together_start_and_resume_each_matching_run_once(
    api: AsyncTestClient[Any], kernel: Kernel, sem_settings: Settings
) -> None:
    """Events that pile up while no worker runs reach the trigger handler as one batch (one
    statement for all of them): each still starts the runs its filters pass, once, and resumes the
    run waiting for it."""
    t = await tenant(api, "crm")
    vip = await publish(api, t["h"], [
        node("start", "workflows.event", event="crm.contact.created",
             filter="{{ (trigger.email or '').endswith('@vip.example') }}"),
        node("greet", "workflows.set", values={"who": "{{ trigger.first_name }}"}),
    ], [edge("start", "greet")])
    every = await publish(api, t["h"], [
        node("start", "workflows.event", event="crm.contact.created"),
        node("greet", "workflows.set", values={"who": "{{ trigger.first_name }}"}),
    ], [edge("start", "greet")])
    waiter = await publish(api, t["h"], [
        node("start", "workflows.manual"),
        node("wait", "workflows.wait_event", event="crm.contact.created", path="email", key="{{ trigger.email }}"),
        node("after", "workflows.set", values={"got": "{{ steps.wait.output.payload.first_name }}"}),
    ], [edge("start", "wait"), edge("wait", "after")])
    waiting = await start(api, t, waiter, {"email": "nina@plain.example"})
    await engine(kernel).work()
    assert (await detail(api, t, waiting))["execution"]["status"] == "waiting"

    people = [("Vera", "vera@vip.example"), ("Otto", "otto@plain.example"), ("Nina", "nina@plain.example"),
              ("Vik", "vik@vip.example"), ("Nil", None)]
    for first, email in people:  # no worker yet: the events wait in the outbox together
        made = await api.post("/api/crm/contacts", json={"first_name": first, "email": email}, headers=t["h"])
        assert made.status_code == 201, made.text

    worker = build_worker(sem_settings, load_app_plugins(sem_settings.plugins_allowlist), sem_settings.redis_url or "",
                          queue=QUEUE, cron_jobs=False)
    running = asyncio.create_task(worker.main())
    try:
        async def handled() -> bool:
            # A batch starts every workflow an event triggers in one transaction: once each
            # event's unfiltered run exists, so does every filtered one.
            runs = await runs_of(api, t, every)
            body = await detail(api, t, waiting)
            return (len(runs) == len(people) and all(r["status"] == "succeeded" for r in runs)
                    and body["execution"]["status"] == "succeeded")

        await eventually(handled, timeout=90)
    finally:
        await worker.close()
        running.cancel()
    assert sorted(str(r["output"]) for r in await runs_of(api, t, every)) == sorted(
        str({"who": first}) for first, _ in people
    )
    vips = await runs_of(api, t, vip)
    assert sorted(str(r["output"]) for r in vips) == sorted(str({"who": w}) for w in ("Vera", "Vik"))
    assert steps_of(await detail(api, t, waiting))[("after", "0")]["output"] == {"got": "Nina"}


async def test_a_runs_own_events_cannot_start_or_resume_runs(api: AsyncTestClient[Any]) -> None:
    """A workflow started by ``workflows.execution.succeeded`` would start itself for ever: saving
    one is refused, naming the field, as is waiting for such an event."""
    t = await tenant(api)
    graphs = [
        ("start", [node("start", "workflows.event", event="workflows.execution.succeeded")], []),
        ("wait", [node("start", "workflows.manual"), node("wait", "workflows.wait_event",
                                                         event="workflows.execution.failed")],
         [edge("start", "wait")]),
    ]
    for bad, nodes, edges in graphs:
        body = {"name": "loop", "graph": {"nodes": nodes, "edges": edges}, "settings": {}}
        response = await api.post("/api/workflows", json=body, headers=t["h"])
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        fields = [e["field"] for e in response.json()["errors"]]
        assert fields == [f"nodes.{bad}.config.event"], response.text
    listed = await api.get("/api/workflows", headers=t["h"])
    assert listed.json()["pagination"]["total"] == 0


# ---- retry -------------------------------------------------------------------------------------


async def test_a_failed_run_is_retried_from_its_failed_step_on_the_pinned_or_the_current_version(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t, other = await tenant(api), await tenant(api)
    nodes = [node("start", "workflows.manual"), node("a", "workflows.set", values={"a": "{{ trigger.n }}"}),
             node("check", "workflows.fail", message="bad {{ steps.a.output.a }}")]
    edges = [edge("start", "a"), edge("a", "check")]
    wid = await publish(api, t["h"], nodes, edges)
    eid = await start(api, t, wid, {"n": 5})
    await engine(kernel).work()
    assert (await detail(api, t, eid))["execution"]["error"]["message"] == "bad 5"

    # Version 2 replaces the failing node (same id, another node) with one that succeeds.
    fixed = [nodes[0], nodes[1], node("check", "workflows.set", values={"ok": "{{ steps.a.output.a }}"})]
    patched = await api.patch(f"/api/workflows/{wid}", json={"graph": {"nodes": fixed, "edges": edges}, "version": 1},
                              headers=t["h"])
    assert patched.status_code == 200, patched.text
    assert (await api.post(f"/api/workflows/{wid}/publish", headers=t["h"])).json()["number"] == 2

    url = f"/api/workflows/executions/{eid}/retry"
    assert (await api.post(url, json={"version": "current"}, headers=other["h"])).status_code == 404
    assert (await api.post(url, json={"version": "sideways"}, headers=t["h"])).status_code in (400, 422)
    pinned = (await api.post(url, json={"version": "pinned"}, headers=t["h"])).json()["execution_id"]
    current = (await api.post(url, json={"version": "current"}, headers=t["h"])).json()["execution_id"]
    seen: list[tuple[str, str]] = []

    async def watch(execution_id: uuid.UUID, node_id: str, iteration: str) -> None:
        seen.append((str(execution_id), node_id))

    await engine(kernel, observer=watch).work()
    on_pinned, on_current = await detail(api, t, pinned), await detail(api, t, current)
    assert on_pinned["execution"]["version"] == 1 and on_pinned["execution"]["status"] == "failed"
    assert on_pinned["execution"]["error"]["message"] == "bad 5"
    assert on_current["execution"]["version"] == 2 and on_current["execution"]["status"] == "succeeded"
    assert on_current["execution"]["output"] == {"ok": 5}
    assert on_current["execution"]["retry_of"] == eid == on_pinned["execution"]["retry_of"]
    # Only the failed step ran again, on each version; "a" kept its checkpoint.
    assert sorted(n for e, n in seen if e in (pinned, current)) == ["check", "check"]
    assert steps_of(on_current)[("a", "0")]["output"] == {"a": 5}
    # A run that succeeded is not retried.
    assert (await api.post(f"/api/workflows/executions/{current}/retry", json={"version": "pinned"},
                           headers=t["h"])).status_code == 409


# ---- run_as ------------------------------------------------------------------------------------


CONTACT = ([node("start", "workflows.manual"), node("add", "crm.create_contact", first_name="{{ trigger.name }}")],
           [edge("start", "add")])


async def test_run_as_an_api_key_acts_with_only_what_both_the_key_and_the_publisher_may(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t, other = await tenant(api, "crm"), await tenant(api, "crm")
    builder_scopes = ["workflows.definitions.read", "workflows.definitions.write", "workflows.executions.write"]
    writer = await new_key(api, t["owner"], scopes=["crm.contacts.write", "crm.contacts.read"])
    reader = await new_key(api, t["owner"], scopes=["crm.contacts.read"])
    builder = await new_key(api, t["owner"], scopes=builder_scopes)

    # The owner publishes to run as the writing key: its steps may create contacts.
    allowed = await publish(api, t["h"], *CONTACT, run_as=writer["id"])
    # The owner publishes to run as a key that may only read contacts: the step fails.
    too_weak = await publish(api, t["h"], *CONTACT, run_as=reader["id"])
    # A publisher that may not write contacts chooses the writing key: still no contacts.
    elevated = await publish(api, at(t, key=builder["key"]), *CONTACT, run_as=writer["id"])
    runs = {name: await start(api, t, wid, {"name": name})
            for name, wid in (("Allowed", allowed), ("Weak", too_weak), ("Elevated", elevated))}
    await engine(kernel).work()

    body = await detail(api, t, runs["Allowed"])
    assert body["execution"]["status"] == "succeeded", body
    made = steps_of(body)[("add", "0")]["output"]
    assert made["first_name"] == "Allowed"
    for name in ("Weak", "Elevated"):
        body = await detail(api, t, runs[name])
        assert body["execution"]["status"] == "failed", body
        error = steps_of(body)[("add", "0")]["error"]
        assert error["status"] == 403
        assert error["message"] == ("crm.create_contact needs the permission 'crm.contacts.write', "
                                    "which the workflow's principal lacks")
    names = [c["first_name"] for c in (await api.get("/api/crm/contacts", headers=t["h"])).json()["contacts"]]
    assert names == ["Allowed"]
    # The contact was made by the key, as its audit trail shows.
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.created"}, headers=t["h"])).json()
    assert [entry["actor"] for entry in logs["items"]] == [f"api_key:{writer['id']}"]

    # Once the chosen key is revoked, its workflow's actions stop (its runs act as the key).
    assert (await api.delete(f"/api/api-keys/{writer['id']}", headers=t["owner"])).status_code in (200, 204)
    after = await start(api, t, allowed, {"name": "After"})
    await engine(kernel).work()
    body = await detail(api, t, after)
    assert body["execution"]["status"] == "failed", body
    error = steps_of(body)[("add", "0")]["error"]
    assert error["status"] == 403
    assert error["message"] == f"the workflow runs as API key {writer['id']}, which is revoked, expired or deleted"

    # A key that is not this tenant's, is revoked or does not exist cannot be chosen.
    theirs = await new_key(api, other["owner"], scopes=["crm.contacts.write"])
    revoked = await new_key(api, t["owner"], scopes=["crm.contacts.write"])
    assert (await api.delete(f"/api/api-keys/{revoked['id']}", headers=t["owner"])).status_code in (200, 204)
    for key_id in (theirs["id"], revoked["id"], str(uuid.uuid4())):
        wid = await draft(api, t["h"], *CONTACT, run_as=key_id)
        body = problem(await api.post(f"/api/workflows/{wid}/publish", headers=t["h"]), 422)
        assert [e["field"] for e in body["errors"]] == ["settings.run_as"]


# ---- cancel ------------------------------------------------------------------------------------


async def test_cancel_reaches_the_sub_workflow_runs_a_run_waits_for(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t, other = await tenant(api), await tenant(api)
    grandchild = await publish(api, t["h"], [node("start", "workflows.manual"),
                                             node("wait", "workflows.delay", seconds=600)], [edge("start", "wait")])
    child = await publish(api, t["h"], [node("start", "workflows.manual"),
                                        node("call", "workflows.sub_workflow", workflow_id=grandchild)],
                          [edge("start", "call")])
    parent_nodes = [node("start", "workflows.manual"), node("call", "workflows.sub_workflow", workflow_id=child),
                    node("after", "workflows.set", values={"done": True})]
    parent = await publish(api, t["h"], parent_nodes, [edge("start", "call"), edge("call", "after")])
    eid = await start(api, t, parent)
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "waiting", body
    child_id = steps_of(body)[("call", "0")]["output"]["execution_id"]
    grandchild_id = steps_of(await detail(api, t, child_id))[("call", "0")]["output"]["execution_id"]
    assert (await detail(api, t, grandchild_id))["execution"]["status"] == "waiting"

    assert (await api.post(f"/api/workflows/executions/{eid}/cancel", headers=other["h"])).status_code == 404
    assert (await detail(api, t, child_id))["execution"]["status"] == "waiting"
    cancelled = await api.post(f"/api/workflows/executions/{eid}/cancel", headers=t["h"])
    assert cancelled.status_code == 200, cancelled.text
    for run_id in (eid, child_id, grandchild_id):
        body = await detail(api, t, run_id)
        assert body["execution"]["status"] == "cancelled", body
        assert all(s["status"] in ("succeeded", "cancelled") for s in body["steps"])
    error = (await detail(api, t, grandchild_id))["execution"]["error"]
    assert error["message"] == f"cancelled with its parent run {eid}"
    await engine(kernel, ahead=700).work()  # the delay's time comes: nothing runs again
    assert (await detail(api, t, grandchild_id))["execution"]["status"] == "cancelled"
    assert ("after", "0") not in steps_of(await detail(api, t, eid))

    # Cancelling only a sub-workflow's run fails the step waiting for it; the parent goes on
    # along its error port.
    handled = await publish(api, t["h"], [
        node("start", "workflows.manual"),
        node("call", "workflows.sub_workflow", workflow_id=grandchild, _extra={"on_error": "port"}),
        node("fallback", "workflows.set", values={"why": "{{ steps.call.output.error.message }}"}),
    ], [edge("start", "call"), edge("call", "fallback", "error")])
    eid = await start(api, t, handled)
    await engine(kernel).work()
    child_id = steps_of(await detail(api, t, eid))[("call", "0")]["output"]["execution_id"]
    assert (await api.post(f"/api/workflows/executions/{child_id}/cancel", headers=t["h"])).status_code == 200
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded", body
    assert body["execution"]["output"] == {"why": "the sub-workflow cancelled"}


# ---- approvals ---------------------------------------------------------------------------------


async def test_approvals_are_decided_only_within_their_tenant_and_with_the_permission(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t, other = await tenant(api), await tenant(api)
    nodes = [node("start", "workflows.manual"), node("ok", "workflows.approval", title="Pay {{ trigger.amount }}"),
             node("paid", "workflows.set", values={"by": "{{ steps.ok.output.decided_by }}"})]
    wid = await publish(api, t["h"], nodes, [edge("start", "ok"), edge("ok", "paid", "approved")])
    eid = await start(api, t, wid, {"amount": 12})
    await engine(kernel).work()
    pending = (await api.get("/api/workflows/approvals", params={"status": "pending"}, headers=t["h"])).json()
    [approval] = pending["approvals"]
    assert approval["execution_id"] == eid and approval["title"] == "Pay 12"
    decide = f"/api/workflows/approvals/{approval['id']}/decide"

    # Another tenant sees none of them and cannot decide this one (404, as for any unknown id).
    assert (await api.get("/api/workflows/approvals", headers=other["h"])).json()["pagination"]["total"] == 0
    problem(await api.post(decide, json={"decision": "approve"}, headers=other["h"]), 404)
    # A member (by default without workflows.approvals.decide) may list them but not decide.
    member = await new_key(api, t["owner"], role="member")
    as_member = at(t, key=member["key"])
    assert (await api.get("/api/workflows/approvals", headers=as_member)).status_code == 200
    body = problem(await api.post(decide, json={"decision": "approve"}, headers=as_member), 403)
    assert "workflows.approvals.decide" in body["detail"]
    bad = await api.post(decide, json={"decision": "maybe"}, headers=t["h"])
    assert bad.status_code in (400, 422) and "decision" in bad.text
    still = (await api.get("/api/workflows/approvals", params={"status": "pending"}, headers=t["h"])).json()
    assert [a["id"] for a in still["approvals"]] == [approval["id"]]

    approver = await new_key(api, t["owner"], scopes=["workflows.approvals.decide"])
    decided = await api.post(decide, json={"decision": "approve"}, headers=at(t, key=approver["key"]))
    assert decided.status_code == 200, decided.text
    assert decided.json()["decided_by"] == f"api_key:{approver['id']}"
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded"
    assert body["execution"]["output"] == {"by": f"api_key:{approver['id']}"}


async def test_a_sub_workflow_that_cannot_start_fails_its_step_instead_of_the_worker(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant(api)
    unpublished = await draft(api, t["h"], [node("start", "workflows.manual")], [])
    plain = await publish(api, t["h"], [node("start", "workflows.manual"),
                                        node("call", "workflows.sub_workflow", workflow_id=unpublished)],
                          [edge("start", "call")])
    handled = await publish(api, t["h"], [
        node("start", "workflows.manual"),
        node("call", "workflows.sub_workflow", workflow_id=unpublished, _extra={"on_error": "port"}),
        node("fallback", "workflows.set", values={"why": "{{ steps.call.output.error.status }}"}),
    ], [edge("start", "call"), edge("call", "fallback", "error")])
    detached = await publish(api, t["h"], [
        node("start", "workflows.manual"),
        node("call", "workflows.sub_workflow", workflow_id=unpublished, wait=False, _extra={"on_error": "continue"}),
    ], [edge("start", "call")])
    failing, going_on, not_waiting = (await start(api, t, plain), await start(api, t, handled),
                                      await start(api, t, detached))
    await engine(kernel).work()

    body = await detail(api, t, failing)
    assert body["execution"]["status"] == "failed", body
    error = body["execution"]["error"]
    assert error["node"] == "call" and error["status"] == 409
    assert error["message"] == f"the sub-workflow could not start: workflow {unpublished} has no published version"
    body = await detail(api, t, going_on)
    assert body["execution"]["status"] == "succeeded" and body["execution"]["output"] == {"why": 409}
    body = await detail(api, t, not_waiting)
    assert body["execution"]["status"] == "succeeded", body
    assert steps_of(body)[("call", "0")]["status"] == "failed"
    assert await runs_of(api, t, unpublished) == []


async def test_a_run_acts_with_no_more_than_its_publisher_holds_now(api: AsyncTestClient[Any], kernel: Kernel) -> None:
    t = await tenant(api, "crm")
    admin = await join(api, t, "admin")
    as_admin = at(t, admin["access_token"])
    admin["user_id"] = (await api.get("/api/auth/me", headers=as_admin)).json()["id"]
    wid = await publish(api, as_admin, *CONTACT)
    first = await start(api, t, wid, {"name": "Before"})
    await engine(kernel).work()
    assert (await detail(api, t, first))["execution"]["status"] == "succeeded"

    # The publisher becomes a viewer: the version's stored permissions no longer hold.
    demoted = await api.put(f"/api/tenant/members/{admin['user_id']}", json={"role": "viewer"}, headers=t["owner"])
    assert demoted.status_code == 200, demoted.text
    second = await start(api, t, wid, {"name": "Demoted"})
    await engine(kernel).work()
    error = steps_of(await detail(api, t, second))[("add", "0")]["error"]
    assert error["status"] == 403 and "crm.contacts.write" in error["message"]

    # Removed from the tenant: the run's actions stop.
    removed = await api.delete(f"/api/tenant/members/{admin['user_id']}", headers=t["owner"])
    assert removed.status_code == 204, removed.text
    third = await start(api, t, wid, {"name": "Gone"})
    await engine(kernel).work()
    error = steps_of(await detail(api, t, third))[("add", "0")]["error"]
    assert error == {"message": f"the workflow runs as its publisher user:{admin['user_id']}, who is no longer a "
                                "member", "type": "permission", "transient": False, "status": 403}
    names = [c["first_name"] for c in (await api.get("/api/crm/contacts", headers=t["h"])).json()["contacts"]]
    assert names == ["Before"]
