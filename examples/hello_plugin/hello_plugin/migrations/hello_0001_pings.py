"""hello: the pings table.

Revision ID: hello_0001
"""

from __future__ import annotations

import sqlalchemy as sa

from kernel import sdk

revision = "hello_0001"
down_revision = None
branch_labels = ("hello",)
depends_on = None


def upgrade() -> None:
    sdk.create_tenant_table("hello_pings", sa.Column("message", sa.Text(), nullable=False))


def downgrade() -> None:
    from alembic import op

    op.drop_table("hello_pings")
