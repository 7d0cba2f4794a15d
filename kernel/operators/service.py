"""Operators: the people who run the installation, with credentials apart from every tenant's.

Why an operator *token* (an EdDSA JWT, 15 minutes) rather than operator API keys: it is signed by
the same rotating key set as tenant tokens, so nothing new is stored or rotated; it expires on
its own, so a copy left in a shell history is worth little; and an operator is a person who logs
in, not a program (a scraper has ``BUSINESSOS_METRICS_TOKEN``). It is kept from ever passing as a
tenant token, and a tenant token from passing as an operator's, by its audience
(``businessos-operator`` here, ``businessos-api`` there: each side's verification requires its
own) and by its ``op`` claim. Every request re-reads the operator's row (one indexed lookup on a
low-traffic surface), so ``businessos operators disable`` takes effect at once in every process.

Log-in is limited like the tenant log-in: per client address by the ``auth`` rate-limit policy
of the route, and per e-mail address by a growing lock-out after repeated failures.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.prompts import page_bounds, page_of
from kernel.audit.log import RequestMeta, record
from kernel.audit.service import AuditService
from kernel.db.engine import Database
from kernel.db.models import uuid7
from kernel.errors import Conflict, NotFound
from kernel.identity.passwords import PasswordPolicy, check_password_strength
from kernel.identity.service import LockedOut, Unauthorized
from kernel.identity.tokens import ACCESS_TTL, ISSUER, KeySet, TokenError
from kernel.operators.models import OperatorRow
from kernel.operators.schemas import (
    OperatorInfo,
    OperatorToken,
    TenantDetail,
    TenantList,
    TenantUsage,
    UsageList,
    VerifiedChain,
)
from kernel.tenants.models import TenantRow
from kernel.tenants.schemas import Plan, Status, Tenant
from kernel.tenants.service import TenantService, to_tenant

__all__ = ["OPERATOR_AUDIENCE", "Operator", "OperatorService"]

log = logging.getLogger("businessos.operators")

OPERATOR_AUDIENCE = "businessos-operator"
_REQUIRED = ["iss", "aud", "exp", "iat", "sub", "jti", "op"]
FAILURES_BEFORE_LOCK = 5
LOCK_BASE_SECONDS = 30
LOCK_MAX_SECONDS = 15 * 60

# One statement per tenant, under that tenant's row-level security (set just before it).
_USAGE = text(
    """
    select (select count(*) from memberships) as members,
           (select count(*) from api_keys
             where revoked_at is null and (expires_at is null or expires_at > now())) as api_keys,
           (select coalesce(array_agg(plugin order by plugin), '{}') from tenant_modules
             where enabled) as modules,
           count(u.id) as ai_calls,
           coalesce(sum(u.prompt_tokens + u.completion_tokens), 0) as ai_tokens,
           coalesce(sum(u.cost), 0) as ai_cost
      from (select id, prompt_tokens, completion_tokens, cost from ai_usage
             where created_at >= :since) u
    """
)
_SET_TENANT = text("select set_config('app.tenant_id', :t, true)")


@dataclass(frozen=True)
class Operator:
    """An authenticated operator (never a member of any tenant)."""

    id: uuid.UUID
    email: str

    @property
    def actor(self) -> str:
        """How a tenant's audit log names this operator."""
        return f"operator:{self.id}"


def _info(row: OperatorRow) -> OperatorInfo:
    return OperatorInfo(
        id=row.id, email=row.email, created_at=row.created_at, last_login_at=row.last_login_at,
        disabled=row.disabled_at is not None,
    )


def _email_key(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:32]


