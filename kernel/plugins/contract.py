"""The data a plugin declares: its manifest and what its hooks return.

These types are re-exported by ``kernel.sdk``; plugins never import this module directly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from kernel.context import Kernel
    from kernel.plugins.services import Services

__all__ = [
    "PLUGIN_NAME",
    "EventContext",
    "EventHandler",
    "EventType",
    "LifespanFactory",
    "Manifest",
    "NodeSpec",
    "Permission",
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
    title: str = ""
    description: str = ""


class Permission(msgspec.Struct, frozen=True):
    """A permission a plugin's routes can require: ``<plugin>.<resource>.<verb>``."""

    name: str
    description: str = ""


class EventType(msgspec.Struct, frozen=True):
    """A domain event a plugin emits: ``<plugin>.<entity>.<verb>``."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class EventContext:
    """What an event handler receives: the event and the kernel's service handles."""

    tenant_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    kernel: Kernel = field(repr=False)
    services: Services = field(repr=False)
    """The handler's plugin's facade."""
    event_id: uuid.UUID | None = None
    """The outbox row's id: the same on every delivery of one event, for idempotent handlers."""


@dataclass(frozen=True)
class EventHandler:
    """Run ``handler`` for each ``event`` of a tenant that enabled the handler's plugin."""

    event: str
    handler: Callable[[EventContext], Awaitable[None]]
    name: str = ""
    """Names the handler in its deliveries (``<plugin>:<name>``); defaults to the function's
    qualified name. Keep it stable: renaming it orphans the deliveries still pending."""


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
    run: Callable[..., Awaitable[Any]] | None = field(default=None, compare=False)
    """For actions: the coroutine that performs it (the workflow engine calls it)."""


LifespanFactory = Callable[[], AbstractAsyncContextManager[None]]
