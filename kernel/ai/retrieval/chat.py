"""Retrieval-augmented chat: the last user message searches the tenant's documents and the hits
go before the conversation as one system message of numbered sources."""

from __future__ import annotations

from typing import Any

from kernel.ai.proxy import Caller
from kernel.ai.retrieval.schemas import ChatSource, SearchFilters
from kernel.ai.retrieval.service import RetrievalService
from kernel.errors import FieldError, Forbidden, Unprocessable
from kernel.identity.principal import Principal

__all__ = ["DEFAULT_K", "READ", "augment"]

READ = "kernel.ai.documents.read"
DEFAULT_K = 5

_INSTRUCTIONS = (
    "Answer from the numbered sources below when they are relevant, and cite them as [n]. "
    "If they do not hold the answer, say so rather than guess."
)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.strip()
        if isinstance(content, list):  # multimodal parts: their text
            return " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
            ).strip()
    return ""


async def augment(
    retrieval: RetrievalService,
    caller: Caller,
    principal: Principal | None,
    messages: list[dict[str, Any]],
    k: int | None,
    filters: SearchFilters | None,
) -> tuple[list[dict[str, Any]], list[ChatSource]]:
    """``messages`` with the sources' system message first, and the sources it numbers."""
    if principal is None or READ not in principal.permissions:
        raise Forbidden(f"missing permission {READ} (retrieval reads the tenant's documents)")
    query = _last_user_text(messages)
    if not query:
        raise Unprocessable(
            "retrieval searches with the last user message, and there is none with text",
            errors=[FieldError("messages", "no user message with text")],
        )
    found = await retrieval.search(caller, query[:8000], k or DEFAULT_K, filters)
    sources = [
        ChatSource(number=n, document_id=hit.document_id, chunk_id=hit.chunk_id, title=hit.title, score=hit.score)
        for n, hit in enumerate(found.hits, start=1)
    ]
    if not found.hits:
        return messages, sources
    listing = "\n\n".join(f"[{n}] {hit.title}\n{hit.text}" for n, hit in enumerate(found.hits, start=1))
    system = {"role": "system", "content": f"{_INSTRUCTIONS}\n\n{listing}"}
    return [system, *messages], sources
