"""NATS end to end against a real nats-server with JetStream: a published workflow, run by the
platform's real job worker, publishes to a subject a real subscriber receives once; a tenant's
JetStream durable consumer starts one execution per message, acknowledging only what it recorded,
so a message redelivered after a crash starts nothing twice; a bad server URL fails the
connection test and the step, naming ``servers``; two tenants stay apart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

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
from connectors.nats.consumers import ConsumerSettings, consumer_name, record_message
from connectors.nats.tests.nats_server import PASSWORD, USER, NatsServer
from kernel.testing import Settings, TestWorker, eventually, open_client, open_services, running_worker


@pytest.fixture(scope="module")
async def settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return await workflow_settings(
        businessos_servers, businessos_database_url, Path(tmp_path_factory.mktemp("nats-wf-data")), "nats"
    )


@pytest.fixture(scope="module")
async def api(settings: Settings, nats_server: NatsServer, quick_refresh: None) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(settings) as client:
        yield client


@pytest.fixture(scope="module")
async def worker(settings: Settings, nats_server: NatsServer, quick_refresh: None) -> AsyncIterator[TestWorker]:
    async with running_worker(settings) as running:
        yield running


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Any]:
    """A NATS client of the test's own: a subscriber, and JetStream administration."""
    connected = await nats.connect(nats_server.url, user=USER, password=PASSWORD)
    yield connected
    await connected.close()


def _creds(server: NatsServer, **changes: Any) -> dict[str, Any]:
    return {"servers": server.url, "user": USER, "password": PASSWORD, **changes}


async def _tenant(api: AsyncTestClient[Any], server: NatsServer, prefix: str) -> tuple[dict[str, Any], str]:
    tenant = await tenant_with(api, "nats", prefix, "workflows")
    made = await make_connection(api, tenant, "nats.server", _creds(server))
    return tenant, str(made["id"])


def _token(tenant: dict[str, Any]) -> str:
    """A subject token unique to the tenant (slugs may hold only letters, digits and dashes)."""
    return str(tenant["slug"])


async def test_a_published_workflow_publishes_to_a_subject_a_subscriber_receives_once(
    api: AsyncTestClient[Any], nats_server: NatsServer, worker: TestWorker, client: Any
) -> None:
    tenant, connection = await _tenant(api, nats_server, "nats-pub")
    subject = f"e2e-{_token(tenant)}.orders.created"
    stored = f"kept-{_token(tenant)}.orders.created"
    stream = f"S{uuid.uuid4().hex[:10]}"
    js = client.jetstream()
    await js.add_stream(name=stream, subjects=[f"kept-{_token(tenant)}.>"])
    received: list[Msg] = []
    sentinel = asyncio.Event()

    async def take(msg: Msg) -> None:
        if msg.data == b"sentinel":
            sentinel.set()
        else:
            received.append(msg)

    await client.subscribe(subject, cb=take)
    await client.flush()

    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"),
        step("announce", "nats.publish", connection=connection, subject=subject, jetstream=False,
             payload={"order": "{{ trigger.order }}", "customer": "{{ trigger.customer }}"},
             headers={"X-Source": "workflow {{ execution.workflow_id }}"}),
        step("keep", "nats.publish", connection=connection, subject=stored,
             payload={"order": "{{ trigger.order }}"}),
    ])
    execution = await start_run(api, tenant, workflow, {"order": 42, "customer": "ACME"})
    detail = await finished_run(api, tenant, execution)
    assert detail["execution"]["status"] == "succeeded", detail
    steps = steps_of(detail)

    # The step flushed its message before it succeeded, so the server routed it before this one.
    await client.publish(subject, b"sentinel")
    await asyncio.wait_for(sentinel.wait(), 30)
    [message] = received
    assert message.data == b'{"order":42,"customer":"ACME"}'
    assert message.headers is not None and message.headers["Nats-Msg-Id"] == f"{execution}:announce:0"
    assert message.headers["X-Source"] == f"workflow {workflow}"
    assert steps["announce"]["output"] == {
        "subject": subject, "msg_id": f"{execution}:announce:0", "stream": None, "sequence": None, "duplicate": False,
    }

    kept = steps["keep"]["output"]
    assert (kept["stream"], kept["sequence"], kept["duplicate"]) == (stream, 1, False)
    got = await js.get_msg(stream, 1)
    assert got.data == b'{"order":42}' and got.headers["Nats-Msg-Id"] == f"{execution}:keep:0"


