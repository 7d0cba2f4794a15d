"""workflows: definitions with published versions, a durable engine, triggers and history.

Routes under ``/api/workflows``; tables ``workflows_*``; events ``workflows.execution.*``. The
nodes of every plugin a tenant enabled are its building blocks (``GET /api/workflows/nodes``).
It imports nothing from the kernel but ``kernel.sdk``.

The engine (``engine.py``) runs in the worker: the ``workflows.work`` job claims and runs due
runs, the ``workflows.sweep`` schedule (every minute) fires schedule triggers, wakes workers for
due runs whose wake-up was lost, and deletes runs past retention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec

from kernel import sdk
from plugins.workflows.ai_nodes import AI_NODES
from plugins.workflows.engine import Engine, work_job
from plugins.workflows.models import Base
from plugins.workflows.node_routes import NODE_ROUTES
from plugins.workflows.nodes import NODES
from plugins.workflows.routes import ROUTES
from plugins.workflows.service import connection_users
from plugins.workflows.triggers import EVENT_HANDLER, WEBHOOK_ROUTE

__all__ = ["WorkflowsSettings", "manifest"]

manifest = sdk.Manifest(
    name="workflows",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Workflows",
    description="Automations built from the nodes of every enabled module: triggers, steps, approvals, history.",
)


class WorkflowsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's settings of the workflows module."""

    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    """Runs at once, unless the plan's ``workflows.concurrency`` entitlement says otherwise."""
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    """How long finished runs are kept (a workflow's ``settings.retention_days`` may say less)."""


PERMISSIONS = [
    sdk.Permission("workflows.definitions.read", "See workflows, their versions, exports and the node catalogue"),
    sdk.Permission("workflows.definitions.write", "Create, change, publish, import and delete workflows"),
    sdk.Permission("workflows.executions.read", "See runs, their steps and approvals"),
    sdk.Permission("workflows.executions.write", "Start, cancel and retry runs"),
    sdk.Permission("workflows.approvals.decide", "Approve or reject a run's approval step", roles=("admin",)),
    sdk.Permission("workflows.nodes.test", "Run one node with a given config to try it (it acts for real)"),
]


class ExecutionEvent(msgspec.Struct, frozen=True):
    id: str
    workflow_id: str
    version: int
    trigger_kind: str
    error: Any = None


EVENT_TYPES = [
    sdk.EventType("workflows.execution.started", "A run was created (queued)", ExecutionEvent),
    sdk.EventType("workflows.execution.succeeded", "A run ended successfully", ExecutionEvent),
    sdk.EventType("workflows.execution.failed", "A run failed", ExecutionEvent),
    sdk.EventType("workflows.execution.cancelled", "A run was cancelled", ExecutionEvent),
    sdk.EventType("workflows.definition.created", "A workflow was created"),
    sdk.EventType("workflows.definition.updated", "A workflow's draft was changed"),
    sdk.EventType("workflows.definition.deleted", "A workflow was deleted"),
    sdk.EventType("workflows.definition.published", "A workflow's draft was published as a new version"),
    sdk.EventType("workflows.approval.decided", "An approval was approved or rejected"),
]


WORK_BATCH = 200
"""Claims one ``workflows.work`` job makes before handing on to a fresh job (a job never runs for
ever, and other jobs in the queue get their turn)."""


WORK_PARALLEL = 32
"""Runs one work job drives at once (the process's only claiming job; tenants' own limits apply)."""


async def _work(ctx: sdk.JobContext) -> None:
    await work_job(ctx.services, batch=WORK_BATCH, parallel=WORK_PARALLEL)


async def _sweep(ctx: sdk.JobContext) -> None:
    await Engine(ctx.services).sweep()


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [*ROUTES, *NODE_ROUTES]


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return PERMISSIONS


@sdk.hookimpl
def businessos_event_types() -> list[sdk.EventType]:
    return EVENT_TYPES


@sdk.hookimpl
def businessos_event_handlers() -> list[sdk.EventHandler]:
    return [EVENT_HANDLER]


@sdk.hookimpl
def businessos_workflow_nodes() -> list[sdk.NodeSpec]:
    return [*NODES, *AI_NODES]


@sdk.hookimpl
def businessos_settings_schema() -> type[msgspec.Struct]:
    return WorkflowsSettings


@sdk.hookimpl
def businessos_jobs() -> list[sdk.JobSpec]:
    return [
        sdk.JobSpec("workflows.work", _work, max_attempts=3, timeout=3600.0),
        sdk.JobSpec("workflows.sweep", _sweep, max_attempts=1, timeout=300.0),
    ]


@sdk.hookimpl
def businessos_schedules() -> list[sdk.Schedule]:
    return [sdk.Schedule("workflows.sweep", "* * * * *", "workflows.sweep")]


@sdk.hookimpl
def businessos_webhook_routes() -> list[sdk.WebhookRoute]:
    return [WEBHOOK_ROUTE]


@sdk.hookimpl
def businessos_connection_users() -> sdk.ConnectionUsers:
    return connection_users
