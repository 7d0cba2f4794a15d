"""billing: catalogue (installation tables), subscriptions, usage and rollups, invoices, credits.

Revision ID: billing_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel import sdk

revision = "billing_0001"
down_revision = None
branch_labels = ("billing",)
depends_on = None

_UUID = postgresql.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)
_JSON = postgresql.JSONB()

# The seeded catalogue (plugins/billing/catalogue.py SEED must match).
_SEED = """
insert into billing_plans (id, code, name) values
  ('01900000-0000-7000-8000-000000000001', 'free', 'Free'),
  ('01900000-0000-7000-8000-000000000002', 'pro', 'Pro'),
  ('01900000-0000-7000-8000-000000000003', 'enterprise', 'Enterprise')
on conflict do nothing;
insert into billing_plan_versions (id, plan_id, version, currency, prices, trial_days, entitlements, charges) values
  ('01900000-0000-7000-8000-000000000011', '01900000-0000-7000-8000-000000000001', 1, 'USD',
   '{"monthly": 0, "yearly": 0}', 0,
   '{"modules": ["crm", "projects", "workflows", "console", "http", "webhooks", "email"],
     "seats": 3, "api_keys": 2, "ai_tokens": 100000,
     "workflow_executions": 1000, "rate_limit": 60}',
   '[]'),
  ('01900000-0000-7000-8000-000000000012', '01900000-0000-7000-8000-000000000002', 1, 'USD',
   '{"monthly": 4900, "yearly": 49000}', 14,
   '{"modules": ["*"], "seats": 25, "api_keys": 20, "ai_tokens": 5000000,
     "workflow_executions": 50000, "rate_limit": 600}',
   '[{"metric": "ai_tokens", "aggregation": "sum", "model": "per_unit", "unit_price": "0.00001",
      "included": 5000000},
     {"metric": "workflow_executions", "aggregation": "count", "model": "graduated", "included": 50000,
      "tiers": [{"up_to": 100000, "unit_price": "0.002"}, {"up_to": null, "unit_price": "0.001"}]}]'),
  ('01900000-0000-7000-8000-000000000013', '01900000-0000-7000-8000-000000000003', 1, 'USD',
   '{"monthly": 49900, "yearly": 499000}', 30,
   '{"modules": ["*"], "seats": null, "api_keys": null, "ai_tokens": null,
     "workflow_executions": null, "rate_limit": 6000}',
   '[]')
on conflict do nothing;
insert into billing_sequences (name, next_value) values ('invoices', 1), ('credit_notes', 1)
on conflict do nothing;
"""


def _installation_table(name: str, *columns: sa.Column[object] | sa.Constraint) -> None:
    """An installation-level table (no tenant, no RLS): the operator's, read by the runtime."""
    op.create_table(name, *columns)
    sdk.grant_runtime(name)


