"""NATS connector: publish messages, and start workflows from JetStream durable consumers.

A plugin of its own (entry point ``nats``), built only on ``kernel.sdk``; see README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors.nats.consumers import NatsSettings, check_settings, connection_users, lifespan
from connectors.nats.credentials import CREDENTIALS
from connectors.nats.models import Base
from connectors.nats.nodes import NODES, NatsMessageReceived
from kernel import sdk

manifest = sdk.Manifest(
    name="nats",
    version="0.1.0",
    kernel_api=">=1.2,<2",
    title="NATS",
    description="Publish NATS messages and start workflows from JetStream durable consumers.",
)


@sdk.hookimpl
def businessos_credentials() -> Sequence[sdk.CredentialType]:
    return [CREDENTIALS]


@sdk.hookimpl
def businessos_workflow_nodes() -> Sequence[sdk.NodeSpec]:
    return NODES


@sdk.hookimpl
def businessos_event_types() -> Sequence[sdk.EventType]:
    return [sdk.EventType("nats.message.received", "A JetStream consumer took a message", payload=NatsMessageReceived)]


@sdk.hookimpl
def businessos_settings_schema() -> type[NatsSettings]:
    return NatsSettings


@sdk.hookimpl
def businessos_settings_check() -> sdk.SettingsCheck:
    return check_settings


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_lifespan() -> Any:
    return lifespan


@sdk.hookimpl
def businessos_connection_users() -> sdk.ConnectionUsers:
    return connection_users
