"""Inbound webhook endpoints: a plugin's public URLs, one per tenant and purpose.

An endpoint's URL is ``/hooks/<plugin>/<token>``. The token (``whk_...``, the same shape as an API
key: the tenant id, 32 random bytes, a checksum) is shown once, when the endpoint is created or
rotated; only its SHA-256 is stored. The tenant comes from the token, and the endpoint is looked up
by hash inside that tenant's transaction, so row-level security holds and no header is trusted:
a token for tenant A can only ever find tenant A's endpoint.

:class:`Endpoints` (``kernel.webhooks``) keeps what a live token opens per process, keyed by the
token's hash, so a delivery costs no lookup. Rotating or revoking drops the entry in this process
at once and in every other one through the invalidation bus (as soon as it reads the message);
purging a module's data drops them all. While a process is not subscribed to the bus (Redis away,
start-up) it does not use the cache; entries also expire after :data:`ENDPOINT_TTL`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import record_for_plugin
from kernel.cache import TTLCache
from kernel.db.models import utcnow, uuid7
from kernel.db.reader import Query
from kernel.errors import FieldError, NotFound, Unprocessable
from kernel.identity.tokens import OpaqueSecret, TokenError
from kernel.webhooks.models import WebhookEndpointRow

if TYPE_CHECKING:
    from kernel.cache import InvalidationBus
    from kernel.db.engine import Database
    from kernel.plugins.loader import PluginSet
    from kernel.plugins.services import Actor

__all__ = [
    "ENDPOINT_TTL",
    "HOOKS_PREFIX",
    "TOPIC",
    "WEBHOOK_TOKEN_KIND",
    "Endpoints",
    "LiveEndpoint",
    "WebhookEndpoint",
    "WebhookEndpointCreated",
    "Webhooks",
    "find_endpoint",
]

WEBHOOK_TOKEN_KIND = "whk"
HOOKS_PREFIX = "/hooks"
TOPIC = "webhooks"
"""The invalidation bus topic of :class:`Endpoints`' cache; the key ``*`` drops every entry."""
ENDPOINT_TTL = 60.0
"""Longest a process keeps what a token opens (changes drop it at once, see the module docstring)."""
_ALL = "*"


class WebhookEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint as listed: never its token."""

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    rotated_at: datetime | None = None
    revoked_at: datetime | None = None


class WebhookEndpointCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A new (or rotated) endpoint with its URL path: the only time the token is shown."""

    id: uuid.UUID
    name: str
    path: str
    """``/hooks/<plugin>/<token>``: give it to the sender, prefixed with the public base URL."""
    prefix: str
    created_at: datetime


def _info(row: WebhookEndpointRow) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id, name=row.name, prefix=row.prefix, created_at=row.created_at,
        rotated_at=row.rotated_at, revoked_at=row.revoked_at,
    )


class LiveEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """What a live token opens: the endpoint, its tenant and route."""

    tenant_id: uuid.UUID
    id: uuid.UUID
    plugin: str
    name: str
    token_hash: bytes


_FIND = Query(
    select(WebhookEndpointRow.tenant_id, WebhookEndpointRow.id, WebhookEndpointRow.plugin, WebhookEndpointRow.name)
    .where(
        WebhookEndpointRow.token_hash == bindparam("hash"),
        WebhookEndpointRow.plugin == bindparam("plugin"),
        WebhookEndpointRow.revoked_at.is_(None),
    )
)


async def find_endpoint(db: Database, plugin: str, token: str) -> LiveEndpoint | None:
    """The live endpoint of ``plugin`` that ``token`` opens, or ``None`` (malformed, unknown,
    revoked, another plugin's). Looked up by hash in the tenant the token names (not cached)."""
    try:
        secret = OpaqueSecret.parse(WEBHOOK_TOKEN_KIND, token)
    except TokenError:
        return None
    return await _lookup(db, plugin, secret)


async def _lookup(db: Database, plugin: str, secret: OpaqueSecret) -> LiveEndpoint | None:
    async with db.read(secret.tenant_id) as reader:
        row = await reader.fetchrow(_FIND, hash=secret.hash, plugin=plugin)
    if row is None:
        return None
    return LiveEndpoint(tenant_id=row["tenant_id"], id=row["id"], plugin=row["plugin"], name=row["name"],
                        token_hash=secret.hash)


def _key(plugin: str, token_hash: bytes) -> str:
    return f"{plugin}/{token_hash.hex()}"


class _EndpointCache(TTLCache[str, object]):
    def drop(self, key: str) -> None:
        if key == _ALL:
            self.clear()
        else:
            super().drop(key)


class Endpoints:
    """The live endpoint a token opens, cached per process (``kernel.webhooks``; see the module
    docstring for how long a change takes to be seen). Unknown tokens are never cached."""

    def __init__(self, db: Database, bus: InvalidationBus | None, ttl: float = ENDPOINT_TTL) -> None:
        self._db = db
        self._bus = bus
        self._cache = _EndpointCache(ttl)
        if bus is not None:
            bus.register(TOPIC, self._cache)

    async def find(self, plugin: str, token: str) -> LiveEndpoint | None:
        """:func:`find_endpoint`, answered from the cache when it can be."""
        try:
            secret = OpaqueSecret.parse(WEBHOOK_TOKEN_KIND, token)
        except TokenError:
            return None
        key = _key(plugin, secret.hash)
        cached = self._cache.get(key)
        if isinstance(cached, LiveEndpoint):
            return cached
        generation = self._cache.generation
        found = await _lookup(self._db, plugin, secret)
        if found is not None:
            self._cache.put(key, found, generation)
        return found

    async def forget(self, plugin: str | None = None, token_hash: bytes | None = None) -> None:
        """Drop a token's entry (or, with no arguments, every entry) here and in every process."""
        key = _ALL if plugin is None or token_hash is None else _key(plugin, token_hash)
        if self._bus is not None:
            await self._bus.publish(TOPIC, key)
        else:
            self._cache.drop(key)


