"""Request and response shapes of ``/api/webhooks`` (msgspec Structs).

A subscription's ``filter`` is a JSON object of ``"<path>": <value>`` pairs: an event passes when,
for every pair, the value at the dotted ``path`` of its payload (``"deal.stage"`` is
``payload["deal"]["stage"]``) equals ``value`` as JSON (``1`` equals ``1.0``, not ``"1"``; a missing
path never matches). No filter, or ``{}``, passes every event of the subscribed types.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from kernel import sdk

__all__ = [
    "AttemptOut",
    "AttemptPage",
    "DeliveryDetail",
    "DeliveryOut",
    "DeliveryPage",
    "ReplayCreate",
    "ReplayOut",
    "SecretRotated",
    "SubscriptionCreate",
    "SubscriptionCreated",
    "SubscriptionOut",
    "SubscriptionPage",
    "SubscriptionUpdate",
    "WebhookSettings",
]

Url = Annotated[str, Meta(min_length=1, max_length=2000)]
EventName = Annotated[str, Meta(min_length=1, max_length=200)]
EventTypes = Annotated[list[EventName], Meta(min_length=1, max_length=100)]
Description = Annotated[str, Meta(max_length=500)]
Filter = Annotated[dict[Annotated[str, Meta(min_length=1, max_length=200)], Any], Meta(max_length=20)]


class WebhookSettings(msgspec.Struct, kw_only=True):
    """A tenant's settings for outgoing webhooks (``/api/modules/webhooks/settings``)."""

    disable_after_days: Annotated[int, Meta(ge=1, le=90)] = 5
    """A subscription whose attempts have all failed for this many days is disabled (Svix: 5)."""
    rotation_hours: Annotated[int, Meta(ge=0, le=720)] = 24
    """After a secret rotation, deliveries carry the old secret's signature too for this long."""
    retention_days: Annotated[int, Meta(ge=1, le=365)] = 30
    """Events older than this are forgotten with their deliveries and attempts (a replay reaches
    back this far); unfinished deliveries are kept until they finish."""


class SubscriptionCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url
    event_types: EventTypes
    """Exact event names (``crm.deal.won``) or namespace patterns (``crm.*``, ``crm.deal.*``) of
    the catalogue at ``GET /api/events/types``."""
    filter: Filter | None = None
    description: Description = ""
    enabled: bool = True


class SubscriptionUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url | UnsetType = UNSET
    event_types: EventTypes | UnsetType = UNSET
    filter: Filter | UnsetType | None = UNSET
    description: Description | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    version: int | UnsetType = UNSET
    """The version the change was made against (or send ``If-Match``); optional."""


class SubscriptionOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    url: str
    event_types: list[str]
    filter: dict[str, Any] | None
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    """Since when every attempt has failed (``null`` after a success)."""
    previous_secret_until: datetime | None
    """While a rotation's window is open, deliveries are signed with the old secret too."""
    version: int
    created_at: datetime
    updated_at: datetime


class SubscriptionCreated(SubscriptionOut, kw_only=True):
    secret: str
    """``whsec_...``: shown only now. Verify deliveries with it (Standard Webhooks)."""


class SubscriptionPage(msgspec.Struct, kw_only=True):
    subscriptions: list[SubscriptionOut]
    pagination: sdk.Pagination


class SecretRotated(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    secret: str
    """The new ``whsec_...`` secret, shown only now."""
    previous_secret_until: datetime | None
    """Until then deliveries carry two signatures, the new secret's and the old one's."""


class DeliveryOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    message_id: str
    """The ``webhook-id`` header: the same on every attempt, redelivery and replay of one event."""
    event_type: str
    origin: str
    """``event``, or ``replay:<replay id>``."""
    status: str
    """``pending``, ``running``, ``succeeded`` or ``failed`` (every scheduled attempt failed)."""
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None


class AttemptOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    delivery_id: uuid.UUID
    number: int
    url: str
    succeeded: bool
    duration_ms: int
    request_headers: dict[str, str]
    request_body: str
    """Truncated to 4 KiB."""
    response_status: int | None
    response_headers: dict[str, str] | None
    response_body: str | None
    """Truncated to 4 KiB."""
    error: str | None
    created_at: datetime


class DeliveryDetail(DeliveryOut, kw_only=True):
    attempt_log: list[AttemptOut]
    """Every attempt, oldest first."""


class DeliveryPage(msgspec.Struct, kw_only=True):
    deliveries: list[DeliveryOut]
    pagination: sdk.Pagination


class AttemptPage(msgspec.Struct, kw_only=True):
    attempts: list[AttemptOut]
    pagination: sdk.Pagination


class ReplayCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    start: datetime = msgspec.field(name="from")
    """Events that occurred at or after this time (RFC 3339)..."""
    end: datetime = msgspec.field(name="to")
    """... and before this one."""
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    """The same key again answers the first replay instead of starting another."""


class ReplayOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    subscription_id: uuid.UUID
    start: datetime = msgspec.field(name="from")
    end: datetime = msgspec.field(name="to")
    deliveries: int
    """How many deliveries the replay made (events already replayed by it are not sent twice)."""
    created_at: datetime
