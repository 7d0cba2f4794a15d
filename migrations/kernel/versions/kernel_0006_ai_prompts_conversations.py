"""AI prompt templates, conversations and per-tenant AI settings.

Also individual budget reservations with an expiry, so that a sweeper can release what a killed
process reserved.

Revision ID: kernel_0006
Revises: kernel_0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table

revision = "kernel_0006"
down_revision = "kernel_0005"
branch_labels = None
depends_on = None

_MONEY = sa.Numeric(20, 10)


def _now() -> sa.Column[sa.DateTime]:
    return sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    # One row per tenant (absent: every default applies).
    create_tenant_table(
        "ai_settings",
        sa.Column("default_model", sa.Text()),
        sa.Column("default_embedding_model", sa.Text()),
        sa.Column("fallback_models", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("timeout_seconds", sa.Integer()),
        sa.Column("retries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("log_prompts", sa.Boolean(), nullable=False, server_default=sa.false()),
        _now(),
        sa.UniqueConstraint("tenant_id", name="uq_ai_settings_tenant_id"),
        sa.CheckConstraint("retries between 0 and 5", name="ck_ai_settings_retries"),
        sa.CheckConstraint(
            "timeout_seconds is null or timeout_seconds between 1 and 600", name="ck_ai_settings_timeout"
        ),
    )
    create_tenant_table(
        "ai_prompts",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("latest_version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_by", sa.Text()),
        _now(),
        sa.UniqueConstraint("tenant_id", "name", name="uq_ai_prompts_tenant_id_name"),
    )
    # Versions are immutable: the runtime role may add and (with their prompt) delete them, never change one.
    create_tenant_table(
        "ai_prompt_versions",
        sa.Column("prompt_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("template", postgresql.JSONB(), nullable=False),
        sa.Column("variables", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("model", sa.Text()),
        sa.Column("parameters", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_by", sa.Text()),
        sa.UniqueConstraint("tenant_id", "prompt_id", "version", name="uq_ai_prompt_versions_prompt_version"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "prompt_id"], ["ai_prompts.tenant_id", "ai_prompts.id"], ondelete="CASCADE",
            name="fk_ai_prompt_versions_prompt",
        ),
        privileges="SELECT, INSERT, DELETE",
    )
    create_tenant_table(
        "ai_conversations",
        sa.Column("title", sa.Text()),
        sa.Column("model", sa.Text()),
        sa.Column("created_by", sa.Text()),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cost", _MONEY, nullable=False, server_default="0"),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        _now(),
    )
    op.create_index(
        "ix_ai_conversations_owner", "ai_conversations", ["tenant_id", "created_by", "updated_at"]
    )
    create_tenant_table(
        "ai_messages",
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", postgresql.JSONB()),
        sa.Column("model", sa.Text()),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost", _MONEY, nullable=False, server_default="0"),
        sa.Column("usage_id", postgresql.UUID(as_uuid=True)),
        sa.UniqueConstraint("tenant_id", "conversation_id", "position", name="uq_ai_messages_position"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "conversation_id"], ["ai_conversations.tenant_id", "ai_conversations.id"],
            ondelete="CASCADE", name="fk_ai_messages_conversation",
        ),
        privileges="SELECT, INSERT, DELETE",
    )
    # One row per running call's reservation: settlement deletes it (once), and the sweeper
    # releases rows whose call outlived ``expires_at`` (a process killed mid-call).
    create_tenant_table(
        "ai_reservations",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("cost", _MONEY, nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        privileges="SELECT, INSERT, DELETE",
    )
    op.create_index("ix_ai_reservations_expires_at", "ai_reservations", ["expires_at"])
    # The sweeper finds expired reservations across tenants through a second policy keyed by a
    # setting only the kernel's sweeper sets (it releases each one in that tenant's transaction).
    op.execute(
        "CREATE POLICY ai_reservation_sweep ON ai_reservations FOR SELECT "
        "USING (current_setting('app.ai_sweep', true) = 'on')"
    )


def downgrade() -> None:
    tables = ("ai_reservations", "ai_messages", "ai_conversations", "ai_prompt_versions", "ai_prompts", "ai_settings")
    for table in tables:
        op.drop_table(table)
