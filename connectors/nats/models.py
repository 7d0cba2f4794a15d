"""nats's one table: which JetStream messages a tenant's consumers already recorded."""

from __future__ import annotations

from sqlalchemy import BigInteger, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk

__all__ = ["Base", "ReceivedMessage"]


class Base(sdk.Model):
    """nats's tables; ``businessos_metadata`` returns ``Base.metadata``."""


class ReceivedMessage(sdk.TenantScoped, Base):
    """One message a consumer recorded as ``nats.message.received``."""

    __tablename__ = "nats_received"
    __table_args__ = (UniqueConstraint("tenant_id", "consumer", "stream", "sequence", name="uq_nats_received_message"),)

    consumer: Mapped[str] = mapped_column(Text)
    stream: Mapped[str] = mapped_column(Text)
    sequence: Mapped[int] = mapped_column(BigInteger)
    """The message's sequence in the stream: the same on every redelivery."""
