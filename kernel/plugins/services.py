"""The facade a plugin works through: ``sdk.Services``.

A plugin never holds the kernel object. Route handlers (as the ``services`` dependency), event
handlers, node runners and CLI commands (``sdk.open_services``) each receive one
:class:`Services` bound to the plugin. Every attribute is a small class documented here and
re-exported by ``kernel.sdk``; together they are what ``KERNEL_API_VERSION`` promises.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import msgspec
from litestar.connection import ASGIConnection
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.audit.log import RequestMeta, request_meta
from kernel.audit.log import record as audit_record
from kernel.connections.facade import Connections
from kernel.db.reader import Reader
from kernel.entitlements import Entitlements
from kernel.events.outbox import emit, emit_many
from kernel.http.ratelimit import ApiCalls
from kernel.identity.access import is_member
from kernel.identity.principal import Principal, principal_of
from kernel.jobs.facade import Jobs
from kernel.plugins.nodes import Nodes
from kernel.tenants.schemas import Tenant
from kernel.vault.service import Vault
from kernel.webhooks.service import Webhooks

if TYPE_CHECKING:
    from kernel.ai.proxy import AIProxy, Caller, PreparedCall
    from kernel.context import Kernel

__all__ = ["AI", "AIAnswer", "Actor", "ChangeLog", "Changes", "ChatOptions", "Data", "Members", "Services", "Tenants"]


@dataclass(frozen=True)
class Actor:
    """Who acted, as the audit log and the AI ledger name them.

    Build one from a request (:meth:`of_request`: its principal and request id, IP, user agent)
    or for work nobody requested directly (:meth:`system`: ``"workflow"``, ``"cli"``, a job).
    """

    name: str | None
    """``user:<id>``, ``api_key:<id>``, ``workflow``, ``cli``...; ``None`` for an anonymous request."""
    meta: RequestMeta = field(default_factory=RequestMeta)
    principal: Principal | None = None
    """The authenticated caller behind a request (its permissions and user id), if any."""
    _state: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of_request(cls, request: ASGIConnection[Any, Any, Any, Any]) -> Actor:
        """The principal of ``request`` and where it came from."""
        principal = principal_of(request)
        state = request.scope.get("state")
        return cls(
            name=principal.actor if principal is not None else None,
            meta=request_meta(request),
            principal=principal,
            _state=state if isinstance(state, dict) else None,
        )

    @classmethod
    def system(cls, name: str, *, user_agent: str | None = None, principal: Principal | None = None) -> Actor:
        """An actor no request stands behind: ``Actor.system("workflow")``, ``Actor.system("cli")``."""
        return cls(name=name, meta=RequestMeta(user_agent=user_agent), principal=principal)

    def _audited(self) -> None:
        # The request wrote its own audit row: the safety net must not add a generic one.
        if self._state is not None:
            self._state["audited"] = True


def _jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=str)


class Changes:
    """Audit and events of a plugin's changes, written in the caller's transaction.

    Names follow the plugin's namespace: events ``<plugin>.<entity>.<verb>``, audit resource
    types ``<plugin>.<entity>``. A name outside it is a programming error (``ValueError``).
    """

    def __init__(self, plugin: str) -> None:
        self._prefix = plugin + "."

    def _own(self, name: str, what: str) -> None:
        if not name.startswith(self._prefix) or name.count(".") < 2:
            raise ValueError(f"{what} {name!r} is not named {self._prefix}<entity>.<verb>")

    async def record(
        self,
        session: AsyncSession,
        actor: Actor,
        *,
        tenant_id: uuid.UUID,
        event: str,
        resource_id: uuid.UUID | str,
        before: Any = None,
        after: Any = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one change: an audit row (action ``event``, resource type ``event`` without its
        verb, ``before``/``after`` as JSON) and the event ``event`` whose payload is the new state,
        or ``{"id": ...}`` once deleted. Both commit or roll back with ``session``, which must be a
        ``services.data.tenant(tenant_id)`` session. Structs, dataclasses and dicts are accepted."""
        self._own(event, "event")
        old = _jsonable(before) if before is not None else None
        new = _jsonable(after) if after is not None else None
        await self.audit(
            session, actor, tenant_id=tenant_id, action=event, resource_type=event.rsplit(".", 1)[0],
            resource_id=str(resource_id), before=old, after=new, details=details,
        )
        payload = new if new is not None else {"id": str(resource_id)}
        await emit(session, tenant_id=tenant_id, event=event, payload=payload)

    async def audit(
        self,
        session: AsyncSession,
        actor: Actor,
        *,
        tenant_id: uuid.UUID,
        action: str,
        resource_type: str | None = None,
        resource_id: uuid.UUID | str | None = None,
        result: str = "success",
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """An audit row without an event (a bulk import's summary, a refused attempt)."""
        self._own(action, "action")
        actor._audited()
        await audit_record(
            session, tenant_id=tenant_id, actor=actor.name, action=action, resource_type=resource_type,
            resource_id=str(resource_id) if resource_id is not None else None, result=result, meta=actor.meta,
            before=dict(before) if before is not None else None, after=dict(after) if after is not None else None,
            details=dict(details) if details is not None else None,
        )

    async def emit(self, session: AsyncSession, *, tenant_id: uuid.UUID, event: str, payload: Any) -> uuid.UUID:
        """An event without an audit row (its change was audited otherwise); returns its id."""
        self._own(event, "event")
        return await emit(session, tenant_id=tenant_id, event=event, payload=_jsonable(payload))

    async def emit_many(
        self, session: AsyncSession, *, tenant_id: uuid.UUID, events: Sequence[tuple[str, Any]]
    ) -> None:
        """Several ``(event, payload)`` pairs without audit rows, in one statement (a consumer
        recording a batch of messages)."""
        for event, _ in events:
            self._own(event, "event")
        await emit_many(session, tenant_id=tenant_id, events=[(event, _jsonable(payload)) for event, payload in events])

    def by(self, actor: Actor, tenant_id: uuid.UUID) -> ChangeLog:
        """These methods with ``actor`` and ``tenant_id`` bound, for service code that passes one
        "who and where" through many functions."""
        return ChangeLog(self, actor, tenant_id)


@dataclass(frozen=True)
class ChangeLog:
    """:class:`Changes` of one actor in one tenant (``services.changes.by(actor, tenant_id)``)."""

    changes: Changes = field(repr=False)
    actor: Actor
    tenant_id: uuid.UUID

    @property
    def name(self) -> str | None:
        """The actor's name as the audit log writes it."""
        return self.actor.name

    async def record(
        self, session: AsyncSession, event: str, resource_id: uuid.UUID | str, *, before: Any = None,
        after: Any = None, details: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`Changes.record`."""
        await self.changes.record(
            session, self.actor, tenant_id=self.tenant_id, event=event, resource_id=resource_id, before=before,
            after=after, details=details,
        )

    async def audit(
        self, session: AsyncSession, *, action: str, resource_type: str | None = None,
        resource_id: uuid.UUID | str | None = None, result: str = "success", before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None, details: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`Changes.audit`."""
        await self.changes.audit(
            session, self.actor, tenant_id=self.tenant_id, action=action, resource_type=resource_type,
            resource_id=resource_id, result=result, before=before, after=after, details=details,
        )

    async def emit(self, session: AsyncSession, *, event: str, payload: Any) -> uuid.UUID:
        """:meth:`Changes.emit`."""
        return await self.changes.emit(session, tenant_id=self.tenant_id, event=event, payload=payload)


class Data:
    """Tenant transactions and the read path."""

    def __init__(self, kernel: Kernel) -> None:
        self._db = kernel.db

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
        """One transaction whose every query row-level security scopes to ``tenant_id``; it
        commits when the block ends without an exception and rolls back otherwise."""
        async with self._db.tenant(tenant_id) as session:
            yield session

    @asynccontextmanager
    async def untenanted(self) -> AsyncIterator[AsyncSession]:
        """One transaction with no tenant set, for the plugin's installation-level tables (a
        catalogue, a number sequence) and cross-tenant work queues. Tenant tables answer nothing in
        it, except where a policy of the plugin's own table opens the table to a setting the plugin
        sets in this transaction (the workflow engine's claim, billing's due index). Commits as
        :meth:`tenant` does."""
        async with self._db.global_() as session:
            yield session

    @asynccontextmanager
    async def read(self, tenant_id: uuid.UUID) -> AsyncIterator[Reader]:
        """A read-only transaction for hot list endpoints: compiled ``sdk.Query`` statements on a
        plain asyncpg connection, same role and row-level security, fewer round trips."""
        async with self._db.read(tenant_id) as reader:
            yield reader


class Members:
    """Who belongs to the tenant, and who is calling."""

    def __init__(self, kernel: Kernel | None = None) -> None:
        self._kernel = kernel

    async def is_member(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        """Whether ``user_id`` is a member of the tenant ``session`` is scoped to."""
        return await is_member(session, user_id)

    def principal_of(self, request: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
        """The authenticated user or API key behind ``request`` (``None`` on a public route)."""
        return principal_of(request)

    async def api_key(self, tenant_id: uuid.UUID, key_id: uuid.UUID) -> Principal | None:
        """The principal an API key of the tenant acts as (its scopes, or its role's current
        permissions), or ``None`` when the tenant has no such key or it is revoked or expired."""
        assert self._kernel is not None
        return await self._kernel.access.key_by_id(tenant_id, key_id)

    async def member(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Principal | None:
        """The principal a member of the tenant acts as now (their role's current permissions),
        or ``None`` when the user is not a member."""
        assert self._kernel is not None
        return await self._kernel.access.member_principal(tenant_id, user_id)


class Tenants:
    """Finding a tenant outside a request (CLI commands, jobs)."""

    def __init__(self, kernel: Kernel, plugin: str) -> None:
        self._kernel = kernel
        self._plugin = plugin

    async def find(self, ref: str) -> Tenant | None:
        """The tenant with this id or slug, if any."""
        return await self._kernel.tenants.find(ref)

    async def enabled(self, tenant_id: uuid.UUID) -> bool:
        """Whether the tenant has this plugin's module enabled."""
        return self._plugin in await self._kernel.modules.enabled(tenant_id)

    async def enabled_ids(self) -> list[uuid.UUID]:
        """The active tenants that have this plugin's module enabled, oldest first: for
        background work a plugin runs per tenant (a message consumer per configured tenant).
        Reads every tenant's (cached) module list, so call it now and then, not per request."""
        from sqlalchemy import select

        from kernel.tenants.models import TenantRow

        async with self._kernel.db.global_() as session:
            rows = await session.execute(
                select(TenantRow.id).where(TenantRow.status == "active").order_by(TenantRow.created_at, TenantRow.id)
            )
            ids = list(rows.scalars())
        return [tenant_id for tenant_id in ids if await self.enabled(tenant_id)]

    async def set_status(self, tenant_id: uuid.UUID, status: str, actor: Actor) -> Tenant:
        """Suspend (``"suspended"``) or reactivate (``"active"``) the tenant, as the operator's
        ``/api/admin/tenants/{id}/suspend`` does: audited as ``tenant.status.updated`` by
        ``actor``, ``kernel.tenant.suspended``/``activated`` emitted. For billing's dunning."""
        if status not in ("active", "suspended"):
            raise ValueError(f"status {status!r} is not active or suspended")
        return await self._kernel.tenants.set_status(
            str(tenant_id), "active" if status == "active" else "suspended", actor=actor.name, meta=actor.meta
        )

    async def set_plan(self, tenant_id: uuid.UUID, plan: str, actor: Actor) -> Tenant:
        """Record the tenant's plan code (what ``GET /api/tenants/current`` shows and entitlement
        queries carry), as the operator's ``PUT /api/admin/tenants/{id}/plan`` does: audited as
        ``tenant.plan.updated`` by ``actor``. For billing, whose subscription decides the plan."""
        return await self._kernel.tenants.set_plan(str(tenant_id), plan, actor=actor.name, meta=actor.meta)


class ChatOptions(TypedDict, total=False):
    """The options of :meth:`AI.chat` and :meth:`AI.stream`, all optional."""

    model: str | None
    """``None`` (the default): the tenant's default model."""
    max_tokens: int | None
    temperature: float | None
    object_type: str | None
    """The business object the call is for, ``<plugin>.<entity>``; the ledger row names it."""
    object_id: uuid.UUID | str | None
    tools: list[dict[str, Any]] | None
    """OpenAI-style function tools (``{"type": "function", "function": {name, description,
    parameters}}``); the model's calls come back in :attr:`AIAnswer.tool_calls` (``chat`` only:
    ``stream`` yields text and drops tool calls)."""
    tool_choice: Any
    response_format: dict[str, Any] | None
    """``{"type": "json_object"}`` (or a ``json_schema`` one) where the provider supports it."""


@dataclass(frozen=True)
class AIAnswer:
    """A finished AI call: the text and what it was metered at."""

    content: str
    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The model's tool calls, ``{"id", "type": "function", "function": {"name", "arguments"}}``
    (``arguments`` a JSON string, as the provider sent it)."""


class AI:
    """AI calls of a plugin, through the kernel's proxy: the tenant's keys, models and budgets.

    Each call is reserved against the tenant's budget first (a 402/429 problem when it is spent),
    and its ledger row names the plugin as the caller (surface ``plugin:<name>``), the actor and,
    when given, the business object it was made for (``object_type`` ``<plugin>.<entity>`` and
    ``object_id``).
    """

    def __init__(self, kernel: Kernel, plugin: str) -> None:
        self._kernel = kernel
        self._plugin = plugin

    @property
    def _proxy(self) -> AIProxy:
        return self._kernel.ai

    def _caller(self, tenant_id: uuid.UUID, actor: Actor) -> Caller:
        from kernel.ai.proxy import Caller

        return Caller(tenant_id=tenant_id, principal=actor.principal, meta=actor.meta, surface=f"plugin:{self._plugin}")

    def _object(self, object_type: str | None) -> None:
        if object_type is not None and not object_type.startswith(self._plugin + "."):
            raise ValueError(f"object_type {object_type!r} is not named {self._plugin}.<entity>")

    async def _prepare(
        self, tenant_id: uuid.UUID, actor: Actor, messages: list[dict[str, Any]], stream: bool, options: ChatOptions
    ) -> PreparedCall:
        from kernel.ai.proxy import ChatParams

        self._object(options.get("object_type"))
        object_id = options.get("object_id")
        params = ChatParams(
            messages=messages, stream=stream, model=options.get("model"), max_tokens=options.get("max_tokens"),
            temperature=options.get("temperature"), object_type=options.get("object_type"),
            object_id=str(object_id) if object_id is not None else None, tools=options.get("tools"),
            tool_choice=options.get("tool_choice"), response_format=options.get("response_format"),
        )
        return await self._proxy.prepare(self._caller(tenant_id, actor), params)

    async def chat(
        self, tenant_id: uuid.UUID, actor: Actor, messages: list[dict[str, Any]], **options: Unpack[ChatOptions]
    ) -> AIAnswer:
        """One chat completion, as ``actor`` (its principal's budget counts too)."""
        done = await self._proxy.complete(await self._prepare(tenant_id, actor, messages, False, options))
        return AIAnswer(
            content=str(done.message.get("content") or ""), model=done.model, finish_reason=done.finish_reason,
            prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens, cost=done.cost,
            tool_calls=list(done.message.get("tool_calls") or []),
        )

    async def stream(
        self, tenant_id: uuid.UUID, actor: Actor, messages: list[dict[str, Any]], **options: Unpack[ChatOptions]
    ) -> AsyncIterator[str]:
        """A streamed chat completion: its text in pieces. Provider errors raise here, before the
        first piece; the call is metered when the iterator ends or is closed."""
        call = await self._prepare(tenant_id, actor, messages, True, options)
        return _texts(await self._proxy.open_stream(call))

    async def embed(
        self,
        tenant_id: uuid.UUID,
        actor: Actor,
        inputs: list[str],
        *,
        model: str,
        object_type: str | None = None,
        object_id: uuid.UUID | str | None = None,
    ) -> list[list[float]]:
        """One embedding vector per input, in order."""
        self._object(object_type)
        vectors, _ = await self._proxy.embed(
            self._caller(tenant_id, actor), model, inputs,
            object_type=object_type, object_id=str(object_id) if object_id is not None else None,
        )
        return vectors


async def _texts(pieces: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for piece in pieces:
        if piece.content:
            yield piece.content


class Services:
    """Everything a plugin may use of the running platform, bound to one plugin."""

    def __init__(self, kernel: Kernel, plugin: str) -> None:
        self.plugin = plugin
        """The plugin these services are bound to (its settings, its audit and event names)."""
        self._kernel = kernel
        self.data = Data(kernel)
        self.members = Members(kernel)
        self.changes = Changes(plugin)
        self.ai = AI(kernel, plugin)
        self.tenants = Tenants(kernel, plugin)
        self.vault = Vault(kernel.db, kernel.box, plugin)
        self.webhooks = Webhooks(kernel.db, kernel.plugins, plugin, kernel.webhooks)
        self.entitlements = Entitlements(kernel.entitlements, plugin)
        self.jobs = Jobs(kernel, plugin)
        self.http = kernel.egress
        self.connections = Connections(kernel, plugin)
        """The tenants' connections of this plugin's credential types (``open`` them in a node)."""
        self.nodes = Nodes(kernel)
        """The tenant's workflow node catalogue, and running one node as a step (``sdk.Nodes``)."""
        self.api_calls = ApiCalls(kernel.redis)
        """The API calls of tenants' principals counted by the rate limiter, to meter (billing)."""

    def event_types(self) -> list[str]:
        """Names of every declared event type, the kernel's and each loaded plugin's: the
        catalogue ``GET /api/events/types`` lists (to check a subscription's event names)."""
        from kernel.events.catalog import KERNEL_EVENT_TYPES

        names = {event.name for event in KERNEL_EVENT_TYPES}
        names.update(event.name for record in self._kernel.plugins.active() for event in record.event_types)
        return sorted(names)

    async def settings(self, tenant_id: uuid.UUID) -> Any:
        """The tenant's settings for this plugin, decoded into its settings Struct (defaults
        filled in). A plugin without a settings schema gets a 404 problem."""
        record = self._kernel.plugins.get(self.plugin)
        values = await self._kernel.modules.get_settings(tenant_id, self.plugin)
        assert record is not None and record.settings_schema is not None
        return msgspec.convert(values, record.settings_schema)
