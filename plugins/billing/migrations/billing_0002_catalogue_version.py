"""billing: a catalogue version every process checks, and operator overrides on subscriptions.

Revision ID: billing_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kernel import sdk

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # One row: bumped by every change of the catalogue, in the change's transaction, so that every
    # process (API and worker) sees that its copy of the catalogue is stale.
    op.create_table(
        "billing_catalogue",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_billing_catalogue_one_row"),
    )
    sdk.grant_runtime("billing_catalogue", "SELECT, UPDATE")
    op.execute("insert into billing_catalogue (id, version) values (1, 1) on conflict do nothing")
    # Who (operator:<id>) last set the plan outside the tenant's own choice, and when.
    op.add_column("billing_subscriptions", sa.Column("override_by", sa.Text()))
    op.add_column("billing_subscriptions", sa.Column("override_at", _TS))


def downgrade() -> None:
    op.drop_column("billing_subscriptions", "override_at")
    op.drop_column("billing_subscriptions", "override_by")
    op.drop_table("billing_catalogue")
