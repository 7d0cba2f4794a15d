"""Entitlements: what a tenant's plan lets it do, answered by at most one plugin (billing).

A plugin answers through the ``businessos_entitlements`` hook with an :class:`EntitlementProvider`.
The kernel asks it before enabling a module (``kernel.module.<name>``), adding a member
(``kernel.members``) and creating an API key (``kernel.api_keys``), and the AI proxy asks how
many AI tokens remain (``kernel.ai.tokens``, amount 0; see ``kernel.ai.budgets``); plugins ask it through
``services.entitlements`` before a metered action of their own (``<plugin>.<feature>``). A refusal
is a 402 problem naming the limit and how to lift it. With no provider installed every question
is answered "allowed, unlimited" and any plan code is accepted.

Two questions are answered on other paths. The per-minute request limit of a tenant's principals
(``kernel.rate_limit``: the answer's ``remaining`` is the limit, ``None`` keeps the installation's
setting) is asked on every request, so the gate caches it per process (:meth:`EntitlementGate.rate_limit`):
a minute at most, dropped in every process when the tenant's plan code changes or the provider
says the tenant's terms changed (``services.entitlements.changed``). And an operator's plan
change goes through the provider first (:meth:`EntitlementProvider.operator_plan`), so that a
provider that bills records it where it bills (its subscription).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, cast

import msgspec

from kernel.cache import TTLCache
from kernel.errors import FieldError, PaymentRequired, ServiceUnavailable, Unprocessable

if TYPE_CHECKING:
    from kernel.plugins.loader import PluginSet
    from kernel.plugins.services import Services
    from kernel.tenants.service import TenantService

__all__ = [
    "DEFAULT_PLAN",
    "RATE_LIMIT_FEATURE",
    "Entitlement",
    "EntitlementGate",
    "EntitlementProvider",
    "EntitlementQuery",
    "Entitlements",
    "PlanCode",
]

log = logging.getLogger("businessos.entitlements")

DEFAULT_PLAN = "free"
"""The plan of a tenant created without one, when no provider names another default."""

PlanCode = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="a plan code: lower-case letters, digits, '_', '.', '-'",
    ),
]
RATE_LIMIT_FEATURE = "kernel.rate_limit"
"""The feature whose answer's ``remaining`` is the tenant's requests per minute per principal."""
RATE_LIMIT_TTL = 60.0
"""Longest a process keeps a tenant's rate limit (invalidations usually drop it sooner)."""
TOPIC = "entitlements"
_FEATURE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_-]+)+$")


class EntitlementQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One question to the provider: may ``tenant_id`` use ``amount`` more of ``feature``?"""

    tenant_id: uuid.UUID
    plan: str
    """The tenant's plan code."""
    feature: str
    """``kernel.module.<name>``, ``kernel.members``, ``kernel.api_keys``, ``kernel.ai.tokens`` or
    ``<plugin>.<feature>``."""
    amount: int
    """How much the action uses; 0 asks only how much remains."""


class Entitlement(msgspec.Struct, frozen=True, kw_only=True):
    """The provider's answer."""

    allowed: bool
    remaining: int | None = None
    """How much of the feature is left after this action; ``None`` when it is not metered."""
    limit: str = ""
    """Name of the limit that refused (shown to the client), e.g. ``"members"``."""
    detail: str = ""
    """Why, in a sentence for people."""
    lift: str = ""
    """How to lift the limit, e.g. ``"upgrade to the pro plan"``."""


