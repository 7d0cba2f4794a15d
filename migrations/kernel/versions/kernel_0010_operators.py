"""Operators: the installation's own administrators, apart from every tenant.

Revision ID: kernel_0010
Revises: kernel_0009

A global table (no tenant, no row-level security): operators are not members of any tenant, and
their log-in happens before any tenant scope exists. The runtime role may read, add and update
them (log-in time, disabling); it may not delete them, so who was an operator stays on record.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import grant_runtime

revision = "kernel_0010"
down_revision = "kernel_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
    )
    op.execute("CREATE UNIQUE INDEX uq_operators_lower_email ON operators (lower(email))")
    grant_runtime("operators", "SELECT, INSERT, UPDATE")


def downgrade() -> None:
    op.drop_table("operators")
