"""The vault's table (created by migration ``kernel_0008``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, TenantScoped, utcnow

__all__ = ["VaultSecretRow"]


class VaultSecretRow(TenantScoped, KernelBase):
    """One plugin's secret for one tenant, sealed with (tenant, plugin, name) as associated data."""

    __tablename__ = "vault_secrets"

    plugin: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    sealed_value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)
