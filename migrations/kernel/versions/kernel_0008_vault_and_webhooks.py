"""Secrets vault (plugins' sealed per-tenant secrets) and inbound webhook endpoints.

Revision ID: kernel_0008
Revises: kernel_0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kernel.db.ddl import create_tenant_table

revision = "kernel_0008"
down_revision = "kernel_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tenant_table(
        "vault_secrets",
        sa.Column("plugin", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("sealed_value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("tenant_id", "plugin", "name", name="uq_vault_secrets_tenant_id_plugin_name"),
    )
    # A public webhook URL's token is stored only as its SHA-256; the token names its tenant, so the
    # lookup runs in that tenant's transaction like an API key's.
    create_tenant_table(
        "webhook_endpoints",
        sa.Column("plugin", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("tenant_id", "token_hash", name="uq_webhook_endpoints_tenant_id_token_hash"),
    )
    op.create_index("ix_webhook_endpoints_tenant_plugin", "webhook_endpoints", ["tenant_id", "plugin"])


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
    op.drop_table("vault_secrets")