class EntitlementProvider:
    """What ``businessos_entitlements`` returns. Subclass it and override :meth:`check`."""

    plans: Sequence[str] | None = None
    """The plan codes a tenant may have; ``None`` accepts any code."""
    default_plan: str = DEFAULT_PLAN
    """The plan of a tenant created without one."""

    def signup_plan(self, requested: str) -> str:
        """The plan a self-service sign-up that asked for ``requested`` (a known code) gets: a
        provider that bills returns ``requested`` only when it is free or starts with a trial,
        else its default plan. The default: ``requested``."""
        return requested

    async def check(self, query: EntitlementQuery, services: Services) -> Entitlement:
        """Answer ``query``; ``services`` is the provider plugin's own facade (its tables, settings).
        An exception here refuses the action with a 503 (entitlements fail closed)."""
        return Entitlement(allowed=True)

    async def operator_plan(self, tenant_id: uuid.UUID, plan: str, actor: str, services: Services) -> None:
        """An operator is moving the tenant to ``plan`` (``PUT /api/admin/tenants/{id}/plan``),
        called before the kernel records the new code; ``actor`` is ``operator:<id>``. A provider
        that bills applies it to its own records here (an exception refuses the change). The
        default: nothing."""
        return None


_ALLOWED = Entitlement(allowed=True)


class EntitlementGate:
    """The kernel's side: finds the one provider, asks it, turns a refusal into a 402."""

    def __init__(self, plugins: PluginSet, tenants: TenantService) -> None:
        answering = [r for r in plugins.active() if r.entitlements is not None]
        self.plugin: str | None = answering[0].name if answering else None
        """The plugin that answers, or ``None``."""
        self.provider: EntitlementProvider | None = answering[0].entitlements if answering else None
        self._tenants = tenants
        self._services: Callable[[str], Services] | None = None
        # tenant id -> (plan code it was answered for, limit or None)
        self._limits: TTLCache[str, object] = TTLCache(RATE_LIMIT_TTL)
        # The last answer per tenant, for while the cache is bypassed (the invalidation bus is not
        # subscribed: Redis away, when the limiter lets requests through anyway, or start-up).
        self._last: dict[str, tuple[str, int | None]] = {}
        if tenants.bus is not None:
            tenants.bus.register(TOPIC, self._limits)

    def attach(self, services: Callable[[str], Services]) -> None:
        """Give the gate the kernel's facade factory (the kernel exists only after the gate)."""
        self._services = services

    def plan(self, requested: str | None, *, field: str = "plan", signup: bool = False) -> str:
        """The plan code a new tenant gets: ``requested`` when the provider knows it (422 naming
        ``field`` otherwise), else the provider's default. With ``signup`` (a tenant creating
        itself, nobody paid yet) the provider's :meth:`~EntitlementProvider.signup_plan` decides."""
        provider = self.provider
        if signup and provider is not None and requested is not None:
            return provider.signup_plan(self.plan(requested, field=field))
        if requested is None:
            return provider.default_plan if provider is not None else DEFAULT_PLAN
        if provider is not None and provider.plans is not None and requested not in provider.plans:
            known = ", ".join(provider.plans)
            raise Unprocessable(
                f"unknown plan {requested!r} (plans: {known})",
                errors=[FieldError(field=field, message=f"must be one of: {known}")],
            )
        return requested

    async def ask(self, tenant_id: uuid.UUID, feature: str, amount: int = 1) -> Entitlement:
        """The provider's answer (allowed and unmetered when there is none)."""
        if self.provider is None:
            return _ALLOWED
        assert self.plugin is not None and self._services is not None
        tenant = await self._tenants.find(str(tenant_id))
        query = EntitlementQuery(
            tenant_id=tenant_id, plan=tenant.plan if tenant else "", feature=feature, amount=amount
        )
        try:
            answer = await self.provider.check(query, self._services(self.plugin))
        except Exception:
            log.exception("entitlement provider %s failed on %s", self.plugin, feature)
            raise ServiceUnavailable(f"cannot check the tenant's entitlement to {feature} right now") from None
        if not isinstance(answer, Entitlement):
            log.error("entitlement provider %s answered %r, not an Entitlement", self.plugin, answer)
            raise ServiceUnavailable(f"cannot check the tenant's entitlement to {feature} right now")
        return answer

    async def rate_limit(self, tenant_id: uuid.UUID) -> int | None:
        """The tenant's requests per minute per principal as its plan sets them, or ``None`` (the
        installation's setting applies). Cached per process; never raises: when the provider
        cannot answer, ``None``."""
        if self.provider is None:
            return None
        key = str(tenant_id)
        tenant = await self._tenants.find(key)
        if tenant is None:
            return None
        cached = self._limits.get(key)
        if isinstance(cached, tuple) and cached[0] == tenant.plan:
            return cast(int | None, cached[1])
        last = self._last.get(key)
        if self._limits.bypassed and last is not None and last[0] == tenant.plan:
            return last[1]
        generation = self._limits.generation
        try:
            answer = await self.ask(tenant_id, RATE_LIMIT_FEATURE, 0)
        except Exception:
            log.warning("no rate limit from %s for tenant %s: the installation's applies", self.plugin, key)
            return None
        limit = answer.remaining if answer.remaining is None or answer.remaining >= 1 else 1
        self._limits.put(key, (tenant.plan, limit), generation)
        if len(self._last) >= 100_000:
            self._last.clear()
        self._last[key] = (tenant.plan, limit)
        return limit

    async def forget(self, tenant_id: uuid.UUID) -> None:
        """Drop what every process cached for the tenant (its terms changed)."""
        bus = self._tenants.bus
        if bus is not None:
            await bus.publish(TOPIC, str(tenant_id))
        else:
            self._limits.drop(str(tenant_id))

    async def operator_plan(self, tenant_id: uuid.UUID, plan: str, actor: str) -> None:
        """Let the provider apply an operator's plan change before the kernel records it."""
        if self.provider is None:
            return
        assert self.plugin is not None and self._services is not None
        await self.provider.operator_plan(tenant_id, plan, actor, self._services(self.plugin))
        await self.forget(tenant_id)

    async def require(self, tenant_id: uuid.UUID, feature: str, amount: int = 1) -> Entitlement:
        """:meth:`ask`, raising :class:`~kernel.errors.PaymentRequired` on a refusal."""
        answer = await self.ask(tenant_id, feature, amount)
        if not answer.allowed:
            limit = answer.limit or feature
            raise PaymentRequired(
                answer.detail or f"the tenant's plan does not allow more {limit}",
                extra={"feature": feature, "limit": limit, "remaining": answer.remaining, "lift": answer.lift},
            )
        return answer


