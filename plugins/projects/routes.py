"""HTTP routes of the projects module, all under ``/api/projects``.

Handlers are thin: parse, open the tenant's transaction, call :class:`Board` (which audits the
change and emits its events in that transaction), answer. Permissions are declared on each route.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any

from litestar import Request, delete, get, patch, post

from kernel import sdk
from plugins.projects.schemas import (
    ColumnIn,
    ColumnList,
    ColumnPatch,
    CommentIn,
    CommentOut,
    CommentPage,
    CommentPatch,
    ProjectIn,
    ProjectOut,
    ProjectPage,
    ProjectPatch,
    TaskIn,
    TaskMove,
    TaskOut,
    TaskPage,
    TaskPatch,
)
from plugins.projects.service import MAX_LIMIT, Board, TaskFilters

__all__ = ["ROUTES"]

PROJECTS_READ, PROJECTS_WRITE = "projects.projects.read", "projects.projects.write"
TASKS_READ, TASKS_WRITE = "projects.tasks.read", "projects.tasks.write"
COMMENTS_READ, COMMENTS_WRITE = "projects.comments.read", "projects.comments.write"

PROJECT = "/api/projects/{project_id:uuid}"
COLUMN = PROJECT + "/columns/{column_id:uuid}"
TASK = PROJECT + "/tasks/{task_id:uuid}"
COMMENT = TASK + "/comments/{comment_id:uuid}"
TAGS = ["projects"]

AnyRequest = Request[Any, Any, Any]


@asynccontextmanager
async def _board(services: sdk.Services, tenant: sdk.Tenant, request: AnyRequest | None = None) -> AsyncIterator[Board]:
    """The tenant's board in one transaction; with ``request``, its changes are audited as the
    request's principal."""
    async with services.data.tenant(tenant.id) as session:
        yield Board(session, tenant.id, services, sdk.Actor.of_request(request) if request is not None else None)


# --- projects -------------------------------------------------------------------------------------


