"""Transactional outbox for domain events.

Revision ID: kernel_0004
Revises: kernel_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table

revision = "kernel_0004"
down_revision = "kernel_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tenant_table(
        "events_outbox",
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status in ('pending', 'dispatched')", name="ck_events_outbox_status"),
    )
    op.execute("CREATE INDEX ix_events_outbox_pending ON events_outbox (created_at) WHERE status = 'pending'")
    # The dispatcher moves every tenant's events: a second policy, keyed by a setting only the
    # kernel's dispatcher sets, lets it see and mark pending rows across tenants.
    op.execute(
        "CREATE POLICY outbox_dispatch ON events_outbox "
        "USING (current_setting('app.outbox_dispatch', true) = 'on')"
    )


def downgrade() -> None:
    op.drop_table("events_outbox")
