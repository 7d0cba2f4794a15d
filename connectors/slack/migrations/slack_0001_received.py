"""slack: Events API deliveries already recorded, one row per (connection, event_id).

Revision ID: slack_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel import sdk

revision = "slack_0001"
down_revision = None
branch_labels = ("slack",)
depends_on = None


def upgrade() -> None:
    sdk.create_tenant_table(
        "slack_received",
        sa.Column("connection_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
    )
    # Slack retries a delivery it got no 2xx for within 3 s: the retry finds the row.
    op.create_unique_constraint("uq_slack_received_event", "slack_received", ["tenant_id", "connection_id", "event_id"])


def downgrade() -> None:
    op.drop_table("slack_received")