class Entitlements:
    """What a plugin asks before a metered action of its own (``sdk.Entitlements``).

    Feature names are the plugin's: ``<plugin>.<feature>`` (``crm.contacts``, ``workflows.runs``).
    Without an entitlement provider installed every check passes and nothing is metered.
    """

    def __init__(self, gate: EntitlementGate, plugin: str) -> None:
        self._gate = gate
        self._plugin = plugin

    def _feature(self, feature: str) -> str:
        if not (feature.startswith(self._plugin + ".") and _FEATURE.match(feature)):
            raise ValueError(f"feature {feature!r} must be named {self._plugin}.<feature>")
        return feature

    async def check(self, tenant_id: uuid.UUID, feature: str, amount: int = 1) -> int | None:
        """Refuse with a 402 problem (naming the limit and how to lift it) unless the tenant may use
        ``amount`` more of ``feature``; returns what remains after it (``None``: not metered)."""
        return (await self._gate.require(tenant_id, self._feature(feature), amount)).remaining

    async def changed(self, tenant_id: uuid.UUID) -> None:
        """Tell every process that the tenant's terms changed (for the entitlement provider:
        after a plan change or a new plan version, so cached answers such as the rate limit go)."""
        await self._gate.forget(tenant_id)

    async def remaining(self, tenant_id: uuid.UUID, feature: str) -> int | None:
        """How much of ``feature`` the tenant has left (``None``: not metered); never refuses."""
        return (await self._gate.ask(tenant_id, self._feature(feature), 0)).remaining
