"""HTTP routes of the projects module, all under ``/api/projects``.

Handlers are thin: parse, open the tenant's transaction, call :class:`Board`, audit the change in
the same transaction, answer. Permissions are declared on each route.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Request, delete, get, patch, post
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.projects.schemas import (
    CommentIn,
    CommentList,
    CommentOut,
    ProjectIn,
    ProjectList,
    ProjectOut,
    ProjectPatch,
    TaskIn,
    TaskList,
    TaskMove,
    TaskOut,
    TaskPatch,
)
from plugins.projects.service import Board

__all__ = ["ROUTES"]

PROJECTS_READ, PROJECTS_WRITE = "projects.projects.read", "projects.projects.write"
TASKS_READ, TASKS_WRITE = "projects.tasks.read", "projects.tasks.write"
COMMENTS_READ, COMMENTS_WRITE = "projects.comments.read", "projects.comments.write"

PROJECT = "/api/projects/{project_id:uuid}"
TASK = PROJECT + "/tasks/{task_id:uuid}"
TAGS = ["projects"]

AnyRequest = Request[Any, Any, Any]


def _data(value: msgspec.Struct) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(value)
    return data


async def _audit(
    request: AnyRequest,
    session: AsyncSession,
    tenant: sdk.Tenant,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID,
    *,
    before: msgspec.Struct | None = None,
    after: msgspec.Struct | None = None,
) -> None:
    await sdk.audit(
        request,
        session,
        tenant_id=tenant.id,
        action=action,
        resource_type=resource_type,
        resource_id=str(resource_id),
        before=_data(before) if before is not None else None,
        after=_data(after) if after is not None else None,
    )


# --- projects -------------------------------------------------------------------------------------


@get("/api/projects", tags=TAGS, opt={"permission": PROJECTS_READ})
async def list_projects(tenant: sdk.Tenant, kernel: sdk.Kernel) -> ProjectList:
    """The tenant's projects, oldest first, each with its board's columns."""
    async with kernel.db.tenant(tenant.id) as session:
        return ProjectList(items=await Board(session, tenant.id).list_projects())


@post("/api/projects", tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def create_project(data: ProjectIn, tenant: sdk.Tenant, kernel: sdk.Kernel, request: AnyRequest) -> ProjectOut:
    """A new project with the default board: To do, In progress, Done."""
    async with kernel.db.tenant(tenant.id) as session:
        project = await Board(session, tenant.id).create_project(data)
        await _audit(request, session, tenant, "projects.project.created", "project", project.id, after=project)
    return project


@get(PROJECT, tags=TAGS, opt={"permission": PROJECTS_READ})
async def get_project(project_id: uuid.UUID, tenant: sdk.Tenant, kernel: sdk.Kernel) -> ProjectOut:
    async with kernel.db.tenant(tenant.id) as session:
        return await Board(session, tenant.id).get_project(project_id)


@patch(PROJECT, tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def update_project(
    project_id: uuid.UUID, data: ProjectPatch, tenant: sdk.Tenant, kernel: sdk.Kernel, request: AnyRequest
) -> ProjectOut:
    async with kernel.db.tenant(tenant.id) as session:
        before, after = await Board(session, tenant.id).update_project(project_id, data)
        await _audit(
            request, session, tenant, "projects.project.updated", "project", project_id, before=before, after=after
        )
    return after


@delete(PROJECT, tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def delete_project(project_id: uuid.UUID, tenant: sdk.Tenant, kernel: sdk.Kernel, request: AnyRequest) -> None:
    """Delete the project with its board, tasks and comments."""
    async with kernel.db.tenant(tenant.id) as session:
        before = await Board(session, tenant.id).delete_project(project_id)
        await _audit(request, session, tenant, "projects.project.deleted", "project", project_id, before=before)


# --- tasks ----------------------------------------------------------------------------------------


@get(PROJECT + "/tasks", tags=TAGS, opt={"permission": TASKS_READ})
async def list_tasks(
    project_id: uuid.UUID, tenant: sdk.Tenant, kernel: sdk.Kernel, parent_task_id: uuid.UUID | None = None
) -> TaskList:
    """The project's tasks in board order (column, then position); ``parent_task_id`` lists one
    task's subtasks."""
    async with kernel.db.tenant(tenant.id) as session:
        return TaskList(items=await Board(session, tenant.id).list_tasks(project_id, parent_task_id))


