"""``services.connections``: a plugin's way to its tenants' connections."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, TypeVar, overload

import msgspec

if TYPE_CHECKING:
    from kernel.context import Kernel

__all__ = ["Connections"]

T = TypeVar("T", bound=msgspec.Struct)


class Connections:
    """The connections of the plugin's credential types (reached as ``services.connections``)."""

    def __init__(self, kernel: Kernel, plugin: str) -> None:
        self._kernel = kernel
        self._plugin = plugin

    @overload
    async def open(self, tenant_id: uuid.UUID, connection_id: uuid.UUID, schema: type[T]) -> T: ...

    @overload
    async def open(self, tenant_id: uuid.UUID, connection_id: uuid.UUID, schema: None = None) -> msgspec.Struct: ...

    async def open(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, schema: type[T] | None = None
    ) -> T | msgspec.Struct:
        """The decrypted credentials of connection ``connection_id`` of ``tenant_id``, as its
        credential type's Struct (an instance of ``schema`` when given).

        - 404 when the tenant has no such connection (another tenant's id included);
        - 422 naming ``connection`` when it is of another plugin's type, or not a ``schema``;
        - 409 ``connection-broken`` when its OAuth 2.0 refresh was refused (authorize it again);
        - an OAuth 2.0 token expiring within two minutes is refreshed first (502 when the provider
          cannot be reached).

        Keep what it returns inside the call that needs it: never log it, return it or store it.
        """
        return await self._kernel.connections.open(tenant_id, connection_id, self._plugin, schema)

    async def plugins_of(self, tenant_id: uuid.UUID, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        """For each of ``ids`` that is a connection of ``tenant_id``, the plugin whose credential
        type it is; other ids (unknown, another tenant's) are absent. For checking a saved config
        before it runs (a workflow names connections by id)."""
        return await self._kernel.connections.plugins_of(tenant_id, ids)

    async def users(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> list[str]:
        """What uses the connection, as every plugin's ``businessos_connection_users`` says."""
        return await self._kernel.connections.users(tenant_id, connection_id)
