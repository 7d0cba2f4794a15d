"""Request and response bodies of the identity API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from kernel.listing import Pagination
from kernel.tenants.schemas import Name, Plan, Slug, Tenant

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyInfo",
    "ApiKeyList",
    "Email",
    "Invitation",
    "InvitationCreate",
    "Login",
    "Me",
    "MemberInfo",
    "MemberRoleUpdate",
    "MfaChallenge",
    "Password",
    "PasswordChange",
    "RefreshRequest",
    "Register",
    "RoleGrants",
    "RoleList",
    "RoleUpdate",
    "SwitchTenant",
    "TenantSignup",
    "TenantWithOwner",
    "TokenPair",
]

Email = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$",
        description="e-mail",
    ),
]
# Free text a person types: anything but control characters.
PersonName = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f]*$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Role = Literal["owner", "admin", "member", "viewer"]


class Owner(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: PersonName = ""


class TenantSignup(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    slug: Slug
    owner: Owner
    plan: Plan | None = None
    allow_signup: bool = False


class TokenPair(msgspec.Struct, frozen=True):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class TenantWithOwner(msgspec.Struct, frozen=True):
    tenant: Tenant
    user_id: uuid.UUID
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class MfaChallenge(msgspec.Struct, frozen=True):
    mfa_token: str
    mfa_required: bool = True


class Login(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class Register(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: PersonName = ""
    invitation_token: str | None = None


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class LogoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password
    refresh_token: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    """The caller's own refresh token: its session survives, every other one ends."""


class SwitchTenant(msgspec.Struct, forbid_unknown_fields=True):
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    """Id or slug of another tenant the caller belongs to."""


class Membership(msgspec.Struct, frozen=True):
    tenant_id: uuid.UUID
    slug: str
    name: str
    role: str


class Me(msgspec.Struct, frozen=True):
    id: uuid.UUID
    email: str
    name: str
    mfa_enabled: bool
    tenant_id: uuid.UUID
    role: str | None
    permissions: list[str]
    memberships: list[Membership]


class InvitationCreate(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    role: Literal["admin", "member", "viewer"] = "member"
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=30)] = 7


class Invitation(msgspec.Struct, frozen=True):
    id: uuid.UUID
    email: str
    role: str
    expires_at: datetime
    token: str
    """Shown once: give it to the invitee, who registers with it."""


class RoleGrants(msgspec.Struct, frozen=True):
    role: str
    permissions: list[str]
    customized: bool
    editable: bool


class PermissionInfo(msgspec.Struct, frozen=True):
    name: str
    description: str
    plugin: str


class RoleList(msgspec.Struct, frozen=True):
    roles: list[RoleGrants]
    permissions: list[PermissionInfo]


class RoleUpdate(msgspec.Struct, forbid_unknown_fields=True):
    permissions: list[Annotated[str, msgspec.Meta(max_length=200)]]


class MemberRoleUpdate(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["admin", "member", "viewer"]
    """The member's new role; ownership is not handed over this way."""


class MemberInfo(msgspec.Struct, frozen=True):
    user_id: uuid.UUID
    role: str


class Member(msgspec.Struct, frozen=True):
    """A member of the tenant: who, their role here, since when, their last log-in here."""

    user_id: uuid.UUID
    email: str
    name: str
    role: str
    joined_at: datetime
    last_login_at: datetime | None


class MemberList(msgspec.Struct, frozen=True):
    members: list[Member]
    pagination: Pagination


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]*$")]
    role: Literal["admin", "member", "viewer"] | None = None
    scopes: list[Annotated[str, msgspec.Meta(max_length=200)]] | None = None
    expires_at: datetime | None = None


class ApiKeyInfo(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    prefix: str
    role: str | None
    scopes: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    key: str
    """The secret, shown this once."""
    prefix: str
    role: str | None
    scopes: list[str] | None
    expires_at: datetime | None


class ApiKeyList(msgspec.Struct, frozen=True):
    api_keys: list[ApiKeyInfo]
