"""OpenTelemetry traces, when an OTLP endpoint is configured.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set and the
``otel`` extra installed (``pip install 'businessos[otel]'``), each API process exports spans over
OTLP/HTTP (protobuf) through the maintained instrumentations, no span written by hand: Litestar's
OpenTelemetry plugin (the ASGI instrumentation: one server span per request), SQLAlchemy (a span
per statement on the ORM engine; the raw asyncpg read path of hot lists is not traced), Redis and
httpx (every call through the egress client: webhooks, connectors, AI provider calls, one client
span each, see :func:`trace_transport`). The exporter reads the standard ``OTEL_*`` variables
(headers, timeouts, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``). Without the extra, a warning says so
once and the API runs untraced.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["litestar_plugins", "trace_engine", "trace_transport", "tracing_configured"]

log = logging.getLogger("businessos.tracing")

_provider: Any = None
_tried = False


def tracing_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _tracer_provider() -> Any:
    """The process's tracer provider, set up once (OpenTelemetry allows one global provider)."""
    global _provider, _tried
    if _tried:
        return _provider
    _tried = True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: no traces "
                    "(pip install 'businessos[otel]')")
        return None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "businessos")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    return provider


def litestar_plugins() -> list[Any]:
    """Litestar's OpenTelemetry plugin when tracing is configured (and installed), else nothing."""
    if not tracing_configured() or _tracer_provider() is None:
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    return [OpenTelemetryPlugin(OpenTelemetryConfig(tracer_provider=_tracer_provider()))]


def trace_engine(engine: Any) -> None:
    """Trace the statements of ``engine`` (a SQLAlchemy ``AsyncEngine``), when tracing is on."""
    if not tracing_configured() or _tracer_provider() is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()  # a new engine (the app restarted in this process)
    # Its package declares SQLAlchemy < 2.1; the engine events it hooks are unchanged in 2.1 (the
    # suite's trace test shows the statement spans arriving), so the version check is skipped.
    instrumentor.instrument(engine=engine.sync_engine, tracer_provider=_tracer_provider(), skip_dep_check=True)


def trace_transport(transport: Any) -> None:
    """A client span for each request ``transport`` (an httpx transport) sends, when tracing is on.

    httpx's instrumentation patches httpx's own transport classes; the egress client's pinned
    transport hands requests to its own pool (aiohttp), so it is instrumented as an instance, as
    the instrumentation does for one client (``instrument_client``)."""
    if not tracing_configured() or _tracer_provider() is None:
        return
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    carrier = httpx.AsyncClient(transport=transport)  # only carries the transport to the instrumentation
    HTTPXClientInstrumentor.instrument_client(carrier, tracer_provider=_tracer_provider())
