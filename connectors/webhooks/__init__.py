"""webhooks: outgoing webhook subscriptions, signed per Standard Webhooks, retried on Svix's
schedule, with a delivery log, redelivery, replay and automatic disabling (see README.md).

A connector written exactly like a third-party plugin: it imports nothing from the kernel but
``kernel.sdk`` and is registered through the ``businessos.plugins`` entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from connectors.webhooks import delivery, schemas
from connectors.webhooks.models import Base
from connectors.webhooks.routes import ROUTES

__all__ = ["manifest"]

from kernel import sdk

manifest = sdk.Manifest(
    name="webhooks",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Outgoing webhooks",
    description="Send the tenant's events to subscribed URLs, signed, retried and logged.",
)


class SubscriptionEvent(msgspec.Struct, kw_only=True):
    """The subscription as ``GET /api/webhooks/subscriptions/{id}`` shows it (without its filter)."""

    id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = None


class SecretRotatedEvent(msgspec.Struct, kw_only=True):
    id: str
    previous_secret_until: str


EVENT_TYPES = [
    sdk.EventType("webhooks.subscription.created", "A webhook subscription was made", payload=SubscriptionEvent),
    sdk.EventType("webhooks.subscription.updated", "A webhook subscription was changed", payload=SubscriptionEvent),
    sdk.EventType("webhooks.subscription.deleted", "A webhook subscription was deleted"),
    sdk.EventType(
        "webhooks.subscription.disabled", "A subscription was disabled after days of failed attempts",
        payload=SubscriptionEvent,
    ),
    sdk.EventType(
        "webhooks.subscription.enabled", "A disabled subscription was enabled again", payload=SubscriptionEvent
    ),
    sdk.EventType(
        "webhooks.subscription.secret_rotated", "A subscription's signing secret was rotated",
        payload=SecretRotatedEvent,
    ),
]

PERMISSIONS = [
    sdk.Permission("webhooks.subscriptions.read", "See webhook subscriptions and their delivery log"),
    sdk.Permission(
        "webhooks.subscriptions.write", "Create, change, delete and rotate subscriptions; redeliver and replay",
        roles=("admin",),
    ),
]


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return ROUTES


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return PERMISSIONS


@sdk.hookimpl
def businessos_event_types() -> list[sdk.EventType]:
    return EVENT_TYPES


@sdk.hookimpl
def businessos_settings_schema() -> type[msgspec.Struct]:
    return schemas.WebhookSettings


@sdk.hookimpl
def businessos_event_handlers() -> list[sdk.EventHandler]:
    return [sdk.EventHandler("*", delivery.fan_out, name="fan_out", batch=delivery.fan_out_many)]


@sdk.hookimpl
def businessos_jobs() -> list[sdk.JobSpec]:
    return [
        sdk.JobSpec("webhooks.attempt", delivery.run_attempt, max_attempts=3, timeout=delivery.LEASE_SECONDS),
        sdk.JobSpec("webhooks.sweep", delivery.sweep, max_attempts=1, timeout=300),
    ]


@sdk.hookimpl
def businessos_schedules() -> list[sdk.Schedule]:
    return [sdk.Schedule("webhooks.sweep", "* * * * *", "webhooks.sweep")]
