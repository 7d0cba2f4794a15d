"""Tenant rules: creation with a unique slug, lookup by id or slug, suspension."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit import log as audit_log
from kernel.audit.log import RequestMeta
from kernel.cache import InvalidationBus, TTLCache
from kernel.db.engine import Database
from kernel.errors import BadRequest, Conflict, Forbidden, NotFound
from kernel.tenants.models import TenantRow
from kernel.tenants.schemas import Status, Tenant, TenantCreate

__all__ = ["TenantService"]

TOPIC = "tenant"


def _to_tenant(row: TenantRow) -> Tenant:
    return msgspec.convert(row, Tenant, from_attributes=True)


class TenantService:
    def __init__(self, db: Database, bus: InvalidationBus | None = None, ttl: float = 30.0) -> None:
        self.db = db
        self.bus = bus
        # Keyed by the canonical reference the client sent: the id's text or the lower-case slug.
        self._cache: TTLCache[str, object] = TTLCache(ttl)
        if bus is not None:
            bus.register(TOPIC, self._cache)

    async def create(
        self, data: TenantCreate, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> Tenant:
        """A new tenant; audited as ``tenant.created`` in the same transaction."""
        row = TenantRow(name=data.name.strip(), slug=data.slug, plan=data.plan, status="active")
        try:
            async with self.db.global_() as session:
                session.add(row)
                await session.flush()
                await session.refresh(row)
                await _audit(
                    session, row.id, actor, "tenant.created", meta,
                    after={"name": row.name, "slug": row.slug, "plan": row.plan},
                )
        except IntegrityError as exc:
            if "uq_tenants_slug" in str(exc.orig):
                raise Conflict(f"a tenant with slug {data.slug!r} already exists") from None
            raise
        await self._invalidate(row.slug)
        return _to_tenant(row)

    async def find(self, ref: str) -> Tenant | None:
        """The tenant whose id or slug is ``ref``, or ``None``."""
        try:
            ident: uuid.UUID | None = uuid.UUID(ref.strip())
        except ValueError:
            ident = None
        key = str(ident) if ident else ref.strip().lower()
        cached = self._cache.get(key)
        generation = self._cache.generation
        if isinstance(cached, Tenant):
            return cached
        query = select(TenantRow).where(TenantRow.id == ident if ident else TenantRow.slug == key)
        async with self.db.global_() as session:
            row = (await session.execute(query)).scalar_one_or_none()
        if row is None:
            return None
        tenant = _to_tenant(row)
        self._cache.put(key, tenant, generation)
        return tenant

    async def resolve(self, ref: str) -> Tenant:
        """The active tenant named by ``ref``: 404 if unknown, 403 if suspended."""
        if not ref.strip() or len(ref) > 100:
            raise BadRequest("X-Tenant-ID must be a tenant id or slug")
        tenant = await self.find(ref)
        if tenant is None:
            raise NotFound(f"tenant {ref!r} does not exist")
        if tenant.status != "active":
            raise Forbidden(f"this tenant is {tenant.status}")  # anonymous callers: no slug
        return tenant

    async def list(self) -> list[Tenant]:
        async with self.db.global_() as session:
            rows = (await session.execute(select(TenantRow).order_by(TenantRow.created_at))).scalars()
            return [_to_tenant(r) for r in rows]

    async def set_status(
        self, ref: str, status: Status, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> Tenant:
        """Suspend or reactivate a tenant; audited as ``tenant.status.updated``."""
        tenant = await self.find(ref)
        if tenant is None:
            raise NotFound(f"tenant {ref!r} does not exist")
        async with self.db.global_() as session:
            before = (
                await session.execute(select(TenantRow.status).where(TenantRow.id == tenant.id))
            ).scalar_one()
            await session.execute(update(TenantRow).where(TenantRow.id == tenant.id).values(status=status))
            await _audit(
                session, tenant.id, actor, "tenant.status.updated", meta,
                before={"status": before}, after={"status": status},
            )
        await self._invalidate(str(tenant.id), tenant.slug)
        return msgspec.structs.replace(tenant, status=status)

    async def _invalidate(self, *refs: str) -> None:
        for ref in refs:
            if self.bus is not None:
                await self.bus.publish(TOPIC, ref)
            else:
                self._cache.drop(ref)


async def _audit(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    actor: str | None,
    action: str,
    meta: RequestMeta | None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """An audit row for a change to the tenant itself, in the (global) session's transaction."""
    # The audit table is tenant-scoped: name the tenant for the rest of this transaction only.
    await session.execute(text("select set_config('app.tenant_id', :t, true)"), {"t": str(tenant_id)})
    await audit_log.record(
        session, tenant_id=tenant_id, actor=actor, action=action, resource_type="tenant",
        resource_id=str(tenant_id), meta=meta, before=before, after=after,
    )
