"""Prometheus metrics, and ``GET /metrics``.

What is counted, and where:

- HTTP requests by route *template* (``/api/admin/tenants/{ref}``, never the raw path, so ids do
  not explode the label set; an unrouted request is ``<unmatched>``), method and status, and a
  latency histogram: :class:`MetricsMiddleware`, a plain ASGI layer just inside the hardening one;
- jobs by name and outcome, and their duration: :func:`observe_job`, around each arq job;
- AI calls, tokens and cost by provider: :func:`record_ai_call`, after the ledger row commits;
- computed at scrape time (a cheap query each, only when ``/metrics`` is read): outbox events
  pending and the age of the oldest (lag), dead event deliveries, and
  the answering process's database pool.

Several processes (``serve --workers N`` and its job worker): with ``PROMETHEUS_MULTIPROC_DIR``
set, prometheus_client's multiprocess mode keeps every process's counters in files there and
``/metrics`` sums them; ``businessos serve`` sets it (to ``<data dir>/metrics``, emptied at start)
when it is not set, so its API workers and job worker are read as one. Without it, each process
counts on its own (tests, a single process). A ``businessos worker`` on another host is not seen
by an API host's ``/metrics``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from kernel.observability.logs import bind_request

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from kernel.db.engine import Database

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "MetricsMiddleware",
    "instrument_worker",
    "observe_job",
    "prepare_multiprocess_dir",
    "record_ai_call",
    "render",
]

log = logging.getLogger("businessos.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "<unmatched>"
# Any other method a client sends is counted as OTHER (labels must stay a bounded set).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

class _Metrics:
    """The counters and histograms, made on first use: prometheus_client decides at import whether
    it runs in multiprocess mode, so nothing may import it before ``serve`` has chosen."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.http_requests = Counter(
            "businessos_http_requests", "HTTP requests answered", ["method", "route", "status"]
        )
        self.http_latency = Histogram(
            "businessos_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.jobs = Counter("businessos_jobs", "Background jobs run", ["job", "outcome"])
        self.job_latency = Histogram(
            "businessos_job_duration_seconds", "Time a background job ran", ["job"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
        )
        self.ai_calls = Counter("businessos_ai_calls", "AI calls written to the ledger", ["provider", "status"])
        self.ai_tokens = Counter("businessos_ai_tokens", "AI tokens written to the ledger", ["provider", "kind"])
        self.ai_cost = Counter(
            "businessos_ai_cost", "AI cost written to the ledger, in the price list's currency", ["provider"]
        )


_made: _Metrics | None = None


def _metrics() -> _Metrics:
    global _made
    if _made is None:
        _made = _Metrics()
    return _made


class MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, and times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        bind_request(scope["state"])  # what is logged from here on names this request and tenant

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            # Litestar writes the matched route's template into the scope it was given.
            route = scope.get("path_template") or UNMATCHED
            method = scope.get("method", "")
            key = (method if method in _METHODS else "OTHER", route, status)
            found = self._children.get(key)
            if found is None:  # labels() costs more than the rest: each series is looked up once
                metrics = _metrics()
                found = self._children[key] = (
                    metrics.http_requests.labels(key[0], route, str(status)),
                    metrics.http_latency.labels(key[0], route),
                )
            found[0].inc()
            found[1].observe(time.perf_counter() - started)


@asynccontextmanager
async def observe_job(name: str) -> AsyncIterator[None]:
    """Count one run of job ``name`` as ``ok``, ``error`` or ``cancelled``, and time it."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except BaseException as exc:
        if not isinstance(exc, Exception):
            outcome = "cancelled"
        raise
    finally:
        metrics = _metrics()
        metrics.jobs.labels(name, outcome).inc()
        metrics.job_latency.labels(name).observe(time.perf_counter() - started)


def instrument_worker(worker: Any) -> None:
    """Wrap every function and cron job of an arq ``Worker`` in :func:`observe_job`, under its
    registered name (in place: one call after the worker is built, whatever its functions are)."""
    for name, function in list(worker.functions.items()):
        worker.functions[name] = dataclasses.replace(function, coroutine=_observed(name, function.coroutine))


def _observed(name: str, coroutine: Any) -> Any:
    @functools.wraps(coroutine)
    async def run(*args: Any, **kwargs: Any) -> Any:
        async with observe_job(name):
            return await coroutine(*args, **kwargs)

    return run


def record_ai_call(provider: str, status: str, prompt: int, completion: int, cost: Decimal) -> None:
    """Count one AI call (or failed attempt) the ledger now holds."""
    metrics = _metrics()
    metrics.ai_calls.labels(provider, status).inc()
    if prompt:
        metrics.ai_tokens.labels(provider, "prompt").inc(prompt)
    if completion:
        metrics.ai_tokens.labels(provider, "completion").inc(completion)
    if cost:
        metrics.ai_cost.labels(provider).inc(float(cost))


def prepare_multiprocess_dir(data_dir: Path) -> None:
    """For ``serve``: share counters between its processes, unless the operator chose a folder.

    Must run before ``prometheus_client`` is imported by the processes that count (it reads the
    variable at import): ``serve`` calls it first thing; its children inherit the environment.
    """
    if os.environ.get(MULTIPROC_ENV):
        return
    folder = data_dir / "metrics"
    shutil.rmtree(folder, ignore_errors=True)  # counters start again with the server
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)


_OUTBOX = text(
    "select count(*) as pending, "
    "coalesce(extract(epoch from now() - min(created_at)), 0) as lag "
    "from events_outbox where status = 'pending'"
)


async def _scrape_time(db: Database) -> list[Any]:
    """Gauges computed now: the pool of this process, the outbox, dead letters."""
    from prometheus_client.core import GaugeMetricFamily

    families = []
    pool: Any = db.engine.pool
    for name, doc, value in (
        ("businessos_db_pool_size", "Connections the pool keeps (this process)", pool.size()),
        ("businessos_db_pool_checked_out", "Connections in use (this process)", pool.checkedout()),
        ("businessos_db_pool_overflow", "Connections open beyond the pool size (this process)", pool.overflow()),
    ):
        families.append(GaugeMetricFamily(name, doc, value=value))
    async with db.global_() as session:
        # The dispatcher's policy admits reading the whole outbox; the partial index on pending
        # rows keeps this cheap however large the dispatched history grows.
        await session.execute(text("select set_config('app.outbox_dispatch', 'on', true)"))
        outbox = (await session.execute(_OUTBOX)).one()
        families.append(GaugeMetricFamily(
            "businessos_outbox_pending", "Events recorded and not yet queued", value=outbox.pending
        ))
        families.append(GaugeMetricFamily(
            "businessos_outbox_lag_seconds", "Age of the oldest pending event", value=float(outbox.lag)
        ))
        families.append(GaugeMetricFamily(
            "businessos_event_deliveries_dead", "Event deliveries that gave up (dead letters)",
            value=await _dead_letters(session),
        ))
    return families


async def _dead_letters(session: Any) -> int:
    """Event deliveries that gave up, in every tenant (the dispatcher's policy admits them)."""
    found = await session.execute(text("select count(*) from event_deliveries where status = 'dead'"))
    return int(found.scalar_one())


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The exposition format ``render`` writes (prometheus_client's ``CONTENT_TYPE_LATEST``)."""


async def render(db: Database) -> bytes:
    """The exposition text: this process's (or, in multiprocess mode, every process's) counters,
    then the scrape-time gauges (a registry of their own, so concurrent scrapes do not collide)."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

    _metrics()  # the families appear (empty) before anything was counted
    if os.environ.get(MULTIPROC_ENV):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)  # type: ignore[no-untyped-call]
    else:
        counters = REGISTRY
    families = await _scrape_time(db)
    gauges = CollectorRegistry()
    gauges.register(_Fixed(families))
    return generate_latest(counters) + generate_latest(gauges)


class _Fixed:
    """A collector of families computed beforehand (see :func:`render`)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return self.families