class Webhooks:
    """A plugin's inbound webhook endpoints, per tenant (``services.webhooks``, bound to the plugin).

    The plugin declares its webhook routes (``businessos_webhook_routes``); for each tenant that
    wants deliveries it creates an endpoint for one of them, hands the returned ``path`` to the
    sender once, and may rotate (new token, old one dead at once) or revoke it. Every change is
    audited (``webhook.endpoint.created`` / ``rotated`` / ``revoked``), without the token.
    """

    def __init__(self, db: Database, plugins: PluginSet, plugin: str, endpoints: Endpoints | None = None) -> None:
        self._db = db
        self._plugins = plugins
        self.plugin = plugin
        self._endpoints = endpoints

    def _declared(self, name: str) -> str:
        record_ = self._plugins.get(self.plugin)
        names = [w.name for w in record_.webhooks] if record_ is not None else []
        if name not in names:
            raise Unprocessable(
                f"plugin {self.plugin} declares no webhook route {name!r} (declared: {', '.join(names) or 'none'})",
                errors=[FieldError(field="name", message="not a declared webhook route")],
            )
        return name

    def _created(self, row: WebhookEndpointRow, secret: OpaqueSecret) -> WebhookEndpointCreated:
        return WebhookEndpointCreated(
            id=row.id, name=row.name, path=f"{HOOKS_PREFIX}/{self.plugin}/{secret.value}",
            prefix=row.prefix, created_at=row.created_at,
        )

    async def create(
        self, tenant_id: uuid.UUID, name: str, *, actor: Actor | None = None
    ) -> WebhookEndpointCreated:
        """A new endpoint for the declared webhook route ``name``; its path is shown only now."""
        self._declared(name)
        secret = OpaqueSecret.new(WEBHOOK_TOKEN_KIND, tenant_id)
        row = WebhookEndpointRow(
            tenant_id=tenant_id, id=uuid7(), plugin=self.plugin, name=name, token_hash=secret.hash,
            prefix=secret.display_prefix, created_at=utcnow(),
        )
        async with self._db.tenant(tenant_id) as session:
            session.add(row)
            await self._audit(session, tenant_id, "webhook.endpoint.created", row, actor)
        return self._created(row, secret)

    async def rotate(
        self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, *, actor: Actor | None = None
    ) -> WebhookEndpointCreated:
        """A new token for a live endpoint (same id and route); the old path stops working at once."""
        secret = OpaqueSecret.new(WEBHOOK_TOKEN_KIND, tenant_id)
        async with self._db.tenant(tenant_id) as session:
            row = await self._get(session, endpoint_id)
            if row.revoked_at is not None:
                raise NotFound(f"webhook endpoint {endpoint_id} is revoked")
            old_hash = row.token_hash
            row.token_hash, row.prefix, row.rotated_at = secret.hash, secret.display_prefix, utcnow()
            await self._audit(session, tenant_id, "webhook.endpoint.rotated", row, actor)
        await self._forget(old_hash)
        return self._created(row, secret)

    async def revoke(
        self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, *, actor: Actor | None = None
    ) -> WebhookEndpoint:
        """Revoke the endpoint: its path answers 404 from now on (repeating is harmless)."""
        async with self._db.tenant(tenant_id) as session:
            row = await self._get(session, endpoint_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                await self._audit(session, tenant_id, "webhook.endpoint.revoked", row, actor)
        await self._forget(row.token_hash)
        return _info(row)

    async def list(self, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
        """The plugin's endpoints in the tenant, oldest first, revoked ones included."""
        async with self._db.tenant(tenant_id) as session:
            rows = await session.execute(
                select(WebhookEndpointRow)
                .where(WebhookEndpointRow.plugin == self.plugin)
                .order_by(WebhookEndpointRow.created_at, WebhookEndpointRow.id)
            )
            return [_info(r) for r in rows.scalars()]

    async def _forget(self, token_hash: bytes) -> None:
        if self._endpoints is not None:
            await self._endpoints.forget(self.plugin, token_hash)

    async def _get(self, session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpointRow:
        row = (
            await session.execute(
                select(WebhookEndpointRow).where(
                    WebhookEndpointRow.id == endpoint_id, WebhookEndpointRow.plugin == self.plugin
                )
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"webhook endpoint {endpoint_id} does not exist")
        return row

    async def _audit(
        self, session: AsyncSession, tenant_id: uuid.UUID, action: str, row: WebhookEndpointRow,
        actor: Actor | None,
    ) -> None:
        await record_for_plugin(
            session, self.plugin, actor, tenant_id=tenant_id, action=action, resource_type="webhook.endpoint",
            resource_id=str(row.id), details={"plugin": self.plugin, "name": row.name, "prefix": row.prefix},
        )
