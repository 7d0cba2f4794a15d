"""Slack end to end: published workflows run by the platform's real job worker post to the local
Web API server, a signed Events API delivery starts a workflow, and two tenants stay apart.

Everything goes over HTTP as a tenant would do it (connections, workflows, runs, the inbound
route); outcomes are read back over HTTP with bounded polling."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from slack_sdk.signature import SignatureVerifier

from connectors.conftest import (
    finished_run,
    make_connection,
    publish_workflow,
    recorded_events,
    refused_workflow,
    runs_of,
    start_run,
    step,
    steps_of,
    tenant_with,
    workflow_settings,
)
from connectors.slack.tests.fake_slack import GOOD_TOKEN, FakeSlack
from kernel.testing import Settings, TestWorker, eventually, open_client, open_services, running_worker

SIGNING_SECRET = "e2e-signing-secret-0123456789abcdef"


@pytest.fixture(scope="module")
async def settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return await workflow_settings(
        businessos_servers, businessos_database_url, Path(tmp_path_factory.mktemp("slack-wf")), "slack"
    )


@pytest.fixture(scope="module")
async def api(settings: Settings, fake: FakeSlack) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(settings) as client:
        yield client


@pytest.fixture(scope="module")
async def worker(settings: Settings, fake: FakeSlack) -> AsyncIterator[TestWorker]:
    async with running_worker(settings) as running:
        yield running


async def _tenant(api: AsyncTestClient[Any], prefix: str, token: str = GOOD_TOKEN) -> tuple[dict[str, Any], str]:
    tenant = await tenant_with(api, "slack", prefix, "workflows")
    made = await make_connection(api, tenant, "slack.bot", {"bot_token": token, "signing_secret": SIGNING_SECRET})
    return tenant, str(made["id"])


def _posted(fake: FakeSlack, marker: str) -> list[dict[str, Any]]:
    """The messages the fake workspace took whose text holds ``marker``, in the order posted."""
    return [m for m in fake.posted if marker in str(m.get("text", ""))]


def _signed(body: bytes, secret: str = SIGNING_SECRET, at: int | None = None) -> dict[str, str]:
    """The headers Slack sends with a delivery, signed by slack_sdk's own implementation."""
    timestamp = str(at if at is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature, "Content-Type": "application/json"}


async def test_a_published_workflow_posts_blocks_a_thread_reply_and_to_a_channel_by_name(
    api: AsyncTestClient[Any], fake: FakeSlack, worker: TestWorker
) -> None:
    tenant, connection = await _tenant(api, "slk-wf")
    marker = uuid.uuid4().hex[:8]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deal won*: {{ trigger.customer }}"}}]
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"),
        step("announce", "slack.post_message", connection=connection, channel="CGENERAL1",
             text="Deal won: {{ trigger.customer }}", blocks=blocks),
        step("details", "slack.post_message", connection=connection, channel="{{ steps.announce.output.channel }}",
             thread_ts="{{ steps.announce.output.ts }}", text="{{ trigger.customer }}: details in thread",
             reply_broadcast=True),
        step("by_name", "slack.post_to_channel", connection=connection, channel_name="#general",
             text="{{ trigger.customer }} by name"),
    ])
    execution = await start_run(api, tenant, workflow, {"customer": f"ACME-{marker}"})
    detail = await finished_run(api, tenant, execution)
    assert detail["execution"]["status"] == "succeeded", detail
    steps = steps_of(detail)

    announce, details, by_name = _posted(fake, marker)
    assert announce["channel"] == "CGENERAL1" and announce["text"] == f"Deal won: ACME-{marker}"
    assert announce["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Deal won*: ACME-{marker}"}}
    ]
    first = steps["announce"]["output"]
    assert first["channel"] == "CGENERAL1" and first["thread_ts"] is None
    assert details["thread_ts"] == first["ts"] and details["reply_broadcast"] is True
    assert steps["details"]["output"]["thread_ts"] == first["ts"] and steps["details"]["output"]["ts"] != first["ts"]
    assert by_name["channel"] == "CGENERAL1" and steps["by_name"]["output"]["channel"] == "CGENERAL1"


async def test_a_refused_token_fails_the_connection_test_and_the_step_saying_why(
    api: AsyncTestClient[Any], fake: FakeSlack, worker: TestWorker
) -> None:
    tenant, revoked = await _tenant(api, "slk-bad", token="xoxb-revoked")
    tested = await api.post(f"/api/connections/{revoked}/test", headers=tenant["h"])
    assert tested.status_code == 200, tested.text
    result = tested.json()
    assert result["ok"] is False
    assert result["error"]["detail"] == "Slack: Slack does not accept the bot token (invalid_auth)"
    assert [e["field"].rsplit(".", 1)[-1] for e in result["error"]["errors"]] == ["bot_token"]

    marker = uuid.uuid4().hex[:8]
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"),
        step("post", "slack.post_message", connection=revoked, channel="CGENERAL1", text=f"never {marker}"),
    ])
    detail = await finished_run(api, tenant, await start_run(api, tenant, workflow))
    assert detail["execution"]["status"] == "failed"
    error = steps_of(detail)["post"]["error"]
    assert error["status"] == 422 and "invalid_auth" in error["message"] and error["transient"] is False
    assert _posted(fake, marker) == []


