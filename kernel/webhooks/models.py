"""The inbound webhook endpoints table (created by migration ``kernel_0008``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, LargeBinary, Text
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, TenantScoped

__all__ = ["WebhookEndpointRow"]


class WebhookEndpointRow(TenantScoped, KernelBase):
    """A tenant's public URL for one of a plugin's webhook routes; the token only as its hash."""

    __tablename__ = "webhook_endpoints"

    plugin: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    prefix: Mapped[str] = mapped_column(Text)
    """The token's first characters, to recognise it in a list."""
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
