"""Authentication (who is calling) and authorization (may they call this route).

``AuthenticationMiddleware`` turns a bearer token or API key into a ``Principal`` in the
request's state, early, so that everything after it (rate limits, guards, audit) can see it.
``access_guard`` then applies, in this order: the route's declared permission (a route that
declares none is refused), authentication, the tenant binding, the module guard, the permission.

The operator area (``/api/admin`` and ``/metrics``, see :mod:`kernel.operators.access`) is apart:
there a credential is read as an operator token (or the scrape token), never as a tenant's, and
its routes need an operator whatever else they declare; no tenant is involved.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from redis.exceptions import RedisError

from kernel.audit.log import record, request_meta
from kernel.context import current_tenant, get_kernel
from kernel.errors import Forbidden, NotFound
from kernel.http.ratelimit import check, ip_bucket
from kernel.identity.access import API_KEY_KIND
from kernel.identity.permissions import AUTHENTICATED, OPERATOR, PUBLIC
from kernel.identity.principal import principal_of
from kernel.identity.service import Unauthorized
from kernel.identity.tokens import TokenError
from kernel.observability.logs import limit_repeats
from kernel.operators.access import (
    OPERATOR_AREA_OPT,
    authenticate_in_operator_area,
    in_operator_area,
    require_operator,
)

__all__ = ["SKIP_AUTHENTICATION", "AuthenticationMiddleware", "access_guard", "principal_of", "request_meta"]

log = logging.getLogger("businessos.auth")
# Without Redis every bad credential would warn: one line per interval.
limit_repeats(log, 10.0)

SKIP_AUTHENTICATION = "skip_authentication"
"""Route ``opt`` key: the middleware leaves the request's credentials unread (inbound webhooks,
whose ``Authorization`` header, if any, is the sender's business)."""

# Rejected tokens and keys per client address and minute, as a multiple of the strict auth limit
# (a client whose token just expired must not be locked out by its own retries).
BAD_CREDENTIALS_FACTOR = 6


def _credential(headers: dict[str, str]) -> tuple[str, str] | None:
    """("api_key" | "jwt", value) from ``Authorization: Bearer`` or ``X-API-Key``."""
    api_key = headers.get("x-api-key")
    if api_key:
        return "api_key", api_key.strip()
    authorization = headers.get("authorization")
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("use Authorization: Bearer <token>")
    value = value.strip()
    return ("api_key" if value.startswith(API_KEY_KIND + "_") else "jwt"), value


class AuthenticationMiddleware(ASGIMiddleware):
    scopes = ("http",)  # type: ignore[assignment]
    exclude_opt_key = SKIP_AUTHENTICATION

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        credential = _credential(headers)
        if credential is not None:
            kernel = scope["app"].state.kernel
            kind, value = credential
            principal = None
            try:
                if in_operator_area(scope["path"]):
                    # /api/admin and /metrics: only operator (or scrape) credentials count there.
                    await authenticate_in_operator_area(scope, kind, value)
                elif kind == "api_key":
                    principal = await kernel.access.api_key_principal(value)
                else:
                    claims = kernel.keys.verify(value)
                    principal = await kernel.access.user_principal(
                        claims.tenant_id, claims.user_id, mfa=claims.mfa
                    )
                    if principal is None:
                        raise TokenError("no longer a member of this tenant")
            except TokenError as exc:
                # Guessing keys or tokens costs the guesser: bad credentials are counted per address.
                # Without Redis the count is skipped (the answer is 401 either way; guessing a
                # key or a signed token is hopeless without the throttle too).
                try:
                    await check(
                        kernel.limiter, ip_bucket("badauth", scope.get("state", {}).get("client_ip")),
                        kernel.settings.auth_rate_limit_per_minute * BAD_CREDENTIALS_FACTOR, 60,
                    )
                except RedisError as redis_error:
                    log.warning("bad credentials not counted: %s", type(redis_error).__name__)
                raise Unauthorized(str(exc)) from None
            if principal is not None:
                scope.setdefault("state", {})["principal"] = principal
        await next_app(scope, receive, send)


async def access_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if set(getattr(handler, "http_methods", ())) == {"OPTIONS"}:
        return  # Litestar's automatic OPTIONS answer (CORS preflight): it runs no handler code
    permission = handler.opt.get("permission")
    if permission is None:
        if connection.scope["path"].startswith("/schema"):
            return  # the OpenAPI documents are public
        log.error("route %s declares no permission: refused", connection.scope["path"])
        raise Forbidden("this route declares no permission and is refused")
    if permission == OPERATOR or handler.opt.get(OPERATOR_AREA_OPT):
        require_operator(connection, handler)  # no tenant is involved: nothing else applies
        return
    principal = principal_of(connection)
    module = handler.opt.get("module")
    if principal is None and permission != PUBLIC:
        raise Unauthorized("authentication required")
    if module is None and permission == PUBLIC:
        return
    # A plugin's route, even a public one, answers only for tenants that enabled the plugin.
    tenant = await current_tenant(connection)
    kernel = get_kernel(connection)
    if module is not None and module not in await kernel.modules.enabled(tenant.id):
        raise NotFound(
            f"module {module!r} is not enabled for this tenant", extra={"module": module}
        )
    if permission in (PUBLIC, AUTHENTICATED) or (
        principal is not None and permission in principal.permissions
    ):
        return
    assert principal is not None
    async with kernel.db.tenant(tenant.id) as session:
        await record(
            session, tenant_id=tenant.id, actor=principal.actor, action="permission.denied",
            resource_type="route", resource_id=f"{connection.scope['method']} {connection.scope['path']}",  # type: ignore[typeddict-item]
            result="denied", meta=request_meta(connection), details={"permission": permission},
        )
    raise Forbidden(f"missing permission {permission}")
