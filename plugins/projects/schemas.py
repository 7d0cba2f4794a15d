"""What the projects API accepts and answers with (msgspec Structs)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from kernel import sdk

__all__ = [
    "ColumnIn",
    "ColumnList",
    "ColumnOut",
    "ColumnPatch",
    "CommentIn",
    "CommentOut",
    "CommentPage",
    "CommentPatch",
    "Pagination",
    "Priority",
    "ProjectIn",
    "ProjectOut",
    "ProjectPage",
    "ProjectPatch",
    "TaskIn",
    "TaskMove",
    "TaskOut",
    "TaskPage",
    "TaskPatch",
]

Priority = Literal["low", "normal", "high", "urgent"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
LongText = Annotated[str, msgspec.Meta(max_length=20_000)]
Position = Annotated[int, msgspec.Meta(ge=0)]
CommentBody = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


Pagination = sdk.Pagination
"""Where an offset page sits in its list (the SDK's, shared by every plugin's lists)."""


class ColumnOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    position: int
    is_done: bool
    """Moving a task here completes it."""


class ColumnList(msgspec.Struct, frozen=True):
    columns: list[ColumnOut]
    """Left to right."""


class ColumnIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    position: Position | None = None
    """Where the column goes (0 is leftmost); the columns from there move right. Default: last."""
    is_done: bool = False
    """Make this the board's done column (the previous one stops being it)."""


class ColumnPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """The column's new place (past the end means last); the others close up around it."""
    is_done: bool | msgspec.UnsetType = msgspec.UNSET
    """``true`` moves the done flag here; a board always has one, so ``false`` is refused."""


class ProjectIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    description: LongText = ""


class ProjectPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: LongText | msgspec.UnsetType = msgspec.UNSET


class ProjectOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    columns: list[ColumnOut]
    """The board, left to right."""


class ProjectPage(msgspec.Struct, frozen=True):
    projects: list[ProjectOut]
    pagination: Pagination


class TaskIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Name
    description: LongText = ""
    priority: Priority = "normal"
    assignee_id: uuid.UUID | None = None
    """A member of the tenant (else 422)."""
    due_date: date | None = None
    column_id: uuid.UUID | None = None
    """Defaults to the board's first column; the task goes to the end of it."""
    parent_task_id: uuid.UUID | None = None
    """Makes this a subtask of another task of the same project."""


class TaskPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fields to change; ``null`` clears ``assignee_id`` and ``due_date``. Moves go through
    ``POST .../move``."""

    title: Name | msgspec.UnsetType = msgspec.UNSET
    description: LongText | msgspec.UnsetType = msgspec.UNSET
    priority: Priority | msgspec.UnsetType = msgspec.UNSET
    assignee_id: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    due_date: date | msgspec.UnsetType | None = msgspec.UNSET


class TaskMove(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    column_id: uuid.UUID
    position: Position
    """Wanted place in the column; past the end means last."""


class TaskOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    project_id: uuid.UUID
    parent_task_id: uuid.UUID | None
    title: str
    description: str
    column_id: uuid.UUID
    status: str
    """The name of the task's column."""
    position: int
    priority: str
    assignee_id: uuid.UUID | None
    due_date: date | None
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    subtask_ids: list[uuid.UUID]


class TaskPage(msgspec.Struct, frozen=True):
    tasks: list[TaskOut]
    """By default in board order: by column, then position."""
    pagination: Pagination


class CommentIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    body: CommentBody


class CommentPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    body: CommentBody


class CommentOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    task_id: uuid.UUID
    author_id: uuid.UUID | None
    """The user who wrote it (``null`` for an API key)."""
    author: str | None
    """``user:<id>`` or ``api_key:<id>``."""
    body: str
    created_at: datetime
    edited_at: datetime | None = None
    """When its author last changed it; ``null`` if never."""


class CommentPage(msgspec.Struct, frozen=True):
    comments: list[CommentOut]
    """Oldest first."""
    pagination: Pagination
