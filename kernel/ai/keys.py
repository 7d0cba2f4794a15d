"""Tenants' own provider keys (BYOK): sealed at rest, never shown, checked before use.

A key is sealed with AES-GCM by the kernel's secret box with ``tenant:<id>`` as associated data,
so a sealed value copied into another tenant's row does not open. Responses, audit rows and errors
carry the provider, the last four characters and dates only.

``api_base`` must be http(s) and must not resolve to a loopback, private, link-local or otherwise
non-public address (server-side request forgery; the egress client's rules, ``kernel.egress``),
unless ``BUSINESSOS_AI_ALLOW_PRIVATE_BASES`` is on (development and tests), which allows loopback
and private networks but never link-local (cloud metadata). The address is checked when the key is
stored and again before calls. OpenAI-path calls then connect through the egress client, which
judges again and pins the address (``kernel.ai.provider_clients``); for Groq and Anthropic
litellm connects by itself, and a DNS answer that changes between the check and that connection
is not covered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from kernel.ai.call_cache import CallCache
from kernel.ai.models import ProviderKeyRow
from kernel.ai.pricing import PROVIDERS
from kernel.ai.provider_clients import PRIVATE_NETWORKS
from kernel.ai.schemas import KeyInfo, KeyUpdate
from kernel.audit.log import RequestMeta, record
from kernel.crypto import SecretBox
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.egress import AddressPolicy, SystemResolver, literal_address
from kernel.errors import FieldError, NotFound, Problem, Unprocessable

__all__ = ["Credentials", "KeyService", "MissingProviderKey", "check_api_base"]


class MissingProviderKey(Problem):
    status, slug, title = 409, "ai-provider-key-missing", "No provider key"


@dataclass(frozen=True)
class Credentials:
    api_key: str
    api_base: str | None

    def __repr__(self) -> str:  # never print the key
        return f"Credentials(api_key='…', api_base={self.api_base!r})"


def _context(tenant_id: uuid.UUID) -> str:
    return f"tenant:{tenant_id}"


def _invalid_base(message: str) -> Unprocessable:
    return Unprocessable(f"api_base {message}", errors=[FieldError(field="api_base", message=message)])


async def check_api_base(api_base: str, *, allow_private: bool) -> str:
    """The normalised ``api_base``, or 422 when it is not a public http(s) URL."""
    try:
        parts = urlsplit(api_base.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise _invalid_base("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise _invalid_base("must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise _invalid_base("must not carry credentials")
    try:
        literal = literal_address(host)
    except ValueError as error:
        raise _invalid_base(f"names a host that {error}") from None
    addresses = [literal] if literal is not None else await SystemResolver().resolve(host)
    if not addresses:
        raise _invalid_base("names a host that does not resolve")
    policy = AddressPolicy(PRIVATE_NETWORKS if allow_private else ())
    for address in addresses:
        if policy.refusal(address) is not None:
            if allow_private:
                raise _invalid_base("must not point at a link-local, multicast or unspecified address")
            raise _invalid_base("must not point at a loopback, private or otherwise non-public address")
    return api_base.strip().rstrip("/")


class KeyService:
    def __init__(self, db: Database, box: SecretBox, cache: CallCache, *, allow_private_bases: bool) -> None:
        self.db = db
        self.box = box
        self.cache = cache
        self.allow_private_bases = allow_private_bases

    async def for_call(self, tenant_id: uuid.UUID, provider: str) -> Credentials:
        """:meth:`credentials` as calls use them: opened (and the base checked) at most once a
        minute per process, dropped at once when the key is replaced or deleted."""
        return await self.cache.get(
            CallCache.key(tenant_id, f"key/{provider}"), lambda: self.credentials(tenant_id, provider)
        )

    @staticmethod
    def _provider(provider: str) -> str:
        if provider not in PROVIDERS:
            raise NotFound(f"unknown AI provider {provider!r} (providers: {', '.join(PROVIDERS)})")
        return provider

    async def put(
        self, tenant_id: uuid.UUID, provider: str, data: KeyUpdate, *, actor: str | None, meta: RequestMeta
    ) -> KeyInfo:
        self._provider(provider)
        api_key = data.api_key.strip()
        if not api_key or any(c.isspace() or ord(c) < 32 for c in api_key):
            raise Unprocessable(
                "api_key must not contain spaces or control characters",
                errors=[FieldError(field="api_key", message="invalid characters")],
            )
        api_base = None
        if data.api_base:
            api_base = await check_api_base(data.api_base, allow_private=self.allow_private_bases)
        elif PROVIDERS[provider].needs_api_base:
            raise _invalid_base(f"is required for {provider}")
        now = utcnow()
        values = {
            "sealed_key": self.box.seal(api_key, _context(tenant_id)),
            "last_four": api_key[-4:],
            "api_base": api_base,
            "updated_at": now,
        }
        async with self.db.tenant(tenant_id) as session:
            stmt = insert(ProviderKeyRow).values(tenant_id=tenant_id, id=uuid7(), provider=provider, **values)
            row = (
                await session.execute(
                    stmt.on_conflict_do_update(index_elements=["tenant_id", "provider"], set_=values).returning(
                        ProviderKeyRow.created_at
                    )
                )
            ).one()
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.provider_key.stored",
                resource_type="ai_provider_key", resource_id=provider, meta=meta,
                details={"provider": provider, "api_base": api_base},
            )
        await self.cache.forget(CallCache.key(tenant_id, f"key/{provider}"))
        return KeyInfo(
            provider=provider, last_four=api_key[-4:], api_base=api_base, created_at=row.created_at, updated_at=now
        )

    async def list(self, tenant_id: uuid.UUID) -> list[KeyInfo]:
        async with self.db.tenant(tenant_id) as session:
            rows = (await session.execute(select(ProviderKeyRow).order_by(ProviderKeyRow.provider))).scalars()
            return [
                KeyInfo(
                    provider=r.provider, last_four=r.last_four, api_base=r.api_base,
                    created_at=r.created_at, updated_at=r.updated_at,
                )
                for r in rows
            ]

    async def delete(self, tenant_id: uuid.UUID, provider: str, *, actor: str | None, meta: RequestMeta) -> None:
        self._provider(provider)
        async with self.db.tenant(tenant_id) as session:
            deleted = (
                await session.execute(
                    delete(ProviderKeyRow).where(ProviderKeyRow.provider == provider).returning(ProviderKeyRow.id)
                )
            ).first()
            if deleted is None:
                raise NotFound(f"no {provider} key is configured")
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.provider_key.deleted",
                resource_type="ai_provider_key", resource_id=provider, meta=meta,
            )
        await self.cache.forget(CallCache.key(tenant_id, f"key/{provider}"))

    async def credentials(self, tenant_id: uuid.UUID, provider: str) -> Credentials:
        """The tenant's opened key for ``provider``; 409 when none is stored (no environment keys)."""
        async with self.db.tenant(tenant_id) as session:
            row = (
                await session.execute(select(ProviderKeyRow).where(ProviderKeyRow.provider == provider))
            ).scalar_one_or_none()
        if row is None:
            raise MissingProviderKey(
                f"this tenant has no {provider} key: store one with PUT /api/ai/keys/{provider}",
                extra={"provider": provider},
            )
        api_base = row.api_base
        if api_base:
            # Checked again: the name may resolve elsewhere now than when the key was stored.
            api_base = await check_api_base(api_base, allow_private=self.allow_private_bases)
        return Credentials(api_key=self.box.open(row.sealed_key, _context(tenant_id)), api_base=api_base)
