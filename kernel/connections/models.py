"""The connections table (created by migration ``kernel_0011``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, TenantScoped, utcnow

__all__ = ["ConnectionRow"]


class ConnectionRow(TenantScoped, KernelBase):
    """One tenant's credentials of one credential type, sealed with (tenant, id) as associated data."""

    __tablename__ = "connections"

    plugin: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="active")
    sealed_credentials: Mapped[str] = mapped_column(Text)
    public: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    hints: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    check_ok: Mapped[bool | None] = mapped_column(Boolean)
    check_error: Mapped[str | None] = mapped_column(Text)
    broken_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)
