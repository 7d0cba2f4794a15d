"""The NATS connector against a real nats-server with JetStream: the check, publishing with
``Nats-Msg-Id`` deduplication, and durable consumers that record each message once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from litestar.testing import AsyncTestClient
from nats.js.api import AckPolicy, ConsumerConfig

from connectors.conftest import make_connection, recorded_events, tenant_with
from connectors.nats.consumers import ConsumerSettings, consumer_name, record_message
from connectors.nats.nodes import NODES, MessageConfig, PublishConfig, message_matches, subject_matches
from connectors.nats.tests.nats_server import PASSWORD, USER, NatsServer
from kernel import sdk
from kernel.testing import Settings, eventually, node_context, open_client, open_services, platform_settings

PUBLISH = NODES[0].run


@pytest.fixture(scope="module")
async def nats_settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    # http too: its connections are of another plugin's type, which a nats consumer may not name.
    return await platform_settings(
        businessos_database_url, businessos_servers[1], Path(tmp_path_factory.mktemp("natsdata")), {"nats", "http"},
        BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32",
    )


@pytest.fixture(scope="module")
async def api(
    nats_settings: Settings, nats_server: NatsServer, quick_refresh: None
) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(nats_settings) as client:
        yield client


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[Any]:
    """A JetStream context of the test's own, to make streams and look at consumers."""
    client = await nats.connect(nats_server.url, user=USER, password=PASSWORD)
    yield client.jetstream()
    await client.close()


def _creds(server: NatsServer, **changes: Any) -> dict[str, Any]:
    return {"servers": server.url, "user": USER, "password": PASSWORD, **changes}


async def _connected(
    api: AsyncTestClient[Any], server: NatsServer, prefix: str = "nats"
) -> tuple[dict[str, Any], uuid.UUID]:
    tenant = await tenant_with(api, "nats", prefix)
    made = await make_connection(api, tenant, "nats.server", _creds(server))
    return tenant, uuid.UUID(made["id"])


async def _stream(js: Any, subjects: list[str]) -> str:
    name = f"S{uuid.uuid4().hex[:10]}"
    await js.add_stream(name=name, subjects=subjects)
    return name


async def test_check_connects_and_names_what_failed(api: AsyncTestClient[Any], nats_server: NatsServer) -> None:
    tenant, good = await _connected(api, nats_server)
    passed = (await api.post(f"/api/connections/{good}/test", headers=tenant["h"])).json()
    assert passed["ok"] is True, passed
    cases = {
        "password": _creds(nats_server, password="wrong"),
        "servers": _creds(nats_server, servers="nats://127.0.0.1:1"),
    }
    for field, creds in cases.items():
        made = await make_connection(api, tenant, "nats.server", creds, name=field)
        failed = (await api.post(f"/api/connections/{made['id']}/test", headers=tenant["h"])).json()
        assert failed["ok"] is False, failed
        assert [e["field"].rsplit(".", 1)[-1] for e in failed["error"]["errors"]] == [field], failed
    private = await make_connection(
        api, tenant, "nats.server", _creds(nats_server, servers="nats://10.9.8.7:4222"), name="private"
    )
    refused = (await api.post(f"/api/connections/{private['id']}/test", headers=tenant["h"])).json()
    assert refused["ok"] is False and "not a public address" in refused["error"]["detail"]


async def test_publish_sends_the_steps_key_as_nats_msg_id_so_retries_are_stored_once(
    api: AsyncTestClient[Any], nats_server: NatsServer, nats_settings: Settings, js: Any
) -> None:
    tenant, connection = await _connected(api, nats_server)
    stream = await _stream(js, [f"orders-{tenant['slug']}.>"])
    subject = f"orders-{tenant['slug']}.created"
    config = PublishConfig(connection=connection, subject=subject, payload={"order": 42}, headers={"X-Source": "crm"})
    assert PUBLISH is not None
    async with open_services(nats_settings, "nats") as services:
        ctx = node_context(services, tenant["uuid"])
        first = await PUBLISH(ctx, config)
        retried = await PUBLISH(ctx, config)  # the same step again: JetStream keeps one
        other_step = await PUBLISH(node_context(services, tenant["uuid"], step_id="step-2"), config)
        with pytest.raises(sdk.Unprocessable) as nowhere:
            await PUBLISH(ctx, PublishConfig(connection=connection, subject="no.stream.here", payload=1))
    assert (first.stream, first.duplicate, first.msg_id) == (stream, False, ctx.idempotency_key)
    assert (retried.sequence, retried.duplicate) == (first.sequence, True)
    assert other_step.sequence == (first.sequence or 0) + 1 and other_step.duplicate is False
    assert nowhere.value.errors[0].field == "subject"
    stored = await js.get_msg(stream, first.sequence)
    assert stored.data == b'{"order":42}' and stored.headers["Nats-Msg-Id"] == ctx.idempotency_key
    assert stored.headers["X-Source"] == "crm"


async def test_another_tenants_connection_cannot_be_used(
    api: AsyncTestClient[Any], nats_server: NatsServer, nats_settings: Settings
) -> None:
    _, theirs = await _connected(api, nats_server, "nats-a")
    other = await tenant_with(api, "nats", "nats-b")
    assert (await api.get(f"/api/connections/{theirs}", headers=other["h"])).status_code == 404
    assert PUBLISH is not None
    async with open_services(nats_settings, "nats") as services:
        with pytest.raises(sdk.NotFound):
            await PUBLISH(
                node_context(services, other["uuid"]), PublishConfig(connection=theirs, subject="x.y", payload=1)
            )


