"""JetStream durable consumers, run by every process that enters the plugin's lifespan.

Which consumers run is per tenant, in the ``nats`` module settings (``consumers``: a connection,
a stream, an optional filter subject). A supervisor re-reads the settings of the tenants that
enabled the module every ``BUSINESSOS_NATS_REFRESH_SECONDS`` (30 by default) and starts or stops
one task per consumer. Each task pulls from a durable pull consumer, so several processes (API
replicas, workers) share one consumer's messages instead of each getting a copy.

A message is acknowledged only after it is recorded: one transaction (per fetched batch) inserts
its ``(consumer, stream, sequence)`` into ``nats_received`` and puts ``nats.message.received`` in
the outbox. A crash before the commit leaves it unacknowledged, so JetStream redelivers it after the
consumer's ``ack_wait``; a crash after the commit but before the ack redelivers it too, and then
the insert finds the row and the message is only acknowledged: one event per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.dialects.postgresql import insert

from connectors.nats.credentials import NatsCredentials, nats_client
from connectors.nats.models import ReceivedMessage
from connectors.nats.nodes import NatsMessageReceived
from kernel import sdk

__all__ = [
    "ConsumerSettings",
    "Consumers",
    "NatsSettings",
    "check_settings",
    "connection_users",
    "consumer_name",
    "lifespan",
    "record_message",
    "record_messages",
]

log = logging.getLogger("businessos.nats")

REFRESH_VARIABLE = "BUSINESSOS_NATS_REFRESH_SECONDS"
FETCH_BATCH = 32
FETCH_SECONDS = 2.0
RETRY_SECONDS = 5.0


class ConsumerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One durable consumer a tenant wants: messages of ``stream`` (matching ``subject``)."""

    connection: uuid.UUID
    stream: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
    subject: Annotated[str, Meta(max_length=255, pattern=r"^[A-Za-z0-9_\-$.*>]*$")] = ""
    """Filter subject (wildcards allowed); empty: every subject of the stream."""
    durable: Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9_\-]*$")] = ""
    """The consumer's name on the server; empty: derived from the tenant and these settings."""
    ack_wait_seconds: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    """How long a taken message may stay unacknowledged before JetStream redelivers it."""


class NatsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``nats`` module's per-tenant settings."""

    consumers: Annotated[list[ConsumerSettings], Meta(max_length=20)] = msgspec.field(default_factory=list)


