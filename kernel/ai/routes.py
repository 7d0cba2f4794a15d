"""``/api/ai``: providers, the tenant's provider keys, chat, usage and budgets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.background_tasks import BackgroundTask
from litestar.params import Parameter
from litestar.response import Stream

from kernel.ai.budgets import check_scope
from kernel.ai.compose import one_source
from kernel.ai.pricing import PROVIDERS, litellm_async, provider_models
from kernel.ai.proxy import CALL_PROBLEMS, ChatParams, Completion
from kernel.ai.retrieval.chat import augment
from kernel.ai.retrieval.schemas import ChatSource
from kernel.ai.schemas import (
    Budget,
    BudgetUpdate,
    ChatAnswer,
    ChatRequest,
    KeyInfo,
    KeyList,
    KeyUpdate,
    ProviderInfo,
    ProviderList,
    Usage,
    UsageReport,
)
from kernel.ai.service import caller_of, usage_report
from kernel.audit.log import request_actor, request_meta
from kernel.context import Kernel
from kernel.errors import Problem
from kernel.identity.auth import principal_of
from kernel.tenants.schemas import Tenant

__all__ = ["handlers"]

USE = "kernel.ai.use"
KEYS_READ = "kernel.ai.keys.read"
KEYS_WRITE = "kernel.ai.keys.write"
USAGE_READ = "kernel.ai.usage.read"
BUDGETS_WRITE = "kernel.ai.budgets.write"


@get("/api/ai/providers", tags=["ai"], opt={"permission": USE})
async def list_providers(kernel: Kernel, tenant: Tenant) -> ProviderList:
    """Supported providers, their models (litellm's local map) and whether this tenant has a key."""
    await litellm_async()
    keys = {k.provider: k for k in await kernel.ai.keys.list(tenant.id)}
    return ProviderList(
        providers=[
            ProviderInfo(
                id=p.id, name=p.name, models=list(provider_models(p.id)), configured=p.id in keys,
                requiresApiBase=p.needs_api_base,
            )
            for p in PROVIDERS.values()
        ],
        tenantConfig={
            "providers": {
                name: {"configured": True, "lastFour": k.last_four, "apiBase": k.api_base}
                for name, k in keys.items()
            },
        },
    )


@get("/api/ai/keys", tags=["ai"], opt={"permission": KEYS_READ})
async def list_keys(kernel: Kernel, tenant: Tenant) -> KeyList:
    """The tenant's provider keys: provider, last four characters and dates, never the key."""
    return KeyList(keys=await kernel.ai.keys.list(tenant.id))


@put("/api/ai/keys/{provider:str}", tags=["ai"], opt={"permission": KEYS_WRITE, "no_store": True})
async def put_key(
    provider: str, data: KeyUpdate, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> KeyInfo:
    """Store (or replace) the tenant's key for ``provider``, sealed; ``api_base`` must be public."""
    return await kernel.ai.keys.put(
        tenant.id, provider, data, actor=request_actor(request), meta=request_meta(request)
    )


@delete("/api/ai/keys/{provider:str}", tags=["ai"], opt={"permission": KEYS_WRITE})
async def delete_key(provider: str, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]) -> None:
    await kernel.ai.keys.delete(tenant.id, provider, actor=request_actor(request), meta=request_meta(request))


def _answer(result: Completion, sources: list[ChatSource] | None = None) -> ChatAnswer:
    return ChatAnswer(
        sources=msgspec.UNSET if sources is None else sources,
        conversation_id=result.conversation_id,
        id=result.id, model=result.model, message=result.message, finish_reason=result.finish_reason,
        usage=Usage(
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens, cached_tokens=result.cached_tokens,
        ),
        cost=str(result.cost),
    )


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


@post("/api/ai/chat", status_code=200, tags=["ai"], opt={"permission": USE, **CALL_PROBLEMS})
async def chat(data: ChatRequest, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]) -> Response[Any]:
    """A chat completion with the tenant's key. With ``stream: true``: server-sent events
    ``delta`` (``{"content"}``), then ``done`` (id, model, usage, cost) or ``error`` (a problem)."""
    params = ChatParams(
        model=data.model, messages=one_source(data.messages, data.template), stream=data.stream,
        max_tokens=data.max_tokens, temperature=data.temperature, conversation_id=data.conversation_id,
        object_type=data.object_type, object_id=data.object_id,
        template=data.template, variables=data.variables, template_version=data.template_version, save=data.save,
    )
    caller = caller_of(request, tenant.id, "api")
    sources: list[ChatSource] | None = None

    async def with_sources(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # The tenant's nearest chunks go first, as numbered sources; the search uses the last user
        # message of what is sent (a rendered template's, after a conversation's history).
        nonlocal sources
        augmented, sources = await augment(
            kernel.retrieval, caller, principal_of(request), messages, data.retrieval_k, data.retrieval_filters
        )
        return augmented

    call = await kernel.ai.prepare(caller, params, with_sources if data.retrieval else None)
    if not data.stream:
        # A Response (not the Struct) so that the stream branch keeps its own media type.
        result = await kernel.ai.complete(call)
        return Response(_answer(result, sources), background=BackgroundTask(kernel.ai.settled, result))
    pieces = await kernel.ai.open_stream(call)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for piece in pieces:
                if piece.final is not None:
                    yield _event("done", _answer(piece.final, sources))
                elif piece.content:
                    yield _event("delta", {"content": piece.content})
        except Problem as problem:
            yield _event("error", {"title": problem.title, "status": problem.status, "detail": problem.detail})
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    return Stream(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@get("/api/ai/usage", tags=["ai"], opt={"permission": USAGE_READ})
async def get_usage(
    kernel: Kernel,
    tenant: Tenant,
    since: Annotated[str | None, Parameter(query="from")] = None,
    until: Annotated[str | None, Parameter(query="to")] = None,
) -> UsageReport:
    """Calls, tokens and cost by day, model and principal, with totals (``from``/``to``: ISO 8601)."""
    return await usage_report(kernel.db, tenant.id, since, until)


@get("/api/ai/budgets", tags=["ai"], opt={"permission": USAGE_READ})
async def get_budget(kernel: Kernel, tenant: Tenant, principal: str | None = None) -> Budget:
    """This month's limits, spend, running reservations and what remains: the tenant's, or with
    ``?principal=user:<id>`` (or ``api_key:<id>``) that principal's."""
    return await kernel.ai.budgets.get(tenant.id, check_scope(principal))


@put("/api/ai/budgets", tags=["ai"], opt={"permission": BUDGETS_WRITE})
async def put_budget(data: BudgetUpdate, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]) -> Budget:
    """Set the tenant's monthly limits, or with ``principal`` one user's or API key's (money and/or
    tokens; ``null`` means unlimited). A call must fit every budget that applies to it."""
    return await kernel.ai.budgets.put(tenant.id, data, actor=request_actor(request), meta=request_meta(request))


handlers = [list_providers, list_keys, put_key, delete_key, chat, get_usage, get_budget, put_budget]
