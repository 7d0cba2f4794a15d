"""The data a plugin declares: its manifest and what its hooks return.

These types are re-exported by ``kernel.sdk``; plugins never import this module directly.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

if TYPE_CHECKING:
    from kernel.errors import FieldError
    from kernel.plugins.services import Actor, Services

__all__ = [
    "PLUGIN_NAME",
    "EventContext",
    "EventHandler",
    "EventType",
    "JobContext",
    "JobSpec",
    "LifespanFactory",
    "Manifest",
    "NodeContext",
    "NodeRunner",
    "NodeSpec",
    "Permission",
    "Schedule",
    "SettingsCheck",
    "StepJournal",
]

PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """Who a plugin is and what it needs. Exposed as the ``manifest`` attribute of the object the
    ``businessos.plugins`` entry point names."""

    name: str
    """Namespace of everything the plugin contributes: ``/api/<name>``, ``<name>_*`` tables,
    ``<name>.*`` permissions, events and node keys. Must equal the entry point's name."""
    version: str
    kernel_api: str
    """PEP 440 specifier of the kernel API versions it works with, e.g. ``">=1.0,<2"``."""
    depends_on: tuple[str, ...] = ()
    always_enabled: bool = False
    """An installation-level module (billing): enabled for every tenant from creation, its routes
    and event handlers live for all, and no tenant can disable it."""
    title: str = ""
    description: str = ""


class Permission(msgspec.Struct, frozen=True):
    """A permission a plugin's routes can require: ``<plugin>.<resource>.<verb>``."""

    name: str
    description: str = ""
    roles: tuple[str, ...] | None = None
    """The roles holding it until a tenant edits its grants, e.g. ``("admin",)`` for a moderation
    right (the owner holds every permission). ``None``: members hold it, viewers too when it ends
    in ``.read``."""


class EventType(msgspec.Struct, frozen=True):
    """A domain event a plugin emits: ``<plugin>.<entity>.<verb>``."""

    name: str
    description: str = ""
    payload: type[msgspec.Struct] | None = None
    """The payload's msgspec Struct; ``GET /api/events/types`` publishes its JSON Schema."""


@dataclass(frozen=True)
class EventContext:
    """What an event handler receives: the event and its plugin's facade."""

    tenant_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    services: Services = field(repr=False)
    """The handler's plugin's facade."""
    event_id: uuid.UUID | None = None
    """The outbox row's id: the same on every delivery of one event, for idempotent handlers."""


@dataclass(frozen=True)
class EventHandler:
    """Run ``handler`` for each ``event`` of a tenant that enabled the handler's plugin."""

    event: str
    """The event's name, or ``"*"`` for every event (one delivery per event for this handler)."""
    handler: Callable[[EventContext], Awaitable[None]]
    name: str = ""
    """Names the handler in its deliveries (``<plugin>:<name>``); defaults to the function's
    qualified name. Keep it stable: renaming it orphans the deliveries still pending."""
    accepts: Callable[[str], bool] | None = None
    """Optional, for ``"*"`` handlers: a cheap test of the event's name; an event it refuses gets
    no delivery for this handler at all (no row, no job). Must not change its answer for an event
    name while the process runs (it decides when the event is dispatched)."""
    batch: Callable[[Sequence[EventContext]], Awaitable[None]] | None = None
    """Optional: runs several deliveries of this handler for one tenant in one call (what
    ``handler`` does for each, with fewer round trips). Its exception fails them all; each is then
    retried on its own, with ``handler``. Both must be idempotent per event id."""


class SettingsCheck(Protocol):
    """``await check(services, tenant_id, settings)``: what the settings schema alone cannot judge
    (a connection id that must be one of the tenant's own, say). ``settings`` is the plugin's
    Struct, already valid in shape; the answer is the field errors (empty: they may be saved)."""

    def __call__(
        self, services: Services, tenant_id: uuid.UUID, settings: Any, /
    ) -> Awaitable[Sequence[FieldError]]: ...


