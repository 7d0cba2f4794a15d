"""Workflow nodes: the ``projects.create_task`` action and the ``projects.task_completed`` trigger."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import msgspec

from kernel import sdk
from plugins.projects.schemas import Priority, TaskIn
from plugins.projects.service import Board, task_snapshot

__all__ = ["NODES", "CreateTaskConfig", "TaskCompletedConfig", "create_task"]


class CreateTaskConfig(msgspec.Struct, frozen=True, kw_only=True):
    project_id: uuid.UUID
    title: str
    description: str = ""
    priority: Priority = "normal"
    assignee_id: uuid.UUID | None = None
    due_date: date | None = None
    column_id: uuid.UUID | None = None


class TaskCompletedConfig(msgspec.Struct, frozen=True, kw_only=True):
    project_id: uuid.UUID | None = None
    """Only tasks of this project; ``None`` for every project."""


async def create_task(
    config: CreateTaskConfig, *, kernel: sdk.Kernel, tenant_id: uuid.UUID, **_: Any
) -> dict[str, Any]:
    """Create a task as a workflow step (same rules, events and audit row as the HTTP route)."""
    data = TaskIn(
        title=config.title,
        description=config.description,
        priority=config.priority,
        assignee_id=config.assignee_id,
        due_date=config.due_date,
        column_id=config.column_id,
    )
    async with kernel.db.tenant(tenant_id) as session:
        task = await Board(session, tenant_id).create_task(config.project_id, data)
        snapshot = task_snapshot(task)
        await sdk.audit_record(
            session,
            tenant_id=tenant_id,
            actor="workflow",
            action="projects.task.created",
            resource_type="task",
            resource_id=str(task.id),
            after=snapshot,
        )
    return snapshot


NODES = [
    sdk.NodeSpec(
        key="projects.create_task",
        kind="action",
        title="Create a task",
        description="Adds a task to a project's board.",
        config=CreateTaskConfig,
        run=create_task,
    ),
    sdk.NodeSpec(
        key="projects.task_completed",
        kind="trigger",
        title="Task completed",
        description="Starts when a task reaches its board's done column (event projects.task.completed).",
        config=TaskCompletedConfig,
    ),
]