async def test_a_durable_consumer_starts_one_execution_per_message_even_when_one_is_redelivered(
    api: AsyncTestClient[Any], nats_server: NatsServer, worker: TestWorker, client: Any, settings: Settings
) -> None:
    tenant, connection = await _tenant(api, nats_server, "nats-in")
    other, _ = await _tenant(api, nats_server, "nats-in-b")
    token = _token(tenant)
    js = client.jetstream()
    stream = f"S{uuid.uuid4().hex[:10]}"
    await js.add_stream(name=stream, subjects=[f"in-{token}.>"])
    workflow = await publish_workflow(api, tenant, [
        step("start", "nats.message_received", stream=stream, subject=f"in-{token}.*"),
        step("seen", "workflows.set", values={"order": "{{ trigger.data.order }}", "seq": "{{ trigger.sequence }}"}),
    ])
    theirs = await publish_workflow(api, other, [
        step("start", "nats.message_received"), step("seen", "workflows.set", values={"s": "{{ trigger.subject }}"}),
    ])
    # Tenant B cannot name tenant A's connection in its own consumer settings: refused at save.
    stolen = ConsumerSettings(connection=uuid.UUID(connection), stream=stream, ack_wait_seconds=1.0)
    refused = await api.put("/api/modules/nats/settings", headers=other["h"], json={
        "consumers": [{"connection": connection, "stream": stream, "ack_wait_seconds": 1.0}],
    })
    assert refused.status_code == 422, refused.text

    # A process of the platform took two messages and died before acknowledging them: the first
    # after it had recorded it (the event is in the outbox), the second before.
    wanted = ConsumerSettings(
        connection=uuid.UUID(connection), stream=stream, subject=f"in-{token}.*", ack_wait_seconds=1.0
    )
    durable = consumer_name(uuid.UUID(tenant["id"]), wanted)
    for n in (1, 2):
        await js.publish(f"in-{token}.order", f'{{"order": {n}}}'.encode())
    await js.add_consumer(stream, ConsumerConfig(
        durable_name=durable, ack_policy=AckPolicy.EXPLICIT, filter_subject=wanted.subject, ack_wait=1.0,
    ))
    crashed = await js.pull_subscribe_bind(durable=durable, stream=stream)
    first, second = await crashed.fetch(2, timeout=10)
    async with open_services(settings, "nats") as services:
        assert await record_message(services, uuid.UUID(tenant["id"]), wanted, durable, first) is True
    del second  # taken, never recorded, never acknowledged

    # Now the tenant's consumer runs in the platform's processes, and one more message arrives.
    saved = await api.put("/api/modules/nats/settings", headers=tenant["h"], json={
        "consumers": [{"connection": connection, "stream": stream, "subject": wanted.subject,
                       "ack_wait_seconds": 1.0}],
    })
    assert saved.status_code == 200, saved.text
    await js.publish(f"in-{token}.order", b'{"order": 3}')

    async def all_ran_and_acknowledged() -> bool:
        runs = await runs_of(api, tenant, workflow)
        if sorted(r["status"] for r in runs) != ["succeeded"] * 3:
            return False
        info = await js.consumer_info(stream, durable)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(all_ran_and_acknowledged, timeout=90)
    info = await js.consumer_info(stream, durable)
    assert info.delivered.consumer_seq >= 5  # 1 and 2 were delivered again after the crash
    runs = await runs_of(api, tenant, workflow)
    assert sorted((r["output"]["seq"], r["output"]["order"]) for r in runs) == [(1, 1), (2, 2), (3, 3)]
    assert {r["trigger_kind"] for r in runs} == {"event"}
    async with open_services(settings, "nats") as services:
        events = await recorded_events(services, uuid.UUID(tenant["id"]), "nats.message.received")
        assert sorted(e["sequence"] for e in events) == [1, 2, 3]
        assert await recorded_events(services, uuid.UUID(other["id"]), "nats.message.received") == []
    assert await runs_of(api, other, theirs) == []
    with pytest.raises(NotFoundError):
        await js.consumer_info(stream, consumer_name(uuid.UUID(other["id"]), stolen))


async def test_a_bad_server_url_fails_the_connection_test_and_the_step_naming_servers(
    api: AsyncTestClient[Any], nats_server: NatsServer, worker: TestWorker
) -> None:
    tenant = await tenant_with(api, "nats", "nats-bad", "workflows")
    made = await make_connection(api, tenant, "nats.server", _creds(nats_server, servers="nats://127.0.0.1:1"))
    tested = await api.post(f"/api/connections/{made['id']}/test", headers=tenant["h"])
    assert tested.status_code == 200, tested.text
    result = tested.json()
    assert result["ok"] is False and result["error"]["detail"].startswith("NATS: cannot connect")
    assert result["error"]["status"] == 502
    assert [e["field"].rsplit(".", 1)[-1] for e in result["error"]["errors"]] == ["servers"]
    malformed = await make_connection(api, tenant, "nats.server", _creds(nats_server, servers="http://x"), name="m")
    result = (await api.post(f"/api/connections/{malformed['id']}/test", headers=tenant["h"])).json()
    assert result["ok"] is False and "is not a nats:// or tls:// URL" in result["error"]["detail"]

    # An unreachable server may be an outage: the step's failure is transient, so its retry
    # policy applies (two attempts here), and the run fails saying why.
    sending = step("send", "nats.publish", connection=made["id"], subject="orders.created", payload=1)
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"), {**sending, "retry": {"attempts": 2, "backoff_seconds": 0}},
    ])
    detail = await finished_run(api, tenant, await start_run(api, tenant, workflow))
    assert detail["execution"]["status"] == "failed"
    sent = steps_of(detail)["send"]
    assert sent["attempts"] == 2, sent
    error = sent["error"]
    assert error["status"] == 502 and error["transient"] is True, error
    assert error["message"].startswith("NATS: cannot connect"), error


async def test_another_tenants_connection_cannot_be_read_tested_or_used(
    api: AsyncTestClient[Any], nats_server: NatsServer, worker: TestWorker, client: Any
) -> None:
    owner, connection = await _tenant(api, nats_server, "nats-a")
    intruder, _ = await _tenant(api, nats_server, "nats-b")
    assert (await api.get(f"/api/connections/{connection}", headers=intruder["h"])).status_code == 404
    assert (await api.post(f"/api/connections/{connection}/test", headers=intruder["h"])).status_code == 404
    subject = f"stolen-{_token(intruder)}.x"
    received: list[Msg] = []

    async def take(msg: Msg) -> None:
        received.append(msg)

    await client.subscribe(subject, cb=take)
    assert await refused_workflow(api, intruder, [
        step("start", "workflows.manual"),
        step("send", "nats.publish", connection=connection, subject=subject, jetstream=False, payload=1),
    ]) == ["nodes.send.config.connection"]
    await client.flush()
    assert received == []
    assert (await api.post(f"/api/connections/{connection}/test", headers=owner["h"])).json()["ok"] is True
