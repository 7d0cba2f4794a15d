"""Tenant rules: creation with a unique slug, lookup by id or slug, suspension."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit import log as audit_log
from kernel.audit.log import RequestMeta
from kernel.cache import InvalidationBus, TTLCache
from kernel.db.engine import Database
from kernel.entitlements import DEFAULT_PLAN, EntitlementGate
from kernel.errors import BadRequest, Conflict, Forbidden, NotFound
from kernel.events.catalog import TenantActivated, TenantCreated, TenantSuspended, publish
from kernel.tenants.models import TenantRow
from kernel.tenants.schemas import Plan, Status, Tenant, TenantCreate

__all__ = ["TenantService", "to_tenant"]

TOPIC = "tenant"


def to_tenant(row: TenantRow) -> Tenant:
    """The API shape of a tenant row."""
    return msgspec.convert(row, Tenant, from_attributes=True)


class TenantService:
    def __init__(self, db: Database, bus: InvalidationBus | None = None, ttl: float = 30.0) -> None:
        self.db = db
        self.bus = bus
        self.entitlements: EntitlementGate | None = None
        """Validates plan codes; set once the gate exists (it looks tenants up through us)."""
        # Keyed by the canonical reference the client sent: the id's text or the lower-case slug.
        self._cache: TTLCache[str, object] = TTLCache(ttl)
        if bus is not None:
            bus.register(TOPIC, self._cache)

    async def create(
        self, data: TenantCreate, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> Tenant:
        """A new tenant; audited as ``tenant.created`` in the same transaction."""
        plan = self.entitlements.plan(data.plan) if self.entitlements else data.plan or DEFAULT_PLAN
        row = TenantRow(name=data.name.strip(), slug=data.slug, plan=plan, status="active")
        try:
            async with self.db.global_() as session:
                session.add(row)
                await session.flush()
                await session.refresh(row)
                await _audit(
                    session, row.id, actor, "tenant.created", meta,
                    after={"name": row.name, "slug": row.slug, "plan": row.plan},
                )
                await publish(
                    session, row.id,
                    TenantCreated(actor=actor, tenant_id=row.id, name=row.name, slug=row.slug, plan=row.plan),
                )
        except IntegrityError as exc:
            if "uq_tenants_slug" in str(exc.orig):
                raise Conflict(f"a tenant with slug {data.slug!r} already exists") from None
            raise
        await self._invalidate(row.slug)
        return to_tenant(row)

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
        tenant = to_tenant(row)
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
            return [to_tenant(r) for r in rows]

    async def set_status(
        self, ref: str, status: Status, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> Tenant:
        """Suspend or reactivate a tenant; audited as ``tenant.status.updated``."""
        return await self._set(ref, "status", status, actor, meta)

    async def set_plan(
        self, ref: str, plan: Plan, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> Tenant:
        """Move a tenant to another plan; audited as ``tenant.plan.updated``. The entitlement
        provider, when there is one, decides which plan codes exist (422 naming ``plan``)."""
        if self.entitlements is not None:
            plan = self.entitlements.plan(plan)
        return await self._set(ref, "plan", plan, actor, meta)

    async def _set(
        self, ref: str, column: Literal["status", "plan"], value: str, actor: str | None,
        meta: RequestMeta | None,
    ) -> Tenant:
        """Change one column of the tenant, audited as ``tenant.<column>.updated`` with the value
        before and after, in one transaction; then drop it from every process's cache."""
        tenant = await self.find(ref)
        if tenant is None:
            raise NotFound(f"tenant {ref!r} does not exist")
        async with self.db.global_() as session:
            before = (
                await session.execute(select(getattr(TenantRow, column)).where(TenantRow.id == tenant.id))
            ).scalar_one()
            await session.execute(update(TenantRow).where(TenantRow.id == tenant.id).values({column: value}))
            await _audit(
                session, tenant.id, actor, f"tenant.{column}.updated", meta,
                before={column: before}, after={column: value},
            )
            if column == "status" and before != value:
                change = TenantSuspended if value == "suspended" else TenantActivated
                await publish(session, tenant.id, change(actor=actor, tenant_id=tenant.id, slug=tenant.slug))
        await self._invalidate(str(tenant.id), tenant.slug)
        return msgspec.structs.replace(tenant, **{column: value})

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
