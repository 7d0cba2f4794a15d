"""crm: companies, contacts, pipelines and stages, deals and their stage history, activities.

Revision ID: crm_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel import sdk

revision = "crm_0001"
down_revision = None
branch_labels = ("crm",)
depends_on = None

_UUID = postgresql.UUID(as_uuid=True)

# Must match plugins/crm/models.py.
CONTACT_SEARCH = (
    "to_tsvector('simple'::regconfig, coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' ' || "
    "coalesce(email, '') || ' ' || coalesce(translate(email, '@.', '  '), '') || ' ' || "
    "coalesce(company_name, ''))"
)
COMPANY_SEARCH = (
    "to_tsvector('simple'::regconfig, coalesce(name, '') || ' ' || coalesce(domain, '') || ' ' || "
    "coalesce(translate(domain, '.', ' '), ''))"
)


def _versioned() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def _reference(table: str, column: str, target: str, on_delete: str) -> None:
    """A same-tenant foreign key: (tenant_id, column) -> target (tenant_id, id).

    ``SET NULL (column)`` clears only the reference, never ``tenant_id`` (PostgreSQL 15+).
    """
    action = f"SET NULL ({column})" if on_delete == "set null" else on_delete.upper()
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_{column} FOREIGN KEY (tenant_id, {column}) "
        f"REFERENCES {target} (tenant_id, id) ON DELETE {action}"
    )
    op.execute(f"CREATE INDEX ix_{table}_{column} ON {table} (tenant_id, {column})")


def upgrade() -> None:
    sdk.create_tenant_table(
        "crm_companies",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text()),
        sa.Column("industry", sa.Text()),
        sa.Column("owner_id", _UUID),
        *_versioned(),
        sa.Column("search", postgresql.TSVECTOR(), sa.Computed(COMPANY_SEARCH, persisted=True)),
    )
    op.execute("CREATE INDEX ix_crm_companies_created ON crm_companies (tenant_id, created_at, id)")
    op.execute("CREATE INDEX ix_crm_companies_search ON crm_companies USING gin (search)")

    sdk.create_tenant_table(
        "crm_contacts",
        sa.Column("first_name", sa.Text(), nullable=False),
        sa.Column("last_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("email", sa.Text()),
        sa.Column("phone", sa.Text()),
        sa.Column("company_id", _UUID),
        sa.Column("company_name", sa.Text()),
        sa.Column("owner_id", _UUID),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        *_versioned(),
        sa.Column("search", postgresql.TSVECTOR(), sa.Computed(CONTACT_SEARCH, persisted=True)),
    )
    _reference("crm_contacts", "company_id", "crm_companies", "set null")
    op.execute("CREATE INDEX ix_crm_contacts_created ON crm_contacts (tenant_id, created_at, id)")
    op.execute("CREATE INDEX ix_crm_contacts_owner ON crm_contacts (tenant_id, owner_id)")
    op.execute("CREATE INDEX ix_crm_contacts_search ON crm_contacts USING gin (search)")
    op.execute(
        "CREATE UNIQUE INDEX uq_crm_contacts_email ON crm_contacts (tenant_id, lower(email)) WHERE email IS NOT NULL"
    )

    sdk.create_tenant_table("crm_pipelines", sa.Column("name", sa.Text(), nullable=False))
    sdk.create_tenant_table(
        "crm_pipeline_stages",
        sa.Column("pipeline_id", _UUID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.CheckConstraint("kind in ('open', 'won', 'lost')", name="ck_crm_pipeline_stages_kind"),
    )
    _reference("crm_pipeline_stages", "pipeline_id", "crm_pipelines", "cascade")

    sdk.create_tenant_table(
        "crm_deals",
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("amount", sa.Numeric(18, 2), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("pipeline_id", _UUID, nullable=False),
        sa.Column("stage_id", _UUID, nullable=False),
        sa.Column("company_id", _UUID),
        sa.Column("contact_id", _UUID),
        sa.Column("owner_id", _UUID),
        *_versioned(),
    )
    _reference("crm_deals", "pipeline_id", "crm_pipelines", "restrict")
    _reference("crm_deals", "stage_id", "crm_pipeline_stages", "restrict")
    _reference("crm_deals", "company_id", "crm_companies", "set null")
    _reference("crm_deals", "contact_id", "crm_contacts", "set null")
    op.execute("CREATE INDEX ix_crm_deals_created ON crm_deals (tenant_id, created_at, id)")

    sdk.create_tenant_table(
        "crm_deal_stage_history",
        sa.Column("deal_id", _UUID, nullable=False),
        sa.Column("from_stage_id", _UUID),
        sa.Column("to_stage_id", _UUID, nullable=False),
        sa.Column("actor", sa.Text()),
    )
    _reference("crm_deal_stage_history", "deal_id", "crm_deals", "cascade")

    sdk.create_tenant_table(
        "crm_activities",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False, server_default=""),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("contact_id", _UUID),
        sa.Column("company_id", _UUID),
        sa.Column("deal_id", _UUID),
        *_versioned(),
        sa.CheckConstraint("kind in ('note', 'call', 'meeting', 'task')", name="ck_crm_activities_kind"),
    )
    _reference("crm_activities", "contact_id", "crm_contacts", "set null")
    _reference("crm_activities", "company_id", "crm_companies", "set null")
    _reference("crm_activities", "deal_id", "crm_deals", "set null")
    op.execute("CREATE INDEX ix_crm_activities_created ON crm_activities (tenant_id, created_at, id)")


def downgrade() -> None:
    for table in (
        "crm_activities",
        "crm_deal_stage_history",
        "crm_deals",
        "crm_pipeline_stages",
        "crm_pipelines",
        "crm_contacts",
        "crm_companies",
    ):
        op.drop_table(table)
