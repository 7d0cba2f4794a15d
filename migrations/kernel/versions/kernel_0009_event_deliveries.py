"""Event deliveries: one row per (event, handler), the durable state of at-least-once delivery.

Revision ID: kernel_0009
Revises: kernel_0008

The outbox row says an event happened; its deliveries say which handler has run it. The
dispatcher creates them in the transaction that marks the outbox row dispatched; the worker
claims, runs, retries and dead-letters them; a sweeper re-enqueues the ones whose queue entry was
lost (Redis flushed or restarted). Redis only carries the queue, never the state.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table

revision = "kernel_0009"
down_revision = "kernel_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tenant_table(
        "event_deliveries",
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("handler", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status in ('pending', 'running', 'succeeded', 'dead')", name="ck_event_deliveries_status"
        ),
        sa.UniqueConstraint("tenant_id", "event_id", "handler", name="uq_event_deliveries_event_handler"),
    )
    # The sweeper's scan: only unfinished rows, by when they are due.
    op.execute(
        "CREATE INDEX ix_event_deliveries_due ON event_deliveries (next_attempt_at) "
        "WHERE status in ('pending', 'running')"
    )
    # Like the outbox, the dispatcher and the sweeper work across tenants: the same setting, set
    # only by the kernel's dispatcher, opens the rows to them.
    op.execute(
        "CREATE POLICY outbox_dispatch ON event_deliveries "
        "USING (current_setting('app.outbox_dispatch', true) = 'on')"
    )


def downgrade() -> None:
    op.drop_table("event_deliveries")
