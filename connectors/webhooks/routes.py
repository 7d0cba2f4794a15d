"""HTTP routes under ``/api/webhooks``: parse, call the service in one tenant transaction, answer.

Lists answer ``{"<things>": [...], "pagination": {...}}`` (``page``, ``limit`` up to 100,
``sort`` ``created_at`` or ``-created_at``); another tenant's ids answer 404.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from litestar import Request, Response, delete, get, patch, post

from connectors.webhooks import delivery, logbook, service
from connectors.webhooks import schemas as s
from kernel import sdk

__all__ = ["ROUTES"]

READ = "webhooks.subscriptions.read"
WRITE = "webhooks.subscriptions.write"
BASE = "/api/webhooks/subscriptions"


def _log(services: sdk.Services, request: Request[Any, Any, Any], tenant: sdk.Tenant) -> sdk.ChangeLog:
    return services.changes.by(sdk.Actor.of_request(request), tenant.id)


@post(BASE, opt={"permission": WRITE}, tags=["webhooks"])
async def create_subscription(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.SubscriptionCreate
) -> s.SubscriptionCreated:
    """Subscribe a URL to event types. The answer holds the signing secret, shown only now."""
    async with services.data.tenant(tenant.id) as session:
        return await service.create(session, services, _log(services, request, tenant), data)


@get(BASE, opt={"permission": READ}, tags=["webhooks"])
async def list_subscriptions(
    tenant: sdk.Tenant, services: sdk.Services, page: int = 1, limit: int = 20, sort: str = "-created_at",
    enabled: bool | None = None,
) -> s.SubscriptionPage:
    """The tenant's subscriptions, newest first by default."""
    async with services.data.tenant(tenant.id) as session:
        rows, total = await service.list_subscriptions(session, page=page, limit=limit, sort=sort, enabled=enabled)
    return s.SubscriptionPage(subscriptions=rows, pagination=sdk.Pagination.of(page, limit, total))


@get(BASE + "/{subscription_id:uuid}", opt={"permission": READ}, tags=["webhooks"])
async def get_subscription(
    tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID
) -> Response[s.SubscriptionOut]:
    async with services.data.tenant(tenant.id) as session:
        out = service.to_out(await service.get(session, subscription_id))
    return Response(out, headers={"ETag": sdk.etag(out.version)})


@patch(BASE + "/{subscription_id:uuid}", opt={"permission": WRITE}, tags=["webhooks"])
async def update_subscription(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID,
    data: s.SubscriptionUpdate,
) -> Response[s.SubscriptionOut]:
    """Change the URL, event types, filter, description or enabled flag; ``If-Match`` (or
    ``version``) is checked when given."""
    if_match = sdk.parse_if_match(request.headers.get("if-match"))
    async with services.data.tenant(tenant.id) as session:
        out = await service.update_subscription(
            session, services, _log(services, request, tenant), subscription_id, data, if_match
        )
    return Response(out, headers={"ETag": sdk.etag(out.version)})


@delete(BASE + "/{subscription_id:uuid}", opt={"permission": WRITE}, tags=["webhooks"])
async def delete_subscription(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID
) -> None:
    """Delete the subscription with its delivery log and secrets."""
    async with services.data.tenant(tenant.id) as session:
        await service.delete(session, services, _log(services, request, tenant), subscription_id)


@post(BASE + "/{subscription_id:uuid}/rotate-secret", opt={"permission": WRITE}, tags=["webhooks"], status_code=200)
async def rotate_secret(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID
) -> s.SecretRotated:
    """A new secret, shown only now; until ``previous_secret_until`` deliveries carry a signature
    by each secret (Standard Webhooks: space-separated ``v1,`` signatures)."""
    async with services.data.tenant(tenant.id) as session:
        return await service.rotate_secret(session, services, _log(services, request, tenant), subscription_id)


@post(BASE + "/{subscription_id:uuid}/enable", opt={"permission": WRITE}, tags=["webhooks"], status_code=200)
async def enable_subscription(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID
) -> s.SubscriptionOut:
    """Enable a subscription again (after an automatic disable, say); its failure streak restarts."""
    async with services.data.tenant(tenant.id) as session:
        return await service.reenable(session, _log(services, request, tenant), subscription_id)


@get(BASE + "/{subscription_id:uuid}/deliveries", opt={"permission": READ}, tags=["webhooks"])
async def list_deliveries(
    tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID, page: int = 1, limit: int = 20,
    sort: str = "-created_at", status: str | None = None, event_type: str | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> s.DeliveryPage:
    """The subscription's deliveries; ``status`` (pending, running, succeeded, failed),
    ``event_type`` and ``[since, until)`` (creation time) filter them."""
    async with services.data.tenant(tenant.id) as session:
        rows, total = await logbook.list_deliveries(
            session, subscription_id, page=page, limit=limit, sort=sort, status=status, event_type=event_type,
            since=since, until=until,
        )
    return s.DeliveryPage(deliveries=rows, pagination=sdk.Pagination.of(page, limit, total))


@get(BASE + "/{subscription_id:uuid}/attempts", opt={"permission": READ}, tags=["webhooks"])
async def list_attempts(
    tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID, page: int = 1, limit: int = 20,
    sort: str = "-created_at", succeeded: bool | None = None, since: datetime | None = None,
    until: datetime | None = None,
) -> s.AttemptPage:
    """The subscription's attempts, with request and response (truncated)."""
    async with services.data.tenant(tenant.id) as session:
        rows, total = await logbook.list_attempts(
            session, subscription_id, page=page, limit=limit, sort=sort, succeeded=succeeded, since=since,
            until=until,
        )
    return s.AttemptPage(attempts=rows, pagination=sdk.Pagination.of(page, limit, total))


@post(BASE + "/{subscription_id:uuid}/replay", opt={"permission": WRITE}, tags=["webhooks"], status_code=202)
async def replay(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, subscription_id: uuid.UUID,
    data: s.ReplayCreate,
) -> s.ReplayOut:
    """Re-send every event of the subscription's types that occurred in ``[from, to)``."""
    async with services.data.tenant(tenant.id) as session:
        out, made = await logbook.replay(session, _log(services, request, tenant), subscription_id, data)
    await delivery.enqueue_attempts(services, tenant.id, [(d, 0) for d in made])
    return out


@get("/api/webhooks/deliveries/{delivery_id:uuid}", opt={"permission": READ}, tags=["webhooks"])
async def get_delivery(tenant: sdk.Tenant, services: sdk.Services, delivery_id: uuid.UUID) -> s.DeliveryDetail:
    """One delivery with every attempt."""
    async with services.data.tenant(tenant.id) as session:
        return await logbook.get_delivery(session, delivery_id)


@post(
    "/api/webhooks/deliveries/{delivery_id:uuid}/redeliver", opt={"permission": WRITE}, tags=["webhooks"],
    status_code=202,
)
async def redeliver(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, delivery_id: uuid.UUID
) -> s.DeliveryOut:
    """Send a finished delivery again, from the first step of the schedule."""
    async with services.data.tenant(tenant.id) as session:
        out = await logbook.redeliver(session, _log(services, request, tenant), delivery_id)
    await delivery.enqueue_attempts(services, tenant.id, [(out.id, 0)])
    return out


ROUTES = [
    create_subscription, list_subscriptions, get_subscription, update_subscription, delete_subscription,
    rotate_secret, enable_subscription, list_deliveries, list_attempts, replay, get_delivery, redeliver,
]
