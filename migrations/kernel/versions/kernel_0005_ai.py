"""AI proxy: tenants' provider keys, the usage ledger, budgets and price overrides.

Revision ID: kernel_0005
Revises: kernel_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table, grant_runtime

revision = "kernel_0005"
down_revision = "kernel_0004"
branch_labels = None
depends_on = None

_MONEY = sa.Numeric(20, 10)


def upgrade() -> None:
    create_tenant_table(
        "ai_provider_keys",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("sealed_key", sa.Text(), nullable=False),
        sa.Column("last_four", sa.Text(), nullable=False),
        sa.Column("api_base", sa.Text()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("tenant_id", "provider", name="uq_ai_provider_keys_tenant_id_provider"),
    )
    create_tenant_table(
        "ai_usage",
        sa.Column("principal_kind", sa.Text()),
        sa.Column("principal_id", postgresql.UUID(as_uuid=True)),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost", _MONEY, nullable=False, server_default="0"),
        sa.Column("price_version", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("surface", sa.Text(), nullable=False, server_default="api"),
        sa.Column("stream", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True)),
        sa.Column("template_id", postgresql.UUID(as_uuid=True)),
        sa.Column("object_type", sa.Text()),
        sa.Column("object_id", sa.Text()),
        sa.CheckConstraint("status in ('ok', 'error', 'cancelled')", name="ck_ai_usage_status"),
        privileges="SELECT, INSERT",
    )
    op.create_index("ix_ai_usage_tenant_time", "ai_usage", ["tenant_id", "created_at"])
    # Monthly limits per scope: the tenant's ("tenant") and optionally one principal's.
    create_tenant_table(
        "ai_budgets",
        sa.Column("scope", sa.Text(), nullable=False, server_default="tenant"),
        sa.Column("monthly_cost_limit", _MONEY),
        sa.Column("monthly_token_limit", sa.BigInteger()),
        sa.Column("soft_limit_ratio", sa.Numeric(6, 5), nullable=False, server_default="0.8"),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("tenant_id", "scope", name="uq_ai_budgets_tenant_id_scope"),
        sa.CheckConstraint("soft_limit_ratio > 0 and soft_limit_ratio <= 1", name="ck_ai_budgets_ratio"),
    )
    # One row per tenant, scope and month: what is spent and what running calls have reserved.
    # Calls reserve with one conditional UPDATE, so concurrent calls serialize on the rows and
    # never together pass a limit. Scope: "tenant", or a principal ("user:<id>", "api_key:<id>").
    create_tenant_table(
        "ai_budget_months",
        sa.Column("scope", sa.Text(), nullable=False, server_default="tenant"),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("spent_cost", _MONEY, nullable=False, server_default="0"),
        sa.Column("spent_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved_cost", _MONEY, nullable=False, server_default="0"),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.UniqueConstraint("tenant_id", "scope", "month", name="uq_ai_budget_months_tenant_id_scope_month"),
    )
    # Global price overrides (per model, versioned); the runtime role only reads them.
    op.create_table(
        "ai_price_overrides",
        sa.Column("model", sa.Text(), primary_key=True),
        sa.Column("input_per_token", _MONEY, nullable=False),
        sa.Column("output_per_token", _MONEY, nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    grant_runtime("ai_price_overrides", "SELECT")


def downgrade() -> None:
    for table in ("ai_price_overrides", "ai_budget_months", "ai_budgets", "ai_usage", "ai_provider_keys"):
        op.drop_table(table)
