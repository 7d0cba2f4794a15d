"""``/api/workflows/nodes``: the tenant's node catalogue, and testing one action without saving.

The catalogue lists the nodes of the plugins the tenant enabled (and only those), the workflows
plugin's own built-ins included, each with the JSON Schemas of its config and output, its ports,
the permission it needs and, for triggers, the event it starts on.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
from litestar import Request, get, post

from kernel import sdk
from plugins.workflows import expressions

__all__ = ["NODE_ROUTES", "NodeList", "NodeOut", "NodeTest", "NodeTestResult"]

READ = "workflows.definitions.read"
TEST = "workflows.nodes.test"
MAX_LIMIT = 500


class NodeOut(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    kind: Literal["action", "trigger"]
    plugin: str
    title: str
    description: str
    config_schema: dict[str, Any]
    output_schema: dict[str, Any]
    event: str | None
    """For triggers: the event that starts a run."""
    ports: list[str]
    permission: str | None
    """What the principal a workflow runs as needs to run this node."""
    allowed: bool
    """Whether the caller holds that permission (a workflow it publishes may run the node)."""


class NodeList(msgspec.Struct, frozen=True):
    nodes: list[NodeOut]
    pagination: sdk.Pagination


class NodeTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    """The node's config; its expressions are rendered against ``input``."""
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    """What the expressions read: ``trigger``, ``steps``, ``item``, ``index``, ``env``."""


class NodeTestResult(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    ok: bool
    config: dict[str, Any]
    """The config as the node received it (expressions rendered)."""
    output: Any = None
    error: dict[str, Any] | None = None
    """What the node raised: ``{"status", "title", "detail"}``."""
    duration_ms: float


def _out(node: sdk.CatalogueNode, principal: sdk.Principal | None) -> NodeOut:
    return NodeOut(
        key=node.key, kind=node.kind, plugin=node.plugin, title=node.title, description=node.description,
        config_schema=node.config_schema, output_schema=node.output_schema, event=node.event,
        ports=list(node.ports), permission=node.permission,
        allowed=node.permission is None or (principal is not None and node.permission in principal.permissions),
    )


@get("/api/workflows/nodes", opt={"permission": READ}, tags=["workflows"])
async def list_nodes(
    request: Request[Any, Any, Any],
    tenant: sdk.Tenant,
    services: sdk.Services,
    kind: Literal["action", "trigger"] | None = None,
    plugin: str | None = None,
    page: int = 1,
    limit: int = MAX_LIMIT,
) -> NodeList:
    """The nodes this tenant may use, in plugin then declaration order; ``kind`` and ``plugin``
    narrow the list (``limit`` up to 500: the whole catalogue fits one page)."""
    sdk.check_list(page, limit, "key", ["key"], max_limit=MAX_LIMIT)
    principal = services.members.principal_of(request)
    found = [
        n for n in await services.nodes.catalogue(tenant.id)
        if (kind is None or n.kind == kind) and (plugin is None or n.plugin == plugin)
    ]
    chosen = found[(page - 1) * limit : page * limit]
    return NodeList(nodes=[_out(n, principal) for n in chosen], pagination=sdk.Pagination.of(page, limit, len(found)))


@post("/api/workflows/nodes/{key:str}/test", opt={"permission": TEST}, tags=["workflows"], status_code=200)
async def test_node(
    key: str, request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: NodeTest
) -> NodeTestResult:
    """Run the action ``key`` once with ``config`` (expressions rendered against ``input``) as the
    caller, without a workflow. It acts for real: a create node creates. 404 for a node the
    tenant has not enabled, 422 for a trigger or a config that does not fit (naming the field),
    403 when the caller lacks the node's permission; what the node itself raises is answered
    with ``ok: false`` and the error, as a step would record it."""
    actor = sdk.Actor.of_request(request)
    node = await services.nodes.get(tenant.id, key)
    if node.kind != "action":
        raise sdk.Unprocessable(
            f"{key} is a trigger: only actions can be tested", errors=[sdk.FieldError("key", "a trigger")]
        )
    scope = {name: data.input.get(name) for name in ("trigger", "steps", "item", "index", "env")}
    scope["steps"] = scope["steps"] or {}
    scope["env"] = scope["env"] or {}
    scope["execution"] = {"id": None, "workflow_id": None, "version": None, "test": True}
    try:
        config = expressions.render(data.config, scope)
    except expressions.ExpressionError as exc:
        raise sdk.Unprocessable(exc.message, errors=[sdk.FieldError(exc.path, exc.message)]) from None
    services.nodes.convert(node, config)
    if not services.nodes.allowed(node, actor):
        raise sdk.Forbidden(f"{key} needs the permission {node.permission!r}", extra={"permission": node.permission})
    execution_id = sdk.uuid7()
    started = time.perf_counter()
    output: Any = None
    error: dict[str, Any] | None = None
    try:
        output = msgspec.to_builtins(
            await services.nodes.run(
                key, tenant_id=tenant.id, execution_id=execution_id, step_id="test", attempt=1, actor=actor,
                config=config,
            ),
            enc_hook=str,
        )
    except sdk.Problem as exc:
        error = {"status": exc.status, "title": exc.title, "detail": exc.detail}
    except Exception as exc:  # the node's own failure is the answer, as a step would record it
        error = {"status": 500, "title": type(exc).__name__, "detail": str(exc)[:500]}
    duration = round((time.perf_counter() - started) * 1000, 3)
    async with services.data.tenant(tenant.id) as session:
        await services.changes.audit(
            session, actor, tenant_id=tenant.id, action="workflows.node.tested", resource_type="workflows.node",
            resource_id=key, result="success" if error is None else "failure",
            details={"execution_id": str(execution_id), **({"error": error} if error else {})},
        )
    return NodeTestResult(node=key, ok=error is None, config=config, output=output, error=error, duration_ms=duration)


NODE_ROUTES = [list_nodes, test_node]
"""Mounted by the plugin's ``businessos_routes`` hook."""
