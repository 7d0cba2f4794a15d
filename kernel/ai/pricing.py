"""Providers, models and prices: litellm's local model map, overridable per model.

litellm is imported lazily (seconds and hundreds of MB) and always with
``LITELLM_LOCAL_MODEL_COST_MAP=True``, so the import never reaches for the network.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from types import ModuleType
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.errors import FieldError, Unprocessable

__all__ = [
    "PROVIDERS",
    "Price",
    "Provider",
    "Target",
    "litellm",
    "litellm_async",
    "price_for",
    "provider_models",
    "resolve_model",
]


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    litellm_provider: str | None
    """Provider name in litellm's model map; ``None``: models are whatever the endpoint serves."""
    needs_api_base: bool = False


PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in (
        Provider("openai", "OpenAI", "openai"),
        Provider("groq", "Groq", "groq"),
        Provider("anthropic", "Anthropic", "anthropic"),
        Provider("openai_compatible", "OpenAI-compatible endpoint", None, needs_api_base=True),
    )
}


@functools.cache
def litellm() -> ModuleType:
    """The litellm module, imported on first use without network access."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    module = importlib.import_module("litellm")
    # No "Give Feedback" banners on stdout for provider errors.
    setattr(module, "suppress_debug_info", True)  # noqa: B010
    # litellm logs every call's model and parameters at INFO: costly per call, and not ours to
    # keep (prompt logging is the tenant's choice, in the audit log).
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return module


async def litellm_async() -> ModuleType:
    """:func:`litellm` without blocking the event loop during the first (slow) import (Python's
    import lock makes concurrent first calls wait for one import)."""
    if "litellm" in sys.modules:
        return litellm()
    return await asyncio.to_thread(litellm)


@functools.cache
def _model_map() -> dict[str, dict[str, Any]]:
    cost: dict[str, dict[str, Any]] = litellm().model_cost
    return cost


@functools.cache
def provider_models(provider: str) -> tuple[str, ...]:
    """Chat models of ``provider`` in the local model map, as ``provider/name`` ids (cached)."""
    spec = PROVIDERS[provider]
    if spec.litellm_provider is None:
        return ()
    names = set()
    for key, info in _model_map().items():
        if info.get("litellm_provider") == spec.litellm_provider and info.get("mode") == "chat":
            names.add(key.removeprefix(f"{spec.litellm_provider}/"))
    return tuple(f"{provider}/{name}" for name in sorted(names))


@dataclass(frozen=True)
class Target:
    """Where a model id sends a call."""

    provider: str
    model: str
    """The public id, ``provider/name``: what the ledger records and price overrides name."""
    litellm_model: str
    info: dict[str, Any]
    """The model's entry in the local map (empty when unknown)."""


def resolve_model(model: str) -> Target:
    """``provider/name`` (or a bare name litellm's map knows) -> the call's target; 422 otherwise."""
    prefix, slash, name = model.partition("/")
    if slash and prefix in PROVIDERS and name:
        provider = prefix
    else:
        known = _model_map().get(model, {}).get("litellm_provider")
        provider = next((p.id for p in PROVIDERS.values() if known and p.litellm_provider == known), "")
        if not provider:
            raise Unprocessable(
                f"unknown model {model!r}: name it as provider/model (providers: {', '.join(PROVIDERS)})",
                errors=[FieldError(field="model", message="unknown model")],
            )
        name = model.removeprefix(f"{provider}/")
    spec = PROVIDERS[provider]
    if spec.litellm_provider is None:
        return Target(provider, f"{provider}/{name}", f"openai/{name}", {})
    models = _model_map()
    info = models.get(name) or models.get(f"{spec.litellm_provider}/{name}") or {}
    return Target(provider, f"{provider}/{name}", f"{spec.litellm_provider}/{name}", info)


@dataclass(frozen=True)
class Price:
    input_per_token: Decimal
    output_per_token: Decimal
    cached_per_token: Decimal
    version: str

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal:
        cached = min(cached_tokens, prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input_per_token
            + cached * self.cached_per_token
            + completion_tokens * self.output_per_token
        )


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


async def price_for(session: AsyncSession, target: Target) -> Price:
    """The override for the model when one exists, else litellm's local map (zero if unknown)."""
    row = (
        await session.execute(
            text("select input_per_token, output_per_token, version from ai_price_overrides where model = :m"),
            {"m": target.model},
        )
    ).one_or_none()
    if row is not None:
        return Price(
            Decimal(row.input_per_token), Decimal(row.output_per_token), Decimal(row.input_per_token),
            f"override:{row.version}",
        )
    info = target.info
    prompt = _decimal(info.get("input_cost_per_token"))
    cached = info.get("cache_read_input_token_cost")
    return Price(
        prompt,
        _decimal(info.get("output_cost_per_token")),
        min(prompt, _decimal(cached)) if cached is not None else prompt,
        f"litellm:{_litellm_version()}",
    )


@functools.cache
def _litellm_version() -> str:
    from importlib.metadata import version

    return version("litellm")
