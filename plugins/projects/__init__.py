"""projects: projects with a board of ordered columns, tasks and subtasks, comments.

Routes under ``/api/projects``; tables ``projects_*``; events ``projects.task.created``,
``projects.task.assigned``, ``projects.task.completed``, ``projects.comment.*`` and
``projects.column.*``;
workflow nodes ``projects.create_task`` (action) and ``projects.task_completed`` (trigger).
It imports nothing from the kernel but ``kernel.sdk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernel import sdk
from plugins.projects.models import Base
from plugins.projects.nodes import NODES
from plugins.projects.routes import ROUTES
from plugins.projects.service import EVENTS, MODERATE

manifest = sdk.Manifest(
    name="projects",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Projects",
    description="Projects, boards of tasks and subtasks, assignees, due dates and comments.",
)


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return list(ROUTES)


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [
        sdk.Permission("projects.projects.read", "See projects and their boards"),
        sdk.Permission("projects.projects.write", "Create, rename and delete projects"),
        sdk.Permission("projects.tasks.read", "See tasks"),
        sdk.Permission("projects.tasks.write", "Create, change, move and delete tasks"),
        sdk.Permission("projects.comments.read", "Read comments on tasks"),
        sdk.Permission("projects.comments.write", "Comment on tasks"),
        sdk.Permission(MODERATE, "Change and delete other people's comments", roles=("admin",)),
    ]


@sdk.hookimpl
def businessos_event_types() -> list[sdk.EventType]:
    return [sdk.EventType(name, description) for name, description in EVENTS.items()]


@sdk.hookimpl
def businessos_workflow_nodes() -> list[sdk.NodeSpec]:
    return list(NODES)
