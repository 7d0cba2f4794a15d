"""Documents in, nearest chunks out: ingestion, listing, deletion and search.

Ingestion chunks the text (:mod:`kernel.ai.retrieval.chunking`), embeds the chunks in batches
through :meth:`AIProxy.embed` (the tenant's key, metered and budgeted), and only when every batch
came back stores the document and its chunks, audits and emits ``ai.document.ingested`` in one
tenant transaction: a refused budget or a provider error stores nothing.

Search embeds the query with the model the documents in scope were embedded with and asks for
the nearest chunks by cosine distance with the same expression the partial HNSW index of that
size is built on. Row-level security filters other tenants' rows out of what the index returns;
pgvector's iterative scan (0.8 and later) keeps scanning until enough of the tenant's rows come
back, and when the index still yields fewer than ``k`` the query runs again exactly.
"""

from __future__ import annotations

import base64
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.proxy import AIProxy, Caller, ProviderFailed
from kernel.ai.retrieval.chunking import split_text
from kernel.ai.retrieval.schema import MAX_DIMENSIONS, distance_sql
from kernel.ai.retrieval.schemas import (
    ChunkOut,
    DocumentCreate,
    DocumentDetail,
    DocumentOut,
    DocumentPage,
    SearchFilters,
    SearchHit,
    SearchResult,
)
from kernel.audit.log import record
from kernel.db.engine import Database
from kernel.db.models import uuid7
from kernel.errors import FieldError, NotFound, Problem, Unprocessable
from kernel.events.outbox import emit

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "INGESTED_EVENT",
    "RetrievalService",
    "RetrievalUnavailable",
    "Retrieved",
]

INGESTED_EVENT = "ai.document.ingested"
DELETED_EVENT = "ai.document.deleted"
# One default for every tenant until per-tenant AI settings provide one.
DEFAULT_EMBEDDING_MODEL = "openai/text-embedding-3-small"
EMBED_BATCH = 64
MAX_CHUNKS = 2000
MAX_METADATA_BYTES = 16_384
# HNSW candidates per search (pgvector's default is 40); bench/vector_search.py measures recall.
EF_SEARCH = 200
DEFAULT_PAGE = 50
MAX_PAGE = 200


class RetrievalUnavailable(Problem):
    status, slug, title = 503, "ai-retrieval-unavailable", "Retrieval unavailable"


def _unavailable() -> RetrievalUnavailable:
    return RetrievalUnavailable(
        "retrieval needs the PostgreSQL extension pgvector: install it on the database server, "
        "then run `businessos migrate`"
    )


@dataclass(frozen=True)
class Retrieved:
    """A search's hits and what embedding the query cost."""

    model: str
    hits: list[SearchHit]
    cost: Decimal


def _literal(vector: list[float]) -> str:
    """A vector as pgvector's text form ``[1,2,3]``."""
    return msgspec.json.encode(vector).decode()


def _checked_vectors(vectors: list[list[float]], expected: int) -> int:
    """The vectors' common size; a provider answer that is not one vector per input of one
    finite size is a provider error."""
    sizes = {len(v) for v in vectors}
    if len(vectors) != expected or len(sizes) != 1:
        raise ProviderFailed("the provider returned embeddings of differing sizes or count")
    size = sizes.pop()
    if not 0 < size <= MAX_DIMENSIONS or not all(math.isfinite(x) for v in vectors for x in v):
        raise ProviderFailed(f"the provider returned unusable embeddings ({size} dimensions)")
    return size


def _document(row: Any) -> DocumentOut:
    return DocumentOut(
        id=row.id, title=row.title, source=row.source, metadata=row.metadata, model=row.model,
        dimensions=row.dimensions, chunk_count=row.chunk_count, chunk_size=row.chunk_size,
        chunk_overlap=row.chunk_overlap, characters=row.characters, created_by=row.created_by,
        created_at=row.created_at, updated_at=row.updated_at,
    )


