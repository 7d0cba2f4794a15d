"""The node catalogue and the one way to run a node: ``services.nodes`` (``sdk.Nodes``).

Every plugin declares nodes (``businessos_workflow_nodes``); a tenant sees and runs those of the
plugins it enabled, and only those. Running a node converts its config to the node's Struct (422
naming the field), checks that the actor holds the permission the node declares (403), and calls
the runner with a :class:`NodeContext` bound to the node's OWN plugin's facade, so that a
workflow step acts with that plugin's audit and event names, not the caller's.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from kernel.errors import FieldError, Forbidden, NotFound, Unprocessable
from kernel.plugins.contract import NodeContext, NodeSpec, StepJournal

if TYPE_CHECKING:
    from kernel.context import Kernel
    from kernel.plugins.services import Actor

__all__ = ["CatalogueNode", "Nodes", "config_error"]

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": True}
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


@dataclass(frozen=True)
class CatalogueNode:
    """One node a tenant may use, as the catalogue lists it: its spec and JSON Schemas."""

    key: str
    """``<plugin>.<node>``."""
    kind: Literal["action", "trigger"]
    plugin: str
    title: str
    description: str
    config: type[msgspec.Struct] | None
    """The config Struct (``None``: the node takes any object)."""
    output: type[msgspec.Struct] | None
    config_schema: dict[str, Any]
    """``msgspec.json.schema`` of ``config`` (an open object without one)."""
    output_schema: dict[str, Any]
    event: str | None
    """For triggers: the event that starts a run."""
    ports: tuple[str, ...]
    """Output ports (``"*"``: any name its config gives)."""
    permission: str | None
    """What the principal running it needs (actions)."""
    spec: NodeSpec = field(repr=False, compare=False)

    @classmethod
    def of(cls, plugin: str, spec: NodeSpec) -> CatalogueNode:
        """The catalogue entry of ``plugin``'s node ``spec`` (its JSON Schemas computed)."""
        return cls(
            key=spec.key, kind=spec.kind, plugin=plugin, title=spec.title, description=spec.description,
            config=spec.config, output=spec.output, config_schema=_schema(spec.config),
            output_schema=_schema(spec.output), event=spec.event, ports=tuple(spec.ports),
            permission=spec.permission, spec=spec,
        )


def _schema(struct: type[msgspec.Struct] | None) -> dict[str, Any]:
    return msgspec.json.schema(struct) if struct is not None else dict(_EMPTY_SCHEMA)


def config_error(exc: msgspec.ValidationError, prefix: str = "config") -> FieldError:
    """A msgspec validation error as a field error: ``Expected `int`, got `str` - at `$.a[0]```
    becomes ``FieldError("config.a[0]", "Expected `int`, got `str`")``."""
    message = str(exc)
    match = _PATH.search(message)
    if match is None:
        return FieldError(field=prefix, message=message)
    return FieldError(field=prefix + match.group("path"), message=message[: match.start()])


class Nodes:
    """The tenant's node catalogue, and running one node as a workflow step."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._entries: dict[str, CatalogueNode] = {}

    def _all(self) -> dict[str, CatalogueNode]:
        """Every active plugin's nodes (their schemas computed once per process)."""
        if not self._entries:
            self._entries = {
                spec.key: CatalogueNode.of(record.name, spec)
                for record in self._kernel.plugins.active()
                for spec in record.nodes
            }
        return self._entries

    async def catalogue(self, tenant_id: uuid.UUID) -> list[CatalogueNode]:
        """The nodes of the plugins ``tenant_id`` enabled, in plugin then declaration order."""
        enabled = await self._kernel.modules.enabled(tenant_id)
        return [node for node in self._all().values() if node.plugin in enabled]

    async def get(self, tenant_id: uuid.UUID, key: str) -> CatalogueNode:
        """The node ``key`` if the tenant enabled its plugin; 404 naming it otherwise."""
        node = self._all().get(key)
        if node is None or node.plugin not in await self._kernel.modules.enabled(tenant_id):
            raise NotFound(f"no node {key!r} in this tenant's catalogue", extra={"node": key})
        return node

    def convert(self, node: CatalogueNode, config: Any, *, prefix: str = "config") -> Any:
        """``config`` converted to ``node``'s config Struct (422 naming the field)."""
        if node.config is None:
            return config
        try:
            return msgspec.convert(config if config is not None else {}, node.config, strict=False)
        except msgspec.ValidationError as exc:
            error = config_error(exc, prefix)
            raise Unprocessable(f"{node.key}: {error.field}: {error.message}", errors=[error]) from None

    @staticmethod
    def allowed(node: CatalogueNode, actor: Actor) -> bool:
        """Whether ``actor``'s principal holds what ``node`` needs (a node needing nothing runs
        for anyone; one needing a permission never runs without a principal)."""
        if node.permission is None:
            return True
        return actor.principal is not None and node.permission in actor.principal.permissions

    async def run(
        self,
        key: str,
        *,
        tenant_id: uuid.UUID,
        execution_id: uuid.UUID,
        step_id: str,
        attempt: int,
        actor: Actor,
        config: Any,
        journal: StepJournal | None = None,
        iteration: str = "0",
    ) -> Any:
        """Run the action ``key`` as one step: 404 when the tenant has not enabled its plugin,
        422 when it is not an action or ``config`` does not fit its Struct (the error names the
        field), 403 when ``actor`` lacks the node's permission; otherwise the runner's output
        (an instance of the node's ``output`` Struct) or the ``sdk.Problem`` it raised. ``journal``
        is the engine's checkpoints within the step, handed to the node (``ctx.journal``);
        ``iteration`` the step's pass (``ctx.iteration``: a for-each item's index)."""
        node = await self.get(tenant_id, key)
        if node.kind != "action" or node.spec.run is None:
            raise Unprocessable(
                f"{key} is a {node.kind} without a runner: only actions run as steps",
                errors=[FieldError(field="node", message="not a runnable action")],
            )
        converted = self.convert(node, config)
        if not self.allowed(node, actor):
            raise Forbidden(
                f"{key} needs the permission {node.permission!r}, which the workflow's principal lacks",
                extra={"permission": node.permission, "node": key},
            )
        ctx = NodeContext(
            tenant_id=tenant_id, execution_id=execution_id, step_id=step_id, attempt=attempt, actor=actor,
            services=self._kernel.services(node.plugin), journal=journal, iteration=iteration,
        )
        return await node.spec.run(ctx, converted)
