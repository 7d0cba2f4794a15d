"""Each tenant's AI settings: default model, default embedding model, fallback models, timeout,
retries and prompt logging.

The proxy reads them inside the transaction it already opens for a call (one small query by
primary-key index); no row means every default.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.call_cache import CallCache
from kernel.ai.library_schemas import AISettings, AISettingsUpdate
from kernel.ai.pricing import litellm_async, resolve_model
from kernel.ai.tables import SettingsRow
from kernel.audit.log import RequestMeta, record
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.errors import FieldError, Problem, Unprocessable

__all__ = ["DEFAULTS", "TenantAISettings", "TenantSettingsService", "load"]


@dataclass(frozen=True)
class TenantAISettings:
    default_model: str | None = None
    default_embedding_model: str | None = None
    fallback_models: tuple[str, ...] = ()
    timeout_seconds: int | None = None
    retries: int = 0
    log_prompts: bool = False


DEFAULTS = TenantAISettings()

_COLUMNS = (
    SettingsRow.default_model, SettingsRow.default_embedding_model, SettingsRow.fallback_models,
    SettingsRow.timeout_seconds, SettingsRow.retries, SettingsRow.log_prompts, SettingsRow.updated_at,
)


async def load(session: AsyncSession) -> TenantAISettings:
    """The settings of the tenant whose transaction ``session`` is."""
    row = (await session.execute(select(*_COLUMNS))).first()
    if row is None:
        return DEFAULTS
    return TenantAISettings(
        default_model=row.default_model, default_embedding_model=row.default_embedding_model,
        fallback_models=tuple(row.fallback_models or ()), timeout_seconds=row.timeout_seconds,
        retries=row.retries, log_prompts=row.log_prompts,
    )


def _check_model(field: str, model: str) -> str:
    try:
        return resolve_model(model).model
    except Problem as problem:
        raise Unprocessable(
            f"{field}: {problem.detail}", errors=[FieldError(field=field, message="unknown model")]
        ) from None


class TenantSettingsService:
    def __init__(self, db: Database, server_timeout: int, cache: CallCache) -> None:
        self.db = db
        self.server_timeout = server_timeout
        self.cache = cache

    async def current(self, tenant_id: uuid.UUID) -> TenantAISettings:
        """The tenant's settings as calls use them (cached per process, dropped on change)."""

        async def read() -> TenantAISettings:
            async with self.db.tenant(tenant_id) as session:
                return await load(session)

        return await self.cache.get(CallCache.key(tenant_id, "settings"), read)

    def _body(self, settings: TenantAISettings, updated_at: datetime | None = None) -> AISettings:
        return AISettings(
            default_model=settings.default_model, default_embedding_model=settings.default_embedding_model,
            fallback_models=list(settings.fallback_models), timeout_seconds=settings.timeout_seconds,
            retries=settings.retries, log_prompts=settings.log_prompts,
            effective_timeout_seconds=settings.timeout_seconds or self.server_timeout,
            updated_at=updated_at,
        )

    async def get(self, tenant_id: uuid.UUID) -> AISettings:
        async with self.db.tenant(tenant_id) as session:
            updated = (await session.execute(select(SettingsRow.updated_at))).scalar_one_or_none()
            return self._body(await load(session), updated)

    async def put(
        self, tenant_id: uuid.UUID, data: AISettingsUpdate, *, actor: str | None, meta: RequestMeta
    ) -> AISettings:
        """Replace the tenant's settings; model names must be ``provider/model`` ids we can route (422
        naming the field otherwise)."""
        await litellm_async()  # the model map, to check the names
        default_model = _check_model("default_model", data.default_model) if data.default_model else None
        embedding = (
            _check_model("default_embedding_model", data.default_embedding_model)
            if data.default_embedding_model
            else None
        )
        fallbacks = [_check_model(f"fallback_models[{i}]", m) for i, m in enumerate(data.fallback_models)]
        if len(set(fallbacks)) != len(fallbacks):
            raise Unprocessable(
                "fallback_models lists a model twice",
                errors=[FieldError(field="fallback_models", message="duplicate model")],
            )
        now = utcnow()
        values = {
            "default_model": default_model, "default_embedding_model": embedding, "fallback_models": fallbacks,
            "timeout_seconds": data.timeout_seconds, "retries": data.retries, "log_prompts": data.log_prompts,
            "updated_at": now,
        }
        async with self.db.tenant(tenant_id) as session:
            before = await load(session)
            stmt = insert(SettingsRow).values(tenant_id=tenant_id, id=uuid7(), **values)
            await session.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_=values))
            after = {k: v for k, v in values.items() if k != "updated_at"}
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.settings.updated", resource_type="ai_settings",
                resource_id=str(tenant_id), meta=meta,
                before={
                    "default_model": before.default_model, "default_embedding_model": before.default_embedding_model,
                    "fallback_models": list(before.fallback_models), "timeout_seconds": before.timeout_seconds,
                    "retries": before.retries, "log_prompts": before.log_prompts,
                },
                after=after,
            )
            body = self._body(await load(session), now)
        await self.cache.forget(CallCache.key(tenant_id, "settings"))
        return body
