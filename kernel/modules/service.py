"""Switching modules on and off per tenant, with dependencies and a coherent cache."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit import log as audit_log
from kernel.audit.log import RequestMeta
from kernel.cache import InvalidationBus, TTLCache
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.entitlements import EntitlementGate
from kernel.errors import Conflict, FieldError, NotFound, Unprocessable
from kernel.events.catalog import ModuleDisabled, ModuleEnabled, ModulePurged, publish
from kernel.modules.models import TenantModuleRow
from kernel.modules.schemas import Module
from kernel.plugins.loader import PluginRecord, PluginSet
from kernel.vault.models import VaultSecretRow
from kernel.webhooks.models import WebhookEndpointRow
from kernel.webhooks.service import TOPIC as WEBHOOK_TOPIC

if TYPE_CHECKING:
    from kernel.plugins.services import Services

__all__ = ["ModuleService"]

TOPIC = "modules"


class ModuleService:
    def __init__(
        self,
        db: Database,
        plugins: PluginSet,
        bus: InvalidationBus | None,
        entitlements: EntitlementGate | None = None,
        ttl: float = 60.0,
    ):
        self.db = db
        self.entitlements = entitlements
        self.plugins = plugins
        self.bus = bus
        self._cache: TTLCache[str, object] = TTLCache(ttl)
        self._services: Callable[[str], Services] | None = None
        if bus is not None:
            bus.register(TOPIC, self._cache)

    def attach(self, services: Callable[[str], Services]) -> None:
        """Give the service the kernel's facade factory (the kernel exists only after it), for
        the plugins' settings checks."""
        self._services = services

    def _plugin(self, name: str) -> PluginRecord:
        record = self.plugins.get(name)
        if record is None:
            raise NotFound(f"module {name!r} is not installed")
        return record

    def _always(self) -> frozenset[str]:
        """Active plugins whose manifest says ``always_enabled``: on for every tenant."""
        return frozenset(r.name for r in self.plugins.active() if r.manifest and r.manifest.always_enabled)

    async def enabled(self, tenant_id: uuid.UUID) -> frozenset[str]:
        """Names of the modules ``tenant_id`` has enabled, the always-enabled ones included
        (cached per process)."""
        key = str(tenant_id)
        cached = self._cache.get(key)
        generation = self._cache.generation
        if isinstance(cached, frozenset):
            return cached
        async with self.db.tenant(tenant_id) as session:
            names = self._always() | frozenset(
                (
                    await session.execute(
                        select(TenantModuleRow.plugin).where(TenantModuleRow.enabled.is_(True))
                    )
                ).scalars()
            )
        self._cache.put(key, names, generation)
        return names

    async def list(self, tenant_id: uuid.UUID) -> list[Module]:
        enabled = await self.enabled(tenant_id)
        return [
            Module(
                name=r.name,
                version=r.version,
                status="active" if r.active else "disabled",
                enabled=r.name in enabled,
                reason=r.reason,
                title=r.manifest.title if r.manifest else "",
                description=r.manifest.description if r.manifest else "",
                depends_on=r.depends_on,
                distribution=r.distribution,
            )
            for r in self.plugins.records.values()
        ]

    async def _lock(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        # One module change at a time per tenant, so enable/disable races cannot break dependencies.
        await session.execute(
            text("select pg_advisory_xact_lock(hashtextextended('modules:' || :t, 0))"), {"t": str(tenant_id)}
        )

    async def _enabled_in(self, session: AsyncSession) -> set[str]:
        rows = await session.execute(select(TenantModuleRow.plugin).where(TenantModuleRow.enabled.is_(True)))
        return set(rows.scalars())

    async def enable(
        self, tenant_id: uuid.UUID, name: str, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> builtins.list[str]:  # in this class, plain `list` names the method ModuleService.list
        """Enable ``name`` and what it depends on; returns the modules newly enabled. Audited as
        ``module.enabled`` (by ``actor``, from ``meta``) in the same transaction."""
        record = self._plugin(name)
        if not record.active:
            raise Conflict(f"module {name!r} cannot be enabled: {record.reason}")
        wanted = self.plugins.requirements(name)
        async with self.db.tenant(tenant_id) as session:
            await self._lock(session, tenant_id)
            already = await self._enabled_in(session)
            added = [n for n in wanted if n not in already]
            if self.entitlements is not None:
                # Every module the call switches on, dependencies too, must be in the tenant's plan.
                for plugin in added:
                    await self.entitlements.require(tenant_id, f"kernel.module.{plugin}")
            for plugin in added:
                stmt = insert(TenantModuleRow).values(
                    tenant_id=tenant_id, id=uuid7(), plugin=plugin, enabled=True, settings={}
                )
                await session.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["tenant_id", "plugin"], set_={"enabled": True, "updated_at": utcnow()}
                    )
                )
            await audit_log.record(
                session, tenant_id=tenant_id, actor=actor, action="module.enabled", resource_type="module",
                resource_id=name, meta=meta, before={"enabled": name in already},
                after={"enabled": True, "changed": added},
            )
            for plugin in added:
                await publish(session, tenant_id, ModuleEnabled(actor=actor, module=plugin, requested=name))
        await self._invalidate(tenant_id)
        return added

    async def disable(
        self, tenant_id: uuid.UUID, name: str, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> bool:
        """Disable ``name`` (its data stays); 409 while an enabled module depends on it. Audited as
        ``module.disabled`` in the same transaction."""
        self._plugin(name)
        if name in self._always():
            raise Conflict(f"module {name!r} is enabled for every tenant by the installation")
        async with self.db.tenant(tenant_id) as session:
            await self._lock(session, tenant_id)
            enabled = await self._enabled_in(session)
            if name not in enabled:
                await audit_log.record(
                    session, tenant_id=tenant_id, actor=actor, action="module.disabled",
                    resource_type="module", resource_id=name, meta=meta,
                    before={"enabled": False}, after={"enabled": False},
                )
                return False
            blockers = sorted(
                n for n in enabled if (r := self.plugins.get(n)) is not None and name in r.depends_on
            )
            if blockers:
                raise Conflict(
                    f"module {name!r} is needed by enabled module(s): {', '.join(blockers)}",
                    extra={"dependents": blockers},
                )
            row = (
                await session.execute(select(TenantModuleRow).where(TenantModuleRow.plugin == name))
            ).scalar_one()
            row.enabled = False
            row.updated_at = utcnow()
            await session.flush()
            await audit_log.record(
                session, tenant_id=tenant_id, actor=actor, action="module.disabled", resource_type="module",
                resource_id=name, meta=meta, before={"enabled": True}, after={"enabled": False},
            )
            await publish(session, tenant_id, ModuleDisabled(actor=actor, module=name))
        await self._invalidate(tenant_id)
        return True

    async def purge(
        self, tenant_id: uuid.UUID, name: str, *, actor: str | None = None, meta: RequestMeta | None = None
    ) -> dict[str, int]:
        """Delete this tenant's rows in every table of module ``name``, its settings, and its vault
        secrets and webhook endpoints; other tenants' rows are untouched (row-level security and an
        explicit filter). The module must be disabled first. Returns the rows deleted per table
        (the kernel's tables only when the plugin had rows there); audited as ``module.purged``."""
        record = self._plugin(name)
        deleted: dict[str, int] = {}
        async with self.db.tenant(tenant_id) as session:
            await self._lock(session, tenant_id)
            if name in self._always() or name in await self._enabled_in(session):
                raise Conflict(f"disable module {name!r} before purging its data")
            # Children before parents: the reverse of the order the tables were declared to depend in.
            for table in reversed(record.metadata.sorted_tables if record.metadata is not None else []):
                result = await session.execute(table.delete().where(table.c.tenant_id == tenant_id))
                deleted[table.name] = int(result.rowcount)  # type: ignore[attr-defined]
            # The plugin's vault secrets and webhook endpoints live in kernel tables keyed by plugin.
            for kept in (VaultSecretRow, WebhookEndpointRow):
                result = await session.execute(delete(kept).where(kept.plugin == name))
                if result.rowcount:  # type: ignore[attr-defined]
                    deleted[kept.__tablename__] = int(result.rowcount)  # type: ignore[attr-defined]
            settings = await session.execute(
                update(TenantModuleRow).where(TenantModuleRow.plugin == name).values(settings={}, updated_at=utcnow())
            )
            await audit_log.record(
                session, tenant_id=tenant_id, actor=actor, action="module.purged", resource_type="module",
                resource_id=name, meta=meta,
                details={"deleted": deleted, "settings_reset": bool(settings.rowcount)},  # type: ignore[attr-defined]
            )
            await publish(session, tenant_id, ModulePurged(actor=actor, module=name, deleted=deleted))
        if WebhookEndpointRow.__tablename__ in deleted and self.bus is not None:
            await self.bus.publish(WEBHOOK_TOPIC, "*")  # what the deleted tokens opened, cached anywhere
        return deleted

    async def get_settings(self, tenant_id: uuid.UUID, name: str) -> dict[str, Any]:
        record = self._plugin(name)
        if record.settings_schema is None:
            raise NotFound(f"module {name!r} has no settings")
        async with self.db.tenant(tenant_id) as session:
            stored = (
                await session.execute(select(TenantModuleRow.settings).where(TenantModuleRow.plugin == name))
            ).scalar_one_or_none()
        return _current_settings(stored or {}, record.settings_schema)

    def settings_schema(self, name: str) -> dict[str, Any]:
        """The JSON Schema of ``name``'s settings (404 when the module has none)."""
        record = self._plugin(name)
        if record.settings_schema is None:
            raise NotFound(f"module {name!r} has no settings")
        return msgspec.json.schema(record.settings_schema)

    async def put_settings(
        self,
        tenant_id: uuid.UUID,
        name: str,
        body: dict[str, Any],
        *,
        actor: str | None = None,
        meta: RequestMeta | None = None,
    ) -> dict[str, Any]:
        """Replace ``name``'s settings; audited as ``module.settings.updated`` (secret-looking keys
        redacted) in the same transaction. The body must fit the plugin's schema, then pass its
        ``businessos_settings_check`` when it has one (422 naming the fields otherwise)."""
        record = self._plugin(name)
        if record.settings_schema is None:
            raise NotFound(f"module {name!r} has no settings")
        try:
            value = msgspec.convert(body, record.settings_schema)
        except msgspec.ValidationError as exc:
            raise Unprocessable(
                f"invalid settings for module {name!r}: {exc}", errors=[_field_error(str(exc))]
            ) from None
        if record.settings_check is not None:
            assert self._services is not None, "ModuleService.attach was not called"
            errors = list(await record.settings_check(self._services(name), tenant_id, value))
            if errors:
                raise Unprocessable(f"invalid settings for module {name!r}", errors=errors)
        settings = msgspec.to_builtins(value)
        async with self.db.tenant(tenant_id) as session:
            previous = (
                await session.execute(select(TenantModuleRow.settings).where(TenantModuleRow.plugin == name))
            ).scalar_one_or_none()
            stmt = insert(TenantModuleRow).values(
                tenant_id=tenant_id, id=uuid7(), plugin=name, enabled=False, settings=settings
            )
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["tenant_id", "plugin"],
                    set_={"settings": settings, "updated_at": utcnow()},
                )
            )
            await audit_log.record(
                session, tenant_id=tenant_id, actor=actor, action="module.settings.updated",
                resource_type="module", resource_id=name, meta=meta,
                before={"settings": previous}, after={"settings": settings},
            )
        return settings  # type: ignore[no-any-return]

    async def _invalidate(self, tenant_id: uuid.UUID) -> None:
        if self.bus is not None:
            await self.bus.publish(TOPIC, str(tenant_id))
        else:
            self._cache.drop(str(tenant_id))


def _current_settings(stored: dict[str, Any], schema: type[msgspec.Struct]) -> dict[str, Any]:
    """Stored settings seen through the plugin's current schema: new fields show their defaults,
    and values an upgraded schema no longer accepts fall back to the default instead of failing."""
    kept: dict[str, Any] = {}
    for key, value in stored.items():
        try:
            msgspec.convert({**kept, key: value}, schema)
        except msgspec.ValidationError:
            continue
        kept[key] = value
    return msgspec.to_builtins(msgspec.convert(kept, schema))  # type: ignore[no-any-return]


def _field_error(message: str) -> FieldError:
    # msgspec ends its messages with "- at `$.field`"; keep the path as the field name.
    field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else "body"
    return FieldError(field=field, message=message.split(" - at ")[0])
