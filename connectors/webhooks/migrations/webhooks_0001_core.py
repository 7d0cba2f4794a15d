"""webhooks: subscriptions, the messages they may receive, deliveries, attempts and replays.

Revision ID: webhooks_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel import sdk

revision = "webhooks_0001"
down_revision = None
branch_labels = ("webhooks",)
depends_on = None

_UUID = postgresql.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def _reference(table: str, column: str, target: str) -> None:
    """A same-tenant foreign key ``(tenant_id, column) -> target (tenant_id, id)``, cascading."""
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_{column} FOREIGN KEY (tenant_id, {column}) "
        f"REFERENCES {target} (tenant_id, id) ON DELETE CASCADE"
    )


def upgrade() -> None:
    sdk.create_tenant_table(
        "webhooks_subscriptions",
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("filter", postgresql.JSONB(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failing_since", _TS, nullable=True),
        sa.Column("secret_version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("previous_secret_version", sa.Integer(), nullable=True),
        sa.Column("previous_secret_until", _TS, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_webhooks_subscriptions_created", "webhooks_subscriptions", ["tenant_id", "created_at"])

    sdk.create_tenant_table(
        "webhooks_messages",
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_index("ix_webhooks_messages_occurred", "webhooks_messages", ["tenant_id", "occurred_at"])

    sdk.create_tenant_table(
        "webhooks_replays",
        sa.Column("subscription_id", _UUID, nullable=False),
        sa.Column("from_at", _TS, nullable=False),
        sa.Column("to_at", _TS, nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False, server_default="0"),
        sa.UniqueConstraint("tenant_id", "subscription_id", "idempotency_key", name="uq_webhooks_replays_key"),
    )
    _reference("webhooks_replays", "subscription_id", "webhooks_subscriptions")

    sdk.create_tenant_table(
        "webhooks_deliveries",
        sa.Column("subscription_id", _UUID, nullable=False),
        sa.Column("message_id", _UUID, nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("step", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'running', 'succeeded', 'failed')", name="ck_webhooks_deliveries_status"
        ),
        sa.UniqueConstraint(
            "tenant_id", "subscription_id", "message_id", "origin", name="uq_webhooks_deliveries_once"
        ),
    )
    _reference("webhooks_deliveries", "subscription_id", "webhooks_subscriptions")
    _reference("webhooks_deliveries", "message_id", "webhooks_messages")
    op.create_index(
        "ix_webhooks_deliveries_subscription", "webhooks_deliveries", ["tenant_id", "subscription_id", "created_at"]
    )
    op.create_index("ix_webhooks_deliveries_message", "webhooks_deliveries", ["tenant_id", "message_id"])
    op.create_index(
        "ix_webhooks_deliveries_due", "webhooks_deliveries", ["tenant_id", "next_attempt_at"],
        postgresql_where=sa.text("status in ('pending', 'running')"),
    )

    sdk.create_tenant_table(
        "webhooks_attempts",
        sa.Column("delivery_id", _UUID, nullable=False),
        sa.Column("subscription_id", _UUID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("request_headers", postgresql.JSONB(), nullable=False),
        sa.Column("request_body", sa.Text(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_headers", postgresql.JSONB(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    _reference("webhooks_attempts", "delivery_id", "webhooks_deliveries")
    op.create_index("ix_webhooks_attempts_delivery", "webhooks_attempts", ["tenant_id", "delivery_id", "number"])


def downgrade() -> None:
    for table in (
        "webhooks_attempts", "webhooks_deliveries", "webhooks_replays", "webhooks_messages", "webhooks_subscriptions"
    ):
        op.drop_table(table)
