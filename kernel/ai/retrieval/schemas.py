"""Request and response bodies of the retrieval routes (and the sources a chat answer cites)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

__all__ = [
    "ChatSource",
    "ChunkOut",
    "DocumentCreate",
    "DocumentDetail",
    "DocumentOut",
    "DocumentPage",
    "SearchFilters",
    "SearchHit",
    "SearchRequest",
    "SearchResult",
]

Scalar = str | int | float | bool | None
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Metadata = Annotated[dict[MetadataKey, Any], msgspec.Meta(max_length=50)]


class DocumentCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1_000_000)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    source: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    metadata: Metadata | None = None
    """Copied to every chunk; ``filters.metadata`` in a search matches it."""
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    chunk_size: Annotated[int, msgspec.Meta(ge=100, le=8000)] = 1000
    """Characters per chunk, at most."""
    chunk_overlap: Annotated[int, msgspec.Meta(ge=0, le=4000)] = 200
    """Characters a chunk repeats from the end of the one before; less than ``chunk_size``."""


class DocumentOut(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    title: str
    source: str | None
    metadata: dict[str, Any]
    model: str
    dimensions: int
    chunk_count: int
    chunk_size: int
    chunk_overlap: int
    characters: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ChunkOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    ordinal: int
    text: str


class DocumentDetail(msgspec.Struct, frozen=True):
    document: DocumentOut
    chunks: list[ChunkOut]


class DocumentPage(msgspec.Struct, frozen=True):
    documents: list[DocumentOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) documents; ``null`` after the last."""


class SearchFilters(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    metadata: Annotated[dict[MetadataKey, Scalar], msgspec.Meta(max_length=20)] | None = None
    """Each key must equal the value in the document's metadata."""
    document_ids: Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=100)] | None = None
    """Only chunks of these documents."""


class SearchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    k: Annotated[int, msgspec.Meta(ge=1, le=50)] = 5
    filters: SearchFilters | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """Embedding model; default: the one the newest document in scope was embedded with."""


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: uuid.UUID
    document_id: uuid.UUID
    title: str
    ordinal: int
    text: str
    metadata: dict[str, Any]
    score: float
    """Cosine similarity, 1 for the same direction."""


class SearchResult(msgspec.Struct, frozen=True):
    model: str
    hits: list[SearchHit]
    cost: str
    """What embedding the query cost (Decimal as a string)."""


class ChatSource(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    """The ``[n]`` the system message gave this source."""
    document_id: uuid.UUID
    chunk_id: uuid.UUID
    title: str
    score: float
