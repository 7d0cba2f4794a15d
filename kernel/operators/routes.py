"""``/api/admin``: the operator's view of every tenant (log-in, tenants, plans, audit, usage)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request, get, post, put

from kernel.audit.log import request_meta
from kernel.context import Kernel
from kernel.errors import FieldError, Unprocessable
from kernel.identity.permissions import OPERATOR, PUBLIC
from kernel.operators.schemas import (
    OperatorLogin,
    OperatorToken,
    PlanChange,
    TenantDetail,
    TenantList,
    UsageList,
    VerifiedChain,
)
from kernel.operators.service import Operator
from kernel.tenants.schemas import Plan, Status, Tenant

__all__ = ["handlers"]

Req = Request[Any, Any, Any]
OPERATOR_ONLY = {"permission": OPERATOR}


@post("/api/admin/auth/login", status_code=200, tags=["admin"],
      opt={"permission": PUBLIC, "rate_limit": "auth"})
async def operator_login(data: OperatorLogin, request: Req, kernel: Kernel) -> OperatorToken:
    """Exchange an operator's e-mail and password for an operator token (15 minutes)."""
    return await kernel.operators.login(data.email, data.password, request_meta(request))


@get("/api/admin/tenants", tags=["admin"], opt=OPERATOR_ONLY)
async def list_tenants(
    kernel: Kernel,
    q: str | None = None,
    status: Status | None = None,
    plan: Plan | None = None,
    page: int = 1,
    limit: int = 20,
) -> TenantList:
    """Every tenant, oldest first; ``q`` searches slug and name, ``status`` and ``plan`` filter."""
    if q is not None and len(q) > 100:
        raise Unprocessable("q is too long", errors=[FieldError(field="q", message="at most 100 characters")])
    return await kernel.operators.list_tenants(q=q, status=status, plan=plan, page=page, limit=limit)


@get("/api/admin/tenants/{ref:str}", tags=["admin"], opt=OPERATOR_ONLY)
async def tenant_detail(ref: str, request: Req, kernel: Kernel, operator: Operator) -> TenantDetail:
    """A tenant (by id or slug, any status) and its usage this month. Recorded in its audit log."""
    return await kernel.operators.detail(operator, ref, request_meta(request))


@post("/api/admin/tenants/{ref:str}/suspend", status_code=200, tags=["admin"], opt=OPERATOR_ONLY)
async def suspend_tenant(ref: str, request: Req, kernel: Kernel, operator: Operator) -> Tenant:
    """Suspend a tenant: its requests answer 403 until it is activated again."""
    return await kernel.operators.set_status(operator, ref, "suspended", request_meta(request))


@post("/api/admin/tenants/{ref:str}/activate", status_code=200, tags=["admin"], opt=OPERATOR_ONLY)
async def activate_tenant(ref: str, request: Req, kernel: Kernel, operator: Operator) -> Tenant:
    """Re-activate a suspended tenant."""
    return await kernel.operators.set_status(operator, ref, "active", request_meta(request))


@put("/api/admin/tenants/{ref:str}/plan", tags=["admin"], opt=OPERATOR_ONLY)
async def change_plan(ref: str, data: PlanChange, request: Req, kernel: Kernel, operator: Operator) -> Tenant:
    """Move a tenant to another plan."""
    return await kernel.operators.set_plan(operator, ref, data.plan, request_meta(request))


@get("/api/admin/tenants/{ref:str}/audit/verify", tags=["admin"], opt=OPERATOR_ONLY)
async def verify_tenant_audit(ref: str, request: Req, kernel: Kernel, operator: Operator) -> VerifiedChain:
    """Recompute a tenant's audit hash chain; the check itself is then recorded in that chain."""
    return await kernel.operators.verify_chain(operator, ref, request_meta(request))


@get("/api/admin/usage", tags=["admin"], opt=OPERATOR_ONLY)
async def usage_overview(
    kernel: Kernel, since: datetime | None = None, page: int = 1, limit: int = 20
) -> UsageList:
    """Per tenant: members, live API keys, enabled modules, AI calls, tokens and cost since
    ``since`` (ISO 8601; default: the first of this month, UTC)."""
    return await kernel.operators.usage(since=since, page=page, limit=limit)


handlers = [
    operator_login,
    list_tenants,
    tenant_detail,
    suspend_tenant,
    activate_tenant,
    change_plan,
    verify_tenant_audit,
    usage_overview,
]
