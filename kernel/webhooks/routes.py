"""``/hooks/<plugin>/<token>``: where senders deliver a plugin's inbound webhooks.

The route is public and reads no credentials (a sender's own ``Authorization`` header is none of
ours); the tenant is the one the token names, found by the token's hash under that tenant's
row-level security. In order: find the live endpoint (else 404), check that the plugin is loaded,
declares the endpoint's route, and is enabled for an active tenant (else the same 404), spend one
request from the token's rate-limit bucket, run the plugin's handler with the raw body, and audit
the delivery (``webhook.received``) with its outcome. Every 404 is the same answer, so a sender
learns nothing about tokens it does not hold.

What a token opens, the tenant and its modules come from per-process caches that every change
drops at once (``kernel.webhooks``, ``kernel.tenants``, ``kernel.modules``). The audit row is
committed before the answer goes out, through the group-committing ``kernel.audit`` writer.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from litestar import Request, Response, route
from redis.exceptions import RedisError

from kernel.audit.log import Entry, request_meta
from kernel.context import Kernel
from kernel.errors import NotFound, Problem, TooManyRequests
from kernel.http.ratelimit import DEFAULT_PERIOD, EXEMPT_POLICY, RATE_LIMIT_OPT, check, ip_bucket
from kernel.identity.auth import SKIP_AUTHENTICATION
from kernel.identity.permissions import PUBLIC
from kernel.webhooks.contract import InboundWebhook, WebhookReply
from kernel.webhooks.service import HOOKS_PREFIX, LiveEndpoint

__all__ = ["receive_webhook"]

log = logging.getLogger("businessos.webhooks")

# Unknown tokens per client address and minute, as a multiple of the strict auth limit.
BAD_TOKEN_FACTOR = 6
_MAX_TOKEN = 200


def _gone() -> NotFound:
    return NotFound("no such webhook endpoint")


async def _count_bad_token(kernel: Kernel, client_ip: str | None) -> None:
    """Guessing tokens costs the guesser, as guessing API keys does."""
    try:
        await check(
            kernel.limiter, ip_bucket("badhook", client_ip),
            kernel.settings.auth_rate_limit_per_minute * BAD_TOKEN_FACTOR, DEFAULT_PERIOD,
        )
    except RedisError:
        log.warning("rate limiter unavailable while counting an unknown webhook token")


def _response(reply: WebhookReply | None) -> Response[Any]:
    if reply is None:
        return Response(content=None, status_code=204)
    content = reply.content
    if content is None:
        return Response(content=None, status_code=reply.status, headers=dict(reply.headers))
    if isinstance(content, bytes | str):
        media = reply.media_type or ("text/plain" if isinstance(content, str) else "application/octet-stream")
        return Response(content=content, status_code=reply.status, headers=dict(reply.headers), media_type=media)
    return Response(
        content=msgspec.json.encode(content), status_code=reply.status, headers=dict(reply.headers),
        media_type=reply.media_type or "application/json",
    )


async def _audit(
    kernel: Kernel, request: Request[Any, Any, Any], endpoint: LiveEndpoint, status: int, result: str
) -> None:
    await kernel.audit.append(endpoint.tenant_id, Entry(
        actor=f"webhook:{endpoint.id}", action="webhook.received", resource_type="webhook.endpoint",
        resource_id=str(endpoint.id), result=result, meta=request_meta(request),
        details={"plugin": endpoint.plugin, "name": endpoint.name, "status": status, "method": request.method},
    ))


@route(
    HOOKS_PREFIX + "/{plugin:str}/{token:str}",
    http_method=["GET", "POST", "PUT"],
    tags=["webhooks"],
    opt={"permission": PUBLIC, RATE_LIMIT_OPT: EXEMPT_POLICY, SKIP_AUTHENTICATION: True},
)
async def receive_webhook(plugin: str, token: str, request: Request[Any, Any, Any], kernel: Kernel) -> Response[Any]:
    """Deliver a webhook to the plugin endpoint the token names (see the module docstring)."""
    state = request.scope["state"]
    record_ = kernel.plugins.get(plugin)
    routes = {w.name: w for w in record_.webhooks} if record_ is not None and record_.active else {}
    endpoint = await kernel.webhooks.find(plugin, token) if routes and len(token) <= _MAX_TOKEN else None
    if endpoint is None:
        await _count_bad_token(kernel, state.get("client_ip"))
        raise _gone()
    tenant = await kernel.tenants.find(str(endpoint.tenant_id))
    handler = routes.get(endpoint.name)
    if (
        tenant is None
        or tenant.status != "active"
        or handler is None
        or plugin not in await kernel.modules.enabled(tenant.id)
    ):
        raise _gone()
    try:
        decision = await kernel.limiter.hit(
            f"hook:{endpoint.token_hash.hex()}", kernel.settings.rate_limit_per_minute, DEFAULT_PERIOD
        )
    except RedisError as exc:
        log.warning("rate limiter unavailable, webhook let through: %s", type(exc).__name__)
    else:
        state["rate_limit"] = decision
        if not decision.allowed:
            raise TooManyRequests(
                f"rate limit exceeded: retry in {max(1, math.ceil(decision.retry_after))} s",
                headers=decision.headers(),
            )
    state["tenant"] = tenant
    hook = InboundWebhook(
        tenant_id=endpoint.tenant_id,
        endpoint_id=endpoint.id,
        name=endpoint.name,
        method=request.method,
        headers={k.lower(): v for k, v in request.headers.items()},
        query={k: v for k, v in request.query_params.items()},
        body=await request.body(),
        services=kernel.services(plugin),
    )
    try:
        reply = await handler.handler(hook)
    except Problem as exc:
        await _audit(kernel, request, endpoint, exc.status, "rejected" if exc.status < 500 else "error")
        raise
    except Exception:
        await _audit(kernel, request, endpoint, 500, "error")
        raise
    response = _response(reply)
    await _audit(kernel, request, endpoint, response.status_code or 200, "success")
    return response
