"""Identity tables. Users are global; everything tied to a tenant sits under row-level security."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, Boolean, DateTime, Integer, LargeBinary, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db.models import KernelBase, TenantScoped, utcnow, uuid7

__all__ = [
    "ApiKeyRow",
    "InvitationRow",
    "MembershipRow",
    "RecoveryCodeRow",
    "RefreshTokenRow",
    "RoleGrantRow",
    "UserRow",
]


class UserRow(KernelBase):
    """A person, across tenants. ``email`` is unique case-insensitively (index on lower(email))."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    email: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, default="")
    password_hash: Mapped[str] = mapped_column(Text)
    mfa_secret: Mapped[str | None] = mapped_column(Text, default=None)
    """TOTP seed, sealed by the secret box with the user id as context."""
    mfa_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    mfa_last_step: Mapped[int] = mapped_column(Integer, default=0)
    """The last accepted TOTP time step: a code at or before it is never accepted again."""
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=utcnow
    )
    password_changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=utcnow
    )


class RecoveryCodeRow(KernelBase):
    __tablename__ = "user_recovery_codes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column()
    code_hash: Mapped[bytes] = mapped_column(LargeBinary)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class MembershipRow(TenantScoped, KernelBase):
    __tablename__ = "memberships"

    user_id: Mapped[uuid.UUID] = mapped_column()
    role: Mapped[str] = mapped_column(Text)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class RefreshTokenRow(TenantScoped, KernelBase):
    """One refresh token of a session family; rotated on every use."""

    __tablename__ = "refresh_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column()
    family_id: Mapped[uuid.UUID] = mapped_column()
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """Absolute end of the family: rotation never extends it."""
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class ApiKeyRow(TenantScoped, KernelBase):
    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary)
    role: Mapped[str | None] = mapped_column(Text, default=None)
    scopes: Mapped[list[str] | None] = mapped_column(ARRAY(Text), default=None)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class InvitationRow(TenantScoped, KernelBase):
    __tablename__ = "invitations"

    email: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    invited_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class RoleGrantRow(TenantScoped, KernelBase):
    """A tenant's edited grants for one role (absent: the built-in defaults apply)."""

    __tablename__ = "role_grants"

    role: Mapped[str] = mapped_column(Text)
    permissions: Mapped[list[str]] = mapped_column(ARRAY(Text))
