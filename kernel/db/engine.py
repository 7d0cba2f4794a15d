"""The runtime database handle and the one way to open a tenant transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["Database"]

_SET_TENANT = text("select set_config('app.tenant_id', :tenant, true)")
_SET_USER = text("select set_config('app.user_id', :user, true)")


class Database:
    """Sessions on the runtime role's pool.

    ``tenant()`` is the only way handlers reach tenant tables: it begins a transaction whose
    first statement sets ``app.tenant_id`` (transaction-local), so row-level security scopes every
    query that follows and the setting cannot leak to the next user of the pooled connection.
    """

    def __init__(self, url: URL, *, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=False,
            pool_recycle=1800,
            connect_args={"server_settings": {"application_name": "businessos"}},
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
        """A session in one transaction scoped to ``tenant_id``; commits on success."""
        async with self.sessions() as session, session.begin():
            await session.execute(_SET_TENANT, {"tenant": str(tenant_id)})
            yield session

    @asynccontextmanager
    async def user(self, user_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
        """A transaction in which a person's own memberships are readable across tenants.

        Only the identity code uses it (log-in and tenant switching); tenant tables stay closed.
        """
        async with self.sessions() as session, session.begin():
            await session.execute(_SET_USER, {"user": str(user_id)})
            yield session

    @asynccontextmanager
    async def global_(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction with no tenant set: only global tables answer."""
        async with self.sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
