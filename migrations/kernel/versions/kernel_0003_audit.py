"""Audit log: append-only, hash-chained per tenant.

Revision ID: kernel_0003
Revises: kernel_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table

revision = "kernel_0003"
down_revision = "kernel_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tenant_table(
        "audit_logs",
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text()),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource_type", sa.Text()),
        sa.Column("resource_id", sa.Text()),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text()),
        sa.Column("ip", sa.Text()),
        sa.Column("user_agent", sa.Text()),
        sa.Column("before", postgresql.JSONB()),
        sa.Column("after", postgresql.JSONB()),
        sa.Column("details", postgresql.JSONB()),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("tenant_id", "seq", name="uq_audit_logs_tenant_id_seq"),
        privileges="SELECT, INSERT",
    )
    op.create_index("ix_audit_logs_tenant_time", "audit_logs", ["tenant_id", "occurred_at"])
    op.execute(
        """
        CREATE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_logs is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_logs_no_update_delete BEFORE UPDATE OR DELETE ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION audit_logs_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_change()"
    )
    # ALWAYS: the triggers fire even under session_replication_role = replica.
    op.execute("ALTER TABLE audit_logs ENABLE ALWAYS TRIGGER audit_logs_no_update_delete")
    op.execute("ALTER TABLE audit_logs ENABLE ALWAYS TRIGGER audit_logs_no_truncate")


def downgrade() -> None:
    op.drop_table("audit_logs")
    op.execute("DROP FUNCTION audit_logs_refuse_change()")
