"""projects: projects, board columns, tasks and comments.

Revision ID: projects_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kernel import sdk

revision = "projects_0001"
down_revision = None
branch_labels = ("projects",)
depends_on = None

UUID = postgresql.UUID(as_uuid=True)
TS = sa.DateTime(timezone=True)


def _belongs_to(table: str, column: str, parent: str) -> sa.ForeignKeyConstraint:
    """(tenant_id, column) -> parent (tenant_id, id): a child never points into another tenant."""
    return sa.ForeignKeyConstraint(
        ["tenant_id", column],
        [f"{parent}.tenant_id", f"{parent}.id"],
        ondelete="CASCADE",
        name=f"fk_{table}_{column}_{parent}",
    )


def upgrade() -> None:
    sdk.create_tenant_table(
        "projects_projects",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    sdk.create_tenant_table(
        "projects_columns",
        sa.Column("project_id", UUID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("is_done", sa.Boolean(), nullable=False, server_default=sa.false()),
        _belongs_to("projects_columns", "project_id", "projects_projects"),
        sa.UniqueConstraint(
            "tenant_id",
            "project_id",
            "position",
            name="uq_projects_columns_project_position",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.Index("ix_projects_columns_project", "tenant_id", "project_id"),
        # One done column per project.
        sa.Index(
            "uq_projects_columns_one_done",
            "tenant_id",
            "project_id",
            unique=True,
            postgresql_where=sa.text("is_done"),
        ),
    )
    sdk.create_tenant_table(
        "projects_tasks",
        sa.Column("project_id", UUID, nullable=False),
        sa.Column("column_id", UUID, nullable=False),
        sa.Column("parent_task_id", UUID, nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("priority", sa.Text(), nullable=False, server_default="normal"),
        sa.Column("assignee_id", UUID, nullable=True),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("priority in ('low', 'normal', 'high', 'urgent')", name="ck_projects_tasks_priority"),
        sa.CheckConstraint("position >= 0", name="ck_projects_tasks_position"),
        _belongs_to("projects_tasks", "project_id", "projects_projects"),
        _belongs_to("projects_tasks", "column_id", "projects_columns"),
        _belongs_to("projects_tasks", "parent_task_id", "projects_tasks"),
        # Checked at commit, so renumbering may pass through duplicates but never commit one.
        sa.UniqueConstraint(
            "tenant_id",
            "column_id",
            "position",
            name="uq_projects_tasks_column_position",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.Index("ix_projects_tasks_project", "tenant_id", "project_id"),
        sa.Index("ix_projects_tasks_parent", "tenant_id", "parent_task_id"),
    )
    sdk.create_tenant_table(
        "projects_comments",
        sa.Column("project_id", UUID, nullable=False),
        sa.Column("task_id", UUID, nullable=False),
        sa.Column("author_id", UUID, nullable=True),
        sa.Column("author", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        _belongs_to("projects_comments", "project_id", "projects_projects"),
        _belongs_to("projects_comments", "task_id", "projects_tasks"),
        sa.Index("ix_projects_comments_task", "tenant_id", "task_id"),
    )


def downgrade() -> None:
    from alembic import op

    for table in ("projects_comments", "projects_tasks", "projects_columns", "projects_projects"):
        op.drop_table(table)
