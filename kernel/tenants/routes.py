from __future__ import annotations

from litestar import get, post

from kernel.context import Kernel
from kernel.tenants.schemas import Tenant, TenantCreate

__all__ = ["create_tenant", "get_current_tenant"]


@post("/api/tenants", status_code=201, tags=["tenants"])
async def create_tenant(data: TenantCreate, kernel: Kernel) -> Tenant:
    """Create a tenant. A slug already in use answers 409."""
    return await kernel.tenants.create(data)


@get("/api/tenants/current", tags=["tenants"])
async def get_current_tenant(tenant: Tenant) -> Tenant:
    """The tenant named by the request's ``X-Tenant-ID`` header."""
    return tenant
