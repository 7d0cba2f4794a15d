"""The running kernel's handles, and how a request reaches them and its tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from redis.asyncio import Redis

from kernel.cache import InvalidationBus
from kernel.db.engine import Database
from kernel.errors import BadRequest, NotFound
from kernel.modules.service import ModuleService
from kernel.plugins.loader import PluginSet
from kernel.settings import Settings
from kernel.tenants.schemas import Tenant
from kernel.tenants.service import TenantService

__all__ = ["TENANT_HEADER", "Kernel", "current_tenant", "get_kernel", "module_guard", "provide_tenant"]

TENANT_HEADER = "X-Tenant-ID"


@dataclass
class Kernel:
    settings: Settings
    plugins: PluginSet
    db: Database
    redis: Redis
    bus: InvalidationBus
    tenants: TenantService
    modules: ModuleService


def get_kernel(connection: ASGIConnection[Any, Any, Any, Any]) -> Kernel:
    kernel: Kernel = connection.app.state.kernel
    return kernel


async def current_tenant(connection: ASGIConnection[Any, Any, Any, Any]) -> Tenant:
    """The request's tenant, resolved once per request from the ``X-Tenant-ID`` header."""
    tenant: Tenant | None = connection.scope.get("state", {}).get("tenant")
    if tenant is not None:
        return tenant
    ref = connection.headers.get(TENANT_HEADER)
    if not ref:
        raise BadRequest(f"the {TENANT_HEADER} header (tenant id or slug) is required")
    tenant = await get_kernel(connection).tenants.resolve(ref)
    connection.scope.setdefault("state", {})["tenant"] = tenant
    return tenant


async def provide_tenant(request: ASGIConnection[Any, Any, Any, Any]) -> Tenant:
    return await current_tenant(request)


async def provide_kernel(request: ASGIConnection[Any, Any, Any, Any]) -> Kernel:
    return get_kernel(request)


async def module_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Let a plugin's route answer only for tenants that enabled the plugin."""
    module: str = handler.opt["module"]
    tenant = await current_tenant(connection)
    if module not in await get_kernel(connection).modules.enabled(tenant.id):
        raise NotFound(
            f"module {module!r} is not enabled for tenant {tenant.slug!r}", extra={"module": module}
        )