def month_start() -> datetime:
    """Midnight UTC on the first of the current month: the default start of a usage overview."""
    now = datetime.now(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class OperatorService:
    def __init__(self, db: Database, redis: Redis, keys: KeySet, tenants: TenantService) -> None:
        self.db = db
        self.redis = redis
        self.keys = keys
        self.tenants = tenants

    # -- accounts (the CLI) -----------------------------------------------------------------

    async def create(self, email: str, password: str) -> OperatorInfo:
        """A new operator; 409 if the e-mail is taken, 422 for a weak password."""
        email = email.strip().lower()
        check_password_strength(password, context=[email])
        row = OperatorRow(id=uuid7(), email=email, password_hash=PasswordPolicy.hash(password))
        try:
            async with self.db.global_() as session:
                session.add(row)
                await session.flush()
                await session.refresh(row)
        except IntegrityError as exc:
            if "uq_operators_lower_email" in str(exc.orig):
                raise Conflict(f"an operator with e-mail {email!r} already exists") from None
            raise
        log.info("operator %s created (%s)", row.id, email)
        return _info(row)

    async def list(self) -> list[OperatorInfo]:
        async with self.db.global_() as session:
            rows = (await session.execute(select(OperatorRow).order_by(OperatorRow.created_at))).scalars()
            return [_info(r) for r in rows]

    async def disable(self, email: str) -> OperatorInfo:
        """Refuse the operator's log-ins and tokens from now on (every process: tokens are checked
        against the row on each request)."""
        async with self.db.global_() as session:
            row = (
                await session.execute(
                    select(OperatorRow).where(func.lower(OperatorRow.email) == email.strip().lower())
                )
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no operator with e-mail {email!r}")
            if row.disabled_at is None:
                row.disabled_at = datetime.now(UTC)
            return _info(row)

    # -- log-in and tokens ------------------------------------------------------------------

    async def login(self, email: str, password: str, meta: RequestMeta) -> OperatorToken:
        email = email.strip().lower()
        lock_key = f"bos:oplogin:lock:{_email_key(email)}"
        ttl = await self.redis.pttl(lock_key)
        if ttl and ttl > 0:
            seconds = max(1, int(ttl / 1000 + 0.999))
            raise LockedOut(
                f"too many failed log-ins for this e-mail: try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        async with self.db.global_() as session:
            row = (
                await session.execute(select(OperatorRow).where(func.lower(OperatorRow.email) == email))
            ).scalar_one_or_none()
            ok = PasswordPolicy.verify(row.password_hash if row else None, password)
            if row is None or not ok or row.disabled_at is not None:
                await self._count_failure(email, meta)
                raise Unauthorized("invalid e-mail or password")
            row.last_login_at = datetime.now(UTC)
            if PasswordPolicy.needs_rehash(row.password_hash):
                row.password_hash = PasswordPolicy.hash(password)
            info = _info(row)
        await self.redis.delete(f"bos:oplogin:fail:{_email_key(email)}")
        log.info("operator %s logged in from %s", info.id, meta.ip or "-")
        now = int(time.time())
        token = self.keys.sign(
            {"iss": ISSUER, "aud": OPERATOR_AUDIENCE, "sub": str(info.id), "op": True,
             "iat": now, "exp": now + ACCESS_TTL, "jti": uuid.uuid4().hex}
        )
        return OperatorToken(access_token=token, expires_in=ACCESS_TTL, operator=info)

    async def _count_failure(self, email: str, meta: RequestMeta) -> None:
        key = _email_key(email)
        failures = await self.redis.incr(f"bos:oplogin:fail:{key}")
        await self.redis.expire(f"bos:oplogin:fail:{key}", 24 * 3600)
        if failures >= FAILURES_BEFORE_LOCK:
            seconds = min(LOCK_BASE_SECONDS * 2 ** (failures - FAILURES_BEFORE_LOCK), LOCK_MAX_SECONDS)
            await self.redis.set(f"bos:oplogin:lock:{key}", "1", ex=seconds)
            log.warning("operator log-in locked for %s s after %s failures (from %s)", seconds, failures,
                        meta.ip or "-")

    async def authenticate(self, token: str) -> Operator:
        """The operator a token stands for, or ``TokenError`` (a tenant token, expired, disabled)."""
        claims = self.keys.decode(token, audience=OPERATOR_AUDIENCE, required=_REQUIRED)
        if claims.get("iss") != ISSUER or claims.get("op") is not True:
            raise TokenError("not an operator token")
        try:
            operator_id = uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise TokenError("invalid token") from None
        async with self.db.global_() as session:
            row = (
                await session.execute(
                    select(OperatorRow.email).where(
                        OperatorRow.id == operator_id, OperatorRow.disabled_at.is_(None)
                    )
                )
            ).one_or_none()
        if row is None:
            raise TokenError("operator disabled or unknown")
        return Operator(id=operator_id, email=row.email)

    # -- tenants ----------------------------------------------------------------------------

    async def tenant(self, ref: str) -> Tenant:
        """A tenant by id or slug, whatever its status; 404 if there is none."""
        found = await self.tenants.find(ref) if 0 < len(ref) <= 100 else None
        if found is None:
            raise NotFound(f"tenant {ref!r} does not exist")
        return found

    async def list_tenants(
        self, *, q: str | None, status: Status | None, plan: Plan | None, page: int, limit: int
    ) -> TenantList:
        """Tenants, oldest first; ``q`` matches part of the slug or name (case-insensitive)."""
        offset, limit = page_bounds(page, limit)
        query = select(TenantRow)
        if q:
            pattern = "%" + q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                func.lower(TenantRow.slug).like(pattern, escape="\\")
                | func.lower(TenantRow.name).like(pattern, escape="\\")
            )
        if status:
            query = query.where(TenantRow.status == status)
        if plan:
            query = query.where(TenantRow.plan == plan)
        async with self.db.global_() as session:
            total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
            rows = (
                await session.execute(
                    query.order_by(TenantRow.created_at, TenantRow.id).offset(offset).limit(limit)
                )
            ).scalars()
            tenants = [to_tenant(r) for r in rows]
        return TenantList(tenants=tenants, pagination=page_of(page, limit, total))

    async def usage(self, *, since: datetime | None, page: int, limit: int) -> UsageList:
        """Per tenant (a page of them, oldest first): members, API keys, modules, AI use."""
        listed = await self.list_tenants(q=None, status=None, plan=None, page=page, limit=limit)
        since = since or month_start()
        async with self.db.global_() as session:
            usages = [await _usage(session, t, since) for t in listed.tenants]
        return UsageList(tenants=usages, pagination=listed.pagination)

    async def detail(self, operator: Operator, ref: str, meta: RequestMeta) -> TenantDetail:
        """The tenant and its usage this month; the look is recorded in the tenant's audit chain."""
        tenant = await self.tenant(ref)
        async with self.db.tenant(tenant.id) as session:
            usage = await _usage(session, tenant, month_start())
            await record(session, tenant_id=tenant.id, actor=operator.actor, action="operator.tenant.viewed",
                         resource_type="tenant", resource_id=str(tenant.id), meta=meta)
        return TenantDetail(tenant=tenant, usage=usage)

    async def set_status(self, operator: Operator, ref: str, status: Status, meta: RequestMeta) -> Tenant:
        tenant = await self.tenant(ref)
        return await self.tenants.set_status(str(tenant.id), status, actor=operator.actor, meta=meta)

    async def set_plan(self, operator: Operator, ref: str, plan: Plan, meta: RequestMeta) -> Tenant:
        tenant = await self.tenant(ref)
        gate = self.tenants.entitlements
        if gate is not None:  # the provider (billing) records the change on its side first
            await gate.operator_plan(tenant.id, gate.plan(plan), operator.actor)
        return await self.tenants.set_plan(str(tenant.id), plan, actor=operator.actor, meta=meta)

    async def verify_chain(self, operator: Operator, ref: str, meta: RequestMeta) -> VerifiedChain:
        """Verify the tenant's audit chain, then record that the operator did (after the check,
        so the report covers the chain as it was)."""
        tenant = await self.tenant(ref)
        report = await AuditService(self.db).verify(tenant.id)
        async with self.db.tenant(tenant.id) as session:
            await record(session, tenant_id=tenant.id, actor=operator.actor, action="operator.audit.verified",
                         resource_type="tenant", resource_id=str(tenant.id), meta=meta,
                         details={"valid": report.valid, "rows": report.rows})
        return VerifiedChain(tenant=tenant, chain=report)


async def _usage(session: AsyncSession, tenant: Tenant, since: datetime) -> TenantUsage:
    # Within one transaction the tenant setting may change between statements: row-level
    # security reads it per statement, so each query sees exactly this tenant's rows.
    await session.execute(_SET_TENANT, {"t": str(tenant.id)})
    row = (await session.execute(_USAGE, {"since": since})).one()
    return TenantUsage(
        tenant=tenant, members=row.members, api_keys=row.api_keys, modules=list(row.modules),
        ai_calls=row.ai_calls, ai_tokens=int(row.ai_tokens), ai_cost=row.ai_cost, since=since,
    )

