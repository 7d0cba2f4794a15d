"""The rules of projects, boards and tasks, inside one tenant transaction.

Every change to where tasks sit on a board (create, move, delete) first takes the project's board
lock, a transaction-scoped advisory lock, and reads positions only after it: concurrent moves on
one board run one after another, so each column's positions stay 0..n-1, dense and unique. A
deferred unique constraint on ``(column_id, position)`` backs this at commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Select, case, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.projects.models import PRIORITIES, BoardColumn, Comment, Project, Task
from plugins.projects.schemas import (
    ColumnIn,
    ColumnOut,
    ColumnPatch,
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

__all__ = ["DEFAULT_COLUMNS", "EVENTS", "MAX_LIMIT", "MODERATE", "Board", "TaskFilters"]

DEFAULT_COLUMNS = (("To do", False), ("In progress", False), ("Done", True))

EVENTS = {
    "projects.task.created": "A task was created",
    "projects.task.assigned": "A task was given an assignee",
    "projects.task.completed": "A task reached its board's done column",
    "projects.comment.created": "A comment was added to a task",
    "projects.comment.updated": "A comment's text was changed",
    "projects.comment.deleted": "A comment was deleted",
    "projects.column.created": "A column was added to a project's board",
    "projects.column.updated": "A board column was renamed, moved or made the done column",
    "projects.column.deleted": "A board column was deleted (its tasks moved elsewhere)",
}

MODERATE = "projects.comments.moderate"
"""The permission to change and delete others' comments (owners and admins hold it by default)."""

MAX_LIMIT = 100
"""The most rows a page holds (the SDK's bound), and a task list's default."""

PROJECT_SORTS: dict[str, list[ColumnElement[Any]]] = {
    "created_at": [Project.created_at.asc(), Project.id.asc()],
    "-created_at": [Project.created_at.desc(), Project.id.desc()],
    "name": [Project.name.asc(), Project.id.asc()],
    "-updated_at": [Project.updated_at.desc(), Project.id.desc()],
}
# Most urgent first.
_URGENCY = case({p: i for i, p in enumerate(reversed(PRIORITIES))}, value=Task.priority)
TASK_SORTS: dict[str, list[ColumnElement[Any]]] = {
    "board": [BoardColumn.position.asc(), Task.position.asc(), Task.id.asc()],
    "created_at": [Task.created_at.asc(), Task.id.asc()],
    "-created_at": [Task.created_at.desc(), Task.id.desc()],
    "due_date": [Task.due_date.asc().nulls_last(), Task.id.asc()],
    "-due_date": [Task.due_date.desc().nulls_last(), Task.id.desc()],
    "priority": [_URGENCY.asc(), Task.id.asc()],
    "title": [Task.title.asc(), Task.id.asc()],
    "-updated_at": [Task.updated_at.desc(), Task.id.desc()],
}


@dataclass(frozen=True)
class TaskFilters:
    """What a task list narrows by; ``None`` means no filter."""

    column_id: uuid.UUID | None = None
    status: str | None = None
    """A column's name, in any case."""
    assignee_id: uuid.UUID | None = None
    priority: str | None = None
    due_after: date | None = None
    """Inclusive."""
    due_before: date | None = None
    """Exclusive."""
    q: str | None = None
    """Words found in the title or description."""
    parent_task_id: uuid.UUID | None = None
    done: bool | None = None


