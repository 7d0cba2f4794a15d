"""AI retrieval: documents, chunks and their embeddings (pgvector).

Revision ID: kernel_0007
Revises: kernel_0006

Without the ``vector`` extension on the server the tables are skipped with a warning (see
``kernel.ai.retrieval.schema``); ``businessos migrate`` creates them once pgvector is there.
"""

from __future__ import annotations

from alembic import op

from kernel.ai.retrieval import schema

revision = "kernel_0007"
down_revision = "kernel_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if schema.pgvector_ready(op.get_bind()):
        schema.create_tables()


def downgrade() -> None:
    schema.drop_tables()