@get("/api/projects", tags=TAGS, opt={"permission": PROJECTS_READ})
async def list_projects(
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = 25,
    sort: str = "created_at",
    q: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> ProjectPage:
    """The tenant's projects with their boards' columns, oldest first by default. ``sort`` is
    ``created_at``, ``-created_at``, ``name`` or ``-updated_at``; ``q`` looks in names and
    descriptions; ``limit`` is at most 100."""
    async with _board(services, tenant) as board:
        projects, total = await board.list_projects(
            page=page, limit=limit, sort=sort, q=q, created_after=created_after, created_before=created_before
        )
    return ProjectPage(projects=projects, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/projects", tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def create_project(
    data: ProjectIn, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest
) -> ProjectOut:
    """A new project with the default board: To do, In progress, Done."""
    async with _board(services, tenant, request) as board:
        project = await board.create_project(data)
    return project


@get(PROJECT, tags=TAGS, opt={"permission": PROJECTS_READ})
async def get_project(project_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> ProjectOut:
    async with _board(services, tenant) as board:
        return await board.get_project(project_id)


@patch(PROJECT, tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def update_project(
    project_id: uuid.UUID, data: ProjectPatch, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest
) -> ProjectOut:
    async with _board(services, tenant, request) as board:
        _, after = await board.update_project(project_id, data)
    return after


@delete(PROJECT, tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def delete_project(
    project_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest
) -> None:
    """Delete the project with its board, tasks and comments."""
    async with _board(services, tenant, request) as board:
        await board.delete_project(project_id)


# --- tasks ----------------------------------------------------------------------------------------


# --- board columns --------------------------------------------------------------------------------


@get(PROJECT + "/columns", tags=TAGS, opt={"permission": PROJECTS_READ})
async def list_columns(project_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> ColumnList:
    """The board's columns, left to right."""
    async with _board(services, tenant) as board:
        return ColumnList(columns=await board.list_columns(project_id))


@post(PROJECT + "/columns", tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def add_column(
    project_id: uuid.UUID, data: ColumnIn, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest
) -> ColumnList:
    """Add a column at ``position`` (default last); answers the board's columns, renumbered.
    ``is_done`` makes it the done column: its tasks complete, the old done column's reopen."""
    async with _board(services, tenant, request) as board:
        _, columns = await board.add_column(project_id, data)
    return ColumnList(columns=columns)


@patch(COLUMN, tags=TAGS, opt={"permission": PROJECTS_WRITE})
async def update_column(
    project_id: uuid.UUID,
    column_id: uuid.UUID,
    data: ColumnPatch,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
) -> ColumnList:
    """Rename a column, move it to ``position`` or make it the done column; answers the board's columns."""
    async with _board(services, tenant, request) as board:
        _, _, columns = await board.update_column(project_id, column_id, data)
    return ColumnList(columns=columns)


@delete(COLUMN, tags=TAGS, opt={"permission": PROJECTS_WRITE}, status_code=200)
async def delete_column(
    project_id: uuid.UUID,
    column_id: uuid.UUID,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
    move_to: uuid.UUID | None = None,
) -> ColumnList:
    """Delete a column; while tasks are in it, 409 (``tasks``: how many) unless ``move_to`` names
    another column, where they go last in their order. The done column stays (409)."""
    async with _board(services, tenant, request) as board:
        _, _, columns = await board.delete_column(project_id, column_id, move_to)
    return ColumnList(columns=columns)


# --- tasks ----------------------------------------------------------------------------------------


@get(PROJECT + "/tasks", tags=TAGS, opt={"permission": TASKS_READ})
async def list_tasks(
    project_id: uuid.UUID,
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = MAX_LIMIT,
    sort: str = "board",
    column_id: uuid.UUID | None = None,
    status: str | None = None,
    assignee_id: uuid.UUID | None = None,
    priority: str | None = None,
    due_after: date | None = None,
    due_before: date | None = None,
    q: str | None = None,
    parent_task_id: uuid.UUID | None = None,
    done: bool | None = None,
) -> TaskPage:
    """The project's tasks, by default in board order (column, then position). Filters:
    ``column_id`` or ``status`` (a column's name), ``assignee_id``, ``priority``, ``due_after``
    (inclusive) and ``due_before`` (exclusive), ``q`` (in title or description), ``parent_task_id``
    (one task's subtasks), ``done``. ``sort``: ``board``, ``created_at``, ``-created_at``,
    ``due_date``, ``-due_date``, ``priority`` (most urgent first), ``title``, ``-updated_at``."""
    filters = TaskFilters(
        column_id=column_id,
        status=status,
        assignee_id=assignee_id,
        priority=priority,
        due_after=due_after,
        due_before=due_before,
        q=q,
        parent_task_id=parent_task_id,
        done=done,
    )
    async with _board(services, tenant) as board:
        tasks, total = await board.list_tasks(
            project_id, filters, page=page, limit=limit, sort=sort
        )
    return TaskPage(tasks=tasks, pagination=sdk.Pagination.of(page, limit, total))


@post(PROJECT + "/tasks", tags=TAGS, opt={"permission": TASKS_WRITE})
async def create_task(
    project_id: uuid.UUID, data: TaskIn, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest
) -> TaskOut:
    """A task (or, with ``parent_task_id``, a subtask) at the end of its column."""
    async with _board(services, tenant, request) as board:
        task = await board.create_task(project_id, data)
    return task


@get(TASK, tags=TAGS, opt={"permission": TASKS_READ})
async def get_task(project_id: uuid.UUID, task_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services) -> TaskOut:
    async with _board(services, tenant) as board:
        return await board.get_task(project_id, task_id)


@patch(TASK, tags=TAGS, opt={"permission": TASKS_WRITE})
async def update_task(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: TaskPatch,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
) -> TaskOut:
    """Change a task's fields; ``assignee_id`` must be a member of the tenant (else 422)."""
    async with _board(services, tenant, request) as board:
        _, after = await board.update_task(project_id, task_id, data)
    return after


@post(TASK + "/move", status_code=200, tags=TAGS, opt={"permission": TASKS_WRITE})
async def move_task(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: TaskMove,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
) -> TaskOut:
    """Move a task to a column and position; entering the done column completes it."""
    async with _board(services, tenant, request) as board:
        _, after = await board.move_task(project_id, task_id, data)
    return after


@delete(TASK, tags=TAGS, opt={"permission": TASKS_WRITE})
async def delete_task(
    project_id: uuid.UUID, task_id: uuid.UUID, tenant: sdk.Tenant, services: sdk.Services, request: AnyRequest
) -> None:
    """Delete a task with its subtasks and comments."""
    async with _board(services, tenant, request) as board:
        await board.delete_task(project_id, task_id)


# --- comments -------------------------------------------------------------------------------------


@get(TASK + "/comments", tags=TAGS, opt={"permission": COMMENTS_READ})
async def list_comments(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    tenant: sdk.Tenant,
    services: sdk.Services,
    page: int = 1,
    limit: int = 25,
) -> CommentPage:
    """A task's comments, oldest first."""
    async with _board(services, tenant) as board:
        comments, total = await board.list_comments(project_id, task_id, page=page, limit=limit)
    return CommentPage(comments=comments, pagination=sdk.Pagination.of(page, limit, total))


@post(TASK + "/comments", tags=TAGS, opt={"permission": COMMENTS_WRITE})
async def create_comment(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    data: CommentIn,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
) -> CommentOut:
    """A comment on a task; its author is the caller."""
    async with _board(services, tenant, request) as board:
        comment = await board.add_comment(
            project_id, task_id, data
        )
    return comment


@patch(COMMENT, tags=TAGS, opt={"permission": COMMENTS_WRITE})
async def edit_comment(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    comment_id: uuid.UUID,
    data: CommentPatch,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
) -> CommentOut:
    """Change a comment's text: one's own (anyone else's: 403, unless one holds
    ``projects.comments.moderate``, as owners and admins do by default)."""
    async with _board(services, tenant, request) as board:
        _, after = await board.edit_comment(
            project_id, task_id, comment_id, data.body
        )
    return after


@delete(COMMENT, tags=TAGS, opt={"permission": COMMENTS_WRITE})
async def delete_comment(
    project_id: uuid.UUID,
    task_id: uuid.UUID,
    comment_id: uuid.UUID,
    tenant: sdk.Tenant,
    services: sdk.Services,
    request: AnyRequest,
) -> None:
    """Delete a comment: one's own (anyone else's: 403, unless one holds
    ``projects.comments.moderate``, as owners and admins do by default)."""
    async with _board(services, tenant, request) as board:
        await board.delete_comment(project_id, task_id, comment_id)


ROUTES = [
    list_projects,
    create_project,
    get_project,
    update_project,
    delete_project,
    list_columns,
    add_column,
    update_column,
    delete_column,
    list_tasks,
    create_task,
    get_task,
    update_task,
    move_task,
    delete_task,
    list_comments,
    create_comment,
    edit_comment,
    delete_comment,
]
