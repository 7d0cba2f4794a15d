"""The rules of projects, boards and tasks, inside one tenant transaction.

Every change to where tasks sit on a board (create, move, delete) first takes the project's board
lock, a transaction-scoped advisory lock, and reads positions only after it: concurrent moves on
one board run one after another, so each column's positions stay 0..n-1, dense and unique. A
deferred unique constraint on ``(column_id, position)`` backs this at commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.projects.models import BoardColumn, Comment, Project, Task
from plugins.projects.schemas import (
    ColumnOut,
    CommentIn,
    CommentOut,
    ProjectIn,
    ProjectOut,
    ProjectPatch,
    TaskIn,
    TaskMove,
    TaskOut,
    TaskPatch,
)

__all__ = ["DEFAULT_COLUMNS", "EVENTS", "Board", "emit"]

DEFAULT_COLUMNS = (("To do", False), ("In progress", False), ("Done", True))

EVENTS = {
    "projects.task.created": "A task was created",
    "projects.task.assigned": "A task was given an assignee",
    "projects.task.completed": "A task reached its board's done column",
    "projects.comment.created": "A comment was added to a task",
}

_BOARD_LOCK = text("select pg_advisory_xact_lock(hashtextextended('projects:board:' || :t || ':' || :p, 0))")
_RENUMBER = text(
    """update projects_tasks as t set position = r.rn - 1
         from (select id, row_number() over (partition by column_id order by position, id) as rn
                 from projects_tasks where column_id = any(:columns)) as r
        where t.id = r.id and t.position <> r.rn - 1"""
)
_DESCENDANTS = text(
    """with recursive tree(id) as (
           select cast(:root as uuid)
           union
           select t.id from projects_tasks t join tree on t.parent_task_id = tree.id)
       select distinct column_id from projects_tasks where id in (select id from tree)"""
)


async def emit(session: AsyncSession, *, tenant_id: uuid.UUID, event: str, payload: dict[str, Any]) -> None:
    """Put a domain event in the kernel's outbox, in ``session``'s transaction."""
    await sdk.emit(session, tenant_id=tenant_id, event=event, payload=payload)


def _not_found(kind: str, ident: uuid.UUID) -> sdk.NotFound:
    return sdk.NotFound(f"{kind} {ident} not found")


def _invalid(field: str, message: str) -> sdk.Unprocessable:
    return sdk.Unprocessable(f"invalid value for: {field}", errors=[sdk.FieldError(field=field, message=message)])


def task_snapshot(task: TaskOut) -> dict[str, Any]:
    """A task as JSON-ready data, for audit rows and event payloads."""
    data: dict[str, Any] = msgspec.to_builtins(task)
    return data


class Board:
    """Projects, their board and their tasks as one tenant sees them (row-level security scopes
    every query to the session's tenant, so another tenant's ids are simply not found)."""

    def __init__(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    # --- projects ---------------------------------------------------------------------------------

    async def list_projects(self) -> list[ProjectOut]:
        projects = (await self.session.scalars(select(Project).order_by(Project.created_at, Project.id))).all()
        columns = await self._columns_of([p.id for p in projects])
        return [self._project_out(p, columns.get(p.id, [])) for p in projects]

    async def get_project(self, project_id: uuid.UUID) -> ProjectOut:
        project = await self._project(project_id)
        return self._project_out(project, (await self._columns_of([project.id])).get(project.id, []))

    async def create_project(self, data: ProjectIn) -> ProjectOut:
        """A project with the default board: To do, In progress, Done (the done column)."""
        project = Project(tenant_id=self.tenant_id, name=data.name, description=data.description)
        self.session.add(project)
        await self.session.flush()
        for position, (name, is_done) in enumerate(DEFAULT_COLUMNS):
            self.session.add(
                BoardColumn(
                    tenant_id=self.tenant_id, project_id=project.id, name=name, position=position, is_done=is_done
                )
            )
        await self.session.flush()
        return await self.get_project(project.id)

    async def update_project(self, project_id: uuid.UUID, data: ProjectPatch) -> tuple[ProjectOut, ProjectOut]:
        """Apply ``data``; returns the project before and after."""
        before = await self.get_project(project_id)
        project = await self._project(project_id)
        if data.name is not msgspec.UNSET:
            project.name = data.name
        if data.description is not msgspec.UNSET:
            project.description = data.description
        project.updated_at = sdk.utcnow()
        await self.session.flush()
        return before, await self.get_project(project_id)

    async def delete_project(self, project_id: uuid.UUID) -> ProjectOut:
        """Delete the project with its board, tasks and comments; returns what was deleted."""
        before = await self.get_project(project_id)
        await self.session.execute(
            delete(Project).where(Project.id == project_id).execution_options(synchronize_session=False)
        )
        self.session.expunge_all()
        return before

    # --- tasks ------------------------------------------------------------------------------------

    async def list_tasks(self, project_id: uuid.UUID, parent_task_id: uuid.UUID | None = None) -> list[TaskOut]:
        await self._project(project_id)
        # Fresh rows: a bulk renumbering earlier in this transaction bypasses the identity map.
        query = select(Task).where(Task.project_id == project_id).execution_options(populate_existing=True)
        if parent_task_id is not None:
            query = query.where(Task.parent_task_id == parent_task_id)
        tasks = (await self.session.scalars(query)).all()
        return await self._tasks_out(project_id, tasks)

    async def get_task(self, project_id: uuid.UUID, task_id: uuid.UUID) -> TaskOut:
        return (await self._tasks_out(project_id, [await self._task(project_id, task_id)]))[0]

    async def create_task(self, project_id: uuid.UUID, data: TaskIn) -> TaskOut:
        """A task at the end of its column (the first column unless ``data`` names one)."""
        await self._project(project_id)
        await self._lock_board(project_id)
        columns = (await self._columns_of([project_id]))[project_id]
        column = columns[0] if data.column_id is None else self._column_in(columns, data.column_id)
        if data.parent_task_id is not None:
            parent = await self.session.get(Task, (self.tenant_id, data.parent_task_id))
            if parent is None or parent.project_id != project_id:
                raise _invalid("parent_task_id", "no such task in this project")
        if data.assignee_id is not None:
            await self._check_member(data.assignee_id)
        task = Task(
            tenant_id=self.tenant_id,
            project_id=project_id,
            column_id=column.id,
            parent_task_id=data.parent_task_id,
            title=data.title,
            description=data.description,
            priority=data.priority,
            assignee_id=data.assignee_id,
            due_date=data.due_date,
            position=await self._count(column.id),
            completed_at=sdk.utcnow() if column.is_done else None,
        )
        self.session.add(task)
        await self.session.flush()
        created = await self.get_task(project_id, task.id)
        await self._emit("projects.task.created", created)
        if created.assignee_id is not None:
            await self._emit("projects.task.assigned", created)
        if created.completed_at is not None:
            await self._emit("projects.task.completed", created)
        return created

    async def update_task(self, project_id: uuid.UUID, task_id: uuid.UUID, data: TaskPatch) -> tuple[TaskOut, TaskOut]:
        """Apply ``data``; returns the task before and after."""
        before = await self.get_task(project_id, task_id)
        task = await self._task(project_id, task_id)
        if data.assignee_id is not msgspec.UNSET and data.assignee_id is not None:
            await self._check_member(data.assignee_id)
        for field in ("title", "description", "priority", "assignee_id", "due_date"):
            value = getattr(data, field)
            if value is not msgspec.UNSET:
                setattr(task, field, value)
        task.updated_at = sdk.utcnow()
        await self.session.flush()
        after = await self.get_task(project_id, task_id)
        if after.assignee_id is not None and after.assignee_id != before.assignee_id:
            await self._emit("projects.task.assigned", after)
        return before, after

    async def move_task(self, project_id: uuid.UUID, task_id: uuid.UUID, move: TaskMove) -> tuple[TaskOut, TaskOut]:
        """Put the task at ``move.position`` of ``move.column_id`` (clamped to the column's end),
        closing the gap it leaves and opening one where it lands. Entering the done column completes
        the task; leaving it reopens it. Returns the task before and after."""
        await self._project(project_id)
        await self._lock_board(project_id)
        # Read only after the lock: another move may just have committed.
        before = await self.get_task(project_id, task_id)
        columns = (await self._columns_of([project_id]))[project_id]
        target = self._column_in(columns, move.column_id)
        source, old = before.column_id, before.position
        others = Task.id != task_id
        if source == target.id:
            new = min(move.position, await self._count(source) - 1)
            if new < old:
                await self._shift(+1, others, Task.column_id == source, Task.position >= new, Task.position < old)
            elif new > old:
                await self._shift(-1, others, Task.column_id == source, Task.position > old, Task.position <= new)
        else:
            await self._shift(-1, others, Task.column_id == source, Task.position > old)
            new = min(move.position, await self._count(target.id))
            await self._shift(+1, others, Task.column_id == target.id, Task.position >= new)
        completed_at = before.completed_at
        if target.is_done and completed_at is None:
            completed_at = sdk.utcnow()
        elif not target.is_done:
            completed_at = None
        await self.session.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(column_id=target.id, position=new, completed_at=completed_at, updated_at=sdk.utcnow())
            .execution_options(synchronize_session=False)
        )
        after = await self.get_task(project_id, task_id)
        if after.completed_at is not None and before.completed_at is None:
            await self._emit("projects.task.completed", after)
        return before, after

    async def delete_task(self, project_id: uuid.UUID, task_id: uuid.UUID) -> TaskOut:
        """Delete the task with its subtasks and comments, closing the gaps they leave."""
        await self._project(project_id)
        await self._lock_board(project_id)
        before = await self.get_task(project_id, task_id)
        columns = list((await self.session.scalars(_DESCENDANTS, {"root": task_id})).all())
        await self.session.execute(delete(Task).where(Task.id == task_id).execution_options(synchronize_session=False))
        await self.session.execute(_RENUMBER, {"columns": columns})
        self.session.expunge_all()
        return before

    # --- comments ---------------------------------------------------------------------------------

    async def list_comments(self, project_id: uuid.UUID, task_id: uuid.UUID) -> list[CommentOut]:
        await self._task(project_id, task_id)
        comments = await self.session.scalars(
            select(Comment).where(Comment.task_id == task_id).order_by(Comment.created_at, Comment.id)
        )
        return [self._comment_out(c) for c in comments]

    async def add_comment(
        self, project_id: uuid.UUID, task_id: uuid.UUID, data: CommentIn, *, author: str | None
    ) -> CommentOut:
        """A comment by ``author`` (``user:<id>`` or ``api_key:<id>``, as the audit log names callers)."""
        await self._task(project_id, task_id)
        author_id = None
        if author is not None and author.startswith("user:"):
            author_id = uuid.UUID(author.removeprefix("user:"))
        comment = Comment(
            tenant_id=self.tenant_id,
            project_id=project_id,
            task_id=task_id,
            author_id=author_id,
            author=author,
            body=data.body,
        )
        self.session.add(comment)
        await self.session.flush()
        created = self._comment_out(comment)
        await emit(
            self.session,
            tenant_id=self.tenant_id,
            event="projects.comment.created",
            payload={**msgspec.to_builtins(created), "project_id": str(project_id)},
        )
        return created

    # --- internals --------------------------------------------------------------------------------

    async def _emit(self, event: str, task: TaskOut) -> None:
        await emit(self.session, tenant_id=self.tenant_id, event=event, payload=task_snapshot(task))

    async def _lock_board(self, project_id: uuid.UUID) -> None:
        await self.session.execute(_BOARD_LOCK, {"t": str(self.tenant_id), "p": str(project_id)})

    async def _project(self, project_id: uuid.UUID) -> Project:
        project = await self.session.get(Project, (self.tenant_id, project_id))
        if project is None:
            raise _not_found("project", project_id)
        return project

    async def _task(self, project_id: uuid.UUID, task_id: uuid.UUID) -> Task:
        task = await self.session.get(Task, (self.tenant_id, task_id), populate_existing=True)
        if task is None or task.project_id != project_id:
            raise _not_found("task", task_id)
        return task

    async def _check_member(self, user_id: uuid.UUID) -> None:
        if not await sdk.is_member(self.session, user_id):
            raise _invalid("assignee_id", "not a member of this tenant")

    async def _count(self, column_id: uuid.UUID) -> int:
        count = await self.session.scalar(select(func.count()).select_from(Task).where(Task.column_id == column_id))
        return int(count or 0)

    async def _shift(self, by: int, *where: Any) -> None:
        await self.session.execute(
            update(Task).where(*where).values(position=Task.position + by).execution_options(synchronize_session=False)
        )

    async def _columns_of(self, project_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[BoardColumn]]:
        found: dict[uuid.UUID, list[BoardColumn]] = {}
        if not project_ids:
            return found
        rows = await self.session.scalars(
            select(BoardColumn)
            .where(BoardColumn.project_id.in_(project_ids))
            .order_by(BoardColumn.project_id, BoardColumn.position)
        )
        for column in rows:
            found.setdefault(column.project_id, []).append(column)
        return found

    @staticmethod
    def _column_in(columns: list[BoardColumn], column_id: uuid.UUID) -> BoardColumn:
        for column in columns:
            if column.id == column_id:
                return column
        raise _invalid("column_id", "no such column on this project's board")

    async def _tasks_out(self, project_id: uuid.UUID, tasks: Sequence[Task]) -> list[TaskOut]:
        columns = (await self._columns_of([project_id])).get(project_id, [])
        order = {c.id: (c.position, c.name) for c in columns}
        ids = [t.id for t in tasks]
        children: dict[uuid.UUID, list[uuid.UUID]] = {}
        if ids:
            rows = await self.session.execute(
                select(Task.parent_task_id, Task.id)
                .where(Task.parent_task_id.in_(ids))
                .order_by(Task.created_at, Task.id)
            )
            for parent, child in rows:
                assert parent is not None
                children.setdefault(parent, []).append(child)
        ordered = sorted(tasks, key=lambda t: (order[t.column_id][0], t.position))
        return [
            TaskOut(
                id=t.id,
                project_id=t.project_id,
                parent_task_id=t.parent_task_id,
                title=t.title,
                description=t.description,
                column_id=t.column_id,
                status=order[t.column_id][1],
                position=t.position,
                priority=t.priority,
                assignee_id=t.assignee_id,
                due_date=t.due_date,
                completed_at=t.completed_at,
                created_at=t.created_at,
                updated_at=t.updated_at,
                subtask_ids=children.get(t.id, []),
            )
            for t in ordered
        ]

    @staticmethod
    def _project_out(project: Project, columns: list[BoardColumn]) -> ProjectOut:
        return ProjectOut(
            id=project.id,
            name=project.name,
            description=project.description,
            created_at=project.created_at,
            updated_at=project.updated_at,
            columns=[ColumnOut(id=c.id, name=c.name, position=c.position, is_done=c.is_done) for c in columns],
        )

    @staticmethod
    def _comment_out(comment: Comment) -> CommentOut:
        return CommentOut(
            id=comment.id,
            task_id=comment.task_id,
            author_id=comment.author_id,
            author=comment.author,
            body=comment.body,
            created_at=comment.created_at,
        )
