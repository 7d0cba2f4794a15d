"""Tenants and per-tenant module state.

Revision ID: kernel_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import RUNTIME_GROUP, create_tenant_table, grant_runtime

revision = "kernel_0001"
down_revision = None
branch_labels = ("kernel",)
depends_on = None


def upgrade() -> None:
    # The group every runtime login role joins; cluster-wide, so tolerate another database's copy.
    op.execute(
        f"""
        DO $$ BEGIN
            CREATE ROLE {RUNTIME_GROUP} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {RUNTIME_GROUP}")

    op.create_table(
        "tenants",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="active"),
        sa.Column("plan", sa.Text(), nullable=False, server_default="free"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("status in ('active', 'suspended')", name="ck_tenants_status"),
        sa.CheckConstraint("slug ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'", name="ck_tenants_slug"),
        sa.UniqueConstraint("slug", name="uq_tenants_slug"),
    )
    # Tenants are global: resolution reads them before any tenant is set. No DELETE for the app.
    grant_runtime("tenants", "SELECT, INSERT, UPDATE")

    create_tenant_table(
        "tenant_modules",
        sa.Column("plugin", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("settings", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("tenant_id", "plugin", name="uq_tenant_modules_tenant_id_plugin"),
    )


def downgrade() -> None:
    op.drop_table("tenant_modules")
    op.drop_table("tenants")