@post(PROJECT + "/tasks", tags=TAGS, opt={"permission": TASKS_WRITE})
async def create_task(
    project_id: uuid.UUID, data: TaskIn, tenant: sdk.Tenant, kernel: sdk.Kernel, request: AnyRequest
) -> TaskOut:
    """A task (or, with ``parent_task_id``, a subtask) at the end of its column."""
    async with kernel.db.tenant(tenant.id) as session:
        task = await Board(session, tenant.id).create_task(project_id, data)
        await _audit(request, session, tenant, "projects.task.created", "task", task.id, after=task)
    return task


@get(TASK, tags=TAGS, opt={"permission": TASKS_READ})
async def get_task(project_id: uuid.UUID, task_id: uuid.UUID, tenant: sdk.Tenant, kernel: sdk.Kernel) -> TaskOut:
    async with kernel.db.tenant(tenant.id) as session:
        return await Board(session, tenant.id).get_task(project_id, task_id)


@patch(TASK, tags=TAGS, opt={"permission": TASKS_WRITE})
async def update_task(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: TaskPatch,
    tenant: sdk.Tenant,
    kernel: sdk.Kernel,
    request: AnyRequest,
) -> TaskOut:
    """Change a task's fields; ``assignee_id`` must be a member of the tenant (else 422)."""
    async with kernel.db.tenant(tenant.id) as session:
        before, after = await Board(session, tenant.id).update_task(project_id, task_id, data)
        await _audit(request, session, tenant, "projects.task.updated", "task", task_id, before=before, after=after)
    return after


@post(TASK + "/move", status_code=200, tags=TAGS, opt={"permission": TASKS_WRITE})
async def move_task(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: TaskMove,
    tenant: sdk.Tenant,
    kernel: sdk.Kernel,
    request: AnyRequest,
) -> TaskOut:
    """Move a task to a column and position; entering the done column completes it."""
    async with kernel.db.tenant(tenant.id) as session:
        before, after = await Board(session, tenant.id).move_task(project_id, task_id, data)
        await _audit(request, session, tenant, "projects.task.moved", "task", task_id, before=before, after=after)
    return after


@delete(TASK, tags=TAGS, opt={"permission": TASKS_WRITE})
async def delete_task(
    project_id: uuid.UUID, task_id: uuid.UUID, tenant: sdk.Tenant, kernel: sdk.Kernel, request: AnyRequest
) -> None:
    """Delete a task with its subtasks and comments."""
    async with kernel.db.tenant(tenant.id) as session:
        before = await Board(session, tenant.id).delete_task(project_id, task_id)
        await _audit(request, session, tenant, "projects.task.deleted", "task", task_id, before=before)


# --- comments -------------------------------------------------------------------------------------


@get(TASK + "/comments", tags=TAGS, opt={"permission": COMMENTS_READ})
async def list_comments(
    project_id: uuid.UUID, task_id: uuid.UUID, tenant: sdk.Tenant, kernel: sdk.Kernel
) -> CommentList:
    """A task's comments, oldest first."""
    async with kernel.db.tenant(tenant.id) as session:
        return CommentList(items=await Board(session, tenant.id).list_comments(project_id, task_id))


@post(TASK + "/comments", tags=TAGS, opt={"permission": COMMENTS_WRITE})
async def create_comment(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: CommentIn,
    tenant: sdk.Tenant,
    kernel: sdk.Kernel,
    request: AnyRequest,
) -> CommentOut:
    """A comment on a task; its author is the caller."""
    async with kernel.db.tenant(tenant.id) as session:
        comment = await Board(session, tenant.id).add_comment(
            project_id, task_id, data, author=sdk.request_actor(request)
        )
        await _audit(request, session, tenant, "projects.comment.created", "comment", comment.id, after=comment)
    return comment


ROUTES = [
    list_projects,
    create_project,
    get_project,
    update_project,
    delete_project,
    list_tasks,
    create_task,
    get_task,
    update_task,
    move_task,
    delete_task,
    list_comments,
    create_comment,
]
