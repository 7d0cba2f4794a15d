"""The projects module's tables: projects, their board columns, tasks (and subtasks), comments."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import Boolean, Date, DateTime, ForeignKeyConstraint, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk

__all__ = ["PRIORITIES", "Base", "BoardColumn", "Comment", "Project", "Task"]



class Base(sdk.Model):
    """The module's declarative base (its own MetaData)."""


PRIORITIES = ("low", "normal", "high", "urgent")


def _belongs_to(column: str, parent: str) -> ForeignKeyConstraint:
    """As the migration declares it: (tenant_id, column) -> parent, cascading deletes. Declared
    here too so that the metadata orders tables parents-first (the kernel's purge relies on it)."""
    return ForeignKeyConstraint(["tenant_id", column], [f"{parent}.tenant_id", f"{parent}.id"], ondelete="CASCADE")


class Project(sdk.TenantScoped, Base):
    __tablename__ = "projects_projects"

    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=sdk.utcnow)


class BoardColumn(sdk.TenantScoped, Base):
    """One column of a project's board; a task's status is the column it sits in."""

    __tablename__ = "projects_columns"
    __table_args__ = (_belongs_to("project_id", "projects_projects"),)

    project_id: Mapped[uuid.UUID] = mapped_column()
    name: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    is_done: Mapped[bool] = mapped_column(Boolean, default=False)
    """Tasks in this column are complete; exactly one column per project has it."""


class Task(sdk.TenantScoped, Base):
    __tablename__ = "projects_tasks"
    __table_args__ = (
        _belongs_to("project_id", "projects_projects"),
        _belongs_to("column_id", "projects_columns"),
        _belongs_to("parent_task_id", "projects_tasks"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column()
    column_id: Mapped[uuid.UUID] = mapped_column()
    parent_task_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str] = mapped_column(Text, default="normal")
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    due_date: Mapped[date | None] = mapped_column(Date, default=None)
    position: Mapped[int] = mapped_column(Integer)
    """0-based place within its column; positions in a column are always 0..n-1."""
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=sdk.utcnow)


class Comment(sdk.TenantScoped, Base):
    __tablename__ = "projects_comments"
    __table_args__ = (
        _belongs_to("project_id", "projects_projects"),
        _belongs_to("task_id", "projects_tasks"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column()
    task_id: Mapped[uuid.UUID] = mapped_column()
    author_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    """The commenting user; ``None`` when an API key wrote it (``author`` still names it)."""
    author: Mapped[str | None] = mapped_column(Text, default=None)
    """The audit-style actor: ``user:<id>`` or ``api_key:<id>``."""
    body: Mapped[str] = mapped_column(Text)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    """When the author last changed the body; ``None`` if never."""
