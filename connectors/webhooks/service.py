"""Subscriptions: create, change, rotate the secret, enable, delete; which events each one gets.

Each function runs in the caller's ``services.data.tenant`` session (row-level security keeps it
to that tenant, so another tenant's ids are simply not found: 404) and audits through
``services.changes``. Secrets are made here, sealed in the vault and shown once.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from connectors.webhooks import schemas as s
from connectors.webhooks.models import Subscription
from kernel import sdk

__all__ = [
    "SORTS",
    "check_event_types",
    "create",
    "delete",
    "get",
    "list_subscriptions",
    "matches",
    "new_secret",
    "passes_filter",
    "reenable",
    "rotate_secret",
    "secret_name",
    "to_out",
    "update_subscription",
]

PLUGIN = "webhooks"
SORTS = {"created_at": ("created_at",), "-created_at": ("-created_at",)}
_MISSING = object()


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64 (as Svix makes them)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_name(subscription_id: uuid.UUID, version: int) -> str:
    """The vault name of a subscription's secret of one version."""
    return f"subscription.{subscription_id}.v{version}"


# -- matching ------------------------------------------------------------------------------------


def matches(event_types: Iterable[str], event: str) -> bool:
    """Whether ``event`` is one of ``event_types``: an exact name or a ``<prefix>.*`` pattern."""
    return any(wanted == event or (wanted.endswith(".*") and event.startswith(wanted[:-1])) for wanted in event_types)


def _at(payload: Any, path: str) -> Any:
    value = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    # JSON equality: a boolean is not a number, 1 equals 1.0, objects and arrays compare deeply.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def passes_filter(filter_: Mapping[str, Any] | None, payload: Any) -> bool:
    """Whether ``payload`` passes a subscription's filter (see ``schemas``)."""
    if not filter_:
        return True
    return all(_same(_at(payload, path), value) for path, value in filter_.items())


def check_event_types(services: sdk.Services, event_types: list[str]) -> list[str]:
    """The names, deduplicated in order; 422 naming ``event_types`` for one the catalogue lacks."""
    known = services.event_types()
    bad = []
    for name in event_types:
        if name.endswith(".*"):
            prefix = name[:-1]
            if len(prefix) < 2 or not any(k.startswith(prefix) for k in known):
                bad.append(name)
        elif name not in known:
            bad.append(name)
    if bad:
        raise sdk.Unprocessable(
            "unknown event types",
            errors=[sdk.FieldError("event_types", f"not in the event catalogue (GET /api/events/types): {n}")
                    for n in bad],
        )
    return list(dict.fromkeys(event_types))


# -- shapes --------------------------------------------------------------------------------------


