"""Request and response bodies of prompt templates, conversations and the tenant's AI settings."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

__all__ = [
    "AISettings",
    "AISettingsUpdate",
    "Conversation",
    "ConversationCreate",
    "ConversationDetail",
    "ConversationList",
    "ConversationUpdate",
    "MessageTemplate",
    "Page",
    "Prompt",
    "PromptCreate",
    "PromptDetail",
    "PromptList",
    "PromptParameters",
    "PromptUpdate",
    "PromptVersion",
    "RenderRequest",
    "Rendered",
    "StoredMessage",
]

ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Page(msgspec.Struct, frozen=True):
    page: int
    limit: int
    total: int
    pages: int


# --- settings -------------------------------------------------------------------------------------


class AISettingsUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole of the tenant's AI settings (``PUT`` replaces them; an absent field takes its default)."""

    default_model: ModelName | None = None
    default_embedding_model: ModelName | None = None
    fallback_models: Annotated[list[ModelName], msgspec.Meta(max_length=5)] = []
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=600)] | None = None
    """``null``: the server's ``BUSINESSOS_AI_TIMEOUT_SECONDS``."""
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    log_prompts: bool = False


class AISettings(msgspec.Struct, frozen=True):
    default_model: str | None
    default_embedding_model: str | None
    fallback_models: list[str]
    timeout_seconds: int | None
    retries: int
    log_prompts: bool
    effective_timeout_seconds: int
    updated_at: datetime | None = None


# --- prompt templates -----------------------------------------------------------------------------


class MessageTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Annotated[str, msgspec.Meta(pattern="^(system|user|assistant)$")]
    content: Annotated[str, msgspec.Meta(max_length=100_000)]


Template = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)] | Annotated[
    list[MessageTemplate], msgspec.Meta(min_length=1, max_length=50)
]


class PromptParameters(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class PromptCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    template: Template
    description: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    model: ModelName | None = None
    parameters: PromptParameters = PromptParameters()


class PromptUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A new version: absent fields keep the latest version's value (``template``, ``model``,
    ``parameters``) or the prompt's (``description``)."""

    template: Template | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    model: ModelName | None = None
    parameters: PromptParameters | None = None


class PromptVersion(msgspec.Struct, frozen=True):
    version: int
    template: str | list[MessageTemplate]
    variables: list[str]
    model: str | None
    parameters: PromptParameters
    created_at: datetime
    created_by: str | None


class Prompt(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    description: str | None
    latest_version: int
    created_at: datetime
    updated_at: datetime


class PromptDetail(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    description: str | None
    latest_version: int
    created_at: datetime
    updated_at: datetime
    latest: PromptVersion
    versions: list[int]


class PromptList(msgspec.Struct, frozen=True):
    prompts: list[Prompt]
    pagination: Page


class RenderRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    variables: dict[str, Any] = {}
    version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None  # an int4 column


class Rendered(msgspec.Struct, frozen=True):
    prompt_id: uuid.UUID
    version: int
    messages: list[dict[str, Any]]
    model: str | None
    parameters: PromptParameters


# --- conversations --------------------------------------------------------------------------------


class ConversationCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    model: ModelName | None = None


class ConversationUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=500)] | None


class Conversation(msgspec.Struct, frozen=True):
    id: uuid.UUID
    title: str | None
    model: str | None
    created_by: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: str
    message_count: int
    created_at: datetime
    updated_at: datetime


class StoredMessage(msgspec.Struct, frozen=True):
    id: uuid.UUID
    position: int
    role: str
    content: Any
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: str
    created_at: datetime


class ConversationList(msgspec.Struct, frozen=True):
    conversations: list[Conversation]
    pagination: Page


class ConversationDetail(msgspec.Struct, frozen=True):
    conversation: Conversation
    messages: list[StoredMessage]
    pagination: Page
