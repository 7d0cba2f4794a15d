"""A real crash of the process that runs the JetStream consumers: ``businessos worker`` (it enters
the plugins' lifespans, so it runs the tenants' consumers, and it runs the workflows they start)
as a process of its own on the suite's PostgreSQL and Redis and this module's nats-server,
SIGKILLed while it is taking messages, then started again, several times. Counted at the end from
PostgreSQL: every message started exactly one execution of the published workflow, none lost,
none twice, and JetStream delivered some messages more than once (a kill left them in flight).

The test's own app only sets things up and is closed before the first message is published, so
the worker is the only process consuming.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import text

from connectors.conftest import make_connection, publish_workflow, step, tenant_with, workflow_settings
from connectors.nats.consumers import FETCH_BATCH, REFRESH_VARIABLE, ConsumerSettings, consumer_name
from connectors.nats.tests.nats_server import PASSWORD, USER, NatsServer
from kernel.testing import SECRET, Settings, eventually, open_client, open_services, start_worker_process

CHUNK = 100
"""Messages published before each start of the worker: a few fetched batches (32 each)."""
KILLS = 3
SETTLE_SECONDS = 180.0
"""How long a wait may take at most (it ends as soon as its condition holds). The worker shares the
suite's database and queue: in a full run it first dispatches the events other modules left
behind, on 2 busy cores."""


@pytest.fixture(scope="module")
async def settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return await workflow_settings(
        businessos_servers, businessos_database_url, Path(tmp_path_factory.mktemp("nats-crash-data")), "nats"
    )


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[Any]:
    client = await nats.connect(nats_server.url, user=USER, password=PASSWORD)
    yield client.jetstream()
    await client.close()


def _worker_env(settings: Settings, database_url: str, redis_url: str) -> dict[str, str]:
    """The worker's environment: the test platform's servers and plugins, consumers refreshed
    often, and event deliveries a killed worker held taken over within seconds."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_DATA_DIR": str(settings.data_dir),
        "BUSINESSOS_PLUGINS": "nats,workflows",
        "BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
        "BUSINESSOS_EVENT_LEASE_SECONDS": "4",
        "BUSINESSOS_EVENT_SWEEP_SECONDS": "1",
        REFRESH_VARIABLE: "1",
    }


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _while_running(
    process: subprocess.Popen[bytes], log: Path, check: Callable[[], Awaitable[bool]],
    state: Callable[[], Awaitable[str]],
) -> None:
    """Wait until ``check()`` holds, failing with the worker's log should it die on its own, and
    with ``state()`` and the log when the deadline passes."""

    async def alive_and_true() -> bool:
        assert process.poll() is None, _tail(log)
        return await check()

    try:
        await eventually(alive_and_true, timeout=SETTLE_SECONDS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await state()}\n{_tail(log)}") from None


