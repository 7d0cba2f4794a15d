"""The running kernel's handles, and how a request reaches them and its tenant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from redis.asyncio import Redis

from kernel.ai.proxy import AIProxy
from kernel.ai.retrieval.service import RetrievalService
from kernel.audit.log import AuditWriter
from kernel.cache import InvalidationBus
from kernel.connections.service import ConnectionService
from kernel.crypto import SecretBox
from kernel.db.engine import Database
from kernel.egress import EgressClient
from kernel.entitlements import EntitlementGate
from kernel.errors import BadRequest, Forbidden
from kernel.events.deliveries import Deliveries
from kernel.http.ratelimit import RateLimiter
from kernel.identity.access import AccessService
from kernel.identity.service import IdentityService
from kernel.identity.tokens import KeySet
from kernel.modules.service import ModuleService
from kernel.operators.service import OperatorService
from kernel.plugins.loader import PluginSet
from kernel.plugins.services import Services
from kernel.settings import Settings
from kernel.tenants.schemas import Tenant
from kernel.tenants.service import TenantService
from kernel.webhooks.service import Endpoints

__all__ = ["TENANT_HEADER", "Kernel", "current_tenant", "get_kernel", "provide_tenant"]

TENANT_HEADER = "X-Tenant-ID"


@dataclass
class Kernel:
    settings: Settings
    plugins: PluginSet
    db: Database
    redis: Redis
    bus: InvalidationBus
    tenants: TenantService
    modules: ModuleService
    keys: KeySet
    box: SecretBox
    access: AccessService
    identity: IdentityService
    limiter: RateLimiter
    entitlements: EntitlementGate
    ai: AIProxy = field(init=False)
    retrieval: RetrievalService = field(init=False)
    deliveries: Deliveries = field(init=False)
    operators: OperatorService = field(init=False)
    egress: EgressClient = field(init=False)
    connections: ConnectionService = field(init=False)
    webhooks: Endpoints = field(init=False)
    """What inbound webhook tokens open (cached)."""
    audit: AuditWriter = field(init=False)
    """Audit rows outside a caller's transaction, group-committed."""
    _services: dict[str, Services] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ai = AIProxy(self.db, self.box, self.settings, self.bus, self.entitlements)
        self.retrieval = RetrievalService(self.db, self.ai)
        self.entitlements.attach(self.services)
        self.modules.attach(self.services)
        self.deliveries = Deliveries(self)
        self.operators = OperatorService(self.db, self.redis, self.keys, self.tenants)
        self.egress = EgressClient.from_settings(self.settings)
        self.connections = ConnectionService(self)
        self.webhooks = Endpoints(self.db, self.bus)
        self.audit = AuditWriter(self.db)

    def services(self, plugin: str) -> Services:
        """The facade handed to ``plugin``'s code (one per plugin and process)."""
        found = self._services.get(plugin)
        if found is None:
            found = self._services[plugin] = Services(self, plugin)
        return found


def get_kernel(connection: ASGIConnection[Any, Any, Any, Any]) -> Kernel:
    kernel: Kernel = connection.app.state.kernel
    return kernel


async def current_tenant(connection: ASGIConnection[Any, Any, Any, Any]) -> Tenant:
    """The request's tenant, resolved once per request.

    With credentials, it is the tenant they were issued for; an ``X-Tenant-ID`` naming any other
    tenant is refused (403). Without credentials (sign-up, log-in), the header names it.
    """
    state = connection.scope.setdefault("state", {})
    tenant: Tenant | None = state.get("tenant")
    if tenant is not None:
        return tenant
    kernel = get_kernel(connection)
    ref = connection.headers.get(TENANT_HEADER)
    principal = state.get("principal")
    if principal is not None:
        tenant = await kernel.tenants.resolve(str(principal.tenant_id))
        if ref and ref.strip().lower() not in (str(tenant.id), tenant.slug):
            found = await kernel.tenants.find(ref) if len(ref) <= 100 else None
            if found is None or found.id != tenant.id:
                raise Forbidden(f"your credentials are for another tenant than {TENANT_HEADER} names")
    else:
        if not ref:
            raise BadRequest(f"the {TENANT_HEADER} header (tenant id or slug) is required")
        tenant = await kernel.tenants.resolve(ref)
    state["tenant"] = tenant
    return tenant


async def provide_tenant(request: ASGIConnection[Any, Any, Any, Any], kernel: Kernel) -> Tenant:
    # ``kernel`` is taken (not used) so that Litestar resolves the two dependencies one after the
    # other: dependencies of the same level are resolved in an anyio task group, which costs
    # more than both lookups together on every request.
    return await current_tenant(request)


async def provide_kernel(request: ASGIConnection[Any, Any, Any, Any]) -> Kernel:
    return get_kernel(request)


