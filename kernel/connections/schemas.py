"""Bodies and answers of ``/api/connections``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from kernel.listing import Pagination

__all__ = [
    "CheckError",
    "CheckResult",
    "ConnectionCreate",
    "ConnectionList",
    "ConnectionUpdate",
    "ConnectionView",
    "CredentialTypeInfo",
    "CredentialTypeList",
    "OAuthStart",
    "OAuthStarted",
]


class ConnectionCreate(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    """A credential type's key (``GET /api/connections/types``)."""
    name: str
    credentials: dict[str, Any]
    """Validated against the type's schema: 422 naming ``credentials.<field>``."""


class ConnectionUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    credentials: dict[str, Any] | None = None
    """Replaces every credential (validated like on creation)."""


class CheckError(msgspec.Struct, frozen=True):
    status: int
    title: str
    detail: str
    errors: list[dict[str, str]] = msgspec.field(default_factory=list)


class LastCheck(msgspec.Struct, frozen=True):
    ok: bool
    at: datetime
    error: str | None = None


class ConnectionView(msgspec.Struct, frozen=True):
    id: uuid.UUID
    type: str
    plugin: str
    name: str
    status: str
    """``active``, or ``broken`` once refreshing its OAuth 2.0 token failed (authorize it again)."""
    fields: dict[str, Any]
    """The non-secret credentials."""
    secrets: dict[str, str]
    """Each secret field that has a value, masked (``••••`` and at most its last four characters)."""
    oauth: bool
    expires_at: datetime | None
    broken_reason: str | None
    last_check: LastCheck | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ConnectionList(msgspec.Struct, frozen=True):
    connections: list[ConnectionView]
    pagination: Pagination


class CheckResult(msgspec.Struct, frozen=True):
    """What ``POST /api/connections/{id}/test`` answers (200 whether or not the check passed)."""

    ok: bool
    checked_at: datetime
    error: CheckError | None = None


class CredentialTypeInfo(msgspec.Struct, frozen=True):
    key: str
    plugin: str
    title: str
    description: str
    schema: dict[str, Any]
    """JSON Schema of the credentials; secret fields carry ``"writeOnly": true, "x-secret": true``."""
    secret_fields: list[str]
    oauth: bool
    checkable: bool


class CredentialTypeList(msgspec.Struct, frozen=True):
    types: list[CredentialTypeInfo]


class OAuthStart(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    name: str
    credentials: dict[str, Any]
    """The OAuth client: ``client_id``, ``client_secret`` and whatever else the type asks for."""
    redirect: str | None = None
    """Where the callback sends the browser at the end (``?connection_id=...`` or ``?error=...``
    added); without it the callback answers the connection as JSON."""
    connection_id: uuid.UUID | None = None
    """Authorize an existing connection again (a broken one) instead of creating one."""


class OAuthStarted(msgspec.Struct, frozen=True):
    authorize_url: str
    """Send the user's browser here."""
    state: str
    expires_at: datetime
