"""The AI proxy's tables (created by migration ``kernel_0005``)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Integer, Numeric, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, TenantScoped, utcnow

__all__ = ["BudgetMonthRow", "BudgetRow", "PriceOverrideRow", "ProviderKeyRow", "UsageRow"]

_MONEY = Numeric(20, 10)


class ProviderKeyRow(TenantScoped, KernelBase):
    """A tenant's key for one provider, sealed with the tenant id as associated data."""

    __tablename__ = "ai_provider_keys"

    provider: Mapped[str] = mapped_column(Text)
    sealed_key: Mapped[str] = mapped_column(Text)
    last_four: Mapped[str] = mapped_column(Text)
    api_base: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)


class UsageRow(TenantScoped, KernelBase):
    """One AI call in the ledger (append-only for the runtime role)."""

    __tablename__ = "ai_usage"

    principal_kind: Mapped[str | None] = mapped_column(Text)
    principal_id: Mapped[uuid.UUID | None] = mapped_column()
    provider: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(_MONEY, default=Decimal(0))
    price_version: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    surface: Mapped[str] = mapped_column(Text, default="api")
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    template_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    object_type: Mapped[str | None] = mapped_column(Text, default=None)
    object_id: Mapped[str | None] = mapped_column(Text, default=None)


class BudgetRow(TenantScoped, KernelBase):
    __tablename__ = "ai_budgets"

    scope: Mapped[str] = mapped_column(Text, default="tenant")
    """``tenant``, or one principal: ``user:<id>`` / ``api_key:<id>``."""
    monthly_cost_limit: Mapped[Decimal | None] = mapped_column(_MONEY, default=None)
    monthly_token_limit: Mapped[int | None] = mapped_column(BigInteger, default=None)
    soft_limit_ratio: Mapped[Decimal] = mapped_column(Numeric(6, 5), default=Decimal("0.8"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)


class BudgetMonthRow(TenantScoped, KernelBase):
    __tablename__ = "ai_budget_months"

    scope: Mapped[str] = mapped_column(Text, default="tenant")
    month: Mapped[date] = mapped_column(Date)
    spent_cost: Mapped[Decimal] = mapped_column(_MONEY, default=Decimal(0))
    spent_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_cost: Mapped[Decimal] = mapped_column(_MONEY, default=Decimal(0))
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class PriceOverrideRow(KernelBase):
    """A global per-model price that replaces litellm's map (read-only for the runtime role)."""

    __tablename__ = "ai_price_overrides"

    model: Mapped[str] = mapped_column(Text, primary_key=True)
    input_per_token: Mapped[Decimal] = mapped_column(_MONEY)
    output_per_token: Mapped[Decimal] = mapped_column(_MONEY)
    version: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)
