"""Conversations: stored chat histories that a call can continue.

A conversation belongs to the principal that started it (a user, or an API key): only that
principal lists, reads, continues, renames or deletes it; to anyone else, owners and admins
included, it does not exist (404). Usage and the audit log remain the tenant-wide view.

A call that continues a conversation sends its stored messages first. The new messages and the
answer are stored, and the totals updated, in the transaction that settles the call, so a failed
or cancelled call stores nothing. A call with ``save: true`` and no ``conversation_id`` starts a
conversation, created only when the call succeeds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.library_schemas import (
    Conversation,
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationUpdate,
    StoredMessage,
)
from kernel.ai.prompts import page_bounds, page_of
from kernel.ai.tables import ConversationRow, MessageRow
from kernel.audit.log import RequestMeta, record
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.errors import NotFound

__all__ = ["ConversationPlan", "ConversationService", "continue_conversation", "store_exchange"]

_TITLE_LENGTH = 80


@dataclass
class ConversationPlan:
    """What a call will store in a conversation when it settles."""

    id: uuid.UUID
    new: bool
    created_by: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The call's own new messages (the stored history is not stored again)."""


def _conversation(row: ConversationRow) -> Conversation:
    return Conversation(
        id=row.id, title=row.title, model=row.model, created_by=row.created_by, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, cost=str(row.cost), message_count=row.message_count,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _message(row: MessageRow) -> StoredMessage:
    return StoredMessage(
        id=row.id, position=row.position, role=row.role, content=row.content, model=row.model,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens, cost=str(row.cost),
        created_at=row.created_at,
    )


async def _owned(session: AsyncSession, conversation_id: uuid.UUID, actor: str | None) -> ConversationRow:
    row = (
        await session.execute(
            select(ConversationRow).where(ConversationRow.id == conversation_id, ConversationRow.created_by == actor)
        )
    ).scalar_one_or_none()
    if row is None or actor is None:
        raise NotFound(f"no conversation {conversation_id}", extra={"conversation_id": str(conversation_id)})
    return row


async def continue_conversation(
    session: AsyncSession, conversation_id: uuid.UUID, actor: str | None
) -> tuple[ConversationRow, list[dict[str, Any]]]:
    """The conversation (404 unless ``actor`` started it) and its stored messages, oldest first,
    as chat messages."""
    row = await _owned(session, conversation_id, actor)
    history = (
        await session.execute(
            select(MessageRow.role, MessageRow.content)
            .where(MessageRow.conversation_id == row.id)
            .order_by(MessageRow.position)
        )
    ).all()
    return row, [{"role": m.role, "content": m.content} for m in history]


def _title(messages: list[dict[str, Any]]) -> str | None:
    for message in messages:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str) and content.strip():
            line = " ".join(content.split())
            return line if len(line) <= _TITLE_LENGTH else line[: _TITLE_LENGTH - 1] + "…"
    return None


_ADVANCE = text(
    """update ai_conversations
          set message_count = message_count + :n, prompt_tokens = prompt_tokens + :p,
              completion_tokens = completion_tokens + :c, cost = cost + :cost, updated_at = now()
        where id = :id
    returning message_count"""
)


async def store_exchange(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    plan: ConversationPlan,
    *,
    model: str,
    answer: dict[str, Any],
    prompt_tokens: int,
    completion_tokens: int,
    cost: Decimal,
    usage_id: uuid.UUID,
) -> bool:
    """Store the call's new messages and ``answer`` and add to the totals, in the settling
    transaction; ``False`` when the conversation was deleted meanwhile (nothing stored)."""
    if plan.new:
        session.add(
            ConversationRow(
                tenant_id=tenant_id, id=plan.id, title=_title(plan.messages), model=model, created_by=plan.created_by,
            )
        )
        await session.flush()
    stored = [*plan.messages, answer]
    # The update locks the row: concurrent calls on one conversation get distinct positions.
    last = (
        await session.execute(
            _ADVANCE,
            {"n": len(stored), "p": prompt_tokens, "c": completion_tokens, "cost": cost, "id": plan.id},
        )
    ).scalar_one_or_none()
    if last is None:
        return False
    first = last - len(stored) + 1
    for offset, message in enumerate(stored):
        is_answer = offset == len(stored) - 1
        session.add(
            MessageRow(
                tenant_id=tenant_id, id=uuid7(), conversation_id=plan.id, position=first + offset,
                role=str(message.get("role") or "user"), content=message.get("content"),
                model=model if is_answer else None,
                prompt_tokens=prompt_tokens if is_answer else 0,
                completion_tokens=completion_tokens if is_answer else 0,
                cost=cost if is_answer else Decimal(0),
                usage_id=usage_id if is_answer else None,
            )
        )
    await session.flush()
    return True