async def test_a_signed_slack_event_starts_a_published_workflow_once(
    api: AsyncTestClient[Any], fake: FakeSlack, worker: TestWorker, settings: Settings
) -> None:
    tenant, connection = await _tenant(api, "slk-ev")
    other, _ = await _tenant(api, "slk-ev-b")
    listening = [
        step("start", "slack.event_received", connection=connection, event_types=["message"]),
        step("echo", "slack.post_message", connection=connection, channel="{{ trigger.channel }}",
             thread_ts="{{ trigger.ts }}", text="echo: {{ trigger.text }}"),
    ]
    workflow = await publish_workflow(api, tenant, listening)
    # Tenant B listens to every Slack event of its own: tenant A's deliveries must not reach it.
    theirs = await publish_workflow(api, other, [
        step("start", "slack.event_received"), step("noted", "workflows.set", values={"t": "{{ trigger.text }}"}),
    ])
    made = await api.post("/api/slack/events-url", json={"connection": connection}, headers=tenant["h"])
    assert made.status_code == 201, made.text
    path = made.json()["path"]

    challenge = json.dumps({"token": "legacy", "challenge": "c-" + uuid.uuid4().hex, "type": "url_verification"})
    answered = await api.post(path, content=challenge.encode(), headers=_signed(challenge.encode()))
    assert answered.status_code == 200 and answered.json() == {"challenge": json.loads(challenge)["challenge"]}

    marker = uuid.uuid4().hex[:8]
    event = {"type": "message", "channel": "CGENERAL1", "user": "U0ADA", "text": f"hello {marker}",
             "ts": "1700000050.000100"}
    body = json.dumps({"type": "event_callback", "team_id": "T0FAKE", "event_id": f"Ev{marker}",
                       "event_time": 1700000050, "event": event}).encode()
    refused = {
        "bad secret": _signed(body, secret="not-the-signing-secret"),
        "stale": _signed(body, at=int(time.time()) - 301),
        "unsigned": {"Content-Type": "application/json"},
    }
    for label, headers in refused.items():
        answer = await api.post(path, content=body, headers=headers)
        assert answer.status_code == 401, (label, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    # Tenant B's connection (same signing secret, even) cannot sign for tenant A's endpoint: the
    # connection named in the URL is looked up in the endpoint's tenant only.
    _, theirs_connection = await _tenant(api, "slk-ev-c")
    crossed = await api.post(path.replace(connection, theirs_connection), content=body, headers=_signed(body))
    assert crossed.status_code == 401, crossed.text
    async with open_services(settings, "slack") as services:
        assert await recorded_events(services, uuid.UUID(tenant["id"]), "slack.event.received") == []

    accepted = await api.post(path, content=body, headers=_signed(body))
    assert accepted.status_code == 204, accepted.text
    retried = await api.post(path, content=body, headers={**_signed(body), "X-Slack-Retry-Num": "1"})
    assert retried.status_code == 204, retried.text

    async def ran() -> bool:
        return [r["status"] for r in await runs_of(api, tenant, workflow)] == ["succeeded"]

    await eventually(ran, timeout=60)
    [run] = await runs_of(api, tenant, workflow)
    assert run["trigger_kind"] == "event"
    assert run["trigger"]["text"] == f"hello {marker}" and run["trigger"]["event_id"] == f"Ev{marker}"
    [reply] = _posted(fake, marker)
    assert reply["text"] == f"echo: hello {marker}" and reply["thread_ts"] == "1700000050.000100"
    detail = await finished_run(api, tenant, run["id"])
    assert steps_of(detail)["echo"]["output"]["thread_ts"] == "1700000050.000100"
    assert await runs_of(api, other, theirs) == []
    assert (await api.get(f"/api/workflows/executions/{run['id']}", headers=other["h"])).status_code == 404


async def test_another_tenants_connection_cannot_be_read_tested_or_used(
    api: AsyncTestClient[Any], fake: FakeSlack, worker: TestWorker
) -> None:
    owner, connection = await _tenant(api, "slk-a")
    intruder, _ = await _tenant(api, "slk-b")
    for answer in (
        await api.get(f"/api/connections/{connection}", headers=intruder["h"]),
        await api.post(f"/api/connections/{connection}/test", headers=intruder["h"]),
        await api.post("/api/slack/events-url", json={"connection": connection}, headers=intruder["h"]),
    ):
        assert answer.status_code == 404, answer.text
    listed = (await api.get("/api/connections", headers=intruder["h"])).json()
    assert connection not in json.dumps(listed)

    marker = uuid.uuid4().hex[:8]
    tried = await api.post("/api/workflows/nodes/slack.post_message/test", headers=intruder["h"], json={
        "config": {"connection": connection, "channel": "CGENERAL1", "text": f"node test {marker}"}, "input": {},
    })
    assert tried.status_code == 200 and tried.json()["ok"] is False and tried.json()["error"]["status"] == 404

    assert await refused_workflow(api, intruder, [
        step("start", "workflows.manual"),
        step("post", "slack.post_message", connection=connection, channel="CGENERAL1", text=f"stolen {marker}"),
    ]) == ["nodes.post.config.connection"]
    assert _posted(fake, marker) == []
    # The owner's connection is untouched and still works for the owner.
    assert (await api.post(f"/api/connections/{connection}/test", headers=owner["h"])).json()["ok"] is True
