"""crm: deal search, a default pipeline per tenant, dense stage positions, list indexes.

Deals get the names of their company and contact (kept in step by the service, as contacts keep
their company's name) and a generated ``tsvector`` over title and both names, with a GIN index.

Revision ID: crm_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "crm_0002"
down_revision = "crm_0001"
branch_labels = None
depends_on = None

# Must match plugins/crm/models.py.
DEAL_SEARCH = (
    "to_tsvector('simple'::regconfig, coalesce(title, '') || ' ' || coalesce(company_name, '') || ' ' || "
    "coalesce(contact_name, ''))"
)


def upgrade() -> None:
    op.add_column("crm_deals", sa.Column("company_name", sa.Text()))
    op.add_column("crm_deals", sa.Column("contact_name", sa.Text()))
    op.execute(
        "UPDATE crm_deals d SET company_name = c.name FROM crm_companies c "
        "WHERE c.tenant_id = d.tenant_id AND c.id = d.company_id"
    )
    op.execute(
        "UPDATE crm_deals d SET contact_name = btrim(c.first_name || ' ' || c.last_name) FROM crm_contacts c "
        "WHERE c.tenant_id = d.tenant_id AND c.id = d.contact_id"
    )
    op.add_column("crm_deals", sa.Column("search", postgresql.TSVECTOR(), sa.Computed(DEAL_SEARCH, persisted=True)))
    op.execute("CREATE INDEX ix_crm_deals_search ON crm_deals USING gin (search)")
    op.execute("CREATE INDEX ix_crm_deals_owner ON crm_deals (tenant_id, owner_id)")
    op.execute("CREATE INDEX ix_crm_deals_amount ON crm_deals (tenant_id, amount, id)")

    op.execute("CREATE INDEX ix_crm_activities_due ON crm_activities (tenant_id, due_at, id)")
    op.execute("CREATE INDEX ix_crm_activities_kind ON crm_activities (tenant_id, kind)")

    op.add_column("crm_pipelines", sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false()))
    # At most one default pipeline per tenant.
    op.execute("CREATE UNIQUE INDEX uq_crm_pipelines_default ON crm_pipelines (tenant_id) WHERE is_default")
    # Stage positions are 0..n-1 per pipeline; checked at commit so a reorder may pass through duplicates.
    op.execute(
        "ALTER TABLE crm_pipeline_stages ADD CONSTRAINT uq_crm_pipeline_stages_position "
        "UNIQUE (tenant_id, pipeline_id, position) DEFERRABLE INITIALLY DEFERRED"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE crm_pipeline_stages DROP CONSTRAINT uq_crm_pipeline_stages_position")
    op.execute("DROP INDEX uq_crm_pipelines_default")
    op.drop_column("crm_pipelines", "is_default")
    op.execute("DROP INDEX ix_crm_activities_kind")
    op.execute("DROP INDEX ix_crm_activities_due")
    op.execute("DROP INDEX ix_crm_deals_amount")
    op.execute("DROP INDEX ix_crm_deals_owner")
    op.execute("DROP INDEX ix_crm_deals_search")
    for column in ("search", "contact_name", "company_name"):
        op.drop_column("crm_deals", column)