def to_out(row: Subscription) -> s.SubscriptionOut:
    return s.SubscriptionOut(
        id=row.id, url=row.url, event_types=list(row.event_types), filter=row.filter, description=row.description,
        enabled=row.enabled, disabled_reason=row.disabled_reason, failing_since=row.failing_since,
        previous_secret_until=row.previous_secret_until, version=row.version, created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _event_view(out: s.SubscriptionOut) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(out)
    view.pop("filter", None)  # a filter may quote payload values: keep events and audit to the shape
    return view


# -- the operations ------------------------------------------------------------------------------


async def get(session: AsyncSession, subscription_id: uuid.UUID, *, lock: bool = False) -> Subscription:
    stmt = select(Subscription).where(Subscription.id == subscription_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.scalars(stmt)).first()
    if row is None:
        raise sdk.NotFound("no such subscription")
    return row


async def list_subscriptions(
    session: AsyncSession, *, page: int, limit: int, sort: str, enabled: bool | None
) -> tuple[list[s.SubscriptionOut], int]:
    sdk.check_list(page, limit, sort, SORTS)
    stmt: Select[Any] = select(Subscription)
    if enabled is not None:
        stmt = stmt.where(Subscription.enabled.is_(enabled))
    order: list[ColumnElement[Any]] = (
        [Subscription.created_at.desc(), Subscription.id.desc()] if sort.startswith("-")
        else [Subscription.created_at.asc(), Subscription.id.asc()]
    )
    rows, total = await sdk.list_and_count(session, stmt, order, page, limit)
    return [to_out(r) for r in rows], total


async def create(
    session: AsyncSession, services: sdk.Services, log: sdk.ChangeLog, data: s.SubscriptionCreate
) -> s.SubscriptionCreated:
    """A new subscription and its secret (returned once). The URL is judged by the egress rules
    now (422 naming ``url``) and again at every attempt."""
    event_types = check_event_types(services, data.event_types)
    await services.http.check(data.url, field="url")
    row = Subscription(
        tenant_id=log.tenant_id, id=sdk.uuid7(), url=data.url, event_types=event_types, filter=data.filter,
        description=data.description, enabled=data.enabled, version=1, secret_version=1, updated_at=sdk.utcnow(),
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    secret = new_secret()
    await services.vault.put(log.tenant_id, secret_name(row.id, 1), secret, actor=log.actor, session=session)
    out = to_out(row)
    await log.record(session, "webhooks.subscription.created", row.id, after=_event_view(out))
    return s.SubscriptionCreated(**msgspec.structs.asdict(out), secret=secret)


async def update_subscription(
    session: AsyncSession, services: sdk.Services, log: sdk.ChangeLog, subscription_id: uuid.UUID,
    data: s.SubscriptionUpdate, if_match: int | None,
) -> s.SubscriptionOut:
    row = await get(session, subscription_id, lock=True)
    sdk.check_version(row.version, if_match, data.version or None, required=False)
    before = _event_view(to_out(row))
    if data.url is not msgspec.UNSET:
        await services.http.check(data.url, field="url")
        row.url = data.url
    if data.event_types is not msgspec.UNSET:
        row.event_types = check_event_types(services, data.event_types)
    if data.filter is not msgspec.UNSET:
        row.filter = data.filter
    if data.description is not msgspec.UNSET:
        row.description = data.description
    if data.enabled is not msgspec.UNSET and data.enabled != row.enabled:
        row.enabled = data.enabled
        row.disabled_reason = None if data.enabled else "disabled by a user"
        row.failing_since = None
    row.version += 1
    row.updated_at = sdk.utcnow()
    await session.flush()
    out = to_out(row)
    await log.record(session, "webhooks.subscription.updated", row.id, before=before, after=_event_view(out))
    return out


async def reenable(session: AsyncSession, log: sdk.ChangeLog, subscription_id: uuid.UUID) -> s.SubscriptionOut:
    """Enable a disabled subscription (its failure streak starts over); enabled ones answer as is."""
    row = await get(session, subscription_id, lock=True)
    if row.enabled:
        return to_out(row)
    before = _event_view(to_out(row))
    row.enabled, row.disabled_reason, row.failing_since = True, None, None
    row.version += 1
    row.updated_at = sdk.utcnow()
    await session.flush()
    out = to_out(row)
    await log.record(session, "webhooks.subscription.enabled", row.id, before=before, after=_event_view(out))
    return out


async def rotate_secret(
    session: AsyncSession, services: sdk.Services, log: sdk.ChangeLog, subscription_id: uuid.UUID
) -> s.SecretRotated:
    """A new secret; the old one keeps signing beside it for the tenant's ``rotation_hours``."""
    settings: s.WebhookSettings = await services.settings(log.tenant_id)
    row = await get(session, subscription_id, lock=True)
    old, older = row.secret_version, row.previous_secret_version
    secret = new_secret()
    await services.vault.put(log.tenant_id, secret_name(row.id, old + 1), secret, actor=log.actor, session=session)
    if older is not None:
        await services.vault.delete(log.tenant_id, secret_name(row.id, older), actor=log.actor, session=session)
    now = datetime.now(UTC)
    row.secret_version = old + 1
    row.previous_secret_version = old
    row.previous_secret_until = now + timedelta(hours=settings.rotation_hours)
    row.version += 1
    row.updated_at = now
    await session.flush()
    await log.record(
        session, "webhooks.subscription.secret_rotated", row.id,
        after={"id": str(row.id), "previous_secret_until": row.previous_secret_until.isoformat()},
    )
    return s.SecretRotated(id=row.id, secret=secret, previous_secret_until=row.previous_secret_until)


async def delete(
    session: AsyncSession, services: sdk.Services, log: sdk.ChangeLog, subscription_id: uuid.UUID
) -> None:
    """Delete a subscription, its deliveries and attempts, and its secrets."""
    row = await get(session, subscription_id, lock=True)
    before = _event_view(to_out(row))
    for version in {row.secret_version, row.previous_secret_version} - {None}:
        assert version is not None
        await services.vault.delete(log.tenant_id, secret_name(row.id, version), actor=log.actor, session=session)
    await session.delete(row)
    await session.flush()
    await log.record(session, "webhooks.subscription.deleted", subscription_id, before=before)


async def disable_failing(
    session: AsyncSession, log: sdk.ChangeLog, subscription_id: uuid.UUID, days: int
) -> bool:
    """Disable the subscription when it has failed continuously for ``days``; whether it did."""
    row = (
        await session.scalars(
            update(Subscription)
            .where(
                Subscription.id == subscription_id, Subscription.enabled.is_(True),
                Subscription.failing_since <= func.now() - timedelta(days=days),
            )
            .values(
                enabled=False, version=Subscription.version + 1, updated_at=func.now(),
                disabled_reason=f"every attempt failed for {days} days",
            )
            .returning(Subscription)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if row is None:
        return False
    await log.record(session, "webhooks.subscription.disabled", row.id, after=_event_view(to_out(row)))
    return True
