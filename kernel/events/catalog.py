"""The kernel's own domain events, and the catalogue of every event type there is.

The kernel names its events like a plugin named ``kernel`` would: ``kernel.<entity>.<verb>``
(``kernel.tenant.created``, ``kernel.module.enabled``). That is the ``<plugin>.<entity>.<verb>``
rule plugins follow, with the namespace the kernel already owns for its permissions; no plugin can
be called ``kernel``, so no plugin event can collide with one of these, and a handler can tell at a
glance whose event it reacts to.

Each event's payload is a msgspec Struct: ids, names and roles, never a secret (no token, key or
password, not even a hash of one). :func:`publish` records it through the outbox in the caller's
transaction, so the event exists exactly when the change committed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

import msgspec
from litestar import Request, get
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.events.outbox import emit
from kernel.identity.permissions import AUTHENTICATED
from kernel.plugins.contract import EventType
from kernel.plugins.loader import PluginSet

__all__ = [
    "KERNEL_EVENT_TYPES",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "ConnectionBroken",
    "EventTypeInfo",
    "EventTypeList",
    "InvitationAccepted",
    "InvitationCreated",
    "KernelEvent",
    "MemberAdded",
    "MemberRemoved",
    "MemberRoleChanged",
    "ModuleDisabled",
    "ModuleEnabled",
    "ModulePurged",
    "TenantActivated",
    "TenantCreated",
    "TenantSuspended",
    "event_catalog",
    "list_event_types",
    "publish",
]


class KernelEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the kernel's event payloads; ``event`` is the name they are recorded under."""

    event: ClassVar[str]
    description: ClassVar[str]
    actor: str | None = None
    """Who caused it: ``user:<id>``, ``api_key:<id>``, ``cli``; ``None`` when unknown."""


class TenantCreated(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.tenant.created"
    description = "A tenant was created (its owner, if any, joins in the same transaction)."
    tenant_id: uuid.UUID
    name: str
    slug: str
    plan: str


class TenantSuspended(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.tenant.suspended"
    description = "The tenant was suspended: its requests are refused until it is activated."
    tenant_id: uuid.UUID
    slug: str


class TenantActivated(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.tenant.activated"
    description = "A suspended tenant was activated again."
    tenant_id: uuid.UUID
    slug: str


class ModuleEnabled(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.module.enabled"
    description = "A module was enabled for the tenant (one event per module, dependencies included)."
    module: str
    requested: str
    """The module the caller asked for; differs from ``module`` when this one came as a dependency."""


class ModuleDisabled(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.module.disabled"
    description = "A module was disabled for the tenant; its data is kept."
    module: str


class ModulePurged(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.module.purged"
    description = "The tenant's data of a disabled module was deleted."
    module: str
    deleted: dict[str, int]
    """Rows deleted, per table."""


class MemberAdded(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.member.added"
    description = "A user became a member of the tenant (its owner at creation, or by registering)."
    user_id: uuid.UUID
    role: str
    via: str
    """``tenant_creation``, ``invitation`` or ``open_signup``."""


class MemberRemoved(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.member.removed"
    description = "A user stopped being a member of the tenant."
    user_id: uuid.UUID
    role: str


class MemberRoleChanged(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.member.role_changed"
    description = "A member's role in the tenant changed."
    user_id: uuid.UUID
    role: str
    previous_role: str


class ApiKeyCreated(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.api_key.created"
    description = "An API key was created (its id, name and display prefix; never the key)."
    api_key_id: uuid.UUID
    name: str
    prefix: str
    role: str | None
    scopes: list[str] | None
    expires_at: datetime | None


class ApiKeyRevoked(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.api_key.revoked"
    description = "An API key was revoked."
    api_key_id: uuid.UUID
    name: str
    prefix: str


class InvitationCreated(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.invitation.created"
    description = "Someone was invited by e-mail (never the invitation's token)."
    invitation_id: uuid.UUID
    email: str
    role: str
    expires_at: datetime


class InvitationAccepted(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.invitation.accepted"
    description = "An invitation was used to join the tenant."
    invitation_id: uuid.UUID
    user_id: uuid.UUID
    role: str


class ConnectionBroken(KernelEvent, frozen=True, kw_only=True):
    event = "kernel.connection.broken"
    description = (
        "A connection stopped working: refreshing its OAuth 2.0 token failed. Nodes using it fail "
        "until it is authorized again (never a credential, only what failed)."
    )
    connection_id: uuid.UUID
    name: str
    type: str
    reason: str


_PAYLOADS: tuple[type[KernelEvent], ...] = (
    TenantCreated,
    TenantSuspended,
    TenantActivated,
    ModuleEnabled,
    ModuleDisabled,
    ModulePurged,
    MemberAdded,
    MemberRemoved,
    MemberRoleChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    InvitationCreated,
    InvitationAccepted,
    ConnectionBroken,
)

KERNEL_EVENT_TYPES: tuple[EventType, ...] = tuple(
    EventType(p.event, p.description, payload=p) for p in _PAYLOADS
)
"""Every event the kernel emits, declared like a plugin's."""


async def publish(session: AsyncSession, tenant_id: uuid.UUID, payload: KernelEvent) -> uuid.UUID:
    """Record ``payload`` as its event for ``tenant_id`` in ``session``'s transaction (one whose
    row-level security names ``tenant_id``)."""
    body: dict[str, Any] = msgspec.to_builtins(payload)
    return await emit(session, tenant_id=tenant_id, event=payload.event, payload=body)


# -- the catalogue -----------------------------------------------------------------------------


class EventTypeInfo(msgspec.Struct, frozen=True):
    name: str
    source: str
    """``kernel`` or the plugin that declares it."""
    description: str
    payload_schema: dict[str, Any] | None
    """JSON Schema of the payload; ``None`` when its declarer gave no payload type."""


class EventTypeList(msgspec.Struct, frozen=True):
    event_types: list[EventTypeInfo]


def _info(event: EventType, source: str) -> EventTypeInfo:
    schema = msgspec.json.schema(event.payload) if event.payload is not None else None
    return EventTypeInfo(name=event.name, source=source, description=event.description, payload_schema=schema)


def event_catalog(plugins: PluginSet) -> EventTypeList:
    """The kernel's event types and those of every active plugin, sorted by name."""
    found = [_info(e, "kernel") for e in KERNEL_EVENT_TYPES]
    found += [_info(e, r.name) for r in plugins.active() for e in r.event_types]
    return EventTypeList(event_types=sorted(found, key=lambda e: e.name))


@get("/api/events/types", tags=["events"], opt={"permission": AUTHENTICATED})
async def list_event_types(request: Request[Any, Any, Any]) -> EventTypeList:
    """Every event type (the kernel's and each loaded plugin's) with its payload's JSON Schema."""
    state = request.app.state
    catalog: EventTypeList | None = state.get("event_catalog")
    if catalog is None:  # an app's plugins never change: build it once
        catalog = state["event_catalog"] = event_catalog(state["kernel"].plugins)
    return catalog
