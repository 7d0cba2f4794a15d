"""``/api/connections``: a tenant's connections to outside services, and their OAuth 2.0 dance.

``POST /api/connections/{id}/test`` answers 200 whether or not the check passes: the test ran, and
its answer says ``ok`` or the problem the check raised (status, title, detail, field errors). A
connection the test cannot even open (unknown id: 404) is an error of the request itself.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from litestar import Request, Response, delete, get, patch, post
from litestar.params import Parameter
from litestar.response import Redirect

from kernel.audit.log import request_meta
from kernel.connections.schemas import (
    CheckResult,
    ConnectionCreate,
    ConnectionList,
    ConnectionUpdate,
    ConnectionView,
    CredentialTypeList,
    OAuthStart,
    OAuthStarted,
)
from kernel.context import Kernel
from kernel.errors import FieldError, Unprocessable
from kernel.http.openapi import PROBLEMS_OPT
from kernel.http.ratelimit import AUTH_POLICY, RATE_LIMIT_OPT
from kernel.identity.auth import SKIP_AUTHENTICATION
from kernel.identity.permissions import PUBLIC
from kernel.listing import Pagination
from kernel.plugins.services import Actor
from kernel.tenants.schemas import Tenant

__all__ = ["CALLBACK_PATH", "handlers"]

READ = "kernel.connections.read"
WRITE = "kernel.connections.write"
CALLBACK_PATH = "/api/connections/oauth/callback"
_TAGS = ["connections"]


@get("/api/connections/types", tags=_TAGS, opt={"permission": READ})
async def list_credential_types(kernel: Kernel, tenant: Tenant) -> CredentialTypeList:
    """The credential types of the modules this tenant enabled, with their JSON Schemas."""
    return await kernel.connections.types(tenant.id)


@get("/api/connections", tags=_TAGS, opt={"permission": READ})
async def list_connections(
    kernel: Kernel, tenant: Tenant, page: int = 1, limit: int = 50, sort: str = "name", type: str | None = None
) -> ConnectionList:
    """The tenant's connections (``sort``: ``name``, ``-name``, ``created_at``, ``-created_at``)."""
    rows, total = await kernel.connections.list_page(tenant.id, page=page, limit=limit, sort=sort, type=type)
    return ConnectionList(connections=rows, pagination=Pagination.of(page, limit, total))


@post("/api/connections", tags=_TAGS, opt={"permission": WRITE, "no_store": True, PROBLEMS_OPT: (409,)})
async def create_connection(
    data: ConnectionCreate, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> ConnectionView:
    """Store credentials of a type (sealed); the answer masks every secret."""
    return await kernel.connections.create(tenant.id, data, Actor.of_request(request))


@get("/api/connections/{connection_id:uuid}", tags=_TAGS, opt={"permission": READ})
async def get_connection(connection_id: uuid.UUID, kernel: Kernel, tenant: Tenant) -> ConnectionView:
    return await kernel.connections.get(tenant.id, connection_id)


@patch(
    "/api/connections/{connection_id:uuid}", tags=_TAGS,
    opt={"permission": WRITE, "no_store": True, PROBLEMS_OPT: (409,)},
)
async def update_connection(
    connection_id: uuid.UUID, data: ConnectionUpdate, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> ConnectionView:
    """Rename it, or replace its credentials (which makes a broken connection active again)."""
    return await kernel.connections.update(tenant.id, connection_id, data, Actor.of_request(request))


@delete("/api/connections/{connection_id:uuid}", tags=_TAGS, opt={"permission": WRITE, PROBLEMS_OPT: (409,)})
async def delete_connection(
    connection_id: uuid.UUID, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> None:
    """Delete it; 409 naming what uses it (``used_by``) while anything does."""
    await kernel.connections.delete(tenant.id, connection_id, Actor.of_request(request))


@post("/api/connections/{connection_id:uuid}/test", tags=_TAGS, opt={"permission": WRITE}, status_code=200)
async def test_connection(
    connection_id: uuid.UUID, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> CheckResult:
    """Run the type's check: ``{"ok": true}`` or ``{"ok": false, "error": {...}}`` saying what failed."""
    return await kernel.connections.test(tenant.id, connection_id, Actor.of_request(request))


@post(
    "/api/connections/oauth/start", tags=_TAGS, status_code=200,
    opt={"permission": WRITE, "no_store": True, PROBLEMS_OPT: (409,)},
)
async def start_oauth(
    data: OAuthStart, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> OAuthStarted:
    """Begin an OAuth 2.0 authorization (code grant, PKCE): send the browser to ``authorize_url``."""
    callback = str(request.base_url).rstrip("/") + CALLBACK_PATH
    return await kernel.connections.start_oauth(tenant.id, data, Actor.of_request(request), callback)


@get(
    CALLBACK_PATH, tags=_TAGS,
    opt={
        "permission": PUBLIC, SKIP_AUTHENTICATION: True, RATE_LIMIT_OPT: AUTH_POLICY, "no_store": True,
        PROBLEMS_OPT: (404, 409, 502),
    },
)
async def oauth_callback(
    kernel: Kernel, request: Request[Any, Any, Any], code: str | None = None, error: str | None = None,
    oauth_state: Annotated[str, Parameter(query="state")] = "",  # "state" is Litestar's own keyword
) -> Response[Any]:
    """Where the provider sends the browser back: exchanges the code (once per state) and stores the
    tokens sealed. With a ``redirect`` given at the start, answers 303 to it with ``connection_id``
    or ``error`` added; otherwise the connection as JSON (or a 422 problem naming ``code``). An
    unknown, expired or used state answers 404."""
    view, redirect, failure = await kernel.connections.finish_oauth(oauth_state, code, error, request_meta(request))
    if redirect:
        extra = {"connection_id": str(view.id)} if view is not None else {"error": failure or "failed"}
        parts = urlsplit(redirect)
        query = "&".join(p for p in (parts.query, urlencode(extra)) if p)
        return Redirect(urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment)), status_code=303)
    if view is None:
        raise Unprocessable(
            f"the authorization failed: {failure}", errors=[FieldError("code", failure or "failed")],
            extra={"error": failure},
        )
    return Response(content=view, status_code=200)


handlers = [
    list_credential_types,
    list_connections,
    create_connection,
    get_connection,
    update_connection,
    delete_connection,
    test_connection,
    start_oauth,
    oauth_callback,
]
