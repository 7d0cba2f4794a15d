"""What the projects API accepts and answers with (msgspec Structs)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

__all__ = [
    "ColumnOut",
    "CommentIn",
    "CommentList",
    "CommentOut",
    "Priority",
    "ProjectIn",
    "ProjectList",
    "ProjectOut",
    "ProjectPatch",
    "TaskIn",
    "TaskList",
    "TaskMove",
    "TaskOut",
    "TaskPatch",
]

Priority = Literal["low", "normal", "high", "urgent"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
LongText = Annotated[str, msgspec.Meta(max_length=20_000)]
Position = Annotated[int, msgspec.Meta(ge=0)]


class ColumnOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    position: int
    is_done: bool
    """Moving a task here completes it."""


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


class ProjectList(msgspec.Struct, frozen=True):
    items: list[ProjectOut]


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


class TaskList(msgspec.Struct, frozen=True):
    items: list[TaskOut]
    """By column (board order), then position."""


class CommentIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


class CommentOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    task_id: uuid.UUID
    author_id: uuid.UUID | None
    """The user who wrote it (``null`` for an API key)."""
    author: str | None
    """``user:<id>`` or ``api_key:<id>``."""
    body: str
    created_at: datetime


class CommentList(msgspec.Struct, frozen=True):
    items: list[CommentOut]