class ConversationService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, tenant_id: uuid.UUID, actor: str | None, page: int, limit: int) -> ConversationList:
        offset, limit = page_bounds(page, limit)
        mine = ConversationRow.created_by == actor
        async with self.db.tenant(tenant_id) as session:
            total = (await session.execute(select(func.count()).select_from(ConversationRow).where(mine))).scalar_one()
            rows = (
                await session.execute(
                    select(ConversationRow)
                    .where(mine)
                    .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).scalars()
            return ConversationList(
                conversations=[_conversation(r) for r in rows], pagination=page_of(page, limit, total)
            )

    async def create(
        self, tenant_id: uuid.UUID, data: ConversationCreate, *, actor: str | None, meta: RequestMeta
    ) -> Conversation:
        now = utcnow()
        row = ConversationRow(
            tenant_id=tenant_id, id=uuid7(), title=data.title, model=data.model, created_by=actor,
            prompt_tokens=0, completion_tokens=0, cost=Decimal(0), message_count=0, created_at=now, updated_at=now,
        )
        async with self.db.tenant(tenant_id) as session:
            session.add(row)
            await session.flush()
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.conversation.created",
                resource_type="ai_conversation", resource_id=str(row.id), meta=meta,
                after={"title": data.title, "model": data.model},
            )
        return _conversation(row)

    async def get(
        self, tenant_id: uuid.UUID, conversation_id: uuid.UUID, actor: str | None, page: int, limit: int
    ) -> ConversationDetail:
        """The conversation and one page of its messages, oldest first."""
        offset, limit = page_bounds(page, limit)
        async with self.db.tenant(tenant_id) as session:
            row = await _owned(session, conversation_id, actor)
            messages = (
                await session.execute(
                    select(MessageRow)
                    .where(MessageRow.conversation_id == row.id)
                    .order_by(MessageRow.position)
                    .offset(offset)
                    .limit(limit)
                )
            ).scalars()
            return ConversationDetail(
                conversation=_conversation(row), messages=[_message(m) for m in messages],
                pagination=page_of(page, limit, row.message_count),
            )

    async def rename(
        self, tenant_id: uuid.UUID, conversation_id: uuid.UUID, data: ConversationUpdate, *, actor: str | None,
        meta: RequestMeta,
    ) -> Conversation:
        async with self.db.tenant(tenant_id) as session:
            row = await _owned(session, conversation_id, actor)
            before = row.title
            row.title = data.title
            row.updated_at = utcnow()
            await session.flush()
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.conversation.renamed",
                resource_type="ai_conversation", resource_id=str(row.id), meta=meta,
                before={"title": before}, after={"title": data.title},
            )
            return _conversation(row)

    async def delete(
        self, tenant_id: uuid.UUID, conversation_id: uuid.UUID, *, actor: str | None, meta: RequestMeta
    ) -> None:
        async with self.db.tenant(tenant_id) as session:
            row = await _owned(session, conversation_id, actor)
            await session.execute(delete(ConversationRow).where(ConversationRow.id == row.id))
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.conversation.deleted",
                resource_type="ai_conversation", resource_id=str(row.id), meta=meta,
                before={"title": row.title, "message_count": row.message_count},
            )