async def test_a_sigkilled_worker_mid_batch_loses_and_doubles_no_message(
    settings: Settings,
    nats_server: NatsServer,
    js: Any,
    businessos_servers: tuple[str, str],
    businessos_database_url: str,
    tmp_path: Path,
) -> None:
    stream = f"S{uuid.uuid4().hex[:10]}"
    async with open_client(settings) as api:
        tenant = await tenant_with(api, "nats", "nats-crash", "workflows")
        token = str(tenant["slug"])
        await js.add_stream(name=stream, subjects=[f"crash-{token}.>"])
        made = await make_connection(
            api, tenant, "nats.server", {"servers": nats_server.url, "user": USER, "password": PASSWORD}
        )
        workflow = await publish_workflow(api, tenant, [
            step("start", "nats.message_received", stream=stream),
            step("seen", "workflows.set", values={"n": "{{ trigger.data.n }}"}),
        ])
        consumer = {"connection": made["id"], "stream": stream, "ack_wait_seconds": 1.0}
        saved = await api.put("/api/modules/nats/settings", json={"consumers": [consumer]}, headers=tenant["h"])
        assert saved.status_code == 200, saved.text
    durable = consumer_name(tenant["uuid"], ConsumerSettings(connection=uuid.UUID(made["id"]), stream=stream))

    published = 0

    async def publish_chunk() -> None:
        nonlocal published
        for _ in range(CHUNK):
            published += 1
            await js.publish(f"crash-{token}.order", f'{{"n": {published}}}'.encode(),
                             headers={"Nats-Msg-Id": f"m-{published}"})

    async with open_services(settings, "nats") as services:

        async def scalar(sql: str) -> Any:
            async with services.data.tenant(tenant["uuid"]) as session:
                return (await session.execute(text(sql), {"c": durable, "w": workflow})).scalar_one()

        async def recorded() -> int:
            return int(await scalar("select count(*) from nats_received where consumer = :c"))

        async def recorded_at_least(n: int) -> bool:
            return await recorded() >= n

        async def state() -> str:
            info = await js.consumer_info(stream, durable)
            runs = await scalar("select count(*) from workflows_executions where workflow_id = :w")
            return (f"published {published}, recorded {await recorded()}, runs {runs}, "
                    f"ack pending {info.num_ack_pending}, pending {info.num_pending}")

        env = _worker_env(settings, businessos_database_url, businessos_servers[1])
        log = tmp_path / "worker.log"
        worker: subprocess.Popen[bytes] | None = None
        in_flight: list[tuple[int, int]] = []
        try:
            for kill in range(KILLS):
                await publish_chunk()
                worker = start_worker_process(env, log)
                # Past this chunk's first batch, with more to take: the worker is busy taking.
                await _while_running(worker, log, partial(recorded_at_least, kill * CHUNK + FETCH_BATCH), state)
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                info = await js.consumer_info(stream, durable)
                # Taken but unacknowledged, and of those already recorded (the ack was what the
                # kill lost: the redelivery must start nothing new).
                in_flight.append((info.num_ack_pending, max(0, await recorded() - info.ack_floor.stream_seq)))
            await publish_chunk()
            worker = start_worker_process(env, log)

            async def settled() -> bool:
                """Everything acknowledged, and every recorded message's execution started."""
                info = await js.consumer_info(stream, durable)
                if info.num_ack_pending or info.num_pending:
                    return False
                runs = await scalar("select count(*) from workflows_executions where workflow_id = :w")
                return bool(runs >= await recorded())

            await _while_running(worker, log, settled, state)

            async with services.data.tenant(tenant["uuid"]) as session:
                per_message = (await session.execute(text(
                    "select (trigger->>'sequence')::bigint as seq, trigger->>'msg_id' as msg_id, count(*) as runs "
                    "from workflows_executions where workflow_id = :w group by 1, 2"
                ), {"w": workflow})).all()
                received = (await session.execute(text(
                    "select sequence from nats_received where consumer = :c"
                ), {"c": durable})).scalars().all()
                events = (await session.execute(text(
                    "select count(*) from events_outbox where event = 'nats.message.received'"
                ))).scalar_one()
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                worker.wait()

    info = await js.consumer_info(stream, durable)
    print(
        f"\n{published} messages, {KILLS} worker SIGKILLs, (unacknowledged, of which recorded) at each kill "
        f"{in_flight}, deliveries {info.delivered.consumer_seq}"
    )
    everything = set(range(1, published + 1))
    assert everything - set(received) == set(), "acknowledged but never recorded"
    assert len(received) == events == published  # one record and one event per message
    assert everything - {row.seq for row in per_message} == set(), "lost: no execution"
    assert {row.seq: row.runs for row in per_message if row.runs != 1} == {}, "doubled"
    assert len(per_message) == published
    assert {row.msg_id for row in per_message} == {f"m-{n}" for n in everything}
    # Messages the killed processes held unacknowledged were delivered again.
    assert info.delivered.consumer_seq > published, in_flight