class StepJournal(Protocol):
    """Checkpoints inside one step, kept by the workflow engine: ``await journal.step(name, work)``
    runs ``work()`` and stores its (JSON-able) result under ``name``; on a later attempt of the
    same step it returns the stored result without running ``work`` again."""

    def step(self, name: str, work: Callable[[], Awaitable[Any]], /) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class NodeContext:
    """What a node runner receives besides its configuration: where in which workflow run it is,
    as whom it acts, and its plugin's facade."""

    tenant_id: uuid.UUID
    execution_id: uuid.UUID
    """The workflow run."""
    step_id: str
    """The step within the run's workflow."""
    attempt: int
    """1 on the first try, 2 on the first retry, ..."""
    actor: Actor
    """The principal the workflow runs as: the audit log's actor of what the node changes."""
    services: Services = field(repr=False)
    logger: logging.Logger = field(repr=False, default_factory=lambda: logging.getLogger("businessos.nodes"))
    iteration: str = "0"
    """Which pass of the step: ``"0"`` outside loops, the item's index inside a for-each body
    (``"3"``; ``"3.7"`` in a nested one)."""
    journal: StepJournal | None = field(default=None, repr=False)
    """The engine's checkpoints within this step (``None`` outside a durable run): a node doing
    several side effects in one step (an agent's tool calls) runs each through it."""

    @property
    def idempotency_key(self) -> str:
        """``<execution>:<step>:<iteration>``: the same on every attempt of one step of one run
        (and different for any other step, iteration or run): a node that calls out passes it on
        so that a retry does not act twice."""
        return f"{self.execution_id}:{self.step_id}:{self.iteration}"


class NodeRunner(Protocol):
    """An action's work: ``await run(ctx, config)`` returns the node's output (an instance of its
    ``output`` Struct), raising an ``sdk.Problem`` to fail the step."""

    def __call__(self, ctx: NodeContext, config: Any, /) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class NodeSpec:
    """A workflow node: an action a workflow can run or a trigger that can start one."""

    key: str
    """``<plugin>.<node>``."""
    kind: Literal["action", "trigger"]
    title: str
    description: str = ""
    config: type[msgspec.Struct] | None = None
    """Schema of the node's configuration; ``None`` when it takes none."""
    output: type[msgspec.Struct] | None = None
    """Schema of what the node hands to the next steps: an action's result, a trigger's payload."""
    run: NodeRunner | None = field(default=None, compare=False)
    """For actions: the runner the workflow engine calls."""
    event: str | None = None
    """For triggers: the event type that starts the workflow."""
    filter: Callable[[Any, dict[str, Any]], bool] | None = field(default=None, compare=False)
    """For triggers: ``filter(config, payload)``, whether this event starts the workflow (``None``:
    every event of the type does)."""
    permission: str | None = None
    """For actions: the permission the workflow's principal needs to run it (a step of a workflow
    whose principal lacks it fails with 403): ``crm.contacts.write`` for ``crm.create_contact``."""
    ports: tuple[str, ...] = ("main",)
    """The output ports edges may leave from (``("true", "false")`` for an if); ``"*"`` accepts
    any name, for ports its config names (a switch's cases). ``error`` is added for a node whose
    step sets ``on_error="port"``."""


@dataclass(frozen=True)
class JobContext:
    """What a job function receives."""

    name: str
    """The job's ``<plugin>.<job>`` name."""
    tenant_id: uuid.UUID | None
    """The tenant it was enqueued for; ``None`` for installation-wide work (schedules)."""
    payload: dict[str, Any]
    services: Services = field(repr=False)
    """The job's plugin's facade."""
    job_id: str
    """arq's job id: the same on every attempt of one job."""
    attempt: int
    """1 for the first run, 2 for the first retry, ..."""


@dataclass(frozen=True)
class JobSpec:
    """A background job a plugin runs in the worker: ``services.jobs.enqueue(name, ...)``.

    ``run`` may run more than once for one enqueue (at least once: a worker killed mid-run, a
    retry after an exception), so it must be idempotent. An exception is retried up to
    ``max_attempts`` in all, with exponential backoff and jitter; ``timeout`` cancels a run."""

    name: str
    """``<plugin>.<job>``."""
    run: Callable[[JobContext], Awaitable[Any]] = field(compare=False)
    max_attempts: int = 3
    timeout: float = 300.0


@dataclass(frozen=True)
class Schedule:
    """Enqueue the plugin's job ``job`` at every tick of ``cron`` (five fields) in ``timezone``
    (an IANA name; DST is honoured: a tick in a skipped hour runs at its end, one in a repeated
    hour runs once). Each tick runs once however many workers run: its job id names the tick."""

    name: str
    """``<plugin>.<schedule>``."""
    cron: str
    job: str
    """A ``<plugin>.<job>`` the same plugin declares."""
    timezone: str = "UTC"
    payload: dict[str, Any] = field(default_factory=dict, compare=False)


LifespanFactory = Callable[..., AbstractAsyncContextManager[None]]
"""``factory()`` or ``factory(services)``: a factory taking one parameter receives the plugin's
``sdk.Services`` of the process (to start consumers or clients that need the facade)."""


def open_lifespan(factory: LifespanFactory, services: Services) -> AbstractAsyncContextManager[None]:
    """The plugin's lifespan context, given ``services`` when its factory takes a parameter."""
    import inspect

    try:
        wants = len(inspect.signature(factory).parameters) >= 1
    except (TypeError, ValueError):
        wants = False
    return factory(services) if wants else factory()
