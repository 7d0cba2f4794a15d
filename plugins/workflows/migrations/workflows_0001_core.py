"""workflows: definitions, versions, executions, steps, approvals, schedules, tenants' limits.

Revision ID: workflows_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel import sdk

revision = "workflows_0001"
down_revision = None
branch_labels = ("workflows",)
depends_on = None

_UUID = postgresql.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)

# The engine's claim, sweeper and scheduler work across tenants: this second policy opens a table
# to a transaction that set app.workflows_engine (only the engine sets it).
_ENGINE = "current_setting('app.workflows_engine', true) = 'on'"


def _reference(table: str, column: str, target: str) -> None:
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_{column} FOREIGN KEY (tenant_id, {column}) "
        f"REFERENCES {target} (tenant_id, id) ON DELETE CASCADE"
    )


def _engine_policy(table: str) -> None:
    op.execute(f"CREATE POLICY workflows_engine ON {table} USING ({_ENGINE}) WITH CHECK ({_ENGINE})")


def upgrade() -> None:
    sdk.create_tenant_table(
        "workflows_definitions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("graph", postgresql.JSONB(), nullable=False),
        sa.Column("settings", postgresql.JSONB(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("published_version", sa.Integer()),
        sa.Column("active", sa.Boolean(), nullable=False, server_default="true"),
        sa.Column("webhook_endpoint_id", _UUID),
    )
    op.execute("CREATE INDEX ix_workflows_definitions_created ON workflows_definitions (tenant_id, created_at, id)")
    op.execute(
        "CREATE UNIQUE INDEX uq_workflows_definitions_webhook ON workflows_definitions "
        "(tenant_id, webhook_endpoint_id) WHERE webhook_endpoint_id IS NOT NULL"
    )

    sdk.create_tenant_table(
        "workflows_versions",
        sa.Column("workflow_id", _UUID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("graph", postgresql.JSONB(), nullable=False),
        sa.Column("settings", postgresql.JSONB(), nullable=False),
        sa.Column("trigger_key", sa.Text(), nullable=False),
        sa.Column("trigger_event", sa.Text()),
        sa.Column("run_as", postgresql.JSONB(), nullable=False),
        sa.Column("published_by", sa.Text()),
        sa.UniqueConstraint("tenant_id", "workflow_id", "number", name="uq_workflows_versions_number"),
    )
    _reference("workflows_versions", "workflow_id", "workflows_definitions")
    _engine_policy("workflows_versions")  # retention reads each run's version settings
    op.execute("CREATE INDEX ix_workflows_versions_event ON workflows_versions (tenant_id, trigger_event)")

    sdk.create_tenant_table(
        "workflows_executions",
        sa.Column("workflow_id", _UUID, nullable=False),
        sa.Column("version_id", _UUID, nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="queued"),
        sa.Column("trigger_kind", sa.Text(), nullable=False),
        sa.Column("trigger", postgresql.JSONB()),
        sa.Column("output", postgresql.JSONB()),
        sa.Column("error", postgresql.JSONB()),
        sa.Column("due_at", _TS),
        sa.Column("lease_owner", sa.Text()),
        sa.Column("lease_until", _TS),
        sa.Column("claims", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("deadline_at", _TS),
        sa.Column("concurrency", sa.Integer()),
        sa.Column("wait_event", sa.Text()),
        sa.Column("wait_path", sa.Text()),
        sa.Column("wait_key", sa.Text()),
        sa.Column("parent_execution_id", _UUID),
        sa.Column("parent_node", sa.Text()),
        sa.Column("retry_of", _UUID),
        sa.Column("started_by", sa.Text()),
        sa.CheckConstraint(
            "status in ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')",
            name="ck_workflows_executions_status",
        ),
    )
    _reference("workflows_executions", "workflow_id", "workflows_definitions")
    _engine_policy("workflows_executions")
    # The claim: runnable rows by when they are due (queued now, a wait's wake-up, an expired lease).
    op.execute("CREATE INDEX ix_workflows_executions_due ON workflows_executions (due_at) WHERE due_at IS NOT NULL")
    op.execute(
        "CREATE INDEX ix_workflows_executions_running ON workflows_executions (tenant_id, workflow_id) "
        "WHERE status = 'running'"
    )
    op.execute("CREATE INDEX ix_workflows_executions_created ON workflows_executions (tenant_id, created_at, id)")
    op.execute(
        "CREATE INDEX ix_workflows_executions_workflow ON workflows_executions (tenant_id, workflow_id, created_at)"
    )
    op.execute(
        "CREATE INDEX ix_workflows_executions_waiting ON workflows_executions (tenant_id, wait_event) "
        "WHERE status = 'waiting' AND wait_event IS NOT NULL"
    )
    op.execute("CREATE INDEX ix_workflows_executions_finished ON workflows_executions (finished_at)")

    sdk.create_tenant_table(
        "workflows_steps",
        sa.Column("execution_id", _UUID, nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("iteration", sa.Text(), nullable=False),
        sa.Column("node_key", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("ports", postgresql.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        sa.Column("input", postgresql.JSONB()),
        sa.Column("output", postgresql.JSONB()),
        sa.Column("error", postgresql.JSONB()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("wake_at", _TS),
        sa.Column("journal", postgresql.JSONB()),
        sa.UniqueConstraint("tenant_id", "execution_id", "node_id", "iteration", name="uq_workflows_steps_key"),
    )
    _reference("workflows_steps", "execution_id", "workflows_executions")
    _engine_policy("workflows_steps")

    sdk.create_tenant_table(
        "workflows_approvals",
        sa.Column("execution_id", _UUID, nullable=False),
        sa.Column("workflow_id", _UUID, nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("title", sa.Text(), nullable=False, server_default=""),
        sa.Column("details", postgresql.JSONB()),
        sa.Column("expires_at", _TS),
        sa.Column("decided_by", sa.Text()),
        sa.Column("decided_at", _TS),
        sa.Column("comment", sa.Text()),
        sa.UniqueConstraint("tenant_id", "execution_id", "node_id", name="uq_workflows_approvals_step"),
    )
    _reference("workflows_approvals", "execution_id", "workflows_executions")
    _engine_policy("workflows_approvals")
    op.execute("CREATE INDEX ix_workflows_approvals_created ON workflows_approvals (tenant_id, created_at, id)")

    sdk.create_tenant_table(
        "workflows_schedules",
        sa.Column("cron", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("next_run_at", _TS, nullable=False),
    )
    _reference("workflows_schedules", "id", "workflows_definitions")
    _engine_policy("workflows_schedules")
    op.execute("CREATE INDEX ix_workflows_schedules_due ON workflows_schedules (next_run_at)")

    sdk.create_tenant_table(
        "workflows_tenants",
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("retention_days", sa.Integer()),
        sa.Column("last_served_at", _TS),
    )
    _engine_policy("workflows_tenants")


def downgrade() -> None:
    for table in (
        "workflows_tenants", "workflows_schedules", "workflows_approvals", "workflows_steps",
        "workflows_executions", "workflows_versions", "workflows_definitions",
    ):
        op.drop_table(table)
