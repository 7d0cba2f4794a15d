"""NATS's workflow nodes: publish a message, and the JetStream trigger's payload and filter."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError

from connectors.nats.credentials import NatsCredentials, nats_client
from kernel import sdk

__all__ = [
    "NODES",
    "MessageConfig",
    "NatsMessageReceived",
    "PublishConfig",
    "Published",
    "credentials_of",
    "publish",
    "send",
]

Subject = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_\-$]+(\.[A-Za-z0-9_\-$]+)*$")]
"""A concrete subject (no wildcards): ``orders.created``."""
PUBLISH_SECONDS = 10


async def credentials_of(ctx: sdk.NodeContext, connection: uuid.UUID) -> NatsCredentials:
    """The run's tenant's NATS connection (another tenant's id is simply not found)."""
    creds: NatsCredentials = await ctx.services.connections.open(ctx.tenant_id, connection, NatsCredentials)
    return creds


class PublishConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID
    subject: Subject
    payload: Any = None
    """Sent as JSON."""
    headers: Annotated[dict[str, str], Meta(max_length=50)] = msgspec.field(default_factory=dict)
    jetstream: bool = True
    """Wait for the stream's acknowledgement (fails when no stream takes the subject). ``False``:
    core NATS, fire and forget."""


class Published(msgspec.Struct, kw_only=True):
    subject: str
    msg_id: str
    """``Nats-Msg-Id``: the step's idempotency key, so a retried step is stored once."""
    stream: str | None = None
    sequence: int | None = None
    duplicate: bool = False
    """JetStream already had a message with this id (a retry): nothing new was stored."""


class MessageConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Trigger configuration: which of the tenant's consumed messages start the workflow. The
    consumers themselves are the tenant's ``nats`` module settings (see README)."""

    stream: str | None = None
    subject: str | None = None
    """Exact subject, or a pattern with NATS wildcards (``orders.*``, ``orders.>``)."""


class NatsMessageReceived(msgspec.Struct, kw_only=True):
    """The payload of ``nats.message.received``: one message a JetStream consumer took."""

    connection: str
    stream: str
    consumer: str
    subject: str
    sequence: int
    """Its sequence in the stream (the same on a redelivery, which is not recorded twice)."""
    msg_id: str | None
    """``Nats-Msg-Id`` when the publisher set one."""
    headers: dict[str, str]
    data: Any
    """The payload decoded as JSON; ``None`` when it is not JSON (see ``text``)."""
    text: str | None
    """The payload as text when it is not JSON but UTF-8."""


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` the rest (at least one token)."""
    wanted, got = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(got) > index
        if index >= len(got) or (token != "*" and token != got[index]):
            return False
    return len(got) == len(wanted)


def message_matches(config: Any, payload: Any) -> bool:
    """Whether a consumed message starts a workflow whose trigger is configured as ``config``."""
    if config.stream is not None and payload.get("stream") != config.stream:
        return False
    return config.subject is None or subject_matches(config.subject, str(payload.get("subject", "")))


def _failed(field: str, message: str) -> sdk.Unprocessable:
    return sdk.Unprocessable(f"NATS: {message}", errors=[sdk.FieldError(field=field, message=message)])


async def send(services: sdk.Services, creds: NatsCredentials, config: PublishConfig, msg_id: str) -> Published:
    """Publish ``config`` with ``Nats-Msg-Id: msg_id`` (the runner's logic, given credentials)."""
    headers = {**config.headers, "Nats-Msg-Id": msg_id}
    data = msgspec.json.encode(config.payload)
    async with nats_client(services, creds) as client:
        try:
            if not config.jetstream:
                await client.publish(config.subject, data, headers=headers)
                await client.flush(timeout=PUBLISH_SECONDS)
                return Published(subject=config.subject, msg_id=msg_id)
            ack = await client.jetstream().publish(config.subject, data, headers=headers, timeout=PUBLISH_SECONDS)
        except (NoStreamResponseError, NoRespondersError):
            raise _failed("subject", f"no JetStream stream takes {config.subject!r}") from None
        except (NatsError, NatsTimeout, TimeoutError) as error:
            raise sdk.EgressFailed(f"NATS: publishing failed ({type(error).__name__})") from None
    return Published(
        subject=config.subject, msg_id=msg_id, stream=ack.stream, sequence=ack.seq, duplicate=bool(ack.duplicate)
    )


async def publish(ctx: sdk.NodeContext, config: Any) -> Published:
    """Runner of ``nats.publish``."""
    return await send(ctx.services, await credentials_of(ctx, config.connection), config, ctx.idempotency_key)


NODES = (
    sdk.NodeSpec(
        key="nats.publish",
        kind="action",
        title="Publish a NATS message",
        config=PublishConfig,
        output=Published,
        run=publish,
    ),
    sdk.NodeSpec(
        key="nats.message_received",
        kind="trigger",
        title="NATS message received",
        config=MessageConfig,
        output=NatsMessageReceived,
        event="nats.message.received",
        filter=message_matches,
    ),
)