def _contains(column: Any, q: str) -> ColumnElement[bool]:
    """``column`` holds ``q`` (any case), with LIKE's wildcards in ``q`` taken literally."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    result: ColumnElement[bool] = column.ilike(f"%{escaped}%", escape="\\")
    return result


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
    every query to the session's tenant, so another tenant's ids are simply not found).

    Every change is audited (as ``actor``) and its events emitted in the session's transaction, so
    routes and workflow nodes record the same rows; a read-only board needs no actor.
    """

    def __init__(
        self, session: AsyncSession, tenant_id: uuid.UUID, services: sdk.Services, actor: sdk.Actor | None = None
    ) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.changes = services.changes
        self.members = services.members
        self.actor = actor

    # --- projects ---------------------------------------------------------------------------------

    async def list_projects(
        self,
        *,
        page: int = 1,
        limit: int = 25,
        sort: str = "created_at",
        q: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> tuple[list[ProjectOut], int]:
        """One page of projects and how many match; ``q`` looks in names and descriptions."""
        sdk.check_list(page, limit, sort, PROJECT_SORTS)
        where: list[ColumnElement[bool]] = []
        if q is not None and q.strip():
            where.append(or_(_contains(Project.name, q.strip()), _contains(Project.description, q.strip())))
        if created_after is not None:
            where.append(Project.created_at >= created_after)
        if created_before is not None:
            where.append(Project.created_at < created_before)
        query = select(Project).where(*where)
        total, projects = await self._page(query, PROJECT_SORTS[sort], page, limit)
        columns = await self._columns_of([p.id for p in projects])
        return [self._project_out(p, columns.get(p.id, [])) for p in projects], total

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
        created = await self.get_project(project.id)
        await self._audit("projects.project.created", created.id, after=created)
        return created

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
        after = await self.get_project(project_id)
        await self._audit("projects.project.updated", project_id, before=before, after=after)
        return before, after

    async def delete_project(self, project_id: uuid.UUID) -> ProjectOut:
        """Delete the project with its board, tasks and comments; returns what was deleted."""
        before = await self.get_project(project_id)
        await self.session.execute(
            delete(Project).where(Project.id == project_id).execution_options(synchronize_session=False)
        )
        self.session.expunge_all()
        await self._audit("projects.project.deleted", project_id, before=before)
        return before

    # --- board columns ----------------------------------------------------------------------------

    async def list_columns(self, project_id: uuid.UUID) -> list[ColumnOut]:
        await self._project(project_id)
        return [self._column_out(c) for c in (await self._columns_of([project_id])).get(project_id, [])]

    async def add_column(self, project_id: uuid.UUID, data: ColumnIn) -> tuple[ColumnOut, list[ColumnOut]]:
        """Insert a column at ``data.position`` (default: last); returns it and the board's columns."""
        await self._project(project_id)
        await self._lock_board(project_id)
        columns = (await self._columns_of([project_id]))[project_id]
        if len(columns) >= 50:
            raise sdk.Conflict("a board has at most 50 columns")
        column = BoardColumn(
            tenant_id=self.tenant_id, project_id=project_id, name=data.name, position=len(columns), is_done=False
        )
        self.session.add(column)
        place = len(columns) if data.position is None else min(data.position, len(columns))
        columns.insert(place, column)
        self._renumber_columns(columns)
        await self.session.flush()
        if data.is_done:
            await self._make_done(columns, column)
        created = self._column_out(column)
        await self._audit("projects.column.created", created.id, after=created)
        await self.changes.emit(
            self.session,
            tenant_id=self.tenant_id,
            event="projects.column.created",
            payload={**msgspec.to_builtins(created), "project_id": str(project_id)},
        )
        return created, [self._column_out(c) for c in columns]

    async def update_column(
        self, project_id: uuid.UUID, column_id: uuid.UUID, data: ColumnPatch
    ) -> tuple[ColumnOut, ColumnOut, list[ColumnOut]]:
        """Rename, move or make the done column; returns it before and after, and the board's columns."""
        await self._project(project_id)
        await self._lock_board(project_id)
        columns = (await self._columns_of([project_id]))[project_id]
        column = self._board_column(columns, column_id)
        before = self._column_out(column)
        if data.is_done is False and column.is_done:
            raise _invalid("is_done", "a board always has a done column: mark another column done instead")
        if data.name is not msgspec.UNSET:
            column.name = data.name
        if data.position is not msgspec.UNSET:
            columns.remove(column)
            columns.insert(min(data.position, len(columns)), column)
            self._renumber_columns(columns)
        await self.session.flush()
        if data.is_done is True and not column.is_done:
            await self._make_done(columns, column)
        after = self._column_out(column)
        if after != before:
            await self._audit("projects.column.updated", column_id, before=before, after=after)
            await self.changes.emit(
                self.session,
                tenant_id=self.tenant_id,
                event="projects.column.updated",
                payload={**msgspec.to_builtins(after), "project_id": str(project_id)},
            )
        return before, after, [self._column_out(c) for c in columns]

    async def delete_column(
        self, project_id: uuid.UUID, column_id: uuid.UUID, move_to: uuid.UUID | None
    ) -> tuple[ColumnOut, int, list[ColumnOut]]:
        """Delete a column. Its tasks go to the end of ``move_to`` (in their order); without
        ``move_to`` a column holding tasks is not deleted (409 naming how many). The done column
        stays (409). Returns the deleted column, how many tasks moved, and the board's columns."""
        await self._project(project_id)
        await self._lock_board(project_id)
        columns = (await self._columns_of([project_id]))[project_id]
        column = self._board_column(columns, column_id)
        if column.is_done:
            raise sdk.Conflict("the done column stays: mark another column done first, then delete this one")
        target = None
        if move_to is not None:
            target = self._column_in(columns, move_to, "move_to")
            if target.id == column.id:
                raise _invalid("move_to", "name another column than the one being deleted")
        count = await self._count(column.id)
        if count and target is None:
            raise sdk.Conflict(
                f"{count} task{'s' if count != 1 else ''} {'are' if count != 1 else 'is'} in this column: "
                "give move_to (another column of the board) to move them there",
                extra={"tasks": count},
            )
        before = self._column_out(column)
        if target is not None and count:
            await self._move_column_tasks(project_id, column, target)
        await self.session.execute(
            delete(BoardColumn).where(BoardColumn.id == column.id).execution_options(synchronize_session=False)
        )
        self.session.expunge(column)
        columns.remove(column)
        self._renumber_columns(columns)
        await self.session.flush()
        await self._audit(
            "projects.column.deleted", column_id, before=before,
            after={"moved_tasks": count, "move_to": str(target.id) if target else None},
        )
        await self.changes.emit(
            self.session,
            tenant_id=self.tenant_id,
            event="projects.column.deleted",
            payload={
                "id": str(column_id),
                "project_id": str(project_id),
                "moved_tasks": count,
                "move_to": str(target.id) if target else None,
            },
        )
        return before, count, [self._column_out(c) for c in columns]

    async def _move_column_tasks(self, project_id: uuid.UUID, source: BoardColumn, target: BoardColumn) -> None:
        """Append ``source``'s tasks, in order, to the end of ``target``; completion follows ``target``."""
        offset = await self._count(target.id)
        now = sdk.utcnow()
        newly_done = (
            (
                await self.session.scalars(
                    select(Task.id).where(Task.column_id == source.id, Task.completed_at.is_(None))
                )
            ).all()
            if target.is_done
            else []
        )
        await self.session.execute(
            update(Task)
            .where(Task.column_id == source.id)
            .values(
                column_id=target.id,
                position=Task.position + offset,
                completed_at=func.coalesce(Task.completed_at, now) if target.is_done else None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        for task_id in newly_done:
            await self._emit("projects.task.completed", await self.get_task(project_id, task_id))

    async def _make_done(self, columns: list[BoardColumn], column: BoardColumn) -> None:
        """Move the board's done flag to ``column``: its tasks complete, the old done column's reopen."""
        now = sdk.utcnow()
        for old in columns:
            if old.is_done and old is not column:
                old.is_done = False
                await self.session.flush()  # one done column at a time: the unique index is not deferred
                await self.session.execute(
                    update(Task)
                    .where(Task.column_id == old.id)
                    .values(completed_at=None, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
        column.is_done = True
        await self.session.flush()
        newly_done = (
            await self.session.scalars(select(Task.id).where(Task.column_id == column.id, Task.completed_at.is_(None)))
        ).all()
        await self.session.execute(
            update(Task)
            .where(Task.id.in_(newly_done))
            .values(completed_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        for task_id in newly_done:
            await self._emit("projects.task.completed", await self.get_task(column.project_id, task_id))

    @staticmethod
    def _renumber_columns(columns: list[BoardColumn]) -> None:
        for position, column in enumerate(columns):
            if column.position != position:
                column.position = position

    @staticmethod
    def _board_column(columns: list[BoardColumn], column_id: uuid.UUID) -> BoardColumn:
        for column in columns:
            if column.id == column_id:
                return column
        raise _not_found("column", column_id)

    @staticmethod
    def _column_out(column: BoardColumn) -> ColumnOut:
        return ColumnOut(id=column.id, name=column.name, position=column.position, is_done=column.is_done)

    # --- tasks ------------------------------------------------------------------------------------

    async def list_tasks(
        self,
        project_id: uuid.UUID,
        filters: TaskFilters | None = None,
        *,
        page: int = 1,
        limit: int = MAX_LIMIT,
        sort: str = "board",
    ) -> tuple[list[TaskOut], int]:
        """One page of the project's tasks matching ``filters`` and how many match."""
        await self._project(project_id)
        sdk.check_list(page, limit, sort, TASK_SORTS)
        f = filters or TaskFilters()
        if f.priority is not None and f.priority not in PRIORITIES:
            raise _invalid("priority", f"one of {', '.join(PRIORITIES)}")
        where: list[ColumnElement[bool]] = [Task.project_id == project_id]
        for column, value in (
            (Task.column_id, f.column_id),
            (Task.assignee_id, f.assignee_id),
            (Task.priority, f.priority),
            (Task.parent_task_id, f.parent_task_id),
        ):
            if value is not None:
                where.append(column == value)
        if f.status is not None:
            where.append(func.lower(BoardColumn.name) == f.status.strip().lower())
        if f.due_after is not None:
            where.append(Task.due_date >= f.due_after)
        if f.due_before is not None:
            where.append(Task.due_date < f.due_before)
        if f.q is not None and f.q.strip():
            where.append(or_(_contains(Task.title, f.q.strip()), _contains(Task.description, f.q.strip())))
        if f.done is not None:
            where.append(Task.completed_at.is_not(None) if f.done else Task.completed_at.is_(None))
        query = select(Task).join(BoardColumn, BoardColumn.id == Task.column_id).where(*where)
        total, tasks = await self._page(query, TASK_SORTS[sort], page, limit)
        return await self._tasks_out(project_id, tasks), total

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
        await self._audit("projects.task.created", created.id, after=created)
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
        await self._audit("projects.task.updated", task_id, before=before, after=after)
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
        await self._audit("projects.task.moved", task_id, before=before, after=after)
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
        await self._audit("projects.task.deleted", task_id, before=before)
        return before

    # --- comments ---------------------------------------------------------------------------------

    async def list_comments(
        self, project_id: uuid.UUID, task_id: uuid.UUID, *, page: int = 1, limit: int = 25
    ) -> tuple[list[CommentOut], int]:
        """One page of a task's comments, oldest first, and how many it has."""
        await self._task(project_id, task_id)
        sdk.check_list(page, limit, "created_at", ("created_at",))
        query = select(Comment).where(Comment.task_id == task_id)
        total, comments = await self._page(query, [Comment.created_at.asc(), Comment.id.asc()], page, limit)
        return [self._comment_out(c) for c in comments], total

    async def edit_comment(
        self, project_id: uuid.UUID, task_id: uuid.UUID, comment_id: uuid.UUID, body: str
    ) -> tuple[CommentOut, CommentOut]:
        """Change a comment's text (its author, or a moderator); returns it before and after."""
        comment = await self._own_comment(project_id, task_id, comment_id, "change")
        before = self._comment_out(comment)
        comment.body = body
        comment.edited_at = sdk.utcnow()
        await self.session.flush()
        after = self._comment_out(comment)
        await self._audit("projects.comment.updated", comment_id, before=before, after=after)
        await self._emit_comment("projects.comment.updated", after, project_id)
        return before, after

    async def delete_comment(self, project_id: uuid.UUID, task_id: uuid.UUID, comment_id: uuid.UUID) -> CommentOut:
        """Delete a comment (its author, or a moderator); returns what was deleted."""
        comment = await self._own_comment(project_id, task_id, comment_id, "delete")
        before = self._comment_out(comment)
        await self.session.delete(comment)
        await self.session.flush()
        await self._audit("projects.comment.deleted", comment_id, before=before)
        await self.changes.emit(
            self.session,
            tenant_id=self.tenant_id,
            event="projects.comment.deleted",
            payload={"id": str(comment_id), "task_id": str(task_id), "project_id": str(project_id)},
        )
        return before

    async def _own_comment(
        self, project_id: uuid.UUID, task_id: uuid.UUID, comment_id: uuid.UUID, verb: str
    ) -> Comment:
        await self._task(project_id, task_id)
        comment = (
            await self.session.scalars(
                select(Comment).where(Comment.id == comment_id, Comment.task_id == task_id).with_for_update()
            )
        ).one_or_none()
        if comment is None:
            raise _not_found("comment", comment_id)
        actor = self._actor()
        principal = actor.principal
        moderates = principal is not None and MODERATE in principal.permissions
        if not moderates and (actor.name is None or comment.author != actor.name):
            raise sdk.Forbidden(f"only a comment's author or a moderator ({MODERATE}) may {verb} it")
        return comment

    async def _emit_comment(self, event: str, comment: CommentOut, project_id: uuid.UUID) -> None:
        payload = {**msgspec.to_builtins(comment), "project_id": str(project_id)}
        await self.changes.emit(self.session, tenant_id=self.tenant_id, event=event, payload=payload)

    async def add_comment(self, project_id: uuid.UUID, task_id: uuid.UUID, data: CommentIn) -> CommentOut:
        """A comment by the board's actor (``user:<id>`` or ``api_key:<id>``, as the audit log names
        callers)."""
        await self._task(project_id, task_id)
        author = self._actor().name
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
        await self._audit("projects.comment.created", created.id, after=created)
        await self._emit_comment("projects.comment.created", created, project_id)
        return created

    # --- internals --------------------------------------------------------------------------------

    async def _emit(self, event: str, task: TaskOut) -> None:
        await self.changes.emit(self.session, tenant_id=self.tenant_id, event=event, payload=task_snapshot(task))

    def _actor(self) -> sdk.Actor:
        if self.actor is None:
            raise RuntimeError("a change needs a Board built with an actor")
        return self.actor

    async def _audit(self, action: str, resource_id: uuid.UUID, *, before: Any = None, after: Any = None) -> None:
        """The audit row of a change: resource type ``projects.<entity>`` from ``action``."""
        await self.changes.audit(
            self.session,
            self._actor(),
            tenant_id=self.tenant_id,
            action=action,
            resource_type=action.rsplit(".", 1)[0],
            resource_id=resource_id,
            before=msgspec.to_builtins(before) if isinstance(before, msgspec.Struct) else before,
            after=msgspec.to_builtins(after) if isinstance(after, msgspec.Struct) else after,
        )

    async def _page(
        self, query: Select[Any], order: list[ColumnElement[Any]], page: int, limit: int
    ) -> tuple[int, list[Any]]:
        """(how many rows ``query`` matches, the rows of ``page`` in ``order``)."""
        # Fresh rows: a bulk renumbering earlier in this transaction bypasses the identity map.
        rows, total = await sdk.list_and_count(
            self.session, query.execution_options(populate_existing=True), order, page, limit
        )
        return total, rows

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
        if not await self.members.is_member(self.session, user_id):
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
    def _column_in(columns: list[BoardColumn], column_id: uuid.UUID, field: str = "column_id") -> BoardColumn:
        for column in columns:
            if column.id == column_id:
                return column
        raise _invalid(field, "no such column on this project's board")

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
            for t in tasks
        ]

    @staticmethod
    def _project_out(project: Project, columns: list[BoardColumn]) -> ProjectOut:
        return ProjectOut(
            id=project.id,
            name=project.name,
            description=project.description,
            created_at=project.created_at,
            updated_at=project.updated_at,
            columns=[Board._column_out(c) for c in columns],
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
            edited_at=comment.edited_at,
        )