async def connection_users(services: sdk.Services, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> list[str]:
    """The tenant's consumers reading through ``connection_id``: deleting it answers 409 naming them."""
    settings: NatsSettings = await services.settings(tenant_id)
    return [
        f"nats consumer of stream {config.stream!r}" + (f" ({config.subject})" if config.subject else "")
        for config in settings.consumers
        if config.connection == connection_id
    ]


async def check_settings(services: sdk.Services, tenant_id: uuid.UUID, settings: NatsSettings) -> list[sdk.FieldError]:
    """Each consumer's ``connection`` must be a NATS connection of this tenant (another tenant's id
    reads as unknown): refused at save rather than a consumer that silently never starts."""
    owners = await services.connections.plugins_of(tenant_id, {config.connection for config in settings.consumers})
    errors = []
    for index, config in enumerate(settings.consumers):
        owner = owners.get(config.connection)
        if owner != "nats":
            problem = f"no connection {config.connection}" if owner is None else (
                f"connection {config.connection} is a {owner} connection, not nats"
            )
            errors.append(sdk.FieldError(f"consumers[{index}].connection", problem))
    return errors


def consumer_name(tenant_id: uuid.UUID, config: ConsumerSettings) -> str:
    """The durable name: the configured one, else one per tenant, connection, stream and subject
    (tenants sharing a NATS server never share a consumer by accident)."""
    if config.durable:
        return config.durable
    digest = hashlib.sha256(f"{tenant_id}:{config.connection}:{config.stream}:{config.subject}".encode()).hexdigest()
    return f"businessos-{digest[:20]}"


def _payload(config: ConsumerSettings, consumer: str, msg: Msg) -> NatsMessageReceived:
    headers = dict(msg.headers or {})
    data: Any = None
    text: str | None = None
    try:
        data = msgspec.json.decode(msg.data) if msg.data else None
    except msgspec.DecodeError:
        try:
            text = msg.data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    meta = msg.metadata
    return NatsMessageReceived(
        connection=str(config.connection),
        stream=meta.stream,
        consumer=consumer,
        subject=msg.subject,
        sequence=meta.sequence.stream,
        msg_id=headers.get("Nats-Msg-Id"),
        headers=headers,
        data=data,
        text=text,
    )


async def record_messages(
    services: sdk.Services, tenant_id: uuid.UUID, config: ConsumerSettings, consumer: str, messages: list[Msg]
) -> int:
    """Record each of ``messages`` as ``nats.message.received`` unless this consumer already did
    (a redelivery), in one transaction; the number recorded. Acknowledge them only after this
    returns. (One transaction per fetched batch, not per message: the commit is what costs.)"""
    if not messages:
        return 0
    payloads = [_payload(config, consumer, msg) for msg in messages]
    rows = [
        {"tenant_id": tenant_id, "id": sdk.uuid7(), "consumer": consumer, "stream": p.stream, "sequence": p.sequence}
        for p in payloads
    ]
    async with services.data.tenant(tenant_id) as session:
        fresh = set(
            (
                await session.execute(
                    insert(ReceivedMessage)
                    .values(rows)
                    .on_conflict_do_nothing(constraint="uq_nats_received_message")
                    .returning(ReceivedMessage.stream, ReceivedMessage.sequence)
                )
            ).tuples()
        )
        await services.changes.emit_many(
            session,
            tenant_id=tenant_id,
            events=[("nats.message.received", p) for p in payloads if (p.stream, p.sequence) in fresh],
        )
    return len(fresh)


async def record_message(
    services: sdk.Services, tenant_id: uuid.UUID, config: ConsumerSettings, consumer: str, msg: Msg
) -> bool:
    """:func:`record_messages` for one message: ``True`` when it was new."""
    return await record_messages(services, tenant_id, config, consumer, [msg]) == 1


async def consume(services: sdk.Services, tenant_id: uuid.UUID, config: ConsumerSettings) -> None:
    """Take and record the consumer's messages until cancelled; reconnect after failures."""
    consumer = consumer_name(tenant_id, config)
    while True:
        try:
            creds = await services.connections.open(tenant_id, config.connection, NatsCredentials)
            async with nats_client(services, creds, reconnect=True, name=f"businessos-{consumer}") as client:
                js = client.jetstream()
                await js.add_consumer(
                    config.stream,
                    ConsumerConfig(
                        durable_name=consumer,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        filter_subject=config.subject or None,
                        ack_wait=config.ack_wait_seconds,
                    ),
                )
                subscription = await js.pull_subscribe_bind(durable=consumer, stream=config.stream)
                while True:
                    try:
                        messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_SECONDS)
                    except (NatsTimeout, TimeoutError):
                        continue
                    await record_messages(services, tenant_id, config, consumer, messages)
                    for msg in messages:
                        await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an outage or a broken connection: try again later
            log.warning(
                "nats consumer %s of tenant %s: %s: %s",
                consumer,
                tenant_id,
                type(error).__name__,
                getattr(error, "detail", error),
            )
            await asyncio.sleep(RETRY_SECONDS)


class Consumers:
    """The consumer tasks of one process, kept in line with the tenants' settings."""

    def __init__(self, services: sdk.Services) -> None:
        self.services = services
        self.tasks: dict[tuple[uuid.UUID, ConsumerSettings], asyncio.Task[None]] = {}

    async def wanted(self) -> set[tuple[uuid.UUID, ConsumerSettings]]:
        found: set[tuple[uuid.UUID, ConsumerSettings]] = set()
        for tenant_id in await self.services.tenants.enabled_ids():
            settings: NatsSettings = await self.services.settings(tenant_id)
            found.update((tenant_id, config) for config in settings.consumers)
        return found

    async def refresh(self) -> None:
        """Start the consumers the settings name and stop those they no longer do."""
        wanted = await self.wanted()
        for key in [key for key in self.tasks if key not in wanted]:
            self.tasks.pop(key).cancel()
        for key in wanted - self.tasks.keys():
            self.tasks[key] = asyncio.create_task(consume(self.services, *key), name=f"nats-consumer-{key[0]}")

    async def run(self, every: float) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # PostgreSQL away: keep what runs, look again later
                log.warning("nats consumers not refreshed: %s", type(error).__name__)
            await asyncio.sleep(every)

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@asynccontextmanager
async def lifespan(services: sdk.Services) -> AsyncIterator[None]:
    """Run the tenants' consumers while the process runs."""
    consumers = Consumers(services)
    every = float(os.environ.get(REFRESH_VARIABLE, "") or 30.0)
    supervisor = asyncio.create_task(consumers.run(every), name="nats-consumers")
    try:
        yield
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await consumers.stop()
