from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from kernel.entitlements import PlanCode

__all__ = ["Plan", "Status", "Tenant", "TenantCreate"]

Plan = PlanCode
"""A plan code; which codes exist is the entitlement provider's to say (any, without one)."""
Status = Literal["active", "suspended"]

Slug = Annotated[
    str,
    msgspec.Meta(
        min_length=2,
        max_length=63,
        pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        description="lower-case letters, digits and inner hyphens",
    ),
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]*$")]


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    slug: Slug
    plan: Plan | None = None
    """``None``: the entitlement provider's default plan (``free`` without one)."""


class Tenant(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    slug: str
    status: Status
    plan: str
    created_at: datetime
    allow_signup: bool = False
