"""Accounts and sessions: sign-up, log-in (with MFA), refresh rotation, log-out, passwords.

Log-in failures are counted per e-mail address in Redis, for addresses with and without an
account alike, so the answers (and the lock-outs) say nothing about which addresses exist.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import RequestMeta, record
from kernel.db.engine import Database
from kernel.db.models import uuid7
from kernel.entitlements import EntitlementGate
from kernel.errors import Conflict, FieldError, Forbidden, Problem, Unprocessable
from kernel.events.catalog import (
    InvitationAccepted,
    InvitationCreated,
    MemberAdded,
    TenantCreated,
    publish,
)
from kernel.identity.access import AccessService
from kernel.identity.models import InvitationRow, MembershipRow, RefreshTokenRow, UserRow
from kernel.identity.passwords import PasswordPolicy, check_password_strength
from kernel.identity.principal import Principal
from kernel.identity.schemas import (
    Invitation,
    InvitationCreate,
    Login,
    Me,
    Membership,
    MfaChallenge,
    Register,
    TenantSignup,
    TenantWithOwner,
    TokenPair,
)
from kernel.identity.tokens import ACCESS_TTL, KeySet, OpaqueSecret, TokenError
from kernel.tenants.models import TenantRow
from kernel.tenants.schemas import Tenant
from kernel.tenants.service import TenantService

__all__ = ["IdentityService", "Unauthorized"]

log = logging.getLogger("businessos.identity")

REFRESH_KIND = "rt"
INVITE_KIND = "inv"
MFA_AUDIENCE = "businessos-mfa"
MFA_TOKEN_TTL = 300
FAILURES_BEFORE_LOCK = 5
LOCK_BASE_SECONDS = 30
LOCK_MAX_SECONDS = 15 * 60


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="businessos"'})


class LockedOut(Problem):
    status, slug, title = 429, "too-many-attempts", "Too many failed attempts"


class _AccountPasswordMismatch(Conflict):
    """Sign-up with the e-mail of an existing account but not its password (a failed log-in)."""

    def __init__(self, user_id: uuid.UUID) -> None:
        super().__init__("an account with this e-mail exists: give its password to join with it")
        self.user_id = user_id


@dataclass(frozen=True)
class _Session:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    mfa: bool


def _email_key(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:32]


class IdentityService:
    def __init__(
        self,
        db: Database,
        redis: Redis,
        keys: KeySet,
        tenants: TenantService,
        access: AccessService,
        entitlements: EntitlementGate,
        *,
        refresh_days: int,
    ) -> None:
        self.entitlements = entitlements
        self.db = db
        self.redis = redis
        self.keys = keys
        self.tenants = tenants
        self.access = access
        self.refresh_lifetime = timedelta(days=refresh_days)

    # -- tokens -------------------------------------------------------------------------------

    async def _issue(self, session: AsyncSession, s: _Session, family: uuid.UUID | None = None,
                     expires_at: datetime | None = None) -> TokenPair:
        """A new access token and a refresh token (a new family unless ``family`` is given)."""
        refresh = OpaqueSecret.new(REFRESH_KIND, s.tenant_id)
        session.add(
            RefreshTokenRow(
                tenant_id=s.tenant_id,
                id=uuid7(),
                user_id=s.user_id,
                family_id=family or uuid7(),
                token_hash=refresh.hash,
                expires_at=expires_at or datetime.now(UTC) + self.refresh_lifetime,
            )
        )
        access = self.keys.issue(user_id=s.user_id, tenant_id=s.tenant_id, role=s.role, mfa=s.mfa)
        return TokenPair(access_token=access, refresh_token=refresh.value, expires_in=ACCESS_TTL)

    # -- sign-up ------------------------------------------------------------------------------

    async def create_tenant(self, data: TenantSignup, meta: RequestMeta) -> TenantWithOwner:
        """A tenant and its owner, in one transaction; answers with the owner's tokens."""
        email = data.owner.email.strip().lower()
        check_password_strength(
            data.owner.password, field="owner.password", context=[email, data.name, data.slug]
        )
        await self._check_lock(email)
        plan = self.entitlements.plan(data.plan, signup=True)
        tenant_row = TenantRow(name=data.name.strip(), slug=data.slug, plan=plan, status="active")
        try:
            async with self.db.global_() as session:
                tenant_row.allow_signup = data.allow_signup
                session.add(tenant_row)
                await session.flush()
                user = await self._user_for_signup(session, email, data.owner.password, data.owner.name)
                await session.execute(
                    text("select set_config('app.tenant_id', :t, true)"), {"t": str(tenant_row.id)}
                )
                session.add(MembershipRow(tenant_id=tenant_row.id, user_id=user.id, role="owner"))
                pair = await self._issue(session, _Session(user.id, tenant_row.id, "owner", mfa=False))
                await record(
                    session, tenant_id=tenant_row.id, actor=f"user:{user.id}", action="tenant.created",
                    resource_type="tenant", resource_id=str(tenant_row.id), meta=meta,
                    after={"name": tenant_row.name, "slug": tenant_row.slug, "plan": tenant_row.plan},
                )
                actor = f"user:{user.id}"
                await publish(session, tenant_row.id, TenantCreated(
                    actor=actor, tenant_id=tenant_row.id, name=tenant_row.name, slug=tenant_row.slug,
                    plan=tenant_row.plan,
                ))
                await publish(session, tenant_row.id, MemberAdded(
                    actor=actor, user_id=user.id, role="owner", via="tenant_creation"
                ))
                await session.refresh(tenant_row)
        except IntegrityError as exc:
            if "uq_tenants_slug" in str(exc.orig):
                raise Conflict(f"a tenant with slug {data.slug!r} already exists") from None
            raise
        except _AccountPasswordMismatch as exc:
            await self._signup_failure(email, exc.user_id, meta)
            raise
        tenant = Tenant(
            id=tenant_row.id, name=tenant_row.name, slug=tenant_row.slug, status="active",
            plan=plan, created_at=tenant_row.created_at, allow_signup=tenant_row.allow_signup,
        )
        return TenantWithOwner(
            tenant=tenant, user_id=user.id, access_token=pair.access_token,
            refresh_token=pair.refresh_token, expires_in=pair.expires_in,
        )

    async def _user_for_signup(self, session: AsyncSession, email: str, password: str, name: str) -> UserRow:
        """The existing account for ``email`` (its password must match) or a new one."""
        existing = (
            await session.execute(select(UserRow).where(func.lower(UserRow.email) == email))
        ).scalar_one_or_none()
        if existing is not None:
            if not PasswordPolicy.verify(existing.password_hash, password):
                raise _AccountPasswordMismatch(existing.id)
            if existing.mfa_enabled:
                # Tokens from here would skip the second factor that log-in asks for (and, through
                # switch-tenant, open every tenant of the account).
                raise Forbidden(
                    "this account uses two-factor authentication: a password alone cannot join it"
                )
            return existing
        user = UserRow(
            id=uuid7(), email=email, name=name.strip(), password_hash=PasswordPolicy.hash(password)
        )
        session.add(user)
        await session.flush()
        return user

    async def _signup_failure(self, email: str, user_id: uuid.UUID, meta: RequestMeta) -> None:
        """A wrong password given at sign-up counts like a failed log-in (no way around the lock-out)."""
        memberships = await self._memberships(user_id)
        await self._count_failure(email, user_id, [m.tenant_id for m, _ in memberships], meta)

    async def register(self, tenant: Tenant, data: Register, meta: RequestMeta) -> TokenPair:
        """Join ``tenant`` with an invitation, or as a member where it allows open sign-up."""
        email = data.email.strip().lower()
        check_password_strength(data.password, context=[email, tenant.name, tenant.slug])
        await self._check_lock(email)
        role = "member"
        invite = None
        invitation_id: uuid.UUID | None = None
        if data.invitation_token:
            try:
                invite = OpaqueSecret.parse(INVITE_KIND, data.invitation_token)
            except TokenError:
                raise Forbidden("the invitation is not valid") from None
            if invite.tenant_id != tenant.id:
                raise Forbidden("the invitation is for another tenant")
        else:
            async with self.db.global_() as session:
                allowed = (
                    await session.execute(
                        text("select allow_signup from tenants where id = :t"), {"t": tenant.id}
                    )
                ).scalar_one()
            if not allowed:
                raise Forbidden("this tenant accepts new members by invitation only")  # never echo its slug
        await self.entitlements.require(tenant.id, "kernel.members")
        try:
            async with self.db.tenant(tenant.id) as session:
                if invite is not None:
                    row = (
                        await session.execute(
                            update(InvitationRow)
                            .where(
                                InvitationRow.token_hash == invite.hash,
                                InvitationRow.accepted_at.is_(None),
                                InvitationRow.expires_at > func.now(),
                                func.lower(InvitationRow.email) == email,
                            )
                            .values(accepted_at=func.now())
                            .returning(InvitationRow.role, InvitationRow.id)
                        )
                    ).first()
                    if row is None:
                        raise Forbidden("the invitation is not valid, expired, used, or for another e-mail")
                    role, invitation_id = row.role, row.id
                user = await self._user_for_signup(session, email, data.password, data.name)
                session.add(MembershipRow(tenant_id=tenant.id, user_id=user.id, role=role))
                await session.flush()
                pair = await self._issue(session, _Session(user.id, tenant.id, role, mfa=False))
                await record(
                    session, tenant_id=tenant.id, actor=f"user:{user.id}", action="auth.registered",
                    resource_type="user", resource_id=str(user.id), meta=meta,
                    details={"role": role, "via": "invitation" if invite else "open sign-up"},
                )
                actor = f"user:{user.id}"
                if invitation_id is not None:
                    await publish(session, tenant.id, InvitationAccepted(
                        actor=actor, invitation_id=invitation_id, user_id=user.id, role=role
                    ))
                await publish(session, tenant.id, MemberAdded(
                    actor=actor, user_id=user.id, role=role, via="invitation" if invite else "open_signup"
                ))
        except IntegrityError as exc:
            if "uq_memberships_tenant_id_user_id" in str(exc.orig):
                raise Conflict("you are already a member of this tenant: log in instead") from None
            if "uq_users_lower_email" in str(exc.orig):
                raise Conflict("an account with this e-mail was just created: log in instead") from None
            raise
        except _AccountPasswordMismatch as exc:
            await self._signup_failure(email, exc.user_id, meta)
            raise
        return pair

    async def invite(self, principal: Principal, data: InvitationCreate, meta: RequestMeta) -> Invitation:
        if data.role == "admin" and principal.role not in ("owner", "admin"):
            raise Forbidden("only owners and admins may invite admins")
        # Like an API key, an invitation never brings in more than the inviter has.
        beyond = sorted((await self.access.grants(principal.tenant_id))[data.role] - principal.permissions)
        if beyond:
            raise Forbidden(f"you cannot invite a {data.role}: it may do more than you ({', '.join(beyond)})")
        secret = OpaqueSecret.new(INVITE_KIND, principal.tenant_id)
        row = InvitationRow(
            tenant_id=principal.tenant_id, id=uuid7(), email=data.email.strip().lower(), role=data.role,
            token_hash=secret.hash, invited_by=principal.user_id,
            expires_at=datetime.now(UTC) + timedelta(days=data.expires_in_days),
        )
        async with self.db.tenant(principal.tenant_id) as session:
            session.add(row)
            await record(
                session, tenant_id=principal.tenant_id, actor=principal.actor, action="invitation.created",
                resource_type="invitation", resource_id=str(row.id), meta=meta,
                after={"email": row.email, "role": row.role},
            )
            await publish(session, principal.tenant_id, InvitationCreated(
                actor=principal.actor, invitation_id=row.id, email=row.email, role=row.role,
                expires_at=row.expires_at,
            ))
        return Invitation(
            id=row.id, email=row.email, role=row.role, expires_at=row.expires_at, token=secret.value
        )

    # -- log-in -------------------------------------------------------------------------------

    async def _check_lock(self, email: str) -> None:
        ttl = await self.redis.pttl(f"bos:login:lock:{_email_key(email)}")
        if ttl and ttl > 0:
            seconds = max(1, int(ttl / 1000 + 0.999))
            raise LockedOut(
                f"too many failed log-ins for this e-mail: try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )

    async def _count_failure(self, email: str, user_id: uuid.UUID | None, tenant_ids: list[uuid.UUID],
                             meta: RequestMeta) -> None:
        key = _email_key(email)
        failures = await self.redis.incr(f"bos:login:fail:{key}")
        await self.redis.expire(f"bos:login:fail:{key}", 24 * 3600)
        if failures < FAILURES_BEFORE_LOCK:
            return
        # Growing back-off, capped, so a user can never be locked out for good.
        seconds = min(LOCK_BASE_SECONDS * 2 ** (failures - FAILURES_BEFORE_LOCK), LOCK_MAX_SECONDS)
        await self.redis.set(f"bos:login:lock:{key}", "1", ex=seconds)
        log.warning("log-in locked for %s s after %s failures (user %s)", seconds, failures, user_id or "-")
        for tenant_id in tenant_ids:
            async with self.db.tenant(tenant_id) as session:
                await record(
                    session,
                    tenant_id=tenant_id,
                    actor=f"user:{user_id}" if user_id else None,
                    action="auth.lockout",
                    resource_type="user",
                    resource_id=str(user_id) if user_id else None,
                    result="denied",
                    meta=meta,
                    details={"failures": failures, "locked_seconds": seconds},
                )

    async def _memberships(self, user_id: uuid.UUID) -> list[tuple[MembershipRow, TenantRow]]:
        async with self.db.user(user_id) as session:
            rows = (
                await session.execute(
                    select(MembershipRow, TenantRow)
                    .join(TenantRow, TenantRow.id == MembershipRow.tenant_id)
                    .where(MembershipRow.user_id == user_id)
                    .order_by(MembershipRow.last_login_at.desc().nulls_last(), MembershipRow.created_at)
                )
            ).all()
        return [(m, t) for m, t in rows]

    async def login(self, data: Login, tenant_ref: str | None, meta: RequestMeta) -> TokenPair | MfaChallenge:
        email = data.email.strip().lower()
        await self._check_lock(email)
        async with self.db.global_() as session:
            user = (
                await session.execute(select(UserRow).where(func.lower(UserRow.email) == email))
            ).scalar_one_or_none()
        ok = PasswordPolicy.verify(user.password_hash if user else None, data.password)
        memberships = await self._memberships(user.id) if user else []
        chosen = self._choose(memberships, tenant_ref)
        if user is None or not ok or chosen is None:
            await self._count_failure(
                email, user.id if user else None, [m.tenant_id for m, _ in memberships], meta
            )
            if user is not None and chosen is not None:
                await self._audit(chosen[0].tenant_id, user.id, "auth.login", "failure", meta,
                                  {"reason": "wrong password"})
            raise Unauthorized("invalid e-mail or password")
        membership, tenant = chosen
        if tenant.status != "active":
            raise Forbidden(f"this tenant is {tenant.status}")
        await self.redis.delete(f"bos:login:fail:{_email_key(email)}")
        if PasswordPolicy.needs_rehash(user.password_hash):
            async with self.db.global_() as session:
                await session.execute(
                    update(UserRow)
                    .where(UserRow.id == user.id)
                    .values(password_hash=PasswordPolicy.hash(data.password))
                )
        if user.mfa_enabled:
            token = self.keys.sign(
                {"sub": str(user.id), "tid": str(tenant.id), "aud": MFA_AUDIENCE,
                 "exp": int(time.time()) + MFA_TOKEN_TTL, "jti": uuid.uuid4().hex}
            )
            await self._audit(tenant.id, user.id, "auth.login", "mfa_required", meta)
            return MfaChallenge(mfa_token=token)
        return await self.start_session(
            _Session(user.id, tenant.id, membership.role, mfa=False), meta, "auth.login"
        )

    @staticmethod
    def _choose(
        memberships: list[tuple[MembershipRow, TenantRow]], tenant_ref: str | None
    ) -> tuple[MembershipRow, TenantRow] | None:
        if not memberships:
            return None
        if not tenant_ref:
            return memberships[0]
        ref = tenant_ref.strip().lower()
        for membership, tenant in memberships:
            if ref in (str(tenant.id), tenant.slug):
                return membership, tenant
        return None

    async def start_session(self, s: _Session, meta: RequestMeta, action: str) -> TokenPair:
        async with self.db.tenant(s.tenant_id) as session:
            await session.execute(
                update(MembershipRow)
                .where(MembershipRow.user_id == s.user_id)
                .values(last_login_at=func.now())
            )
            pair = await self._issue(session, s)
            await record(session, tenant_id=s.tenant_id, actor=f"user:{s.user_id}", action=action,
                         resource_type="user", resource_id=str(s.user_id), meta=meta,
                         details={"mfa": s.mfa})
        return pair

    def read_mfa_token(self, token: str) -> tuple[uuid.UUID, uuid.UUID, str]:
        """(user id, tenant id, token id) of a log-in waiting for its second factor."""
        try:
            claims = self.keys.decode(
                token, audience=MFA_AUDIENCE, required=["sub", "tid", "exp", "aud", "jti"]
            )
            return uuid.UUID(str(claims["sub"])), uuid.UUID(str(claims["tid"])), str(claims["jti"])
        except (TokenError, ValueError):
            raise Unauthorized("the MFA token is invalid or expired") from None

    async def _audit(self, tenant_id: uuid.UUID, user_id: uuid.UUID | None, action: str, result: str,
                     meta: RequestMeta, details: dict[str, object] | None = None) -> None:
        async with self.db.tenant(tenant_id) as session:
            await record(
                session,
                tenant_id=tenant_id,
                actor=f"user:{user_id}" if user_id else None,
                action=action,
                resource_type="user",
                resource_id=str(user_id) if user_id else None,
                result=result,
                meta=meta,
                details=details,
            )

    # -- refresh, log-out, password -----------------------------------------------------------

    async def refresh(self, presented: str, meta: RequestMeta, *, tenant_ref: str | None = None) -> TokenPair:
        """Rotate ``presented``. A ``tenant_ref`` (the request's ``X-Tenant-ID``) naming another
        tenant than the token's is refused (403), as it is for an access token."""
        try:
            secret = OpaqueSecret.parse(REFRESH_KIND, presented)
        except TokenError:
            raise Unauthorized("invalid refresh token") from None
        tenant = await self.tenants.find(str(secret.tenant_id))
        if tenant is None:
            raise Unauthorized("invalid refresh token")
        if tenant_ref and tenant_ref.strip().lower() not in (str(tenant.id), tenant.slug):
            raise Forbidden("the refresh token is for another tenant than X-Tenant-ID names")
        if tenant.status != "active":
            raise Forbidden(f"tenant {tenant.slug!r} is {tenant.status}")
        async with self.db.tenant(secret.tenant_id) as session:
            # Only one caller can flip used_at: concurrent refreshes yield at most one new token.
            row = (
                await session.execute(
                    update(RefreshTokenRow)
                    .where(
                        RefreshTokenRow.token_hash == secret.hash,
                        RefreshTokenRow.used_at.is_(None),
                        RefreshTokenRow.revoked_at.is_(None),
                        RefreshTokenRow.expires_at > func.now(),
                    )
                    .values(used_at=func.now())
                    .returning(RefreshTokenRow.user_id, RefreshTokenRow.family_id, RefreshTokenRow.expires_at)
                )
            ).first()
            if row is not None:
                role = (
                    await session.execute(
                        select(MembershipRow.role).where(MembershipRow.user_id == row.user_id)
                    )
                ).scalar_one_or_none()
                if role is not None:
                    pair = await self._issue(
                        session,
                        _Session(row.user_id, secret.tenant_id, role, mfa=False),
                        family=row.family_id,
                        expires_at=row.expires_at,
                    )
                    await record(
                        session,
                        tenant_id=secret.tenant_id,
                        actor=f"user:{row.user_id}",
                        action="auth.refresh",
                        resource_type="session",
                        resource_id=str(row.family_id),
                        meta=meta,
                    )
                    return pair
        if row is not None:
            raise Unauthorized("the session's user is no longer a member of this tenant")
        await self._refused_refresh(secret, meta)
        raise Unauthorized("invalid refresh token")

    async def _refused_refresh(self, secret: OpaqueSecret, meta: RequestMeta) -> None:
        """A token that was already rotated is being replayed: end its whole family."""
        async with self.db.tenant(secret.tenant_id) as session:
            row = (
                await session.execute(
                    select(RefreshTokenRow.user_id, RefreshTokenRow.family_id, RefreshTokenRow.used_at,
                           RefreshTokenRow.revoked_at).where(RefreshTokenRow.token_hash == secret.hash)
                )
            ).first()
            if row is None or row.used_at is None:
                return
            revoked = await session.execute(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.family_id == row.family_id, RefreshTokenRow.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
            await record(session, tenant_id=secret.tenant_id, actor=f"user:{row.user_id}",
                         action="auth.refresh.reuse_detected", resource_type="session",
                         resource_id=str(row.family_id), result="denied", meta=meta,
                         details={"revoked_tokens": revoked.rowcount})  # type: ignore[attr-defined]

    async def logout(self, principal: Principal, presented: str | None, meta: RequestMeta) -> int:
        """End the session of ``presented`` (or, without it, every session of the caller here)."""
        assert principal.user_id is not None
        async with self.db.tenant(principal.tenant_id) as session:
            query = update(RefreshTokenRow).where(
                RefreshTokenRow.user_id == principal.user_id, RefreshTokenRow.revoked_at.is_(None)
            )
            if presented:
                try:
                    secret = OpaqueSecret.parse(REFRESH_KIND, presented)
                except TokenError:
                    raise Unprocessable("refresh_token is not a refresh token",
                                        errors=[FieldError("refresh_token", "not a refresh token")]) from None
                family = (
                    await session.execute(
                        select(RefreshTokenRow.family_id).where(RefreshTokenRow.token_hash == secret.hash,
                                                                RefreshTokenRow.user_id == principal.user_id)
                    )
                ).scalar_one_or_none()
                if family is None:
                    return 0
                query = query.where(RefreshTokenRow.family_id == family)
            # A session is a family of rotated tokens: count families, not rows.
            ended = len(
                set(
                    (
                        await session.execute(
                            query.values(revoked_at=func.now()).returning(RefreshTokenRow.family_id)
                        )
                    )
                    .scalars()
                    .all()
                )
            )
            await record(session, tenant_id=principal.tenant_id, actor=principal.actor, action="auth.logout",
                         resource_type="user", resource_id=str(principal.user_id), meta=meta)
        return int(ended)

    async def change_password(self, principal: Principal, current: str, new: str, keep: str | None,
                              meta: RequestMeta) -> None:
        """Change the caller's password and end every other session, in every tenant."""
        assert principal.user_id is not None
        async with self.db.global_() as session:
            user = (
                await session.execute(select(UserRow).where(UserRow.id == principal.user_id))
            ).scalar_one()
        # Checking the current password is a log-in attempt: the same lock-out applies.
        await self._check_lock(user.email.strip().lower())
        if not PasswordPolicy.verify(user.password_hash, current):
            await self._audit(principal.tenant_id, user.id, "auth.password.change", "failure", meta)
            tenant_ids = [m.tenant_id for m, _ in await self._memberships(user.id)]
            await self._count_failure(user.email.strip().lower(), user.id, tenant_ids, meta)
            raise Forbidden("the current password is wrong")
        if current == new:
            raise Unprocessable("the new password must differ from the current one",
                                errors=[FieldError("new_password", "same as the current password")])
        check_password_strength(new, field="new_password", context=[user.email])
        keep_hash = None
        if keep:
            try:
                keep_hash = OpaqueSecret.parse(REFRESH_KIND, keep).hash
            except TokenError:
                keep_hash = None
        async with self.db.global_() as session:
            await session.execute(
                update(UserRow).where(UserRow.id == user.id)
                .values(password_hash=PasswordPolicy.hash(new), password_changed_at=func.now())
            )
        for membership, _ in await self._memberships(user.id):
            async with self.db.tenant(membership.tenant_id) as session:
                keep_family = None
                if keep_hash is not None and membership.tenant_id == principal.tenant_id:
                    keep_family = (
                        await session.execute(select(RefreshTokenRow.family_id)
                                              .where(RefreshTokenRow.token_hash == keep_hash))
                    ).scalar_one_or_none()
                query = update(RefreshTokenRow).where(
                    RefreshTokenRow.user_id == user.id, RefreshTokenRow.revoked_at.is_(None)
                )
                if keep_family is not None:
                    query = query.where(RefreshTokenRow.family_id != keep_family)
                await session.execute(query.values(revoked_at=func.now()))
                if membership.tenant_id == principal.tenant_id:
                    await record(
                        session,
                        tenant_id=principal.tenant_id,
                        actor=principal.actor,
                        action="auth.password.change",
                        resource_type="user",
                        resource_id=str(user.id),
                        meta=meta,
                    )

    # -- who am I, switching ------------------------------------------------------------------

    async def me(self, principal: Principal) -> Me:
        assert principal.user_id is not None
        async with self.db.global_() as session:
            user = (
                await session.execute(select(UserRow).where(UserRow.id == principal.user_id))
            ).scalar_one()
        memberships = await self._memberships(user.id)
        return Me(
            id=user.id,
            email=user.email,
            name=user.name,
            mfa_enabled=user.mfa_enabled,
            tenant_id=principal.tenant_id,
            role=principal.role,
            permissions=sorted(principal.permissions),
            memberships=[
                Membership(tenant_id=t.id, slug=t.slug, name=t.name, role=m.role) for m, t in memberships
            ],
        )

    async def switch_tenant(self, principal: Principal, tenant_ref: str, meta: RequestMeta) -> TokenPair:
        assert principal.user_id is not None
        chosen = self._choose(await self._memberships(principal.user_id), tenant_ref)
        if chosen is None:
            raise Forbidden("you are not a member of that tenant")
        membership, tenant = chosen
        if tenant.status != "active":
            raise Forbidden(f"tenant {tenant.slug!r} is {tenant.status}")
        return await self.start_session(
            _Session(principal.user_id, tenant.id, membership.role, mfa=principal.mfa),
            meta,
            "auth.switch_tenant",
        )
