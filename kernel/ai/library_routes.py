"""``/api/ai/prompts``, ``/api/ai/conversations`` and ``/api/ai/settings``: what a tenant keeps
for its AI calls."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, delete, get, patch, post, put
from litestar.params import Parameter

from kernel.ai.conversations import ConversationService
from kernel.ai.library_schemas import (
    AISettings,
    AISettingsUpdate,
    Conversation,
    ConversationCreate,
    ConversationDetail,
    ConversationList,
    ConversationUpdate,
    PromptCreate,
    PromptDetail,
    PromptList,
    PromptUpdate,
    PromptVersion,
    Rendered,
    RenderRequest,
)
from kernel.ai.prompts import PromptService
from kernel.ai.tenant_settings import TenantSettingsService
from kernel.audit.log import request_actor, request_meta
from kernel.context import Kernel
from kernel.tenants.schemas import Tenant

__all__ = ["handlers"]

USE = "kernel.ai.use"
PROMPTS_READ = "kernel.ai.prompts.read"
PROMPTS_WRITE = "kernel.ai.prompts.write"
SETTINGS_WRITE = "kernel.ai.settings.write"

Req = Request[Any, Any, Any]

# Declared, so that the OpenAPI document says what is accepted and nothing larger reaches the
# database (an offset or a version number must fit its integer column).
PageNumber = Annotated[int, Parameter(ge=1, le=1_000_000, description="1-based page number")]
PageSize = Annotated[int, Parameter(ge=1, le=100, description="rows per page")]
VersionNumber = Annotated[int, Parameter(ge=1, le=2**31 - 1)]


# --- prompt templates -----------------------------------------------------------------------------


@get("/api/ai/prompts", tags=["ai"], opt={"permission": PROMPTS_READ})
async def list_prompts(kernel: Kernel, tenant: Tenant, page: PageNumber = 1, limit: PageSize = 20) -> PromptList:
    """The tenant's prompt templates by name (``limit`` at most 100)."""
    return await PromptService(kernel.db).list(tenant.id, page, limit)


@post("/api/ai/prompts", tags=["ai"], opt={"permission": PROMPTS_WRITE})
async def create_prompt(data: PromptCreate, kernel: Kernel, tenant: Tenant, request: Req) -> PromptDetail:
    """A new template (version 1); a name already used in the tenant answers 409, a template that
    does not parse 422 naming the line."""
    return await PromptService(kernel.db).create(
        tenant.id, data, actor=request_actor(request), meta=request_meta(request)
    )


@get("/api/ai/prompts/{prompt_id:uuid}", tags=["ai"], opt={"permission": PROMPTS_READ})
async def get_prompt(prompt_id: uuid.UUID, kernel: Kernel, tenant: Tenant) -> PromptDetail:
    """The template's latest version and the numbers of all its versions."""
    return await PromptService(kernel.db).get(tenant.id, prompt_id)


@get("/api/ai/prompts/{prompt_id:uuid}/versions/{version:int}", tags=["ai"], opt={"permission": PROMPTS_READ})
async def get_prompt_version(
    prompt_id: uuid.UUID, version: VersionNumber, kernel: Kernel, tenant: Tenant
) -> PromptVersion:
    return await PromptService(kernel.db).version(tenant.id, prompt_id, version)


async def _new_version(
    prompt_id: uuid.UUID, data: PromptUpdate, kernel: Kernel, tenant: Tenant, request: Req
) -> PromptDetail:
    return await PromptService(kernel.db).add_version(
        tenant.id, prompt_id, data, actor=request_actor(request), meta=request_meta(request)
    )


@patch("/api/ai/prompts/{prompt_id:uuid}", tags=["ai"], opt={"permission": PROMPTS_WRITE})
async def patch_prompt(
    prompt_id: uuid.UUID, data: PromptUpdate, kernel: Kernel, tenant: Tenant, request: Req
) -> PromptDetail:
    """A new version: the given fields replace the latest version's (versions never change)."""
    return await _new_version(prompt_id, data, kernel, tenant, request)


@put("/api/ai/prompts/{prompt_id:uuid}", tags=["ai"], opt={"permission": PROMPTS_WRITE})
async def put_prompt(
    prompt_id: uuid.UUID, data: PromptUpdate, kernel: Kernel, tenant: Tenant, request: Req
) -> PromptDetail:
    """Same as ``PATCH``: a new version."""
    return await _new_version(prompt_id, data, kernel, tenant, request)


