"""workflows: definitions with published versions, a durable engine, triggers and history.

Routes under ``/api/workflows``; tables ``workflows_*``; events ``workflows.execution.*``. The
nodes of every plugin a tenant enabled are its building blocks (``GET /api/workflows/nodes``).
It imports nothing from the kernel but ``kernel.sdk``.
"""

from __future__ import annotations

from typing import Any

from kernel import sdk
from plugins.workflows.ai_nodes import AI_NODES
from plugins.workflows.node_routes import NODE_ROUTES

manifest = sdk.Manifest(
    name="workflows",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Workflows",
    description="Automations built from the nodes of every enabled module: triggers, steps, approvals, history.",
)


# The hooks below carry only what h/wfnodes needs (the catalogue routes, the AI nodes and the
# permissions); the engine's branch adds its routes, tables, events and control nodes beside them.


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [*NODE_ROUTES]


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [
        sdk.Permission("workflows.definitions.read", "See workflows, their versions and the node catalogue"),
        sdk.Permission("workflows.definitions.write", "Create, edit, publish and delete workflows"),
        sdk.Permission("workflows.executions.read", "See runs and their steps"),
        sdk.Permission("workflows.executions.write", "Start, cancel and retry runs"),
        sdk.Permission("workflows.approvals.decide", "Approve or reject a run's approval step", roles=("admin",)),
        sdk.Permission("workflows.nodes.test", "Run one node with a given config to try it (it acts for real)"),
    ]


@sdk.hookimpl
def businessos_workflow_nodes() -> list[sdk.NodeSpec]:
    return [*AI_NODES]
