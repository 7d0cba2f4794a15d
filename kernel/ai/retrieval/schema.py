"""The retrieval tables, created by migration ``kernel_0007`` only where pgvector can be had.

Embeddings of any size share one untyped ``vector`` column next to a ``dimensions`` column. HNSW
needs a fixed size, so each common size gets a partial index on a cast expression, e.g.
``(embedding::vector(384)) vector_cosine_ops WHERE dimensions = 384``; a search names the same
expression and predicate (see :func:`distance_sql`) so the planner can use it. HNSW on ``vector``
stops at 2,000 dimensions, so 3,072 (OpenAI's large model) is indexed as ``halfvec`` (up to
4,000). Other sizes are searched exactly.

A database without pgvector still migrates: the tables are skipped with a warning and the
retrieval routes answer 503. ``businessos migrate`` calls :func:`catch_up` after the kernel's
migrations, so installing pgvector later and migrating again creates them.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from kernel.db.ddl import create_tenant_table

__all__ = [
    "HALFVEC_SIZES",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_M",
    "VECTOR_SIZES",
    "catch_up",
    "create_tables",
    "distance_sql",
    "drop_tables",
    "pgvector_ready",
    "tables_exist",
]

log = logging.getLogger("businessos.ai.retrieval")

# Sizes with an HNSW index: MiniLM/BGE-small (384), 512, BGE-base/nomic (768), BGE-large/Cohere
# (1024), OpenAI small/ada-002 (1536); 3072 (OpenAI large) as halfvec.
VECTOR_SIZES = (384, 512, 768, 1024, 1536)
HALFVEC_SIZES = (3072,)
# pgvector's defaults; bench/vector_search.py measures the recall they give.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
# The largest vector the column accepts (pgvector's own limit for the vector type).
MAX_DIMENSIONS = 16000


class _Vector(sa.types.UserDefinedType[Any]):
    """pgvector's ``vector`` without a size (values go in as text literals and are cast)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"


def pgvector_ready(conn: Connection) -> bool:
    """Whether the ``vector`` extension is installed, installing it when the server has it and
    this role may (the owner connection); ``False`` (with a warning) otherwise."""
    if conn.execute(sa.text("select 1 from pg_extension where extname = 'vector'")).first():
        return True
    if not conn.execute(sa.text("select 1 from pg_available_extensions where name = 'vector'")).first():
        log.warning(
            "retrieval tables skipped: the PostgreSQL server has no pgvector extension; "
            "install it and run `businessos migrate` again"
        )
        return False
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError as exc:
        log.warning(
            "retrieval tables skipped: could not create the pgvector extension (%s); create it as a "
            "superuser and run `businessos migrate` again", str(exc.orig).splitlines()[0] if exc.orig else exc
        )
        return False
    return True


def tables_exist(conn: Connection) -> bool:
    return bool(conn.execute(sa.text("select to_regclass('ai_chunks') is not null")).scalar_one())


def _index_expression(dimensions: int) -> tuple[str, str]:
    kind = "halfvec" if dimensions in HALFVEC_SIZES else "vector"
    return f"(embedding::{kind}({dimensions}))", f"{kind}_cosine_ops"


def distance_sql(dimensions: int, parameter: str = ":query") -> str:
    """Cosine distance between the stored embedding and ``parameter`` (a text literal), written
    exactly as the partial index for ``dimensions`` is, when there is one."""
    dimensions = int(dimensions)
    if not 0 < dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"dimensions must be 1..{MAX_DIMENSIONS}")
    kind = "halfvec" if dimensions in HALFVEC_SIZES else "vector"
    return f"(embedding::{kind}({dimensions})) <=> cast({parameter} as {kind}({dimensions}))"


def create_tables() -> None:
    """``ai_documents`` and ``ai_chunks`` with their indexes (inside an Alembic operation context)."""
    create_tenant_table(
        "ai_documents",
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("source", sa.Text()),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunk_overlap", sa.Integer(), nullable=False),
        sa.Column("characters", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Text()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("dimensions > 0", name="ck_ai_documents_dimensions"),
    )
    op.create_index("ix_ai_documents_tenant_created", "ai_documents", ["tenant_id", "created_at"])
    create_tenant_table(
        "ai_chunks",
        sa.Column("document_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("embedding", _Vector(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "document_id"], ["ai_documents.tenant_id", "ai_documents.id"],
            ondelete="CASCADE", name="fk_ai_chunks_document",
        ),
        sa.CheckConstraint("vector_dims(embedding) = dimensions", name="ck_ai_chunks_dimensions"),
        privileges="SELECT, INSERT, DELETE",
    )
    op.create_index("ix_ai_chunks_tenant_document", "ai_chunks", ["tenant_id", "document_id", "ordinal"])
    for size in (*VECTOR_SIZES, *HALFVEC_SIZES):
        expression, opclass = _index_expression(size)
        op.execute(
            f"CREATE INDEX ix_ai_chunks_embedding_{size} ON ai_chunks USING hnsw ({expression} {opclass}) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE dimensions = {size}"
        )


def drop_tables() -> None:
    op.execute("DROP TABLE IF EXISTS ai_chunks")
    op.execute("DROP TABLE IF EXISTS ai_documents")


def catch_up(conn: Connection) -> bool:
    """Create the retrieval tables if they are missing and pgvector can now be had. Call only on
    a database whose kernel branch is at its head (past ``kernel_0007``). Returns whether the
    tables exist afterwards."""
    if tables_exist(conn):
        return True
    if not pgvector_ready(conn):
        return False
    with Operations.context(MigrationContext.configure(conn)):
        create_tables()
    log.info("retrieval tables created (pgvector is available now)")
    return True
