"""Calls to AI providers through litellm, with the tenant's key, metered and budgeted.

Every call: resolve the model to a provider, open the tenant's key for it (none -> 409: litellm
would otherwise fall back to environment keys), price it, reserve an upper bound in the budget,
call ``litellm.acompletion`` with ``api_key`` and ``api_base`` passed explicitly, then in one
transaction write the ledger row, settle the budget, audit (metadata only) and emit
``ai.call.completed``. A failed or cancelled call is recorded too and its reservation released.

The upper bound: the prompt's UTF-8 size in bytes (a byte-level BPE token covers at least one
byte) plus a per-message allowance, and ``max_tokens`` of completion. ``max_tokens`` is always
sent to the provider (the request's, or at most ``DEFAULT_MAX_TOKENS``), so the provider cannot
bill more completion than was reserved.

Provider failures map to problem+json (see :func:`provider_problem`); a key the provider rejects
answers 502 ``ai-provider-rejected-key`` with ``provider_status: 401``: the platform's caller is
authenticated, it is the upstream dependency that refused.

The tenant's AI settings (read in the transaction that opens the key) give the default model,
the timeout, retries and fallback models: a call the provider answers with 429, 5xx, a timeout
or a connection error is retried, then tried on each fallback model in turn; every failed
attempt is its own ledger row, and the answer names the model that answered. With
``log_prompts`` on, the audit row of a call also holds its messages and the answer's text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import msgspec
from sqlalchemy import Table, insert

from kernel.ai.budgets import BudgetService, Charge, Reservation
from kernel.ai.call_cache import CallCache
from kernel.ai.compose import compose, needs_session
from kernel.ai.conversations import ConversationPlan, store_exchange
from kernel.ai.keys import Credentials, KeyService
from kernel.ai.models import UsageRow
from kernel.ai.pricing import PROVIDERS, Price, Target, litellm_async, price_for, resolve_model
from kernel.ai.provider_clients import ProviderClients
from kernel.ai.settler import Settler
from kernel.ai.tenant_settings import DEFAULTS, TenantAISettings, TenantSettingsService
from kernel.audit.log import Entry, RequestMeta, record_many
from kernel.cache import InvalidationBus
from kernel.crypto import SecretBox
from kernel.db.engine import Database
from kernel.db.models import uuid7
from kernel.entitlements import EntitlementGate
from kernel.errors import Problem
from kernel.events.outbox import emit_many
from kernel.identity.principal import Principal
from kernel.observability.metrics import record_ai_call
from kernel.settings import Settings

__all__ = [
    "CALL_EVENT",
    "CALL_PROBLEMS",
    "AIProxy",
    "Caller",
    "ChatParams",
    "Completion",
    "PreparedCall",
    "StreamDelta",
    "provider_problem",
]

log = logging.getLogger("businessos.ai")

CALL_EVENT = "ai.call.completed"
DEFAULT_MAX_TOKENS = 4096
_PER_MESSAGE_TOKENS = 8
# A reservation outlives its call's longest possible run by this much before the sweeper frees it.
_RESERVATION_MARGIN_SECONDS = 60
_LOGGED_TEXT = 20_000

# Where each provider's calls go when the tenant gave no api_base: explicit, so that environment
# variables (OPENAI_BASE_URL and the like) cannot redirect a tenant's key.
_DEFAULT_BASES = {
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "anthropic": "https://api.anthropic.com",
}


CALL_PROBLEMS = {"problems": (402, 409, 502, 504)}
"""Route ``opt`` entries of a route that calls a provider: what a budget or the plan's AI tokens (402), a missing key
(409) or the provider (502, 504) can answer besides the usual (see kernel.http.openapi)."""


class ProviderRejectedKey(Problem):
    status, slug, title = 502, "ai-provider-rejected-key", "Provider rejected the key"


class ProviderRateLimited(Problem):
    status, slug, title = 429, "ai-provider-rate-limited", "Provider rate limit"


class ProviderTimeout(Problem):
    status, slug, title = 504, "ai-provider-timeout", "Provider timed out"


class ProviderBadRequest(Problem):
    status, slug, title = 400, "ai-provider-bad-request", "Provider refused the request"


class ProviderFailed(Problem):
    status, slug, title = 502, "ai-provider-error", "Provider error"


_SECRETISH = re.compile(r"(sk-|bos_|Bearer\s+)[A-Za-z0-9_\-\*\.]{4,}")


def _scrub(message: str, secret: str) -> str:
    if secret:
        message = message.replace(secret, "[redacted]")
    return _SECRETISH.sub(r"\1[redacted]", message)[:500]


def provider_problem(exc: Exception, provider: str, secret: str) -> Problem:
    """The problem a provider failure answers with: the provider's reason, never the key."""
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    reason = _scrub(str(getattr(exc, "message", None) or exc), secret)
    extra = {"provider": provider, "provider_status": status if isinstance(status, int) else None}
    if kind in ("AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        return ProviderRejectedKey(f"{provider} rejected the key", extra=extra)
    if kind == "RateLimitError" or status == 429:
        return ProviderRateLimited(reason, extra=extra)
    if kind in ("Timeout", "APITimeoutError") or status == 408:
        return ProviderTimeout(reason, extra=extra)
    if isinstance(status, int) and 400 <= status < 500:
        return ProviderBadRequest(reason, extra=extra)
    return ProviderFailed(reason, extra=extra)


@dataclass(frozen=True)
class Caller:
    tenant_id: uuid.UUID
    principal: Principal | None
    meta: RequestMeta
    surface: str = "api"
    """``api`` (/api/ai) or ``openai`` (/v1)."""


@dataclass(frozen=True)
class ChatParams:
    model: str | None
    """``None``: the template's default model, else the tenant's (422 when neither exists)."""
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | str | None = None
    conversation_id: uuid.UUID | None = None
    object_type: str | None = None
    object_id: str | None = None
    template: str | None = None
    """A prompt template's id or name, rendered with ``variables`` into the messages."""
    variables: dict[str, Any] | None = None
    template_version: int | None = None
    save: bool = False
    """Without ``conversation_id``: store the exchange as a new conversation."""
    tools: list[dict[str, Any]] | None = None
    """OpenAI-style function tools the model may call (the answer's message has ``tool_calls``)."""
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    """``{"type": "json_object"}`` or ``{"type": "json_schema", ...}``, passed to the provider."""


@dataclass(frozen=True)
class Route:
    """One model a call can be sent to, with the key and price that go with it."""

    target: Target
    credentials: Credentials
    price: Price


@dataclass
class PreparedCall:
    caller: Caller
    params: ChatParams
    target: Target
    credentials: Credentials
    price: Price
    max_tokens: int
    prompt_estimate: int
    reservation: Reservation | None
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False
    settings: TenantAISettings = DEFAULTS
    fallbacks: list[Route] = field(default_factory=list)
    """Models to try, in order, when the current one fails with a rate limit, 5xx or timeout."""
    requested_model: str | None = None
    template_id: uuid.UUID | None = None
    template_version: int | None = None
    conversation: ConversationPlan | None = None
    answer_text: str | None = None


@dataclass(frozen=True)
class Completion:
    id: str
    created: int
    model: str
    message: dict[str, Any]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: Decimal
    conversation_id: uuid.UUID | None = None
    settlement: asyncio.Future[None] | None = None
    """The ledger, audit and budget writes still running after the answer (see ``complete``)."""


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed answer: text, a finish reason, or (last) the metered totals."""

    id: str
    created: int
    content: str | None = None
    role: str | None = None
    finish_reason: str | None = None
    final: Completion | None = None


def _prompt_estimate(messages: list[dict[str, Any]]) -> int:
    return len(msgspec.json.encode(messages)) + _PER_MESSAGE_TOKENS * len(messages) + 16


def _actor(caller: Caller) -> str | None:
    return caller.principal.actor if caller.principal else None


def _retriable(problem: Problem) -> bool:
    """Worth another attempt (same model or a fallback): the provider was busy, failed or slow."""
    return isinstance(problem, (ProviderRateLimited, ProviderTimeout, ProviderFailed))


def _logged(value: Any, secret: str) -> Any:
    """A prompt or answer as the audit log keeps it: cut to length, key-like strings scrubbed."""
    if isinstance(value, str):
        cut = value if len(value) <= _LOGGED_TEXT else value[:_LOGGED_TEXT] + "…"
        if secret:
            cut = cut.replace(secret, "[redacted]")
        return _SECRETISH.sub(r"\1[redacted]", cut)
    if isinstance(value, list):
        return [_logged(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: _logged(v, secret) for k, v in value.items()}
    return value


def _usage_numbers(usage: Any) -> tuple[int, int, int]:
    if usage is None:
        return 0, 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0), int(cached or 0)


_INSERT_USAGE = insert(cast(Table, UsageRow.__table__))
"""The ledger row as a Core insert: ORM-enabled DML costs more per call than the statement."""

Augment = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]
"""Adds to a call's composed messages before it is priced and sent (``prepare``)."""

_MAX_UNSETTLED = 1000
"""Settlements a process lets queue behind its answers before it makes answers wait for them."""


class AIProxy:
    def __init__(
        self, db: Database, box: SecretBox, settings: Settings, bus: InvalidationBus | None = None,
        entitlements: EntitlementGate | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.cache = CallCache(bus)
        self.keys = KeyService(db, box, self.cache, allow_private_bases=settings.ai_allow_private_bases)
        self.budgets = BudgetService(db, self.cache, None if bus is None else bus.redis, entitlements)
        self.tenant_settings = TenantSettingsService(db, settings.ai_timeout_seconds, self.cache)
        self._settler: Settler[Settlement] = Settler(self._write, lambda s: s.tenant_id)
        self.clients = ProviderClients(settings)

    async def _price(self, target: Target) -> Price:
        """The model's price (an operator's override, else litellm's map), cached for a minute."""

        async def read() -> Price:
            async with self.db.global_() as session:
                return await price_for(session, target)

        return await self.cache.get(CallCache.key(None, f"price/{target.model}"), read)

    async def prepare(
        self, caller: Caller, params: ChatParams, augment: Augment | None = None
    ) -> PreparedCall:
        """Everything before the provider is called: the tenant's settings, template and
        conversation, key, price, budget reservation (402). ``augment`` gets the messages to send
        once composed (template rendered, history first) and may add to them (retrieval)."""
        await litellm_async()  # the model map, for resolve_model
        settings = await self.tenant_settings.current(caller.tenant_id)
        if needs_session(params):
            async with self.db.tenant(caller.tenant_id) as session:
                plan = await compose(session, _actor(caller), params, settings)
        else:
            plan = await compose(None, _actor(caller), params, settings)
        params = plan.params
        if augment is not None:
            params = dataclasses.replace(params, messages=await augment(params.messages))
        assert params.model is not None  # compose chose one or refused
        target = resolve_model(params.model)
        credentials = await self.keys.for_call(caller.tenant_id, target.provider)
        price = await self._price(target)
        fallbacks = await self._fallbacks(caller, target, settings) if settings.fallback_models else []
        model_cap = int(target.info.get("max_output_tokens") or DEFAULT_MAX_TOKENS)
        max_tokens = params.max_tokens or min(model_cap, DEFAULT_MAX_TOKENS)
        prompt_estimate = _prompt_estimate(params.messages)
        if params.tools:
            prompt_estimate += len(msgspec.json.encode(params.tools))
        # Enough for the dearest model the call may end on.
        cost = max(r.price.cost(prompt_estimate, max_tokens) for r in [Route(target, credentials, price), *fallbacks])
        attempts = (settings.retries + 1) * (1 + len(fallbacks))
        reservation = await self.budgets.reserve(
            caller.tenant_id, _actor(caller), cost, prompt_estimate + max_tokens,
            ttl_seconds=self._timeout(settings) * attempts + _RESERVATION_MARGIN_SECONDS, wait=False,
        )
        return PreparedCall(
            caller=caller, params=params, target=target, credentials=credentials, price=price,
            max_tokens=max_tokens, prompt_estimate=prompt_estimate, reservation=reservation,
            settings=settings, fallbacks=fallbacks, requested_model=target.model,
            template_id=plan.template_id, template_version=plan.template_version, conversation=plan.conversation,
        )

    async def _fallbacks(self, caller: Caller, primary: Target, settings: TenantAISettings) -> list[Route]:
        """The tenant's fallback models other than ``primary``, skipping those whose provider has
        no key (a fallback must never turn into a 409)."""
        routes = []
        for model in settings.fallback_models:
            target = resolve_model(model)
            if target.model == primary.model:
                continue
            try:
                credentials = await self.keys.for_call(caller.tenant_id, target.provider)
            except Problem:
                log.warning("fallback model %s skipped: no usable %s key", target.model, target.provider)
                continue
            routes.append(Route(target, credentials, await self._price(target)))
        return routes

    def _timeout(self, settings: TenantAISettings) -> int:
        return settings.timeout_seconds or self.settings.ai_timeout_seconds

    def _arguments(self, call: PreparedCall) -> dict[str, Any]:
        params = call.params
        arguments: dict[str, Any] = {
            "model": call.target.litellm_model,
            "messages": params.messages,
            "api_key": call.credentials.api_key,
            "api_base": call.credentials.api_base or _DEFAULT_BASES.get(call.target.provider),
            "max_tokens": call.max_tokens,
            "timeout": self._timeout(call.settings),
            "num_retries": 0,
            "max_retries": 0,
        }
        arguments.update(
            self.clients.arguments(call.target.litellm_model, call.credentials.api_key, arguments["api_base"])
        )
        for name in ("temperature", "top_p", "stop", "tools", "tool_choice", "response_format"):
            value = getattr(params, name)
            if value is not None:
                arguments[name] = value
        if params.stream:
            arguments["stream"] = True
            arguments["stream_options"] = {"include_usage": True}
        return arguments

    async def complete(self, call: PreparedCall) -> Completion:
        """A non-streamed call, metered and settled."""
        litellm = await litellm_async()
        response = await self._attempts(call, lambda: litellm.acompletion(**self._arguments(call)))
        prompt, completion, cached = _usage_numbers(getattr(response, "usage", None))
        choice = response.choices[0]
        message = {"role": choice.message.role or "assistant", "content": choice.message.content}
        if getattr(choice.message, "tool_calls", None):
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in choice.message.tool_calls
            ]
        call.answer_text = choice.message.content
        cost = call.price.cost(prompt, completion, cached)
        settlement: asyncio.Future[None] | None = None
        if call.conversation is not None:
            # The next turn reads the stored exchange: it must be there before the answer is.
            await self._finish_shielded(call, status="ok", prompt=prompt, completion=completion, cached=cached)
        else:
            settlement = self._settler.submit(
                self._settlement(call, status="ok", prompt=prompt, completion=completion, cached=cached)
            )
            if len(self._settler) > _MAX_UNSETTLED:
                # Settlements fall behind: answer no faster than they are written rather than let
                # them pile up.
                await asyncio.wait([settlement])
        return Completion(
            id=str(response.id), created=int(response.created or time.time()), model=call.target.model,
            message=message, finish_reason=choice.finish_reason, prompt_tokens=prompt,
            completion_tokens=completion, cached_tokens=cached, cost=cost,
            conversation_id=call.conversation.id if call.conversation else None, settlement=settlement,
        )

    async def settled(self, completion: Completion) -> None:
        """Wait until ``completion``'s ledger, audit and budget writes are done (never raises:
        a failure was logged when it happened)."""
        if completion.settlement is not None:
            await asyncio.wait([completion.settlement])

    async def drain(self) -> None:
        """Write every settlement still queued (at shutdown)."""
        await self._settler.drain()
        await self.clients.aclose()

    async def embed(
        self, caller: Caller, model: str, inputs: list[str], *, object_type: str | None = None,
        object_id: str | None = None,
    ) -> tuple[list[list[float]], Completion]:
        """Embeddings of ``inputs`` with the tenant's key, metered and budgeted like a chat call
        (the reservation is the inputs' size in bytes, an upper bound of their tokens); the ledger
        row names ``object_type``/``object_id`` when given."""
        litellm = await litellm_async()
        target = resolve_model(model)
        credentials = await self.keys.for_call(caller.tenant_id, target.provider)
        price = await self._price(target)
        api_base = credentials.api_base or _DEFAULT_BASES.get(target.provider)
        estimate = sum(len(text.encode()) + _PER_MESSAGE_TOKENS for text in inputs)
        reservation = await self.budgets.reserve(
            caller.tenant_id, _actor(caller), price.cost(estimate, 0), estimate, wait=False
        )
        call = PreparedCall(
            caller=caller, params=ChatParams(model=model, messages=[], object_type=object_type, object_id=object_id),
            target=target, credentials=credentials,
            price=price, max_tokens=0, prompt_estimate=estimate, reservation=reservation,
        )
        response = await self._call_provider(
            call,
            litellm.aembedding(
                model=target.litellm_model, input=inputs, api_key=credentials.api_key, api_base=api_base,
                timeout=self.settings.ai_timeout_seconds, max_retries=0,
                **self.clients.arguments(target.litellm_model, credentials.api_key, api_base),
            ),
        )
        prompt = int(getattr(response.usage, "prompt_tokens", 0) or 0) if response.usage else 0
        cost = await self._finish_shielded(call, status="ok", prompt=prompt)
        vectors = [list(item["embedding"] if isinstance(item, dict) else item.embedding) for item in response.data]
        return vectors, Completion(
            id="", created=int(time.time()), model=target.model, message={}, finish_reason=None,
            prompt_tokens=prompt, completion_tokens=0, cached_tokens=0, cost=cost,
        )

    async def open_stream(self, call: PreparedCall) -> AsyncIterator[StreamDelta]:
        """Start a streamed call (provider errors raise here, before any byte is sent) and return
        its pieces; the call is settled when the iterator ends, fails or is closed."""
        litellm = await litellm_async()
        stream = await self._attempts(call, lambda: litellm.acompletion(**self._arguments(call)))
        return self._pieces(call, stream)

    async def _attempts(self, call: PreparedCall, start: Callable[[], Awaitable[Any]]) -> Any:
        """Await the provider, retrying the model ``settings.retries`` times and then each
        fallback on a rate limit, 5xx or timeout. Each failed attempt is a ledger row; the last
        failure (or any other kind) settles the call and is raised."""
        routes = [Route(call.target, call.credentials, call.price), *call.fallbacks]
        retries = call.settings.retries
        for index, route in enumerate(routes):
            call.target, call.credentials, call.price = route.target, route.credentials, route.price
            for attempt in range(retries + 1):
                try:
                    if attempt:
                        await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 1.0))
                    return await start()
                except asyncio.CancelledError:
                    await self._finish_shielded(call, status="cancelled")
                    raise
                except Exception as exc:
                    problem = provider_problem(exc, call.target.provider, call.credentials.api_key)
                    last = index == len(routes) - 1 and attempt == retries
                    if last or not _retriable(problem):
                        await self._finish_shielded(call, status="error", error=problem)
                        raise problem from None
                    await self._finish_shielded(call, status="error", error=problem, final=False)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_provider(self, call: PreparedCall, request: Awaitable[Any]) -> Any:
        """Await the provider. On failure or cancellation the call is settled (its reservation
        released, the ledger row written) and the failure raised as a problem without secrets."""
        try:
            return await request
        except asyncio.CancelledError:
            await self._finish_shielded(call, status="cancelled")
            raise
        except Exception as exc:
            problem = provider_problem(exc, call.target.provider, call.credentials.api_key)
            await self._finish_shielded(call, status="error", error=problem)
            raise problem from None

    async def _pieces(self, call: PreparedCall, stream: Any) -> AsyncIterator[StreamDelta]:
        call_id = f"chatcmpl-{uuid7().hex}"
        created = int(time.time())
        usage: Any = None
        text_bytes = 0
        parts: list[str] = []
        status, error = "cancelled", None
        try:
            async for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices or ():
                    delta = choice.delta
                    content = getattr(delta, "content", None)
                    if content:
                        text_bytes += len(content.encode())
                        parts.append(content)
                    if content or choice.finish_reason:
                        yield StreamDelta(
                            id=call_id, created=created, content=content or None,
                            role=getattr(delta, "role", None), finish_reason=choice.finish_reason,
                        )
            status = "ok"
            call.answer_text = "".join(parts)
        except Exception as exc:
            problem = provider_problem(exc, call.target.provider, call.credentials.api_key)
            status, error = "error", problem
            raise problem from None
        finally:
            prompt, completion, cached = _usage_numbers(usage)
            estimated = usage is None or (prompt == 0 and completion == 0)
            if estimated:
                # The provider sent no usage: charge the prompt's upper bound and the streamed size.
                prompt, completion, cached = call.prompt_estimate, min(text_bytes, call.max_tokens), 0
            cost = await self._finish_shielded(
                call, status=status, error=error, prompt=prompt, completion=completion, cached=cached,
                estimated=estimated,
            )
        yield StreamDelta(
            id=call_id, created=created,
            final=Completion(
                id=call_id, created=created, model=call.target.model, message={}, finish_reason=None,
                prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, cost=cost,
                conversation_id=call.conversation.id if call.conversation else None,
            ),
        )

    async def _finish_shielded(self, call: PreparedCall, **kwargs: Any) -> Decimal:
        # Settlement must survive the request being cancelled (client gone): run it as its own task.
        task = asyncio.ensure_future(self._finish(call, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    async def _finish(self, call: PreparedCall, **outcome: Any) -> Decimal:
        """Ledger row, budget settlement, audit row and event: one transaction, once per call
        (``outcome``: see :meth:`_settlement`)."""
        if call.finished:
            return Decimal(0)
        settlement = self._settlement(call, **outcome)
        await self._write(call.caller.tenant_id, [settlement])
        return settlement.cost

    def _settlement(
        self,
        call: PreparedCall,
        *,
        status: str,
        error: Problem | None = None,
        prompt: int = 0,
        completion: int = 0,
        cached: int = 0,
        estimated: bool = False,
        final: bool = True,
    ) -> Settlement:
        """What finishing ``call`` writes, worked out before any database work. ``final=False``
        is a failed attempt that a retry or fallback follows: ledger, audit and event, with the
        reservation kept for the next attempt."""
        call.finished = final
        caller = call.caller
        cost = call.price.cost(prompt, completion, cached)
        latency_ms = int((time.perf_counter() - call.started) * 1000)
        principal = caller.principal
        usage: dict[str, Any] = {
            "tenant_id": caller.tenant_id, "id": uuid7(),
            "principal_kind": principal.kind if principal else None,
            "principal_id": principal.id if principal else None,
            "provider": call.target.provider, "model": call.target.model,
            "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached,
            "latency_ms": latency_ms, "cost": cost,
            "price_version": call.price.version + ("+estimated" if estimated else ""),
            "status": status, "error": (f"{error.slug}: {error.detail}"[:500] if error else None),
            "surface": caller.surface, "stream": call.params.stream,
            "conversation_id": call.params.conversation_id,
            "template_id": call.template_id,
            "object_type": call.params.object_type, "object_id": call.params.object_id,
        }
        plan = call.conversation
        exchange = None
        if plan is not None and final and status == "ok":
            if plan.new:
                usage["conversation_id"] = plan.id
            exchange = plan
        usage_id: uuid.UUID = usage["id"]
        # Audit keys naming tokens would be redacted by the audit log: counts go under "usage".
        details: dict[str, Any] = {
            "provider": call.target.provider, "model": call.target.model, "status": status,
            "usage": {"prompt": prompt, "completion": completion, "cached": cached},
            "cost": str(cost), "latency_ms": latency_ms, "stream": call.params.stream,
            "surface": caller.surface,
        }
        if error is not None:
            details["error"] = error.slug
        if call.requested_model and call.requested_model != call.target.model:
            details["fallback_for"] = call.requested_model
        if call.template_id is not None:
            details["template"] = {"id": str(call.template_id), "version": call.template_version}
        if usage["conversation_id"] is not None:
            details["conversation_id"] = str(usage["conversation_id"])
        logged = {}
        if call.settings.log_prompts and call.params.messages:
            secret = call.credentials.api_key
            logged["prompt"] = _logged(call.params.messages, secret)
            if status == "ok" and final:
                logged["answer"] = _logged(call.answer_text, secret)
        actor = principal.actor if principal else None
        return Settlement(
            tenant_id=caller.tenant_id, usage=usage, cost=cost, tokens=prompt + completion,
            billed=bool(prompt or completion), final=final, principal=_actor(caller),
            reservation=call.reservation, exchange=exchange, answer_text=call.answer_text,
            audit=Entry(
                actor=actor, action="ai.call", resource_type="ai_usage", resource_id=str(usage_id),
                result="success" if status == "ok" else status, meta=caller.meta, details={**details, **logged},
            ),
            event={"usage_id": str(usage_id), **details, "principal": actor},
        )

    async def _write(self, tenant_id: uuid.UUID, batch: Sequence[Settlement]) -> None:
        """Write ``batch`` (settlements of one tenant) in one transaction."""
        committed: list[Callable[[], Awaitable[None]]] = []
        async with self.db.tenant(tenant_id) as session:
            await session.execute(_INSERT_USAGE, [s.usage for s in batch])
            for s in batch:
                if s.exchange is not None:
                    await store_exchange(
                        session, tenant_id, s.exchange, model=s.usage["model"],
                        answer={"role": "assistant", "content": s.answer_text},
                        prompt_tokens=s.usage["prompt_tokens"], completion_tokens=s.usage["completion_tokens"],
                        cost=s.cost, usage_id=s.usage["id"],
                    )
                if s.final and not s.billed:
                    await self.budgets.release(session, s.reservation)
            # Calls the provider billed are charged; a failed attempt that another follows keeps
            # the reservation for it.
            await self.budgets.settle_many(
                session, tenant_id,
                [Charge(s.principal, s.reservation, s.cost, s.tokens) for s in batch if s.final and s.billed],
                after_commit=committed,
            )
            await record_many(session, tenant_id, [s.audit for s in batch])
            await emit_many(session, tenant_id=tenant_id, events=[(CALL_EVENT, s.event) for s in batch])
        for work in committed:  # committed: the reservations held in Redis become spend there
            await work()
        for s in batch:  # committed: now they count
            u = s.usage
            record_ai_call(u["provider"], u["status"], u["prompt_tokens"], u["completion_tokens"], s.cost)


@dataclass(frozen=True)
class Settlement:
    """What one finished call (or failed attempt) writes."""

    tenant_id: uuid.UUID
    usage: dict[str, Any]
    """The ledger row."""
    cost: Decimal
    tokens: int
    billed: bool
    final: bool
    principal: str | None
    reservation: Reservation | None
    exchange: ConversationPlan | None
    answer_text: str | None
    audit: Entry
    event: dict[str, Any]


def provider_ids() -> list[str]:
    return list(PROVIDERS)
