"""Identity: users, memberships, refresh tokens, recovery codes, API keys, invitations, role grants.

Revision ID: kernel_0002
Revises: kernel_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from kernel.db.ddl import create_tenant_table, grant_runtime

revision = "kernel_0002"
down_revision = "kernel_0001"
branch_labels = None
depends_on = None

UUID = postgresql.UUID(as_uuid=True)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "tenants", sa.Column("allow_signup", sa.Boolean(), nullable=False, server_default=sa.false())
    )

    op.create_table(
        "users",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False, server_default=""),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("mfa_secret", sa.Text()),
        sa.Column("mfa_enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("mfa_last_step", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("password_changed_at", TS, server_default=sa.func.now(), nullable=False),
    )
    op.execute("CREATE UNIQUE INDEX uq_users_lower_email ON users (lower(email))")
    grant_runtime("users", "SELECT, INSERT, UPDATE")

    op.create_table(
        "user_recovery_codes",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("code_hash", sa.LargeBinary(), nullable=False),
        sa.Column("used_at", TS),
    )
    grant_runtime("user_recovery_codes", "SELECT, INSERT, UPDATE, DELETE")

    create_tenant_table(
        "memberships",
        sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("last_login_at", TS),
        sa.UniqueConstraint("tenant_id", "user_id", name="uq_memberships_tenant_id_user_id"),
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"])
    # A person may list their own memberships across tenants (to log in, or switch tenant):
    # a second, read-only policy keyed by app.user_id, which only the kernel's auth code sets.
    op.execute(
        "CREATE POLICY member_self ON memberships FOR SELECT "
        "USING (user_id = (select nullif(current_setting('app.user_id', true), '')::uuid))"
    )

    create_tenant_table(
        "refresh_tokens",
        sa.Column("user_id", UUID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("family_id", UUID, nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("revoked_at", TS),
        sa.UniqueConstraint("tenant_id", "token_hash", name="uq_refresh_tokens_tenant_id_token_hash"),
    )
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["tenant_id", "family_id"])
    op.create_index("ix_refresh_tokens_user", "refresh_tokens", ["tenant_id", "user_id"])

    create_tenant_table(
        "api_keys",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(), nullable=False),
        sa.Column("role", sa.Text()),
        sa.Column("scopes", postgresql.ARRAY(sa.Text())),
        sa.Column("created_by", UUID),
        sa.Column("expires_at", TS),
        sa.Column("last_used_at", TS),
        sa.Column("revoked_at", TS),
        sa.UniqueConstraint("tenant_id", "key_hash", name="uq_api_keys_tenant_id_key_hash"),
    )

    create_tenant_table(
        "invitations",
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("invited_by", UUID),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("accepted_at", TS),
        sa.UniqueConstraint("tenant_id", "token_hash", name="uq_invitations_tenant_id_token_hash"),
    )

    create_tenant_table(
        "role_grants",
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("permissions", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.UniqueConstraint("tenant_id", "role", name="uq_role_grants_tenant_id_role"),
    )


def downgrade() -> None:
    for table in (
        "role_grants",
        "invitations",
        "api_keys",
        "refresh_tokens",
        "memberships",
        "user_recovery_codes",
        "users",
    ):
        op.drop_table(table)
    op.drop_column("tenants", "allow_signup")
