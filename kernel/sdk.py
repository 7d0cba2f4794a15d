"""The one module a plugin imports from the kernel.

Everything a plugin needs is re-exported here: the hook marker, the manifest and contribution
types, model bases, migration helpers and the tenant-scoped services. The rest of ``kernel`` is
private and may change without notice; this surface follows ``KERNEL_API_VERSION``.
"""

from __future__ import annotations

from kernel import KERNEL_API_VERSION
from kernel.context import Kernel, current_tenant, get_kernel
from kernel.db.ddl import create_tenant_table, enable_tenant_rls, grant_runtime
from kernel.db.models import TenantScoped, declarative_base, utcnow, uuid7
from kernel.errors import BadRequest, Conflict, FieldError, Forbidden, NotFound, Problem, Unprocessable
from kernel.plugins.contract import EventContext, EventHandler, EventType, Manifest, NodeSpec, Permission
from kernel.plugins.hookspecs import hookimpl
from kernel.tenants.schemas import Tenant

__all__ = [
    "KERNEL_API_VERSION",
    "KERNEL_BASE_REVISION",
    "BadRequest",
    "Conflict",
    "EventContext",
    "EventHandler",
    "EventType",
    "FieldError",
    "Forbidden",
    "Kernel",
    "Manifest",
    "NodeSpec",
    "NotFound",
    "Permission",
    "Problem",
    "Tenant",
    "TenantScoped",
    "Unprocessable",
    "create_tenant_table",
    "current_tenant",
    "declarative_base",
    "enable_tenant_rls",
    "get_kernel",
    "grant_runtime",
    "hookimpl",
    "utcnow",
    "uuid7",
]

# A plugin's first migration depends on this revision (it creates ``tenants``).
KERNEL_BASE_REVISION = "kernel_0001"
