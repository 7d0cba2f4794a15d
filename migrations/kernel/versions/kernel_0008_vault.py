"""Secrets vault: plugins' sealed per-tenant secrets.

Revision ID: kernel_0008
Revises: kernel_0007
"""

from __future__ import annotations

import sqlalchemy as sa

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


def downgrade() -> None:
    from alembic import op

    op.drop_table("vault_secrets")
