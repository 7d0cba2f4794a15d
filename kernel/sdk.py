"""The one module a plugin imports from the kernel.

Everything a plugin needs is re-exported here: the hook marker, the manifest and contribution
types, model bases, migration helpers and the tenant-scoped services. The rest of ``kernel`` is
private and may change without notice; this surface follows ``KERNEL_API_VERSION``.
"""

from __future__ import annotations

from kernel import KERNEL_API_VERSION
from kernel.audit.log import RequestMeta, audit, request_actor, request_meta
from kernel.audit.log import record as audit_record
from kernel.context import Kernel, current_tenant, get_kernel
from kernel.db.ddl import create_tenant_table, enable_tenant_rls, grant_runtime
from kernel.db.models import TenantScoped, declarative_base, utcnow, uuid7
from kernel.db.reader import Query, Reader
from kernel.egress import EgressClient, EgressFailed, EgressRefused, EgressResponse
from kernel.errors import BadRequest, Conflict, FieldError, Forbidden, NotFound, Problem, Unprocessable
from kernel.events.outbox import emit
from kernel.identity.access import is_member
from kernel.identity.auth import principal_of
from kernel.identity.permissions import AUTHENTICATED, PUBLIC
from kernel.identity.principal import Principal
from kernel.plugins.contract import EventContext, EventHandler, EventType, Manifest, NodeSpec, Permission
from kernel.plugins.hookspecs import hookimpl
from kernel.plugins.services import Data, Members, Services
from kernel.runtime import open_kernel_from_environment as open_kernel
from kernel.tenants.schemas import Tenant

__all__ = [
    "AUTHENTICATED",
    "KERNEL_API_VERSION",
    "PUBLIC",
    "BadRequest",
    "Conflict",
    "Data",
    "EgressClient",
    "EgressFailed",
    "EgressRefused",
    "EgressResponse",
    "EventContext",
    "EventHandler",
    "EventType",
    "FieldError",
    "Forbidden",
    "Kernel",
    "Manifest",
    "Members",
    "NodeSpec",
    "NotFound",
    "Permission",
    "Principal",
    "Problem",
    "Query",
    "Reader",
    "RequestMeta",
    "Services",
    "Tenant",
    "TenantScoped",
    "Unprocessable",
    "audit",
    "audit_record",
    "create_tenant_table",
    "current_tenant",
    "declarative_base",
    "emit",
    "enable_tenant_rls",
    "get_kernel",
    "grant_runtime",
    "hookimpl",
    "is_member",
    "open_kernel",
    "principal_of",
    "request_actor",
    "request_meta",
    "utcnow",
    "uuid7",
]
