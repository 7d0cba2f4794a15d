"""Request and response bodies of the AI routes."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

import msgspec

from kernel.ai.retrieval.schemas import ChatSource, SearchFilters

__all__ = [
    "Budget",
    "BudgetUpdate",
    "ChatAnswer",
    "ChatRequest",
    "KeyInfo",
    "KeyList",
    "KeyUpdate",
    "ProviderInfo",
    "ProviderList",
    "Usage",
    "UsageReport",
    "UsageRow",
]


class ProviderInfo(msgspec.Struct, frozen=True):
    id: str
    name: str
    models: list[str]
    configured: bool
    requiresApiBase: bool


class ProviderList(msgspec.Struct, frozen=True):
    providers: list[ProviderInfo]
    tenantConfig: dict[str, Any]


class KeyUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    api_key: Annotated[str, msgspec.Meta(min_length=8, max_length=500)]
    api_base: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class KeyInfo(msgspec.Struct, frozen=True):
    provider: str
    last_four: str
    api_base: str | None
    created_at: datetime
    updated_at: datetime


class KeyList(msgspec.Struct, frozen=True):
    keys: list[KeyInfo]


class Message(msgspec.Struct, frozen=True):
    role: str
    content: Any = None
    name: str | None = None


class ChatRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """Absent: the template's default model, else the tenant's (``PUT /api/ai/settings``)."""
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=500)] | None = None
    """Exactly one of ``messages`` and ``template``."""
    stream: bool = False
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    conversation_id: uuid.UUID | None = None
    object_type: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    object_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    retrieval: bool = False
    """Search the tenant's documents with the last user message; the hits go first as numbered sources."""
    retrieval_k: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None
    retrieval_filters: SearchFilters | None = None
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    """A prompt template's id or name, rendered with ``variables`` into the messages."""
    variables: dict[str, Any] | None = None
    template_version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    save: bool = False
    """Without ``conversation_id``: store this exchange as a new conversation (its id is answered)."""


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


class ChatAnswer(msgspec.Struct, frozen=True):
    id: str
    model: str
    message: dict[str, Any]
    usage: Usage
    cost: str
    """Decimal, as a string (money never goes through a float)."""
    finish_reason: str | None = None
    sources: list[ChatSource] | msgspec.UnsetType = msgspec.UNSET
    """With ``retrieval``: the chunks the system message numbered (absent without retrieval)."""
    conversation_id: uuid.UUID | None = None
    """The conversation this exchange was stored in (``conversation_id`` or ``save: true``)."""


class BudgetUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    monthly_cost_limit: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    monthly_token_limit: Annotated[int, msgspec.Meta(ge=0, le=10**15)] | None = None
    # numeric(6, 5): a smaller ratio would round to 0, which the table refuses
    soft_limit_ratio: Annotated[float, msgspec.Meta(ge=0.00001, le=1)] = 0.8
    principal: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    """``user:<id>`` or ``api_key:<id>`` for that principal's own budget; absent: the tenant's."""


class Budget(msgspec.Struct, frozen=True):
    scope: str
    monthly_cost_limit: str | None
    monthly_token_limit: int | None
    soft_limit_ratio: str
    month: date
    spent_cost: str
    spent_tokens: int
    reserved_cost: str
    reserved_tokens: int
    remaining_cost: str | None
    remaining_tokens: int | None


class UsageRow(msgspec.Struct, frozen=True):
    day: date
    model: str
    principal: str | None
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: str


class UsageReport(msgspec.Struct, frozen=True):
    since: datetime
    until: datetime
    rows: list[UsageRow]
    totals: dict[str, Any]
