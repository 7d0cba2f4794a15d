"""Open the kernel's services for one process: the API, the worker, or a CLI command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from redis.asyncio import Redis
from sqlalchemy import text

from kernel.cache import InvalidationBus
from kernel.context import Kernel
from kernel.crypto import SecretBox
from kernel.db import migrate
from kernel.db.engine import Database
from kernel.db.urls import runtime_url
from kernel.embedded import EmbeddedServices
from kernel.entitlements import EntitlementGate
from kernel.http.ratelimit import RateLimiter
from kernel.identity.access import AccessService
from kernel.identity.service import IdentityService
from kernel.identity.tokens import KeySet
from kernel.modules.service import ModuleService
from kernel.plugins.loader import PluginSet
from kernel.plugins.services import Services
from kernel.settings import Settings
from kernel.tenants.service import TenantService

__all__ = ["DatabaseNotReady", "open_kernel", "open_kernel_from_environment", "open_services", "prepare_database"]


class DatabaseNotReady(RuntimeError):
    """The schema is behind the code, or the runtime role could bypass row-level security."""


async def prepare_database(
    settings: Settings, plugins: PluginSet, database_url: str, *, migrate_now: bool
) -> None:
    """Migrate (when ``migrate_now``) or refuse a schema that is behind."""
    folders = plugins.migration_folders()
    if migrate_now:
        await migrate.upgrade(settings, database_url, folders)
        return
    pending = await migrate.pending_heads(database_url, folders)
    if pending:
        raise DatabaseNotReady(
            f"the database needs migrating ({', '.join(pending)}): run `businessos migrate`"
        )


async def _check_runtime_role(db: Database) -> None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
            )
        ).one()
    if row.rolsuper or row.rolbypassrls:
        raise DatabaseNotReady(
            "the runtime database role is a superuser or has BYPASSRLS: row-level security would not apply"
        )


@asynccontextmanager
async def open_kernel_from_environment() -> AsyncIterator[Kernel]:
    """The kernel's services as configured by the environment: for plugin CLI commands and scripts.

    Like ``businessos serve``, it starts the embedded servers when no URLs are set.
    """
    from kernel.app import load_app_plugins
    from kernel.settings import load_settings

    settings = load_settings()
    async with open_kernel(settings, load_app_plugins(settings.plugins_allowlist)) as kernel:
        yield kernel


@asynccontextmanager
async def open_services(plugin: str) -> AsyncIterator[Services]:
    """``plugin``'s facade in a process of its own (a plugin's CLI command, a script): the kernel
    opened from the environment as by :func:`open_kernel_from_environment`, closed on exit."""
    async with open_kernel_from_environment() as kernel:
        yield kernel.services(plugin)


@asynccontextmanager
async def open_kernel(settings: Settings, plugins: PluginSet) -> AsyncIterator[Kernel]:
    """Start what is embedded, check (or, embedded, apply) migrations, and connect.

    With ``DATABASE_URL`` unset the embedded PostgreSQL is started and migrated; with it set, a
    schema that is behind stops start-up with the command to run.
    """
    async with AsyncExitStack() as stack:
        embedded = None
        if settings.embedded_database or settings.embedded_redis:
            embedded = await asyncio.to_thread(EmbeddedServices(settings).start)
            stack.callback(embedded.stop)
        database_url = settings.database_url or (embedded.database_url if embedded else None)
        redis_url = settings.redis_url or (embedded.redis_url if embedded else None)
        assert database_url and redis_url
        await prepare_database(settings, plugins, database_url, migrate_now=settings.embedded_database)

        db = Database(runtime_url(settings, database_url), pool_size=settings.db_pool_size)
        stack.push_async_callback(db.dispose)
        await _check_runtime_role(db)
        # Requests must not hang on a stuck Redis; the invalidation subscriber waits on its own
        # connection, which may sit idle for as long as nothing changes.
        redis: Redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        stack.push_async_callback(redis.aclose)
        listener: Redis = Redis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=30)
        stack.push_async_callback(listener.aclose)
        bus = InvalidationBus(redis, listener)
        bus.start()
        stack.push_async_callback(bus.stop)
        tenants = TenantService(db, bus)
        keys = KeySet.from_config(settings.secret_key, settings.jwt_keys)
        entitlements = tenants.entitlements = EntitlementGate(plugins, tenants)
        access = AccessService(db, plugins, bus, entitlements)
        kernel = Kernel(
            settings=settings,
            plugins=plugins,
            db=db,
            redis=redis,
            bus=bus,
            tenants=tenants,
            modules=ModuleService(db, plugins, bus, entitlements),
            keys=keys,
            box=SecretBox.from_secret(settings.secret_key, settings.master_keys),
            access=access,
            identity=IdentityService(
                db, redis, keys, tenants, access, entitlements, refresh_days=settings.refresh_token_days
            ),
            limiter=RateLimiter(redis),
            entitlements=entitlements,
        )
        try:
            yield kernel
        finally:
            await kernel.ai.drain()  # AI calls answered but not yet settled
            await kernel.egress.aclose()
