from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, utcnow, uuid7

__all__ = ["TenantRow"]


class TenantRow(KernelBase):
    """A tenant. Global: every request reads it before any tenant scope exists."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(Text)
    slug: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text, default="active")
    plan: Mapped[str] = mapped_column(Text, default="free")
    allow_signup: Mapped[bool] = mapped_column(Boolean, default=False)
    """Whether anyone may register as a member without an invitation."""
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=utcnow
    )