_DOCUMENT_COLUMNS = (
    "id, title, source, metadata, model, dimensions, chunk_count, chunk_size, chunk_overlap, characters, "
    "created_by, created_at, updated_at"
)
_INSERT_DOCUMENT = text(
    """insert into ai_documents (tenant_id, id, title, source, metadata, model, dimensions, chunk_count,
                                 chunk_size, chunk_overlap, characters, created_by)
       values (:tenant, :id, :title, :source, cast(:metadata as jsonb), :model, :dimensions, :chunk_count,
               :chunk_size, :chunk_overlap, :characters, :created_by)
       returning id, title, source, metadata, model, dimensions, chunk_count, chunk_size, chunk_overlap,
                 characters, created_by, created_at, updated_at"""
)
# Statements assembled from fixed fragments only (no input reaches the SQL text).
_LIST_FIRST = text(f"select {_DOCUMENT_COLUMNS} from ai_documents order by id desc limit :n")  # noqa: S608
_LIST_AFTER = text(
    f"select {_DOCUMENT_COLUMNS} from ai_documents where id < :after order by id desc limit :n"  # noqa: S608
)
_GET_DOCUMENT = text(f"select {_DOCUMENT_COLUMNS} from ai_documents where id = :id")  # noqa: S608
_NEWEST_MODEL = text("select model from ai_documents order by id desc limit 1")
_NEWEST_MODEL_OF = text("select model from ai_documents where id = any(:ids) order by id desc limit 1")
_INSERT_CHUNK = text(
    """insert into ai_chunks (tenant_id, id, document_id, ordinal, text, metadata, model, dimensions, embedding)
       values (:tenant, :id, :document_id, :ordinal, :text, cast(:metadata as jsonb), :model, :dimensions,
               cast(:embedding as vector))"""
)


def _cursor(row: Any) -> str:
    return base64.urlsafe_b64encode(row.id.bytes).decode().rstrip("=")