@delete("/api/ai/prompts/{prompt_id:uuid}", tags=["ai"], opt={"permission": PROMPTS_WRITE})
async def delete_prompt(prompt_id: uuid.UUID, kernel: Kernel, tenant: Tenant, request: Req) -> None:
    """The template and all its versions (ledger rows keep its id)."""
    await PromptService(kernel.db).delete(
        tenant.id, prompt_id, actor=request_actor(request), meta=request_meta(request)
    )


@post("/api/ai/prompts/{prompt_id:uuid}/render", status_code=200, tags=["ai"], opt={"permission": PROMPTS_READ})
async def render_prompt(prompt_id: uuid.UUID, data: RenderRequest, kernel: Kernel, tenant: Tenant) -> Rendered:
    """The messages a version (latest by default) renders to; 422 naming a missing variable."""
    return await PromptService(kernel.db).preview(tenant.id, prompt_id, data.variables, data.version)


# --- conversations --------------------------------------------------------------------------------


@get("/api/ai/conversations", tags=["ai"], opt={"permission": USE})
async def list_conversations(
    kernel: Kernel, tenant: Tenant, request: Req, page: PageNumber = 1, limit: PageSize = 20
) -> ConversationList:
    """The caller's own conversations, most recently active first."""
    return await ConversationService(kernel.db).list(tenant.id, request_actor(request), page, limit)


@post("/api/ai/conversations", tags=["ai"], opt={"permission": USE})
async def create_conversation(data: ConversationCreate, kernel: Kernel, tenant: Tenant, request: Req) -> Conversation:
    """An empty conversation, continued by ``POST /api/ai/chat`` with its ``conversation_id``."""
    return await ConversationService(kernel.db).create(
        tenant.id, data, actor=request_actor(request), meta=request_meta(request)
    )


@get("/api/ai/conversations/{conversation_id:uuid}", tags=["ai"], opt={"permission": USE})
async def get_conversation(
    conversation_id: uuid.UUID, kernel: Kernel, tenant: Tenant, request: Req, page: PageNumber = 1, limit: PageSize = 50
) -> ConversationDetail:
    """The conversation with a page of its messages, oldest first (404 unless the caller started it)."""
    return await ConversationService(kernel.db).get(tenant.id, conversation_id, request_actor(request), page, limit)


@patch("/api/ai/conversations/{conversation_id:uuid}", tags=["ai"], opt={"permission": USE})
async def rename_conversation(
    conversation_id: uuid.UUID, data: ConversationUpdate, kernel: Kernel, tenant: Tenant, request: Req
) -> Conversation:
    return await ConversationService(kernel.db).rename(
        tenant.id, conversation_id, data, actor=request_actor(request), meta=request_meta(request)
    )


@delete("/api/ai/conversations/{conversation_id:uuid}", tags=["ai"], opt={"permission": USE})
async def delete_conversation(conversation_id: uuid.UUID, kernel: Kernel, tenant: Tenant, request: Req) -> None:
    await ConversationService(kernel.db).delete(
        tenant.id, conversation_id, actor=request_actor(request), meta=request_meta(request)
    )


# --- settings -------------------------------------------------------------------------------------


def _settings(kernel: Kernel) -> TenantSettingsService:
    return kernel.ai.tenant_settings


@get("/api/ai/settings", tags=["ai"], opt={"permission": USE})
async def get_settings(kernel: Kernel, tenant: Tenant) -> AISettings:
    """The tenant's AI settings (defaults when never set)."""
    return await _settings(kernel).get(tenant.id)


@put("/api/ai/settings", tags=["ai"], opt={"permission": SETTINGS_WRITE})
async def put_settings(data: AISettingsUpdate, kernel: Kernel, tenant: Tenant, request: Req) -> AISettings:
    """Replace the tenant's AI settings (an absent field takes its default); audited."""
    return await _settings(kernel).put(tenant.id, data, actor=request_actor(request), meta=request_meta(request))


handlers = [
    list_prompts, create_prompt, get_prompt, get_prompt_version, patch_prompt, put_prompt, delete_prompt,
    render_prompt, list_conversations, create_conversation, get_conversation, rename_conversation,
    delete_conversation, get_settings, put_settings,
]
