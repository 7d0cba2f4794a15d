"""The application factory: load plugins, mount routes, wire the kernel's services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

from kernel import __version__
from kernel.ai import library_routes as ai_library_routes
from kernel.ai import openai_compat as ai_openai_routes
from kernel.ai import routes as ai_routes
from kernel.ai.retrieval import routes as ai_retrieval_routes
from kernel.audit import routes as audit_routes
from kernel.audit.safety_net import audit_unaudited_mutations
from kernel.connections import routes as connection_routes
from kernel.context import get_kernel, provide_kernel, provide_tenant
from kernel.db.models import KernelBase
from kernel.errors import exception_handlers
from kernel.events import routes as event_routes
from kernel.events.catalog import list_event_types
from kernel.health import health, ready
from kernel.http import EXPOSED_HEADERS, hardening, rate_limit_guard
from kernel.http.openapi import OpenAPIDocument
from kernel.http.request import KernelRequest
from kernel.http.strict import strict_body_guard
from kernel.identity import routes as identity_routes
from kernel.identity.auth import AuthenticationMiddleware, access_guard
from kernel.identity.permissions import KERNEL_PERMISSIONS, OPERATOR
from kernel.modules import routes as module_routes
from kernel.observability import routes as observability_routes
from kernel.observability.logs import configure_logging
from kernel.observability.metrics import MetricsMiddleware
from kernel.observability.tracing import litestar_plugins, trace_engine
from kernel.operators import routes as operator_routes
from kernel.operators.access import ADMIN_PREFIX, OPERATOR_AREA_OPT, provide_operator
from kernel.plugins.contract import open_lifespan
from kernel.plugins.loader import PluginSet, load_plugins, route_keys
from kernel.plugins.services import Services
from kernel.runtime import open_kernel
from kernel.settings import Settings, load_settings
from kernel.tenants import routes as tenant_routes
from kernel.webhooks.routes import receive_webhook

__all__ = ["create_app", "kernel_route_handlers", "load_app_plugins"]

log = logging.getLogger("businessos")

# Importing the models registers the kernel's tables on KernelBase.metadata.
from kernel.ai import models as _ai_models  # noqa: E402,F401
from kernel.ai import tables as _ai_tables  # noqa: E402,F401
from kernel.audit import models as _audit_models  # noqa: E402,F401
from kernel.connections import models as _connection_models  # noqa: E402,F401
from kernel.identity import models as _identity_models  # noqa: E402,F401
from kernel.modules import models as _module_models  # noqa: E402,F401
from kernel.operators import models as _operator_models  # noqa: E402,F401
from kernel.tenants import models as _tenant_models  # noqa: E402,F401
from kernel.vault import models as _vault_models  # noqa: E402,F401
from kernel.webhooks import models as _webhook_models  # noqa: E402,F401


def kernel_route_handlers() -> list[Any]:
    return [
        health,
        ready,
        tenant_routes.create_tenant,
        tenant_routes.get_current_tenant,
        list_event_types,
        module_routes.list_modules,
        module_routes.enable_module,
        module_routes.disable_module,
        module_routes.get_module_settings,
        module_routes.put_module_settings,
        module_routes.purge_module_data,
        audit_routes.list_audit_logs,
        audit_routes.verify_audit_chain,
        *event_routes.handlers,
        *identity_routes.handlers,
        *ai_routes.handlers,
        *ai_library_routes.handlers,
        *ai_retrieval_routes.handlers,
        *ai_openai_routes.handlers,
        receive_webhook,
        *operator_routes.handlers,
        *connection_routes.handlers,
        observability_routes.metrics,
    ]


async def kernel_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The rate limit, access control, then the JSON body's strict types, as one guard: Litestar
    copies the route handler for every guard it runs, on every request."""
    await rate_limit_guard(connection, handler)
    await access_guard(connection, handler)
    await strict_body_guard(connection, handler)


def load_app_plugins(allowlist: frozenset[str] | None) -> PluginSet:
    """Load the installed plugins, checked against the kernel's own routes and tables."""
    return load_plugins(
        allowlist=allowlist,
        kernel_routes=route_keys(kernel_route_handlers()),
        kernel_tables=sorted(KernelBase.metadata.tables),
        kernel_permissions=[p.name for p in KERNEL_PERMISSIONS],
    )


def services_provider(plugin: str) -> Callable[[ASGIConnection[Any, Any, Any, Any]], Services]:
    """The ``services`` dependency of ``plugin``'s routes: its facade."""

    def provide(request: ASGIConnection[Any, Any, Any, Any]) -> Services:
        return get_kernel(request).services(plugin)

    return provide


def create_app(settings: Settings | None = None, plugins: PluginSet | None = None) -> Litestar:
    """Build the Litestar app. Reads the environment when ``settings`` is not given."""
    settings = settings or load_settings()
    plugins = plugins or load_app_plugins(settings.plugins_allowlist)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.kernel = await stack.enter_async_context(open_kernel(settings, plugins))
            trace_engine(app.state.kernel.db.engine)
            for record in plugins.active():
                if record.lifespan is not None:
                    await stack.enter_async_context(
                        open_lifespan(record.lifespan, app.state.kernel.services(record.name))
                    )
            yield

    plugin_routers = [
        Router(
            path="/",
            route_handlers=record.routes,
            opt={"module": record.name},
            dependencies={"services": Provide(services_provider(record.name), sync_to_thread=False)},
        )
        for record in plugins.active()
        if record.routes
    ]
    admin_routers = [
        Router(
            path=f"{ADMIN_PREFIX}/{record.name}",
            route_handlers=record.admin_routes,
            # The operator guard applies whatever the handlers declare.
            opt={"permission": OPERATOR, OPERATOR_AREA_OPT: True},
            dependencies={"services": Provide(services_provider(record.name), sync_to_thread=False)},
        )
        for record in plugins.active()
        if record.admin_routes
    ]
    app = Litestar(
        route_handlers=[*kernel_route_handlers(), *plugin_routers, *admin_routers],
        lifespan=[lifespan],
        dependencies={
            "kernel": Provide(provide_kernel),
            "tenant": Provide(provide_tenant),
            "operator": Provide(provide_operator),
        },
        before_send=[audit_unaudited_mutations],
        guards=[kernel_guard],
        middleware=[AuthenticationMiddleware()],
        exception_handlers=exception_handlers,
        request_class=KernelRequest,  # JSON bodies: depth limit and NUL refused (kernel.http.request)
        cors_config=(
            CORSConfig(allow_origins=list(settings.cors_origins), expose_headers=list(EXPOSED_HEADERS))
            if settings.cors_origins
            else None
        ),
        openapi_config=OpenAPIConfig(
            title="BusinessOS",
            version=__version__,
            path="/schema",
            # openapi.json completed with security and error answers; the UI at /schema/scalar
            render_plugins=[OpenAPIDocument(), ScalarRenderPlugin()],
        ),
        plugins=litestar_plugins(),  # OpenTelemetry, when an OTLP endpoint is set
    )
    if settings.log_format == "json":  # each API process, after Litestar set up its own logging
        configure_logging(settings.log_level, "json")
    app.asgi_handler = MetricsMiddleware(app.asgi_handler)  # sees the matched route's template
    hardening(app, settings)  # outermost: wraps routing and CORS too
    return app