def _after(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise Unprocessable(
            "cursor is not one this API returned",
            errors=[FieldError("cursor", "is not a cursor this API returned")],
        ) from None


def _metadata_json(metadata: dict[str, Any] | None, field: str) -> str:
    encoded = msgspec.json.encode(metadata or {})
    if len(encoded) > MAX_METADATA_BYTES or b"\\u0000" in encoded:
        raise Unprocessable(
            f"{field} must be at most {MAX_METADATA_BYTES} bytes of JSON without NUL characters",
            errors=[FieldError(field, f"at most {MAX_METADATA_BYTES} bytes of JSON, no NUL characters")],
        )
    return encoded.decode()


def _search_sql(dimensions: int, filters: SearchFilters | None) -> Any:
    distance = distance_sql(dimensions)
    where = [f"dimensions = {int(dimensions)}", "model = :model"]
    if filters is not None and filters.metadata:
        where.append("metadata @> cast(:metadata as jsonb)")
    if filters is not None and filters.document_ids:
        where.append("document_id = any(:document_ids)")
    # The inner query is what the partial index serves (same expression, same predicate); the
    # outer one adds titles and puts relaxed-order index results back in order.
    # Fixed fragments and an int only: no input reaches the SQL text.
    return text(
        f"""select h.id, h.document_id, h.ordinal, h.text, h.metadata, h.distance, d.title
              from (select id, document_id, ordinal, text, metadata, {distance} as distance
                      from ai_chunks
                     where {" and ".join(where)}
                     order by {distance}
                     limit :k) h
              join ai_documents d on d.id = h.document_id
             order by h.distance, h.id"""  # noqa: S608
    )


class RetrievalService:
    def __init__(self, db: Database, proxy: AIProxy) -> None:
        self.db = db
        self.proxy = proxy
        self._pgvector: str | None = None
        """pgvector's version once the retrieval tables were seen (they never go away at run time)."""

    async def _require(self, session: AsyncSession | None = None) -> str | None:
        """pgvector's version when the retrieval tables exist, else ``None``."""
        if self._pgvector is None:
            query = text(
                "select (select extversion from pg_extension where extname = 'vector') as version, "
                "to_regclass('ai_chunks') is not null as ready"
            )
            if session is None:
                async with self.db.global_() as own:
                    row = (await own.execute(query)).one()
            else:
                row = (await session.execute(query)).one()
            if row.ready and row.version:
                self._pgvector = str(row.version)
        return self._pgvector

    async def ensure_available(self) -> None:
        """503 ``ai-retrieval-unavailable`` where the database has no retrieval tables."""
        if await self._require() is None:
            raise _unavailable()

    # ---- documents ------------------------------------------------------------------------------

    async def ingest(self, caller: Caller, data: DocumentCreate) -> DocumentOut:
        """Chunk, embed (metered) and store a document; nothing is stored unless every batch of
        embeddings came back."""
        if data.chunk_overlap >= data.chunk_size:
            raise Unprocessable(
                "chunk_overlap must be less than chunk_size",
                errors=[FieldError("chunk_overlap", f"must be less than chunk_size ({data.chunk_size})")],
            )
        if "\x00" in data.text:
            raise Unprocessable("text must not contain NUL characters", errors=[FieldError("text", "contains NUL")])
        metadata = _metadata_json(data.metadata, "metadata")
        await self.ensure_available()
        chunks = split_text(data.text, data.chunk_size, data.chunk_overlap)
        if not chunks:
            raise Unprocessable("text has nothing but whitespace", errors=[FieldError("text", "is blank")])
        if len(chunks) > MAX_CHUNKS:
            raise Unprocessable(
                f"text makes {len(chunks)} chunks, more than {MAX_CHUNKS}: split it or raise chunk_size",
                errors=[FieldError("text", f"more than {MAX_CHUNKS} chunks")],
            )
        settings = await self.proxy.tenant_settings.current(caller.tenant_id)
        model = data.model or settings.default_embedding_model or DEFAULT_EMBEDDING_MODEL
        vectors: list[list[float]] = []
        resolved = model
        for first in range(0, len(chunks), EMBED_BATCH):
            batch = [c.text for c in chunks[first : first + EMBED_BATCH]]
            got, completion = await self.proxy.embed(caller, model, batch)
            _checked_vectors(got, len(batch))
            vectors.extend(got)
            resolved = completion.model
        dimensions = _checked_vectors(vectors, len(chunks))
        title = data.title or (data.source or chunks[0].text.split("\n", 1)[0])[:200]
        actor = caller.principal.actor if caller.principal else None
        document_id = uuid7()
        tenant = caller.tenant_id
        async with self.db.tenant(tenant) as session:
            row = (
                await session.execute(
                    _INSERT_DOCUMENT,
                    {
                        "tenant": tenant, "id": document_id, "title": title, "source": data.source,
                        "metadata": metadata, "model": resolved, "dimensions": dimensions,
                        "chunk_count": len(chunks), "chunk_size": data.chunk_size,
                        "chunk_overlap": data.chunk_overlap, "characters": len(data.text), "created_by": actor,
                    },
                )
            ).one()
            await session.execute(
                _INSERT_CHUNK,
                [
                    {
                        "tenant": tenant, "id": uuid7(), "document_id": document_id, "ordinal": i,
                        "text": chunk.text, "metadata": metadata, "model": resolved, "dimensions": dimensions,
                        "embedding": _literal(vector),
                    }
                    for i, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
                ],
            )
            details = {
                "title": title, "source": data.source, "model": resolved, "dimensions": dimensions,
                "chunk_count": len(chunks), "characters": len(data.text),
            }
            await record(
                session, tenant_id=tenant, actor=actor, action="ai.document.ingested",
                resource_type="ai_document", resource_id=str(document_id), meta=caller.meta, details=details,
            )
            await emit(
                session, tenant_id=tenant, event=INGESTED_EVENT,
                payload={"document_id": str(document_id), **details, "principal": actor},
            )
        return _document(row)

    async def list(self, tenant_id: uuid.UUID, cursor: str | None, limit: int | None) -> DocumentPage:
        """The tenant's documents, newest first (keyset on the time-ordered id)."""
        size = DEFAULT_PAGE if limit is None else limit
        if not 1 <= size <= MAX_PAGE:
            raise Unprocessable(
                f"limit must be between 1 and {MAX_PAGE}", errors=[FieldError("limit", f"must be 1..{MAX_PAGE}")]
            )
        after = _after(cursor) if cursor else None
        async with self.db.tenant(tenant_id) as session:
            if await self._require(session) is None:
                return DocumentPage(documents=[], next_cursor=None)  # nothing can have been stored
            rows = (
                await session.execute(
                    _LIST_AFTER if after else _LIST_FIRST,
                    {"after": after, "n": size + 1} if after else {"n": size + 1},
                )
            ).all()
        more = len(rows) > size
        rows = rows[:size]
        return DocumentPage(
            documents=[_document(r) for r in rows], next_cursor=_cursor(rows[-1]) if more and rows else None
        )

    async def get(self, tenant_id: uuid.UUID, document_id: uuid.UUID) -> DocumentDetail:
        async with self.db.tenant(tenant_id) as session:
            if await self._require(session) is None:
                raise NotFound(f"no document {document_id}")
            row = (
                await session.execute(_GET_DOCUMENT, {"id": document_id})
            ).one_or_none()
            if row is None:
                raise NotFound(f"no document {document_id}")
            chunks = (
                await session.execute(
                    text("select id, ordinal, text from ai_chunks where document_id = :id order by ordinal"),
                    {"id": document_id},
                )
            ).all()
        return DocumentDetail(
            document=_document(row), chunks=[ChunkOut(id=c.id, ordinal=c.ordinal, text=c.text) for c in chunks]
        )

    async def delete(self, caller: Caller, document_id: uuid.UUID) -> None:
        """Delete a document and (by the foreign key's cascade) its chunks."""
        tenant = caller.tenant_id
        actor = caller.principal.actor if caller.principal else None
        async with self.db.tenant(tenant) as session:
            if await self._require(session) is None:
                raise NotFound(f"no document {document_id}")
            row = (
                await session.execute(
                    text("delete from ai_documents where id = :id returning title, chunk_count"), {"id": document_id}
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"no document {document_id}")
            details = {"title": row.title, "chunk_count": row.chunk_count}
            await record(
                session, tenant_id=tenant, actor=actor, action="ai.document.deleted",
                resource_type="ai_document", resource_id=str(document_id), meta=caller.meta, details=details,
            )
            await emit(
                session, tenant_id=tenant, event=DELETED_EVENT,
                payload={"document_id": str(document_id), **details, "principal": actor},
            )

    # ---- search ---------------------------------------------------------------------------------

    async def _model_in_scope(self, tenant_id: uuid.UUID, filters: SearchFilters | None) -> str | None:
        """The embedding model of the newest document the filters allow (``None``: no documents)."""
        ids = filters.document_ids if filters is not None else None
        async with self.db.tenant(tenant_id) as session:
            found = await session.execute(_NEWEST_MODEL_OF if ids else _NEWEST_MODEL, {"ids": ids} if ids else {})
            model: str | None = found.scalar_one_or_none()
        return model

    async def search(
        self, caller: Caller, query: str, k: int, filters: SearchFilters | None = None, model: str | None = None
    ) -> Retrieved:
        """The ``k`` chunks nearest to ``query`` among the tenant's, best first."""
        version = await self._require()
        if version is None:
            raise _unavailable()
        if filters is not None and filters.metadata:
            _metadata_json(filters.metadata, "filters.metadata")
        model = model or await self._model_in_scope(caller.tenant_id, filters)
        if model is None:  # no documents: nothing to find, nothing to pay for
            return Retrieved(model=DEFAULT_EMBEDDING_MODEL, hits=[], cost=Decimal(0))
        vectors, completion = await self.proxy.embed(caller, model, [query])
        dimensions = _checked_vectors(vectors, 1)
        params: dict[str, Any] = {"query": _literal(vectors[0]), "model": completion.model, "k": k}
        if filters is not None and filters.metadata:
            params["metadata"] = _metadata_json(filters.metadata, "filters.metadata")
        if filters is not None and filters.document_ids:
            params["document_ids"] = filters.document_ids
        statement = _search_sql(dimensions, filters)
        async with self.db.tenant(caller.tenant_id) as session:
            await session.execute(
                text("select set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(EF_SEARCH, k))}
            )
            if _at_least(version, (0, 8)):
                await session.execute(text("select set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
            rows = (await session.execute(statement, params)).all()
            if len(rows) < k:
                # The index gave up early (other tenants' rows crowd the graph), or the tenant has
                # fewer than k chunks: an exact scan of the tenant's rows settles it.
                await session.execute(text("select set_config('enable_indexscan', 'off', true)"))
                rows = (await session.execute(statement, params)).all()
        hits = [
            SearchHit(
                chunk_id=r.id, document_id=r.document_id, title=r.title, ordinal=r.ordinal, text=r.text,
                metadata=r.metadata, score=round(1.0 - float(r.distance), 6),
            )
            for r in rows
        ]
        return Retrieved(model=completion.model, hits=hits, cost=completion.cost)

    async def search_result(
        self, caller: Caller, query: str, k: int, filters: SearchFilters | None, model: str | None
    ) -> SearchResult:
        found = await self.search(caller, query, k, filters, model)
        return SearchResult(model=found.model, hits=found.hits, cost=str(found.cost))


def _at_least(version: str, wanted: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= wanted
