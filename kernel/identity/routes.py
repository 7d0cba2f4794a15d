"""HTTP surface of identity: /api/auth, /api/tenant/invitations and members, /api/roles, /api/api-keys."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import Cookie
from litestar.params import Parameter

from kernel.context import Kernel, current_tenant
from kernel.errors import Forbidden
from kernel.identity.auth import principal_of, request_meta
from kernel.identity.mfa import mfa_handlers
from kernel.identity.permissions import AUTHENTICATED, PUBLIC
from kernel.identity.principal import Principal
from kernel.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    Invitation,
    InvitationCreate,
    Login,
    LogoutRequest,
    Me,
    MemberInfo,
    MemberList,
    MemberRoleUpdate,
    MfaChallenge,
    PasswordChange,
    RefreshRequest,
    Register,
    RoleGrants,
    RoleList,
    RoleUpdate,
    SwitchTenant,
    TokenPair,
)
from kernel.identity.service import Unauthorized
from kernel.listing import MAX_LIMIT, MAX_PAGE
from kernel.tenants.schemas import Tenant

__all__ = ["handlers"]

Req = Request[Any, Any, Any]
AUTH_LIMIT = {"permission": PUBLIC, "rate_limit": "auth"}
# A refresh token is 256 random bits and a replayed one ends its session family, so guessing is
# no threat worth the strict per-address limit; it takes the general one, since every console page
# load and every user behind one office address refreshes.
REFRESH_LIMIT = {"permission": PUBLIC, "credentials": True}  # it checks the token it is given: 401


def _user(request: Req) -> Principal:
    principal = principal_of(request)
    if principal is None or principal.kind != "user":
        raise Forbidden("this action needs a signed-in user, not an API key")
    return principal


def _principal(request: Req) -> Principal:
    principal = principal_of(request)
    assert principal is not None  # the access guard let only authenticated callers through
    return principal


class SessionsEnded(msgspec.Struct, frozen=True):
    sessions_ended: int


@post("/api/auth/register", status_code=201, tags=["auth"], opt=AUTH_LIMIT)
async def register(data: Register, request: Req, kernel: Kernel) -> TokenPair:
    """Join the tenant named by X-Tenant-ID, with an invitation or where sign-up is open."""
    tenant = await current_tenant(request)
    return await kernel.identity.register(tenant, data, request_meta(request))


@post("/api/auth/login", status_code=200, tags=["auth"], opt=AUTH_LIMIT)
async def login(data: Login, request: Req, kernel: Kernel) -> TokenPair | MfaChallenge:
    """Exchange e-mail and password for tokens (or an MFA challenge). X-Tenant-ID picks the tenant."""
    return await kernel.identity.login(data, request.headers.get("x-tenant-id"), request_meta(request))


# The refresh cookie, for browsers (the console) that opt in with ``X-Refresh-Cookie: 1``: the
# refresh token then lives in an HttpOnly cookie no script can read, so a reload stays signed in
# without the token ever touching localStorage. SameSite=Strict keeps it off cross-site requests,
# and the custom header (a cross-origin request may only send it after a CORS preflight, which
# the API refuses unless an operator allowed that origin) is the CSRF guard. It is scoped to
# /api/auth, where only refresh and logout read it.
REFRESH_COOKIE = "businessos_refresh"
REFRESH_COOKIE_HEADER = "x-refresh-cookie"
_COOKIE_PATH = "/api/auth"


def _wants_cookie(request: Req) -> bool:
    return request.headers.get(REFRESH_COOKIE_HEADER, "").strip() == "1"


def _refresh_cookie(value: str, max_age: int) -> Cookie:
    return Cookie(
        key=REFRESH_COOKIE, value=value, path=_COOKIE_PATH, max_age=max_age, httponly=True, secure=True,
        samesite="strict",
    )


@post("/api/auth/refresh", status_code=200, tags=["auth"], opt=REFRESH_LIMIT)
async def refresh(request: Req, kernel: Kernel, data: RefreshRequest | None = None) -> Response[TokenPair]:
    """Rotate a refresh token. Presenting one already used ends its whole session family.

    With ``X-Refresh-Cookie: 1`` the token may come from the HttpOnly refresh cookie instead of
    the body, and the new one is set in that cookie and left out of the answer (``refresh_token``
    is empty): the browser keeps it, scripts never see it."""
    cookie = _wants_cookie(request)
    presented = data.refresh_token if data else (request.cookies.get(REFRESH_COOKIE) if cookie else None)
    if not presented:
        raise Unauthorized("no refresh token: send refresh_token (or the refresh cookie with X-Refresh-Cookie: 1)")
    pair = await kernel.identity.refresh(
        presented, request_meta(request), tenant_ref=request.headers.get("x-tenant-id")
    )
    if not cookie:
        return Response(pair)
    max_age = kernel.settings.refresh_token_days * 86400
    cookies = [_refresh_cookie(pair.refresh_token, max_age)]
    return Response(msgspec.structs.replace(pair, refresh_token=""), cookies=cookies)


@get("/api/auth/me", tags=["auth"], opt={"permission": AUTHENTICATED})
async def me(request: Req, kernel: Kernel) -> Me:
    """The signed-in user, their role and permissions here, and their memberships."""
    return await kernel.identity.me(_user(request))


@post("/api/auth/logout", status_code=200, tags=["auth"], opt={"permission": AUTHENTICATED})
async def logout(request: Req, kernel: Kernel, data: LogoutRequest | None = None) -> Response[SessionsEnded]:
    """End the session of the given refresh token (without one: all of the caller's sessions here).
    With ``X-Refresh-Cookie: 1`` the refresh cookie names the session, and is cleared."""
    cookie = _wants_cookie(request)
    token = data.refresh_token if data else (request.cookies.get(REFRESH_COOKIE) if cookie else None)
    ended = SessionsEnded(await kernel.identity.logout(_user(request), token, request_meta(request)))
    return Response(ended, cookies=[_refresh_cookie("", 0)] if cookie else [])


@post("/api/auth/password", status_code=204, tags=["auth"], opt={"permission": AUTHENTICATED})
async def change_password(data: PasswordChange, request: Req, kernel: Kernel) -> None:
    """Change the password; every other session of the user ends."""
    await kernel.identity.change_password(
        _user(request), data.current_password, data.new_password, data.refresh_token, request_meta(request)
    )


@post("/api/auth/switch-tenant", status_code=200, tags=["auth"], opt={"permission": AUTHENTICATED})
async def switch_tenant(data: SwitchTenant, request: Req, kernel: Kernel) -> TokenPair:
    """New tokens for another tenant the user belongs to."""
    return await kernel.identity.switch_tenant(_user(request), data.tenant, request_meta(request))


@get("/.well-known/jwks.json", tags=["auth"], opt={"permission": PUBLIC})
async def jwks(kernel: Kernel) -> dict[str, list[dict[str, str]]]:
    """The public keys that verify our access tokens."""
    return kernel.keys.jwks()


@post(
    "/api/tenant/invitations",
    status_code=201,
    tags=["tenants"],
    opt={"permission": "kernel.invitations.write", "no_store": True},
)
async def invite(data: InvitationCreate, request: Req, kernel: Kernel) -> Invitation:
    """Invite someone by e-mail; the token in the answer is shown once."""
    return await kernel.identity.invite(_user(request), data, request_meta(request))


PageNumber = Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="1-based page number")]
PageSize = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="rows per page")]


@get("/api/tenant/members", tags=["tenants"], opt={"permission": "kernel.members.read"})
async def list_members(tenant: Tenant, kernel: Kernel, page: PageNumber = 1, limit: PageSize = 20) -> MemberList:
    """The tenant's members (e-mail, name, role, when they joined, last log-in), longest-standing first."""
    return await kernel.access.list_members(tenant.id, page, limit)


@put(
    "/api/tenant/members/{user_id:uuid}",
    tags=["tenants"],
    opt={"permission": "kernel.members.write"},
)
async def set_member_role(user_id: uuid.UUID, data: MemberRoleUpdate, request: Req, kernel: Kernel) -> MemberInfo:
    """Give a member another role (never the owner's, never one that may do more than you)."""
    return await kernel.access.set_member_role(_principal(request), user_id, data.role, request_meta(request))


@delete(
    "/api/tenant/members/{user_id:uuid}",
    status_code=204,
    tags=["tenants"],
    opt={"permission": "kernel.members.write"},
)
async def remove_member(user_id: uuid.UUID, request: Req, kernel: Kernel) -> None:
    """Remove a member (not the owner); their sessions in this tenant end at once."""
    await kernel.access.remove_member(_principal(request), user_id, request_meta(request))


@get("/api/roles", tags=["roles"], opt={"permission": "kernel.roles.read"})
async def list_roles(tenant: Tenant, kernel: Kernel) -> RoleList:
    """Every role's permissions in this tenant, and every permission there is."""
    return await kernel.access.role_list(tenant.id)


@put("/api/roles/{role:str}", tags=["roles"], opt={"permission": "kernel.roles.write"})
async def update_role(role: str, data: RoleUpdate, request: Req, kernel: Kernel) -> RoleGrants:
    """Replace what a role may do in this tenant (not the owner's)."""
    return await kernel.access.set_role(_principal(request), role, data.permissions, request_meta(request))


@post(
    "/api/api-keys",
    status_code=201,
    tags=["api-keys"],
    opt={"permission": "kernel.api_keys.write", "no_store": True},
)
async def create_api_key(data: ApiKeyCreate, request: Req, kernel: Kernel) -> ApiKeyCreated:
    """A new API key with a role or scopes; its secret appears in this answer only."""
    return await kernel.access.create_api_key(_principal(request), data, request_meta(request))


@get("/api/api-keys", tags=["api-keys"], opt={"permission": "kernel.api_keys.read"})
async def list_api_keys(tenant: Tenant, kernel: Kernel) -> ApiKeyList:
    """The tenant's API keys: prefix, role or scopes, last use. Never the secret."""
    return ApiKeyList(api_keys=await kernel.access.list_api_keys(tenant.id))


@delete(
    "/api/api-keys/{key_id:uuid}",
    status_code=204,
    tags=["api-keys"],
    opt={"permission": "kernel.api_keys.write"},
)
async def revoke_api_key(key_id: uuid.UUID, request: Req, kernel: Kernel) -> None:
    """Revoke an API key at once, in every API process."""
    await kernel.access.revoke_api_key(_principal(request), key_id, request_meta(request))


handlers = [
    register,
    login,
    refresh,
    me,
    logout,
    change_password,
    switch_tenant,
    jwks,
    invite,
    list_members,
    set_member_role,
    remove_member,
    list_roles,
    update_role,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    *mfa_handlers,
]
