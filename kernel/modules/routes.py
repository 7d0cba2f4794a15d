from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, delete, get, post, put

from kernel.audit.log import request_actor, request_meta
from kernel.context import Kernel
from kernel.errors import NotFound
from kernel.modules.schemas import Module, ModuleList, ModuleSettings
from kernel.tenants.schemas import Tenant

__all__ = [
    "disable_module",
    "enable_module",
    "get_module_settings",
    "list_modules",
    "purge_module_data",
    "put_module_settings",
]


WRITE = "kernel.modules.write"
PURGE = "kernel.modules.purge"


class ModuleChange(msgspec.Struct, frozen=True):
    module: Module
    changed: list[str]
    """Modules whose state this call changed (on enable: the module and dependencies it pulled in)."""


async def _module(kernel: Kernel, tenant: Tenant, name: str) -> Module:
    for module in await kernel.modules.list(tenant.id):
        if module.name == name:
            return module
    raise NotFound(f"module {name!r} is not installed")


@get("/api/modules", tags=["modules"], opt={"permission": "kernel.modules.read"})
async def list_modules(kernel: Kernel, tenant: Tenant) -> ModuleList:
    """Every installed plugin, whether it loaded, and whether this tenant enabled it."""
    return ModuleList(modules=await kernel.modules.list(tenant.id))


@post("/api/modules/{name:str}/enable", status_code=200, tags=["modules"], opt={"permission": WRITE})
async def enable_module(
    name: str, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> ModuleChange:
    """Enable a module for this tenant, with the modules it depends on."""
    changed = await kernel.modules.enable(
        tenant.id, name, actor=request_actor(request), meta=request_meta(request)
    )
    return ModuleChange(module=await _module(kernel, tenant, name), changed=changed)


@post("/api/modules/{name:str}/disable", status_code=200, tags=["modules"], opt={"permission": WRITE})
async def disable_module(
    name: str, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> ModuleChange:
    """Disable a module for this tenant; its data is kept. 409 while an enabled module needs it."""
    changed = await kernel.modules.disable(
        tenant.id, name, actor=request_actor(request), meta=request_meta(request)
    )
    return ModuleChange(module=await _module(kernel, tenant, name), changed=[name] if changed else [])


class Purged(msgspec.Struct, frozen=True):
    module: str
    deleted: dict[str, int]
    """Rows deleted, per table."""


@delete("/api/modules/{name:str}/data", status_code=200, tags=["modules"], opt={"permission": PURGE})
async def purge_module_data(name: str, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]) -> Purged:
    """Delete this tenant's data of a disabled module (its rows, settings, vault secrets and webhook
    endpoints). Other tenants keep theirs."""
    deleted = await kernel.modules.purge(tenant.id, name, actor=request_actor(request), meta=request_meta(request))
    return Purged(module=name, deleted=deleted)


@get("/api/modules/{name:str}/settings", tags=["modules"], opt={"permission": "kernel.modules.read"})
async def get_module_settings(name: str, kernel: Kernel, tenant: Tenant) -> ModuleSettings:
    """This tenant's settings for a module, defaults filled in."""
    settings = await kernel.modules.get_settings(tenant.id, name)
    return ModuleSettings(module=name, settings=settings, schema=kernel.modules.settings_schema(name))


@put("/api/modules/{name:str}/settings", tags=["modules"], opt={"permission": WRITE})
async def put_module_settings(
    name: str, data: dict[str, Any], kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> ModuleSettings:
    """Replace this tenant's settings for a module; validated against the module's schema."""
    settings = await kernel.modules.put_settings(
        tenant.id, name, data, actor=request_actor(request), meta=request_meta(request)
    )
    return ModuleSettings(module=name, settings=settings, schema=kernel.modules.settings_schema(name))
