"""The webhooks plugin's tables (created by ``migrations/webhooks_0001_core.py``; keep in step).

- ``webhooks_subscriptions``: a tenant's URL, the event types it wants, an optional filter; its
  signing secret lives in the vault (``subscription.<id>.v<secret_version>``), never here.
- ``webhooks_messages``: one row per event of the tenant, the exact body every subscription gets
  (kept so that retries, redeliveries and replays send the same bytes).
- ``webhooks_deliveries``: one message to one subscription (``origin`` is ``""`` for the event
  itself, the replay's id for a replay): status, schedule step, next attempt, lease.
- ``webhooks_attempts``: each HTTP attempt, request and response truncated.
- ``webhooks_replays``: a replay request over a time range.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Integer, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk

__all__ = ["Attempt", "Base", "Delivery", "Message", "Replay", "Subscription"]


class Base(sdk.Model):
    """The webhooks plugin's tables; ``businessos_metadata`` returns ``Base.metadata``."""


class Subscription(sdk.TenantScoped, Base):
    __tablename__ = "webhooks_subscriptions"

    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    secret_version: Mapped[int] = mapped_column(Integer, default=1)
    previous_secret_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=sdk.utcnow)


class Message(sdk.TenantScoped, Base):
    __tablename__ = "webhooks_messages"

    event_type: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[str] = mapped_column(Text)


class Replay(sdk.TenantScoped, Base):
    __tablename__ = "webhooks_replays"

    subscription_id: Mapped[uuid.UUID]
    from_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    to_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)


class Delivery(sdk.TenantScoped, Base):
    __tablename__ = "webhooks_deliveries"

    subscription_id: Mapped[uuid.UUID]
    message_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(Text, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Attempt(sdk.TenantScoped, Base):
    __tablename__ = "webhooks_attempts"

    delivery_id: Mapped[uuid.UUID]
    subscription_id: Mapped[uuid.UUID]
    number: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    duration_ms: Mapped[int] = mapped_column(Integer)
    request_headers: Mapped[dict[str, Any]] = mapped_column(JSONB)
    request_body: Mapped[str] = mapped_column(Text)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True), nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
