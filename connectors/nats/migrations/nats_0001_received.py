"""nats: messages taken from JetStream consumers, one row per (consumer, stream sequence).

Revision ID: nats_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kernel import sdk

revision = "nats_0001"
down_revision = None
branch_labels = ("nats",)
depends_on = None


def upgrade() -> None:
    sdk.create_tenant_table(
        "nats_received",
        sa.Column("consumer", sa.Text(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
    )
    # A redelivered message (taken, recorded, then the ack was lost) finds its row and is only acked.
    op.create_unique_constraint(
        "uq_nats_received_message", "nats_received", ["tenant_id", "consumer", "stream", "sequence"]
    )


def downgrade() -> None:
    op.drop_table("nats_received")
