"""The plugin-facing vault: per-tenant secrets sealed under the versioned master key.

A plugin stores a connector credential or a signing secret under a name of its own; the value is
sealed with AES-GCM (:class:`kernel.crypto.SecretBox`) with the tenant, the plugin and the name
bound as associated data, in the tenant table ``vault_secrets`` (row-level security applies). The
value is only ever returned by :meth:`Vault.open`: responses, logs, audit rows (which record the
name) and errors never carry it. ``businessos secrets rotate`` re-seals every stored secret.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import record_for_plugin
from kernel.crypto import SecretBox, SecretBoxError
from kernel.db.models import utcnow, uuid7
from kernel.errors import FieldError, NotFound, Problem, Unprocessable
from kernel.vault.models import VaultSecretRow
from kernel.vault.sealed import vault_context

if TYPE_CHECKING:
    from kernel.db.engine import Database
    from kernel.plugins.services import Actor

__all__ = ["MAX_VALUE_BYTES", "SECRET_NAME", "SecretUnreadable", "Vault"]

log = logging.getLogger("businessos.vault")

SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
"""A secret's name: lower-case letters, digits, ``.``, ``_`` and ``-``; at most 100 characters."""
MAX_VALUE_BYTES = 64 * 1024


class SecretUnreadable(Problem):
    """A stored secret does not open: it was altered, copied from elsewhere, or sealed under a
    master key this installation no longer has. Fails closed; store the secret again."""

    status, slug, title = 409, "secret-unreadable", "Stored secret cannot be opened"


class Vault:
    """A plugin's secrets, per tenant (reached as ``services.vault``, bound to the plugin).

    Every method takes the tenant and, optionally, a ``session`` of ``services.data.tenant(...)``
    for that same tenant, to work inside the caller's transaction (a credential stored together
    with the row that uses it); without one it opens its own. A value never appears in what these
    methods log, audit or raise.
    """

    def __init__(self, db: Database, box: SecretBox, plugin: str) -> None:
        self._db = db
        self._box = box
        self.plugin = plugin

    @asynccontextmanager
    async def _session(self, tenant_id: uuid.UUID, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        if session is not None:
            yield session
            return
        async with self._db.tenant(tenant_id) as own:
            yield own

    @staticmethod
    def _check_name(name: str) -> str:
        if not isinstance(name, str) or not SECRET_NAME.match(name):
            raise Unprocessable(
                "a secret's name is 1-100 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
                errors=[FieldError(field="name", message="invalid secret name")],
            )
        return name

    async def put(
        self,
        tenant_id: uuid.UUID,
        name: str,
        value: str,
        *,
        session: AsyncSession | None = None,
        actor: Actor | None = None,
    ) -> None:
        """Store (or replace) the secret ``name``; audited as ``vault.secret.stored`` with the
        name only. ``actor`` is who asked (``sdk.Actor.of_request(request)`` in a route); it defaults
        to ``plugin:<plugin>``."""
        self._check_name(name)
        if not isinstance(value, str) or not value or len(value.encode()) > MAX_VALUE_BYTES:
            raise Unprocessable(
                f"a secret's value is a non-empty string of at most {MAX_VALUE_BYTES} bytes",
                errors=[FieldError(field="value", message="empty, not text, or too long")],
            )
        sealed = self._box.seal(value, vault_context(tenant_id, self.plugin, name))
        now = utcnow()
        async with self._session(tenant_id, session) as s:
            stmt = insert(VaultSecretRow).values(
                tenant_id=tenant_id, id=uuid7(), plugin=self.plugin, name=name, sealed_value=sealed, updated_at=now
            )
            await s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["tenant_id", "plugin", "name"], set_={"sealed_value": sealed, "updated_at": now}
                )
            )
            await self._audit(s, tenant_id, "vault.secret.stored", name, actor)

    async def open(self, tenant_id: uuid.UUID, name: str, *, session: AsyncSession | None = None) -> str:
        """The secret's value: 404 when the tenant has no such secret for this plugin,
        :class:`SecretUnreadable` (409) when the stored value does not open."""
        self._check_name(name)
        async with self._session(tenant_id, session) as s:
            sealed = (
                await s.execute(
                    select(VaultSecretRow.sealed_value).where(
                        VaultSecretRow.plugin == self.plugin, VaultSecretRow.name == name
                    )
                )
            ).scalar_one_or_none()
        if sealed is None:
            raise NotFound(f"plugin {self.plugin} has no secret {name!r} in this tenant")
        try:
            return self._box.open(sealed, vault_context(tenant_id, self.plugin, name))
        except SecretBoxError:
            log.warning("vault secret %s/%s of tenant %s cannot be opened", self.plugin, name, tenant_id)
            raise SecretUnreadable(
                f"the stored secret {name!r} of plugin {self.plugin} cannot be opened "
                "(altered, copied from elsewhere, or sealed under a retired master key); store it again",
                extra={"plugin": self.plugin, "name": name},
            ) from None

    async def delete(
        self,
        tenant_id: uuid.UUID,
        name: str,
        *,
        session: AsyncSession | None = None,
        actor: Actor | None = None,
    ) -> bool:
        """Delete the secret; whether there was one. Audited as ``vault.secret.deleted``."""
        self._check_name(name)
        async with self._session(tenant_id, session) as s:
            gone = (
                await s.execute(
                    delete(VaultSecretRow)
                    .where(VaultSecretRow.plugin == self.plugin, VaultSecretRow.name == name)
                    .returning(VaultSecretRow.id)
                )
            ).first()
            if gone is not None:
                await self._audit(s, tenant_id, "vault.secret.deleted", name, actor)
        return gone is not None

    async def names(self, tenant_id: uuid.UUID, *, session: AsyncSession | None = None) -> list[str]:
        """The names of this plugin's secrets in the tenant, sorted."""
        async with self._session(tenant_id, session) as s:
            found = await s.execute(
                select(VaultSecretRow.name).where(VaultSecretRow.plugin == self.plugin).order_by(VaultSecretRow.name)
            )
            return list(found.scalars())

    async def _audit(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        action: str,
        name: str,
        actor: Actor | None,
    ) -> None:
        await record_for_plugin(
            session, self.plugin, actor, tenant_id=tenant_id, action=action, resource_type="vault.secret",
            resource_id=f"{self.plugin}/{name}", details={"plugin": self.plugin, "name": name},
        )
