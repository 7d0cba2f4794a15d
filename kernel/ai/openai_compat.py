"""``/v1``: an OpenAI-compatible surface (chat completions, embeddings, models), so that the
official OpenAI SDKs work with ``base_url``.

Authenticated like every route (a tenant API key as ``Authorization: Bearer bos_...``), metered
and budgeted exactly as ``/api/ai/chat``. Answers use OpenAI's wire format: ``chat.completion``,
and for ``stream: true`` ``chat.completion.chunk`` server-sent events ending with ``data: [DONE]``
(with a final usage chunk when the client asked for ``stream_options.include_usage``).
Errors stay problem+json; the SDKs read the status code.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from kernel.ai.pricing import PROVIDERS, litellm_async, provider_models
from kernel.ai.proxy import CALL_PROBLEMS, ChatParams, Completion
from kernel.ai.service import caller_of
from kernel.context import Kernel
from kernel.errors import Problem
from kernel.tenants.schemas import Tenant

__all__ = ["handlers"]

USE = "kernel.ai.use"


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class OpenAIChatRequest(msgspec.Struct, frozen=True):
    """The subset of OpenAI's chat request the proxy honours; other fields are ignored."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=500)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: list[str] | str | None = None
    n: Literal[1] | None = None  # one choice per call


def _usage(result: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


_ENCODE = msgspec.json.Encoder().encode


def _sse(data: Any) -> bytes:
    return b"data: " + _ENCODE(data) + b"\n\n"


@post("/v1/chat/completions", status_code=200, tags=["openai"], opt={"permission": USE, **CALL_PROBLEMS})
async def chat_completions(
    data: OpenAIChatRequest, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> Response[Any]:
    params = ChatParams(
        model=data.model, messages=data.messages, stream=bool(data.stream),
        max_tokens=data.max_completion_tokens or data.max_tokens, temperature=data.temperature,
        top_p=data.top_p, stop=data.stop,
    )
    call = await kernel.ai.prepare(caller_of(request, tenant.id, "openai"), params)
    if not params.stream:
        result = await kernel.ai.complete(call)
        body = _ENCODE({
            "id": result.id,
            "object": "chat.completion",
            "created": result.created,
            "model": result.model,
            "choices": [{"index": 0, "message": result.message, "finish_reason": result.finish_reason}],
            "usage": _usage(result),
        })  # encoded here: plain JSON types, no need for the framework's serializer lookup
        return Response(body, media_type=MediaType.JSON, background=BackgroundTask(kernel.ai.settled, result))
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    pieces = await kernel.ai.open_stream(call)
    model = call.target.model

    async def chunks() -> AsyncIterator[bytes]:
        first = True
        try:
            async for piece in pieces:
                base = {"id": piece.id, "object": "chat.completion.chunk", "created": piece.created, "model": model}
                if piece.final is not None:
                    if include_usage:
                        yield _sse({**base, "choices": [], "usage": _usage(piece.final)})
                    continue
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                first = False
                if piece.content:
                    delta["content"] = piece.content
                yield _sse(
                    {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": piece.finish_reason}]}
                )
        except Problem as problem:
            yield _sse({"error": {"message": problem.detail, "type": problem.slug, "code": problem.status}})
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
        yield b"data: [DONE]\n\n"

    return Stream(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class OpenAIEmbeddingRequest(msgspec.Struct, frozen=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | None = None


@post("/v1/embeddings", status_code=200, tags=["openai"], opt={"permission": USE, **CALL_PROBLEMS})
async def embeddings(
    data: OpenAIEmbeddingRequest, kernel: Kernel, tenant: Tenant, request: Request[Any, Any, Any]
) -> dict[str, Any]:
    inputs = [data.input] if isinstance(data.input, str) else data.input
    vectors, result = await kernel.ai.embed(caller_of(request, tenant.id, "openai"), data.model, inputs)
    encode = data.encoding_format == "base64"
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _base64(vector) if encode else vector}
            for i, vector in enumerate(vectors)
        ],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@get("/v1/models", tags=["openai"], opt={"permission": USE})
async def list_models(kernel: Kernel, tenant: Tenant) -> dict[str, Any]:
    """Models of the providers this tenant has a key for."""
    await litellm_async()
    configured = {k.provider for k in await kernel.ai.keys.list(tenant.id)}
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": provider}
        for provider in PROVIDERS
        if provider in configured
        for model in provider_models(provider)
    ]
    return {"object": "list", "data": data}


handlers = [chat_completions, embeddings, list_models]
