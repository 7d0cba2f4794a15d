"""The facade a plugin works through: ``sdk.Services``.

A plugin never holds the kernel object. Route handlers (as the ``services`` dependency), event
handlers, node runners, jobs and CLI commands each receive one :class:`Services` bound to the
plugin. Every attribute is a small class documented here and re-exported by ``kernel.sdk``;
together they are what ``KERNEL_API_VERSION`` promises.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db.reader import Reader
from kernel.identity.access import is_member

if TYPE_CHECKING:
    from kernel.context import Kernel

__all__ = ["Data", "Members", "Services"]


class Data:
    """Tenant transactions and the read path."""

    def __init__(self, kernel: Kernel) -> None:
        self._db = kernel.db

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
        """One transaction whose every query row-level security scopes to ``tenant_id``; it
        commits when the block ends without an exception and rolls back otherwise."""
        async with self._db.tenant(tenant_id) as session:
            yield session

    @asynccontextmanager
    async def read(self, tenant_id: uuid.UUID) -> AsyncIterator[Reader]:
        """A read-only transaction for hot list endpoints: compiled ``sdk.Query`` statements on a
        plain asyncpg connection, same role and row-level security, fewer round trips."""
        async with self._db.read(tenant_id) as reader:
            yield reader


class Members:
    """Who belongs to the tenant."""

    async def is_member(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        """Whether ``user_id`` is a member of the tenant ``session`` is scoped to."""
        return await is_member(session, user_id)


class Services:
    """Everything a plugin may use of the running platform, bound to one plugin."""

    def __init__(self, kernel: Kernel, plugin: str) -> None:
        self.plugin = plugin
        """The plugin these services are bound to (its settings, its audit and event names)."""
        self._kernel = kernel
        self.data = Data(kernel)
        self.members = Members()
        self.http = kernel.egress

    async def settings(self, tenant_id: uuid.UUID) -> Any:
        """The tenant's settings for this plugin, decoded into its settings Struct (defaults
        filled in). A plugin without a settings schema gets a 404 problem."""
        record = self._kernel.plugins.get(self.plugin)
        values = await self._kernel.modules.get_settings(tenant_id, self.plugin)
        assert record is not None and record.settings_schema is not None
        return msgspec.convert(values, record.settings_schema)
