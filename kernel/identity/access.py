"""What a role may do in a tenant, and API keys.

Grants start from the built-in defaults (kernel.identity.permissions) and may be edited per
tenant, except the owner's, which is always everything. Resolved grants are cached per process
and invalidated across processes on change.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import RequestMeta, record
from kernel.cache import InvalidationBus, TTLCache
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.entitlements import EntitlementGate
from kernel.errors import Conflict, FieldError, Forbidden, NotFound, Unprocessable
from kernel.events import catalog as events
from kernel.identity.models import ApiKeyRow, MembershipRow, RefreshTokenRow, RoleGrantRow, UserRow
from kernel.identity.permissions import KERNEL_PERMISSIONS, ROLES, default_grants
from kernel.identity.principal import Principal
from kernel.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    Member,
    MemberInfo,
    MemberList,
    PermissionInfo,
    RoleGrants,
    RoleList,
)
from kernel.identity.tokens import OpaqueSecret, TokenError
from kernel.listing import Pagination, check_list, list_and_count
from kernel.plugins.contract import Permission
from kernel.plugins.loader import PluginSet

__all__ = ["API_KEY_KIND", "AccessService", "is_member"]

API_KEY_KIND = "bos"
GRANTS_TOPIC = "grants"
MEMBER_TOPIC = "member"
KEY_TOPIC = "apikey"


async def is_member(session: AsyncSession, user_id: uuid.UUID) -> bool:
    """Whether ``user_id`` belongs to the tenant of ``session`` (a ``db.tenant()`` session: row-level
    security limits memberships to that tenant)."""
    found = await session.execute(select(MembershipRow.id).where(MembershipRow.user_id == user_id).limit(1))
    return found.first() is not None


class AccessService:
    def __init__(
        self,
        db: Database,
        plugins: PluginSet,
        bus: InvalidationBus | None,
        entitlements: EntitlementGate | None = None,
    ) -> None:
        self.entitlements = entitlements
        self.db = db
        self.bus = bus
        self.catalog: dict[str, tuple[Permission, str]] = {p.name: (p, "kernel") for p in KERNEL_PERMISSIONS}
        for plugin in plugins.active():
            for permission in plugin.permissions:
                self.catalog[permission.name] = (permission, plugin.name)
        self._grants: TTLCache[str, object] = TTLCache(60)
        self._members: TTLCache[str, object] = TTLCache(60)
        self._keys: TTLCache[str, object] = TTLCache(60)
        if bus is not None:
            bus.register(GRANTS_TOPIC, self._grants)
            bus.register(MEMBER_TOPIC, self._members)
            bus.register(KEY_TOPIC, self._keys)

    async def _publish(self, topic: str, cache: TTLCache[str, object], key: str) -> None:
        if self.bus is not None:
            await self.bus.publish(topic, key)
        else:
            cache.drop(key)

    # -- grants -----------------------------------------------------------------------------

    async def grants(self, tenant_id: uuid.UUID) -> dict[str, frozenset[str]]:
        """Every role's permissions in the tenant."""
        key = str(tenant_id)
        cached = self._grants.get(key)
        generation = self._grants.generation
        if isinstance(cached, dict):
            return cached
        async with self.db.tenant(tenant_id) as session:
            rows = (await session.execute(select(RoleGrantRow.role, RoleGrantRow.permissions))).all()
        edited = {row.role: frozenset(row.permissions) & self.catalog.keys() for row in rows}
        result = {role: edited.get(role, default_grants(role, self.catalog)) for role in ROLES}
        result["owner"] = frozenset(self.catalog)
        self._grants.put(key, result, generation)
        return result

    async def role_list(self, tenant_id: uuid.UUID) -> RoleList:
        grants = await self.grants(tenant_id)
        defaults = {role: default_grants(role, self.catalog) for role in ROLES}
        return RoleList(
            roles=[
                RoleGrants(
                    role=role,
                    permissions=sorted(grants[role]),
                    customized=grants[role] != defaults[role] and role != "owner",
                    editable=role != "owner",
                )
                for role in ROLES
            ],
            permissions=[
                PermissionInfo(name=name, description=p.description, plugin=plugin)
                for name, (p, plugin) in sorted(self.catalog.items())
            ],
        )

    async def set_role(
        self, principal: Principal, role: str, permissions: list[str], meta: RequestMeta
    ) -> RoleGrants:
        tenant_id = principal.tenant_id
        if role not in ROLES:
            raise NotFound(f"role {role!r} does not exist (roles: {', '.join(ROLES)})")
        if role == "owner":
            raise Conflict("the owner role always has every permission and cannot be edited")
        unknown = sorted(set(permissions) - self.catalog.keys())
        if unknown:
            raise Unprocessable(
                f"unknown permission(s): {', '.join(unknown)}",
                errors=[FieldError(field="permissions", message=f"unknown: {name}") for name in unknown],
            )
        before = (await self.grants(tenant_id))[role]
        # Like an API key, an edit never hands out more than the editor has (the owner has all).
        beyond = sorted(set(permissions) - before - principal.permissions)
        if beyond:
            raise Forbidden(f"you cannot grant what you do not have: {', '.join(beyond)}")
        async with self.db.tenant(tenant_id) as session:
            stmt = insert(RoleGrantRow).values(
                tenant_id=tenant_id, id=uuid7(), role=role, permissions=sorted(set(permissions))
            )
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["tenant_id", "role"], set_={"permissions": sorted(set(permissions))}
                )
            )
            await record(
                session,
                tenant_id=tenant_id,
                actor=principal.actor,
                action="role.updated",
                resource_type="role",
                resource_id=role,
                meta=meta,
                before={"permissions": sorted(before)},
                after={"permissions": sorted(set(permissions))},
            )
        await self._publish(GRANTS_TOPIC, self._grants, str(tenant_id))
        return RoleGrants(role=role, permissions=sorted(set(permissions)), customized=True, editable=True)

    # -- members ----------------------------------------------------------------------------

    async def role_of(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
        """The user's role in the tenant, or ``None`` when not a member (cached)."""
        key = f"{tenant_id}/{user_id}"
        cached = self._members.get(key)
        generation = self._members.generation
        if isinstance(cached, str):
            return cached or None
        async with self.db.tenant(tenant_id) as session:
            role = (
                await session.execute(select(MembershipRow.role).where(MembershipRow.user_id == user_id))
            ).scalar_one_or_none()
        self._members.put(key, role or "", generation)
        return role

    async def forget_member(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
        await self._publish(MEMBER_TOPIC, self._members, f"{tenant_id}/{user_id}")

    async def _member_to_change(self, session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> str:
        """The role of the member ``principal`` wants to change or remove, after the rules: the
        owner stays, and only owners and admins touch admins."""
        role = (
            await session.execute(
                select(MembershipRow.role).where(MembershipRow.user_id == user_id).with_for_update()
            )
        ).scalar_one_or_none()
        if role is None:
            raise NotFound(f"user {user_id} is not a member of this tenant")
        if role == "owner":
            raise Conflict("the owner's membership cannot be changed or removed")
        if role == "admin" and principal.role not in ("owner", "admin"):
            raise Forbidden("only owners and admins may change or remove an admin")
        return role

    async def set_member_role(
        self, principal: Principal, user_id: uuid.UUID, role: str, meta: RequestMeta
    ) -> MemberInfo:
        """Give a member another role (not owner); like an invitation, never one that may do more
        than the caller. Audited as ``member.role_changed`` with its event."""
        if role == "admin" and principal.role not in ("owner", "admin"):
            raise Forbidden("only owners and admins may make someone an admin")
        beyond = sorted((await self.grants(principal.tenant_id))[role] - principal.permissions)
        if beyond:
            raise Forbidden(f"you cannot give the {role} role: it may do more than you ({', '.join(beyond)})")
        async with self.db.tenant(principal.tenant_id) as session:
            previous = await self._member_to_change(session, principal, user_id)
            if previous != role:
                await session.execute(
                    update(MembershipRow).where(MembershipRow.user_id == user_id).values(role=role)
                )
                await record(
                    session, tenant_id=principal.tenant_id, actor=principal.actor, action="member.role_changed",
                    resource_type="member", resource_id=str(user_id), meta=meta,
                    before={"role": previous}, after={"role": role},
                )
                await events.publish(session, principal.tenant_id, events.MemberRoleChanged(
                    actor=principal.actor, user_id=user_id, role=role, previous_role=previous
                ))
        await self.forget_member(principal.tenant_id, user_id)
        return MemberInfo(user_id=user_id, role=role)

    async def remove_member(self, principal: Principal, user_id: uuid.UUID, meta: RequestMeta) -> None:
        """Remove a member (not the owner) and end their sessions here. Audited as
        ``member.removed`` with its event."""
        async with self.db.tenant(principal.tenant_id) as session:
            role = await self._member_to_change(session, principal, user_id)
            await session.execute(delete(MembershipRow).where(MembershipRow.user_id == user_id))
            await session.execute(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.user_id == user_id, RefreshTokenRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            await record(
                session, tenant_id=principal.tenant_id, actor=principal.actor, action="member.removed",
                resource_type="member", resource_id=str(user_id), meta=meta, before={"role": role},
            )
            await events.publish(
                session, principal.tenant_id, events.MemberRemoved(actor=principal.actor, user_id=user_id, role=role)
            )
        await self.forget_member(principal.tenant_id, user_id)

    async def user_principal(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, *, mfa: bool
    ) -> Principal | None:
        role = await self.role_of(tenant_id, user_id)
        if role is None:
            return None
        grants = await self.grants(tenant_id)
        return Principal(
            kind="user",
            id=user_id,
            tenant_id=tenant_id,
            role=role,
            permissions=grants.get(role, frozenset()),
            mfa=mfa,
        )

    # -- API keys ---------------------------------------------------------------------------

    async def create_api_key(
        self, principal: Principal, data: ApiKeyCreate, meta: RequestMeta
    ) -> ApiKeyCreated:
        if (data.role is None) == (data.scopes is None):
            raise Unprocessable(
                "give either a role or scopes",
                errors=[FieldError(field="role", message="exactly one of role and scopes is required")],
            )
        if data.expires_at is not None and data.expires_at.astimezone(UTC) <= datetime.now(UTC):
            raise Unprocessable(
                "expires_at is in the past",
                errors=[FieldError(field="expires_at", message="must be in the future")],
            )
        grants = await self.grants(principal.tenant_id)
        wanted = grants[data.role] if data.role is not None else frozenset(data.scopes or ())
        unknown = sorted(wanted - self.catalog.keys())
        if unknown:
            raise Unprocessable(
                f"unknown scope(s): {', '.join(unknown)}",
                errors=[FieldError(field="scopes", message=f"unknown: {name}") for name in unknown],
            )
        # A key can never do more than the person who made it.
        beyond = sorted(wanted - principal.permissions)
        if beyond:
            raise Forbidden(f"you cannot grant what you do not have: {', '.join(beyond)}")
        if self.entitlements is not None:
            await self.entitlements.require(principal.tenant_id, "kernel.api_keys")
        secret = OpaqueSecret.new(API_KEY_KIND, principal.tenant_id)
        row = ApiKeyRow(
            tenant_id=principal.tenant_id,
            id=uuid7(),
            name=data.name,
            prefix=secret.display_prefix,
            key_hash=secret.hash,
            role=data.role,
            scopes=sorted(data.scopes) if data.scopes is not None else None,
            created_by=principal.user_id,
            expires_at=data.expires_at,
        )
        async with self.db.tenant(principal.tenant_id) as session:
            session.add(row)
            await record(
                session, tenant_id=principal.tenant_id, actor=principal.actor, action="api_key.created",
                resource_type="api_key", resource_id=str(row.id), meta=meta,
                after={"name": row.name, "prefix": row.prefix, "role": row.role, "scopes": row.scopes},
            )
            await events.publish(session, principal.tenant_id, events.ApiKeyCreated(
                actor=principal.actor, api_key_id=row.id, name=row.name, prefix=row.prefix, role=row.role,
                scopes=row.scopes, expires_at=row.expires_at,
            ))
        return ApiKeyCreated(
            id=row.id,
            name=row.name,
            key=secret.value,
            prefix=row.prefix,
            role=row.role,
            scopes=row.scopes,
            expires_at=row.expires_at,
        )

    async def list_members(self, tenant_id: uuid.UUID, page: int, limit: int) -> MemberList:
        """A page of the tenant's members, longest-standing first (``page``/``limit`` checked
        like every list: 422 naming the field)."""
        check_list(page, limit, "joined_at", ("joined_at",))
        async with self.db.tenant(tenant_id) as session:
            order: list[ColumnElement[Any]] = [MembershipRow.created_at.asc(), MembershipRow.user_id.asc()]
            memberships, total = await list_and_count(session, select(MembershipRow), order, page, limit)
        users: dict[uuid.UUID, UserRow] = {}
        if memberships:
            async with self.db.global_() as session:
                found = await session.execute(select(UserRow).where(UserRow.id.in_([m.user_id for m in memberships])))
                users = {user.id: user for user in found.scalars()}
        members = [
            Member(
                user_id=m.user_id, email=users[m.user_id].email, name=users[m.user_id].name, role=m.role,
                joined_at=m.created_at, last_login_at=m.last_login_at,
            )
            for m in memberships
            if m.user_id in users
        ]
        return MemberList(members=members, pagination=Pagination.of(page, limit, total))

    async def list_api_keys(self, tenant_id: uuid.UUID) -> list[ApiKeyInfo]:
        async with self.db.tenant(tenant_id) as session:
            rows = (await session.execute(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).scalars().all()
        return [
            ApiKeyInfo(
                id=r.id,
                name=r.name,
                prefix=r.prefix,
                role=r.role,
                scopes=r.scopes,
                created_at=r.created_at,
                expires_at=r.expires_at,
                last_used_at=r.last_used_at,
                revoked_at=r.revoked_at,
            )
            for r in rows
        ]

    async def revoke_api_key(self, principal: Principal, key_id: uuid.UUID, meta: RequestMeta) -> ApiKeyRow:
        async with self.db.tenant(principal.tenant_id) as session:
            row = (
                await session.execute(select(ApiKeyRow).where(ApiKeyRow.id == key_id))
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"API key {key_id} does not exist")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                await record(
                    session, tenant_id=principal.tenant_id, actor=principal.actor, action="api_key.revoked",
                    resource_type="api_key", resource_id=str(row.id), meta=meta,
                )
                await events.publish(session, principal.tenant_id, events.ApiKeyRevoked(
                    actor=principal.actor, api_key_id=row.id, name=row.name, prefix=row.prefix
                ))
            key_hash = row.key_hash
        await self._publish(KEY_TOPIC, self._keys, key_hash.hex())
        return row

    async def api_key_principal(self, presented: str) -> Principal:
        """The principal of an API key, or ``TokenError`` (revoked, expired, unknown)."""
        secret = OpaqueSecret.parse(API_KEY_KIND, presented)
        key = secret.hash.hex()
        cached = self._keys.get(key)
        generation = self._keys.generation
        if not isinstance(cached, ApiKeyRow):
            async with self.db.tenant(secret.tenant_id) as session:
                row = (
                    await session.execute(select(ApiKeyRow).where(ApiKeyRow.key_hash == secret.hash))
                ).scalar_one_or_none()
                if row is None:
                    raise TokenError("unknown API key")
                session.expunge(row)
            self._keys.put(key, row, generation)
            cached = row
        now = datetime.now(UTC)
        if cached.revoked_at is not None:
            raise TokenError("API key revoked")
        if cached.expires_at is not None and cached.expires_at <= now:
            raise TokenError("API key expired")
        if cached.last_used_at is None or (now - cached.last_used_at).total_seconds() > 60:
            # At most one write a minute per key: last use is informative, not exact.
            cached.last_used_at = now
            async with self.db.tenant(cached.tenant_id) as session:
                await session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == cached.id).values(last_used_at=now)
                )
        return await self._key_principal(cached)

    async def _key_principal(self, row: ApiKeyRow) -> Principal:
        """What a key acts as: its role's current permissions, or its scopes."""
        grants = await self.grants(row.tenant_id)
        permissions = grants.get(row.role, frozenset()) if row.role else frozenset(row.scopes or ())
        return Principal(kind="api_key", id=row.id, tenant_id=row.tenant_id, role=row.role, permissions=permissions)

    async def key_by_id(self, tenant_id: uuid.UUID, key_id: uuid.UUID) -> Principal | None:
        """The principal the tenant's API key ``key_id`` acts as now, or ``None`` when the tenant
        has no such key or it is revoked or expired (for work that runs as a key, not a request)."""
        async with self.db.tenant(tenant_id) as session:
            row = (await session.execute(select(ApiKeyRow).where(ApiKeyRow.id == key_id))).scalar_one_or_none()
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= utcnow()):
            return None
        return await self._key_principal(row)

    async def member_principal(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Principal | None:
        """The principal a member acts as now (their role's current permissions), or ``None``
        when the user is not a member (the role is cached like every member check)."""
        role = await self.role_of(tenant_id, user_id)
        if role is None:
            return None
        grants = await self.grants(tenant_id)
        permissions = grants.get(role, frozenset())
        return Principal(kind="user", id=user_id, tenant_id=tenant_id, role=role, permissions=permissions)
