"""slack's one table: which Events API deliveries were already recorded."""

from __future__ import annotations

import uuid

from sqlalchemy import Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk

__all__ = ["Base", "ReceivedEvent"]


class Base(sdk.Model):
    """slack's tables; ``businessos_metadata`` returns ``Base.metadata``."""


class ReceivedEvent(sdk.TenantScoped, Base):
    """One ``event_callback`` recorded as ``slack.event.received`` (Slack's ``event_id``)."""

    __tablename__ = "slack_received"
    __table_args__ = (UniqueConstraint("tenant_id", "connection_id", "event_id", name="uq_slack_received_event"),)

    connection_id: Mapped[uuid.UUID]
    event_id: Mapped[str] = mapped_column(Text)
