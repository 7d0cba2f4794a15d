"""``/api/ai/documents`` and ``/api/ai/search``: the tenant's documents for retrieval."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, delete, get, post

from kernel.ai.proxy import CALL_PROBLEMS
from kernel.ai.retrieval.schemas import (
    DocumentCreate,
    DocumentDetail,
    DocumentOut,
    DocumentPage,
    SearchRequest,
    SearchResult,
)
from kernel.ai.service import caller_of
from kernel.context import Kernel
from kernel.tenants.schemas import Tenant

__all__ = ["handlers"]

READ = "kernel.ai.documents.read"
WRITE = "kernel.ai.documents.write"


@post("/api/ai/documents", status_code=201, tags=["ai"], opt={"permission": WRITE, **CALL_PROBLEMS})
async def ingest_document(
    data: DocumentCreate, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> DocumentOut:
    """Split ``text`` into chunks, embed them with the tenant's key (metered, budgeted) and store
    them; a refused budget or a provider error stores nothing."""
    return await kernel.retrieval.ingest(caller_of(request, tenant.id, "api"), data)


@get("/api/ai/documents", tags=["ai"], opt={"permission": READ})
async def list_documents(
    kernel: Kernel, tenant: Tenant, cursor: str | None = None, limit: int | None = None
) -> DocumentPage:
    """The tenant's documents, newest first; ``limit`` 1-200 (default 50), then ``next_cursor``."""
    return await kernel.retrieval.list(tenant.id, cursor, limit)


@get("/api/ai/documents/{document_id:uuid}", tags=["ai"], opt={"permission": READ})
async def get_document(document_id: uuid.UUID, kernel: Kernel, tenant: Tenant) -> DocumentDetail:
    """One document with its chunks' text (never the embeddings)."""
    return await kernel.retrieval.get(tenant.id, document_id)


@delete("/api/ai/documents/{document_id:uuid}", tags=["ai"], opt={"permission": WRITE})
async def delete_document(
    document_id: uuid.UUID, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> None:
    """Delete a document and its chunks."""
    await kernel.retrieval.delete(caller_of(request, tenant.id, "api"), document_id)


@post("/api/ai/search", status_code=200, tags=["ai"], opt={"permission": READ, **CALL_PROBLEMS})
async def search_documents(
    data: SearchRequest, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> SearchResult:
    """The ``k`` chunks nearest to ``query`` by cosine similarity (embedding the query is metered)."""
    return await kernel.retrieval.search_result(
        caller_of(request, tenant.id, "api"), data.query, data.k, data.filters, data.model
    )


handlers = [ingest_document, list_documents, get_document, delete_document, search_documents]
