"""Request and response bodies of ``/api/admin``."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import msgspec

from kernel.ai.library_schemas import Page
from kernel.audit.schemas import ChainReport
from kernel.identity.schemas import Email, Password
from kernel.tenants.schemas import Plan, Tenant

__all__ = [
    "OperatorInfo",
    "OperatorLogin",
    "OperatorToken",
    "PlanChange",
    "TenantDetail",
    "TenantList",
    "TenantUsage",
    "UsageList",
    "VerifiedChain",
]


class OperatorLogin(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class OperatorInfo(msgspec.Struct, frozen=True):
    id: uuid.UUID
    email: str
    created_at: datetime
    last_login_at: datetime | None
    disabled: bool


class OperatorToken(msgspec.Struct, frozen=True):
    access_token: str
    """An operator token: accepted under ``/api/admin`` and by ``/metrics``, nowhere else."""
    expires_in: int
    operator: OperatorInfo
    token_type: str = "Bearer"


class PlanChange(msgspec.Struct, forbid_unknown_fields=True):
    plan: Plan


class TenantList(msgspec.Struct, frozen=True):
    tenants: list[Tenant]
    pagination: Page


class TenantUsage(msgspec.Struct, frozen=True):
    """One tenant's footprint: members, live API keys, enabled modules, AI calls since ``since``."""

    tenant: Tenant
    members: int
    api_keys: int
    modules: list[str]
    ai_calls: int
    ai_tokens: int
    ai_cost: Decimal
    since: datetime


class UsageList(msgspec.Struct, frozen=True):
    tenants: list[TenantUsage]
    pagination: Page


class TenantDetail(msgspec.Struct, frozen=True):
    tenant: Tenant
    usage: TenantUsage


class VerifiedChain(msgspec.Struct, frozen=True):
    tenant: Tenant
    chain: ChainReport
