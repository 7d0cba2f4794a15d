"""The workflow engine's tables.

``workflows_definitions`` (drafts), ``workflows_versions`` (published, immutable),
``workflows_executions`` (one run; the row in status ``queued`` *is* the start job),
``workflows_steps`` (one checkpoint per node and iteration), ``workflows_approvals``,
``workflows_schedules`` (the durable next tick of each scheduled workflow) and
``workflows_tenants`` (each tenant's concurrency limit and when the engine last served it).

Every table is tenant-scoped under forced row-level security. The engine's claim, its sweeper and
the scheduler work across tenants: the executions, schedules and tenants tables carry a second
policy that opens them when the transaction sets ``app.workflows_engine`` (see
``migrations/workflows_0001_core.py``); only the engine sets it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKeyConstraint, Integer, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from kernel import sdk

__all__ = [
    "Approval",
    "Base",
    "Definition",
    "Execution",
    "ScheduleRow",
    "Step",
    "TenantState",
    "Version",
]


class Base(sdk.Model):
    """The workflows plugin's declarative base (its own MetaData)."""


def _references(table: str, column: str, parent: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["tenant_id", column], [f"{parent}.tenant_id", f"{parent}.id"], name=f"fk_{table}_{column}",
        ondelete="CASCADE",
    )


class Definition(sdk.TenantScoped, Base):
    __tablename__ = "workflows_definitions"

    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    graph: Mapped[dict[str, Any]] = mapped_column(JSONB)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)
    version: Mapped[int] = mapped_column(Integer, default=1)
    """The draft's edit counter (``ETag``/``If-Match``), not a published version's number."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=sdk.utcnow)
    published_version: Mapped[int | None] = mapped_column(Integer)
    """The number of the version triggers start; ``None`` until the first publish."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    """Whether triggers start runs (manual runs work either way)."""
    webhook_endpoint_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class Version(sdk.TenantScoped, Base):
    __tablename__ = "workflows_versions"
    __table_args__ = (_references("workflows_versions", "workflow_id", "workflows_definitions"),)

    workflow_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    number: Mapped[int] = mapped_column(Integer)
    graph: Mapped[dict[str, Any]] = mapped_column(JSONB)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)
    trigger_key: Mapped[str] = mapped_column(Text)
    trigger_event: Mapped[str | None] = mapped_column(Text)
    """The event that starts it (``workflows.event`` and other plugins' event triggers)."""
    run_as: Mapped[dict[str, Any]] = mapped_column(JSONB)
    """The principal runs act as: kind, id, role and permissions when it was published."""
    published_by: Mapped[str | None] = mapped_column(Text)


class Execution(sdk.TenantScoped, Base):
    __tablename__ = "workflows_executions"
    __table_args__ = (_references("workflows_executions", "workflow_id", "workflows_definitions"),)

    workflow_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    version_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    version_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, default="queued")
    trigger_kind: Mapped[str] = mapped_column(Text)
    trigger: Mapped[Any] = mapped_column(JSONB)
    output: Mapped[Any] = mapped_column(JSONB)
    error: Mapped[Any] = mapped_column(JSONB)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claims: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    concurrency: Mapped[int | None] = mapped_column(Integer)
    wait_event: Mapped[str | None] = mapped_column(Text)
    wait_path: Mapped[str | None] = mapped_column(Text)
    wait_key: Mapped[str | None] = mapped_column(Text)
    parent_execution_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    parent_node: Mapped[str | None] = mapped_column(Text)
    retry_of: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    started_by: Mapped[str | None] = mapped_column(Text)


class Step(sdk.TenantScoped, Base):
    __tablename__ = "workflows_steps"
    __table_args__ = (_references("workflows_steps", "execution_id", "workflows_executions"),)

    execution_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    node_id: Mapped[str] = mapped_column(Text)
    iteration: Mapped[str] = mapped_column(Text)
    node_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    ports: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    input: Mapped[Any] = mapped_column(JSONB)
    output: Mapped[Any] = mapped_column(JSONB)
    error: Mapped[Any] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    wake_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    journal: Mapped[Any] = mapped_column(JSONB)
    """Checkpoints inside the step (``ctx.journal``), by name."""


class Approval(sdk.TenantScoped, Base):
    __tablename__ = "workflows_approvals"
    __table_args__ = (_references("workflows_approvals", "execution_id", "workflows_executions"),)

    execution_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    workflow_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    node_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="pending")
    title: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[Any] = mapped_column(JSONB)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str | None] = mapped_column(Text)


class ScheduleRow(sdk.TenantScoped, Base):
    """``id`` is the workflow's id: one schedule per workflow."""

    __tablename__ = "workflows_schedules"
    __table_args__ = (_references("workflows_schedules", "id", "workflows_definitions"),)

    cron: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantState(sdk.TenantScoped, Base):
    """``id`` is the tenant's id: one row per tenant that ever started a run."""

    __tablename__ = "workflows_tenants"

    concurrency: Mapped[int] = mapped_column(Integer)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    last_served_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
