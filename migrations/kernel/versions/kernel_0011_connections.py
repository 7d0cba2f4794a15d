"""Connections: a tenant's stored credentials for a connector's credential type.

Revision ID: kernel_0011
Revises: kernel_0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table

revision = "kernel_0011"
down_revision = "kernel_0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Secrets live only in sealed_credentials (AES-GCM, the row's tenant and id as associated
    # data); public holds the non-secret fields and hints the masked secret ones.
    create_tenant_table(
        "connections",
        sa.Column("plugin", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("sealed_credentials", sa.Text(), nullable=False),
        sa.Column("public", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("hints", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("checked_at", sa.DateTime(timezone=True)),
        sa.Column("check_ok", sa.Boolean()),
        sa.Column("check_error", sa.Text()),
        sa.Column("broken_reason", sa.Text()),
        sa.Column("created_by", sa.Text()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("status in ('active', 'broken')", name="ck_connections_status"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_connections_tenant_id_name"),
    )
    op.create_index("ix_connections_tenant_type", "connections", ["tenant_id", "type"])
    op.create_index(
        "ix_connections_tenant_expires", "connections", ["tenant_id", "expires_at"],
        postgresql_where=sa.text("expires_at is not null"),
    )


def downgrade() -> None:
    op.drop_table("connections")
