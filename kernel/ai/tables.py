"""Tables of prompt templates, conversations, per-tenant AI settings and budget reservations
(created by migration ``kernel_0006``)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Boolean, Date, DateTime, Integer, Numeric, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, TenantScoped, utcnow

__all__ = [
    "ConversationRow",
    "MessageRow",
    "PromptRow",
    "PromptVersionRow",
    "ReservationRow",
    "SettingsRow",
]

_MONEY = Numeric(20, 10)


class SettingsRow(TenantScoped, KernelBase):
    """The tenant's AI settings (at most one row; none means every default)."""

    __tablename__ = "ai_settings"

    default_model: Mapped[str | None] = mapped_column(Text, default=None)
    default_embedding_model: Mapped[str | None] = mapped_column(Text, default=None)
    fallback_models: Mapped[list[str]] = mapped_column(JSONB, default=list)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    log_prompts: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)


class PromptRow(TenantScoped, KernelBase):
    __tablename__ = "ai_prompts"

    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    latest_version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)


class PromptVersionRow(TenantScoped, KernelBase):
    """One immutable version of a prompt template."""

    __tablename__ = "ai_prompt_versions"

    prompt_id: Mapped[uuid.UUID] = mapped_column()
    version: Mapped[int] = mapped_column(Integer)
    template: Mapped[Any] = mapped_column(JSONB)
    """A template string, or a list of ``{"role", "content"}`` message templates."""
    variables: Mapped[list[str]] = mapped_column(JSONB, default=list)
    model: Mapped[str | None] = mapped_column(Text, default=None)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_by: Mapped[str | None] = mapped_column(Text, default=None)


class ConversationRow(TenantScoped, KernelBase):
    __tablename__ = "ai_conversations"

    title: Mapped[str | None] = mapped_column(Text, default=None)
    model: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[Decimal] = mapped_column(_MONEY, default=Decimal(0))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), default=utcnow)


class MessageRow(TenantScoped, KernelBase):
    __tablename__ = "ai_messages"

    conversation_id: Mapped[uuid.UUID] = mapped_column()
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(Text)
    content: Mapped[Any] = mapped_column(JSONB, default=None)
    model: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(_MONEY, default=Decimal(0))
    usage_id: Mapped[uuid.UUID | None] = mapped_column(default=None)


class ReservationRow(TenantScoped, KernelBase):
    """A running call's budget reservation (deleted when the call settles or by the sweeper)."""

    __tablename__ = "ai_reservations"

    month: Mapped[date] = mapped_column(Date)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    cost: Mapped[Decimal] = mapped_column(_MONEY)
    tokens: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
