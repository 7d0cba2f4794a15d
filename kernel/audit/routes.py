"""``GET /api/audit/logs`` and ``GET /api/audit/verify``: reading the tenant's audit log."""

from __future__ import annotations

from litestar import get

from kernel.audit.schemas import AuditPage, ChainReport
from kernel.audit.service import AuditService, parse_filters
from kernel.context import Kernel
from kernel.tenants.schemas import Tenant

__all__ = ["list_audit_logs", "verify_audit_chain"]

PERMISSION = "kernel.audit.read"


@get("/api/audit/logs", tags=["audit"], opt={"permission": PERMISSION})
async def list_audit_logs(
    kernel: Kernel,
    tenant: Tenant,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> AuditPage:
    """The tenant's audit rows, newest first.

    Filters: ``actor`` (``user:<id>`` or ``api_key:<id>``), ``action`` (exact, or a prefix ending
    in ``*``), ``resource_type``, ``resource_id``, ``since`` (inclusive) and ``until`` (exclusive)
    as ISO 8601. ``limit`` defaults to 50 and is capped at 200; follow ``next_cursor`` for older rows.
    """
    filters = parse_filters(
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        since=since,
        until=until,
    )
    return await AuditService(kernel.db).list(tenant.id, filters, cursor, limit)


@get("/api/audit/verify", tags=["audit"], opt={"permission": PERMISSION})
async def verify_audit_chain(kernel: Kernel, tenant: Tenant) -> ChainReport:
    """Recompute the tenant's hash chain and name the first broken link, if any."""
    return await AuditService(kernel.db).verify(tenant.id)
