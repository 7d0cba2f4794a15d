from __future__ import annotations

from typing import Any

from litestar import Request, get, post

from kernel.context import Kernel
from kernel.identity.auth import request_meta
from kernel.identity.permissions import PUBLIC
from kernel.identity.schemas import TenantSignup, TenantWithOwner
from kernel.tenants.schemas import Tenant

__all__ = ["create_tenant", "get_current_tenant"]


@post(
    "/api/tenants",
    status_code=201,
    tags=["tenants"],
    opt={"permission": PUBLIC, "rate_limit": "auth", "no_store": True},
)
async def create_tenant(
    data: TenantSignup, kernel: Kernel, request: Request[Any, Any, Any]
) -> TenantWithOwner:
    """Create a tenant and its owner account; answers with the owner's tokens. A slug in use: 409."""
    return await kernel.identity.create_tenant(data, request_meta(request))


@get("/api/tenants/current", tags=["tenants"], opt={"permission": "kernel.tenant.read"})
async def get_current_tenant(tenant: Tenant) -> Tenant:
    """The tenant named by the request's ``X-Tenant-ID`` header."""
    return tenant
