"""Tenant rules: creation with a unique slug, lookup by id or slug, suspension."""

from __future__ import annotations

import uuid

import msgspec
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

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

    async def create(self, data: TenantCreate) -> Tenant:
        row = TenantRow(name=data.name.strip(), slug=data.slug, plan=data.plan, status="active")
        try:
            async with self.db.global_() as session:
                session.add(row)
                await session.flush()
                await session.refresh(row)
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
        if isinstance(cached, Tenant):
            return cached
        query = select(TenantRow).where(TenantRow.id == ident if ident else TenantRow.slug == key)
        async with self.db.global_() as session:
            row = (await session.execute(query)).scalar_one_or_none()
        if row is None:
            return None
        tenant = _to_tenant(row)
        self._cache.put(key, tenant)
        return tenant

    async def resolve(self, ref: str) -> Tenant:
        """The active tenant named by ``ref``: 404 if unknown, 403 if suspended."""
        if not ref.strip() or len(ref) > 100:
            raise BadRequest("X-Tenant-ID must be a tenant id or slug")
        tenant = await self.find(ref)
        if tenant is None:
            raise NotFound(f"tenant {ref!r} does not exist")
        if tenant.status != "active":
            raise Forbidden(f"tenant {tenant.slug!r} is {tenant.status}")
        return tenant

    async def list(self) -> list[Tenant]:
        async with self.db.global_() as session:
            rows = (await session.execute(select(TenantRow).order_by(TenantRow.created_at))).scalars()
            return [_to_tenant(r) for r in rows]

    async def set_status(self, ref: str, status: Status) -> Tenant:
        tenant = await self.find(ref)
        if tenant is None:
            raise NotFound(f"tenant {ref!r} does not exist")
        async with self.db.global_() as session:
            await session.execute(update(TenantRow).where(TenantRow.id == tenant.id).values(status=status))
        await self._invalidate(str(tenant.id), tenant.slug)
        return msgspec.structs.replace(tenant, status=status)

    async def _invalidate(self, *refs: str) -> None:
        for ref in refs:
            if self.bus is not None:
                await self.bus.publish(TOPIC, ref)
            else:
                self._cache.drop(ref)
