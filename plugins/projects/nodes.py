"""Workflow nodes: the ``projects.create_task`` action and the ``projects.task_completed`` trigger."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import msgspec

from kernel import sdk
from plugins.projects.schemas import Priority, TaskIn, TaskOut
from plugins.projects.service import Board

__all__ = ["NODES", "CreateTaskConfig", "TaskCompletedConfig", "create_task", "task_completed_matches"]


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


async def create_task(ctx: sdk.NodeContext, config: CreateTaskConfig) -> TaskOut:
    """Create a task as a workflow step (same rules, events and audit row as the HTTP route, the
    audit actor being the workflow's)."""
    data = TaskIn(
        title=config.title,
        description=config.description,
        priority=config.priority,
        assignee_id=config.assignee_id,
        due_date=config.due_date,
        column_id=config.column_id,
    )
    async with ctx.services.data.tenant(ctx.tenant_id) as session:
        return await Board(session, ctx.tenant_id, ctx.services, ctx.actor).create_task(config.project_id, data)


def task_completed_matches(config: TaskCompletedConfig, payload: dict[str, Any]) -> bool:
    """Whether a ``projects.task.completed`` payload is one ``config`` starts on."""
    return config.project_id is None or payload.get("project_id") == str(config.project_id)


NODES = [
    sdk.NodeSpec(
        key="projects.create_task",
        kind="action",
        title="Create a task",
        description="Adds a task to a project's board.",
        config=CreateTaskConfig,
        output=TaskOut,
        run=create_task,
        permission="projects.tasks.write",
    ),
    sdk.NodeSpec(
        key="projects.task_completed",
        kind="trigger",
        title="Task completed",
        description="Starts when a task reaches its board's done column (event projects.task.completed).",
        config=TaskCompletedConfig,
        output=TaskOut,
        event="projects.task.completed",
        filter=task_completed_matches,
    ),
]
