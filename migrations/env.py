"""Alembic environment: one version table, one branch per plugin (branch label = plugin name).

``kernel.db.migrate`` builds the configuration (the kernel's versions folder plus every loaded
plugin's folder) and hands us an open owner connection in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    version_table="alembic_version",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