async def test_consumer_settings_naming_a_connection_not_the_tenants_own_nats_one_are_refused(
    api: AsyncTestClient[Any], nats_server: NatsServer
) -> None:
    _, theirs = await _connected(api, nats_server, "nats-a")
    tenant, mine = await _connected(api, nats_server, "nats-b")
    assert (await api.post("/api/modules/http/enable", headers=tenant["h"])).status_code == 200
    web = await make_connection(api, tenant, "http.bearer", {"token": "t0ken"}, name="web")
    path = "/api/modules/nats/settings"

    def consumers(*connections: Any) -> dict[str, Any]:
        return {"consumers": [{"connection": str(c), "stream": "ORDERS"} for c in connections]}

    accepted = await api.put(path, json=consumers(mine), headers=tenant["h"])
    assert accepted.status_code == 200, accepted.text
    stored = (await api.get(path, headers=tenant["h"])).json()["settings"]
    assert [c["connection"] for c in stored["consumers"]] == [str(mine)]

    cases = {
        "another tenant's": (theirs, f"no connection {theirs}"),
        "unknown": (uuid.uuid4(), "no connection "),
        "another plugin's": (web["id"], f"connection {web['id']} is a http connection, not nats"),
    }
    for case, (connection, message) in cases.items():
        refused = await api.put(path, json=consumers(mine, connection), headers=tenant["h"])
        assert refused.status_code == 422, (case, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        [error] = refused.json()["errors"]
        assert error["field"] == "consumers[1].connection", (case, error)
        assert error["message"].startswith(message), (case, error)
        assert (await api.get(path, headers=tenant["h"])).json()["settings"] == stored, case


async def test_consumer_records_each_message_once_then_acknowledges_it(
    api: AsyncTestClient[Any], nats_server: NatsServer, nats_settings: Settings, js: Any
) -> None:
    tenant, connection = await _connected(api, nats_server)
    stream = await _stream(js, [f"in-{tenant['slug']}.>"])
    wanted = ConsumerSettings(
        connection=connection, stream=stream, subject=f"in-{tenant['slug']}.*", ack_wait_seconds=1.0
    )
    consumer = consumer_name(tenant["uuid"], wanted)

    # A process took the first message and died before recording it: it was never acknowledged.
    await js.publish(f"in-{tenant['slug']}.a", b'{"n": 1}', headers={"Nats-Msg-Id": "m-1"})
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, filter_subject=wanted.subject, ack_wait=1.0
        ),
    )
    crashed = await js.pull_subscribe_bind(durable=consumer, stream=stream)
    [taken] = await crashed.fetch(1, timeout=5)
    assert taken.metadata.num_delivered == 1

    settings = {
        "consumers": [
            {"connection": str(connection), "stream": stream, "subject": wanted.subject, "ack_wait_seconds": 1.0}
        ]
    }
    saved = await api.put("/api/modules/nats/settings", json=settings, headers=tenant["h"])
    assert saved.status_code == 200, saved.text
    await js.publish(f"in-{tenant['slug']}.b", b"plain text", headers={"Nats-Msg-Id": "m-2"})
    await js.publish(f"in-{tenant['slug']}.b", b"plain text", headers={"Nats-Msg-Id": "m-2"})  # deduplicated

    async with open_services(nats_settings, "nats") as services:

        async def both_recorded() -> bool:
            return len(await recorded_events(services, tenant["uuid"], "nats.message.received")) >= 2

        await eventually(both_recorded, timeout=30)

        async def all_acknowledged() -> bool:
            info = await js.consumer_info(stream, consumer)
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(all_acknowledged, timeout=30)
        events = sorted(
            await recorded_events(services, tenant["uuid"], "nats.message.received"), key=lambda e: e["sequence"]
        )
        assert [(e["sequence"], e["msg_id"], e["data"], e["text"]) for e in events] == [
            (1, "m-1", {"n": 1}, None),
            (2, "m-2", None, "plain text"),
        ]
        assert {(e["stream"], e["consumer"], e["connection"]) for e in events} == {(stream, consumer, str(connection))}

        # A redelivery after the event was recorded (the ack was lost) records nothing new.
        other = f"{consumer}-replay"
        await js.add_consumer(stream, ConsumerConfig(durable_name=other, ack_policy=AckPolicy.EXPLICIT))
        replay = await js.pull_subscribe_bind(durable=other, stream=stream)
        messages = await replay.fetch(2, timeout=5)
        assert [await record_message(services, tenant["uuid"], wanted, consumer, m) for m in messages] == [False, False]
        assert len(await recorded_events(services, tenant["uuid"], "nats.message.received")) == 2

    in_use = await api.delete(f"/api/connections/{connection}", headers=tenant["h"])
    assert in_use.status_code == 409 and f"nats consumer of stream '{stream}'" in in_use.json()["detail"]


def test_trigger_filters_by_stream_and_subject_wildcards() -> None:
    payload = {"stream": "ORDERS", "subject": "orders.eu.created"}
    assert message_matches(MessageConfig(), payload)
    assert message_matches(MessageConfig(stream="ORDERS", subject="orders.*.created"), payload)
    assert message_matches(MessageConfig(subject="orders.>"), payload)
    assert not message_matches(MessageConfig(stream="OTHER"), payload)
    assert not message_matches(MessageConfig(subject="orders.*"), payload)
    assert not subject_matches("orders.>", "orders") and subject_matches("a.b", "a.b")
