"""The runtime database handle and the one way to open a tenant transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util.concurrency import await_

from kernel.db.reader import Reader, begin_statement, end, open_read_pool

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
        self._url = url
        self._pool_size = pool_size
        self._read_pool: asyncpg.Pool | None = None
        self._read_pool_lock = asyncio.Lock()
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            # A connection the server closed (a restart, an idle timeout) is found and replaced at
            # checkout (see _ping), so the first requests after PostgreSQL comes back succeed
            # instead of failing on a dead socket; it costs one round trip per checkout.
            pool_pre_ping=False,
            pool_recycle=1800,
            pool_timeout=10,
            # An unreachable server fails the request (503) in seconds, not asyncpg's 60.
            connect_args={"server_settings": {"application_name": "businessos"}, "timeout": 5},
        )
        event.listen(self.engine.sync_engine, "checkout", _ping)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
        """A session in one transaction scoped to ``tenant_id``; commits on success."""
        async with self.sessions() as session, session.begin():
            await session.execute(_SET_TENANT, {"tenant": str(tenant_id)})
            yield session

    @asynccontextmanager
    async def read(self, tenant_id: uuid.UUID) -> AsyncIterator[Reader]:
        """A read-only transaction scoped to ``tenant_id`` for hot list endpoints (see
        ``kernel.db.reader``): same role and row-level security, fewer round trips."""
        pool = self._read_pool or await self._open_read_pool()
        async with pool.acquire() as connection:
            await connection.execute(begin_statement(tenant_id))
            error: BaseException | None = None
            try:
                yield Reader(connection)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if not await end(connection, error):
                    connection.terminate()  # the pool opens a fresh one in its place

    async def _open_read_pool(self) -> asyncpg.Pool:
        async with self._read_pool_lock:
            if self._read_pool is None:
                self._read_pool = await open_read_pool(self._url, self._pool_size)
        return self._read_pool

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
        if self._read_pool is not None:
            await self._read_pool.close()
            self._read_pool = None
        await self.engine.dispose()


def _ping(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    """The pool's pre-ping, in one round trip: ``select`` (no columns) on the simple protocol.

    SQLAlchemy's own asyncpg pre-ping wraps a prepared ``;`` in BEGIN and ROLLBACK (three round
    trips and a transaction per checkout). A failure invalidates the pool's older connections, as
    the built-in pre-ping does; the pool then tries a fresh connection."""
    connection: asyncpg.Connection = record.driver_connection
    try:
        await_(connection.execute("select"))
    except Exception as exc:
        raise InvalidatePoolError(f"connection found dead at checkout: {type(exc).__name__}") from exc
