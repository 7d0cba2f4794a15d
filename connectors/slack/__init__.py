"""Slack connector: post messages, find users, and start workflows from the Events API.

A plugin of its own (entry point ``slack``), built only on ``kernel.sdk``; see README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors.slack.credentials import CREDENTIALS
from connectors.slack.events import MANAGE, create_events_url, on_slack_event
from connectors.slack.models import Base
from connectors.slack.nodes import NODES, SlackEventReceived
from kernel import sdk

manifest = sdk.Manifest(
    name="slack",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Slack",
    description="Post Slack messages, find users by e-mail, and start workflows from Slack events.",
)


@sdk.hookimpl
def businessos_credentials() -> Sequence[sdk.CredentialType]:
    return [CREDENTIALS]


@sdk.hookimpl
def businessos_workflow_nodes() -> Sequence[sdk.NodeSpec]:
    return NODES


@sdk.hookimpl
def businessos_event_types() -> Sequence[sdk.EventType]:
    return [sdk.EventType("slack.event.received", "Slack delivered an Events API event", payload=SlackEventReceived)]


@sdk.hookimpl
def businessos_webhook_routes() -> Sequence[sdk.WebhookRoute]:
    return [sdk.WebhookRoute("events", on_slack_event, description="Slack Events API deliveries")]


@sdk.hookimpl
def businessos_permissions() -> Sequence[sdk.Permission]:
    return [sdk.Permission(MANAGE, "Create Slack Events API endpoints", roles=("admin",))]


@sdk.hookimpl
def businessos_routes() -> Sequence[Any]:
    return [create_events_url]


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"
