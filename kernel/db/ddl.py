"""DDL helpers for migrations: tenant tables under forced row-level security.

Plugins reach these through ``kernel.sdk``. Every tenant table gets ``tenant_id`` (not null,
references ``tenants``), primary key ``(tenant_id, id)`` (an index that leads with
``tenant_id``), RLS enabled and forced, one policy for reads and writes that matches nothing when
``app.tenant_id`` is unset, and DML privileges for the runtime group role only.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

__all__ = ["RUNTIME_GROUP", "create_tenant_table", "enable_tenant_rls", "grant_runtime"]

# Privileges are granted to this group; the runtime login role is a member of it.
RUNTIME_GROUP = "businessos_runtime"

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# nullif: after a transaction-local set_config ends, the setting reads '' rather than NULL.
TENANT_PREDICATE = "tenant_id = (select nullif(current_setting('app.tenant_id', true), '')::uuid)"


def _check_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise ValueError(f"table name {name!r} must be a lower-case SQL identifier")
    return name


def grant_runtime(table: str, privileges: str = "SELECT, INSERT, UPDATE, DELETE") -> None:
    """Grant ``privileges`` on ``table`` to the runtime role (nothing else gets them)."""
    op.execute(f"GRANT {privileges} ON {_check_name(table)} TO {RUNTIME_GROUP}")


def enable_tenant_rls(table: str, privileges: str = "SELECT, INSERT, UPDATE, DELETE") -> None:
    """Enable and force RLS on an existing tenant table, add the policy, grant the runtime role."""
    name = _check_name(table)
    op.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {name} USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})"
    )
    grant_runtime(name, privileges)


def create_tenant_table(
    table: str,
    *columns: sa.Column[Any] | sa.Constraint | sa.Index,
    privileges: str = "SELECT, INSERT, UPDATE, DELETE",
) -> None:
    """Create a tenant table with the standard leading columns, policy and grants.

    ``columns`` are the table's own columns and constraints; ``tenant_id``, ``id`` and
    ``created_at`` are added first.
    """
    name = _check_name(table)
    op.create_table(
        name,
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="CASCADE", name=f"fk_{name}_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("tenant_id", "id", name=f"pk_{name}"),
    )
    enable_tenant_rls(name, privileges)