def upgrade() -> None:
    _installation_table(
        "billing_plans",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("code", sa.Text(), nullable=False, unique=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    _installation_table(
        "billing_plan_versions",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("plan_id", _UUID, sa.ForeignKey("billing_plans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("prices", _JSON, nullable=False),
        sa.Column("trial_days", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("entitlements", _JSON, nullable=False),
        sa.Column("charges", _JSON, nullable=False, server_default="[]"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("plan_id", "version", name="uq_billing_plan_versions"),
    )
    _installation_table(
        "billing_sequences",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("next_value", sa.BigInteger(), nullable=False),
    )
    _installation_table(
        "billing_clocks",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("frozen_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    # What the period-end run reads across tenants: when each tenant's subscription next needs work.
    _installation_table(
        "billing_due",
        sa.Column("tenant_id", _UUID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("clock_id", _UUID, sa.ForeignKey("billing_clocks.id", ondelete="SET NULL")),
    )
    op.execute("CREATE INDEX ix_billing_due_at ON billing_due (clock_id, due_at)")
    # Written in each tenant's own transaction; read across tenants only by the period-end run and
    # dunning, which open it with app.billing_sweep (plugins/billing/models.py SWEEP).
    sdk.enable_tenant_rls("billing_due")
    op.execute(
        "CREATE POLICY billing_sweep ON billing_due FOR SELECT "
        "USING (current_setting('app.billing_sweep', true) = 'on')"
    )
    for statement in _SEED.split(";\n"):
        if statement.strip():
            op.execute(statement)

    sdk.create_tenant_table(
        "billing_profiles",
        sa.Column("timezone", sa.Text(), nullable=False, server_default="UTC"),
        sa.Column("tax_rate", sa.Numeric(7, 4), nullable=False, server_default="0"),
        sa.Column("tax_id", sa.Text()),
        sa.Column("clock_id", _UUID),
        sa.Column("stripe_customer", sa.Text()),
        sa.Column("stripe_payment_method", sa.Text()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.execute("CREATE UNIQUE INDEX uq_billing_profiles_tenant ON billing_profiles (tenant_id)")

    sdk.create_tenant_table(
        "billing_subscriptions",
        sa.Column("plan_code", sa.Text(), nullable=False),
        sa.Column("plan_version_id", _UUID, nullable=False),
        # The version the current period's fee is charged at (a mid-period upgrade adds prorations).
        sa.Column("period_plan_version_id", _UUID, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("billing_interval", sa.Text(), nullable=False, server_default="monthly"),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("anchor", _TS, nullable=False),
        sa.Column("current_period_start", _TS, nullable=False),
        sa.Column("current_period_end", _TS, nullable=False),
        sa.Column("trial_end", _TS),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("pending_plan_version_id", _UUID),
        sa.Column("pending_interval", sa.Text()),
        sa.Column("canceled_at", _TS),
        sa.Column("past_due_since", _TS),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "status in ('trialing', 'active', 'past_due', 'canceled', 'paused')", name="ck_billing_subscriptions_status"
        ),
    )
    # One live subscription per tenant: what makes lazy creation idempotent.
    op.execute(
        "CREATE UNIQUE INDEX uq_billing_subscriptions_live ON billing_subscriptions (tenant_id) "
        "WHERE status <> 'canceled'"
    )

    # Prorations and one-off items waiting for the next invoice.
    sdk.create_tenant_table(
        "billing_pending_items",
        sa.Column("subscription_id", _UUID, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("invoice_id", _UUID),
    )
    op.execute("CREATE INDEX ix_billing_pending_open ON billing_pending_items (tenant_id, subscription_id) "
               "WHERE invoice_id IS NULL")

    sdk.create_tenant_table(
        "billing_usage_events",
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("value", sa.Numeric(), nullable=False),
        sa.Column("unique_key", sa.Text()),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("amended_at", _TS),
    )
    op.execute("CREATE UNIQUE INDEX uq_billing_usage_tx ON billing_usage_events (tenant_id, transaction_id)")

    sdk.create_tenant_table(
        "billing_usage_rollups",
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("total", sa.Numeric(), nullable=False, server_default="0"),
        sa.Column("maximum", sa.Numeric()),
        sa.Column("latest", sa.Numeric()),
        sa.Column("latest_at", _TS),
        sa.Column("uniques", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("CREATE UNIQUE INDEX uq_billing_rollups ON billing_usage_rollups (tenant_id, metric, period_start)")
    sdk.create_tenant_table(
        "billing_usage_uniques",
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("unique_key", sa.Text(), nullable=False),
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_billing_usage_uniques ON billing_usage_uniques (tenant_id, metric, period_start, "
        "unique_key)"
    )
    sdk.create_tenant_table(
        "billing_thresholds",
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_billing_thresholds ON billing_thresholds (tenant_id, feature, period_start, percent)"
    )

    sdk.create_tenant_table(
        "billing_invoices",
        sa.Column("kind", sa.Text(), nullable=False, server_default="invoice"),
        sa.Column("subscription_id", _UUID, nullable=False),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("period_end", _TS, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("number", sa.Text()),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("lines", _JSON, nullable=False),
        sa.Column("subtotal_minor", sa.BigInteger(), nullable=False),
        sa.Column("credits_minor", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("tax_rate", sa.Numeric(7, 4), nullable=False, server_default="0"),
        sa.Column("tax_id", sa.Text()),
        sa.Column("tax_minor", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid_minor", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("finalize_after", _TS, nullable=False),
        sa.Column("finalized_at", _TS),
        sa.Column("paid_at", _TS),
        sa.Column("voided_at", _TS),
        sa.Column("corrects_id", _UUID),
        sa.CheckConstraint("status in ('draft', 'open', 'paid', 'void')", name="ck_billing_invoices_status"),
        sa.CheckConstraint("kind in ('invoice', 'credit_note')", name="ck_billing_invoices_kind"),
    )
    # One invoice per subscription period, however often the period-end run repeats.
    op.execute(
        "CREATE UNIQUE INDEX uq_billing_invoices_period ON billing_invoices (tenant_id, subscription_id, "
        "period_start) WHERE kind = 'invoice'"
    )
    op.execute("CREATE UNIQUE INDEX uq_billing_invoices_number ON billing_invoices (number) WHERE number IS NOT NULL")
    op.execute("CREATE INDEX ix_billing_invoices_created ON billing_invoices (tenant_id, created_at, id)")
    # Finalized invoices never change again, except being paid or voided (and then only those columns).
    op.execute(
        """
        CREATE FUNCTION billing_invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.status <> 'draft' AND (NEW.lines IS DISTINCT FROM OLD.lines
              OR NEW.total_minor IS DISTINCT FROM OLD.total_minor OR NEW.number IS DISTINCT FROM OLD.number
              OR NEW.subtotal_minor IS DISTINCT FROM OLD.subtotal_minor
              OR NEW.tax_minor IS DISTINCT FROM OLD.tax_minor) THEN
            RAISE EXCEPTION 'billing invoice % is finalized and cannot change', OLD.id;
          END IF;
          RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER billing_invoices_immutable BEFORE UPDATE ON billing_invoices "
        "FOR EACH ROW EXECUTE FUNCTION billing_invoices_immutable()"
    )

    sdk.create_tenant_table(
        "billing_credit_entries",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("grant_id", _UUID),
        sa.Column("expires_at", _TS),
        sa.Column("invoice_id", _UUID),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.CheckConstraint("kind in ('grant', 'consume', 'expire')", name="ck_billing_credit_kind"),
        privileges="SELECT, INSERT",
    )
    op.execute("CREATE INDEX ix_billing_credit_grant ON billing_credit_entries (tenant_id, grant_id)")

    sdk.create_tenant_table(
        "billing_payments",
        sa.Column("invoice_id", _UUID, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text()),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("next_retry_at", _TS),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.execute("CREATE UNIQUE INDEX uq_billing_payments_ref ON billing_payments (provider, reference) "
               "WHERE reference IS NOT NULL")


def downgrade() -> None:
    for table in (
        "billing_payments", "billing_credit_entries", "billing_invoices", "billing_thresholds",
        "billing_usage_uniques", "billing_usage_rollups", "billing_usage_events", "billing_pending_items",
        "billing_subscriptions", "billing_profiles", "billing_due", "billing_clocks", "billing_sequences",
        "billing_plan_versions", "billing_plans",
    ):
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS billing_invoices_immutable()")
