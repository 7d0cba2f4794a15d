"""projects: when a comment was last edited, and indexes for the paginated lists.

Revision ID: projects_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "projects_0002"
down_revision = "projects_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects_comments", sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_projects_projects_created", "projects_projects", ["tenant_id", "created_at", "id"])
    op.create_index("ix_projects_tasks_assignee", "projects_tasks", ["tenant_id", "assignee_id"])
    op.create_index("ix_projects_comments_task_created", "projects_comments", ["tenant_id", "task_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_projects_comments_task_created", "projects_comments")
    op.drop_index("ix_projects_tasks_assignee", "projects_tasks")
    op.drop_index("ix_projects_projects_created", "projects_projects")
    op.drop_column("projects_comments", "edited_at")
