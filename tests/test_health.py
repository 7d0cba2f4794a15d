from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.settings import Settings, load_settings
from tests.conftest import SECRET, new_tenant, open_client, settings_for


async def test_health_answers_like_the_original_system(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "OK" and body["tenant"] is None
    assert body["timestamp"].endswith("Z") or "+" in body["timestamp"]

    tenant = await new_tenant(client)
    body = (await client.get("/health", headers={"X-Tenant-ID": tenant["slug"]})).json()
    assert body["tenant"] == tenant["id"]
    # Health never fails on a bad tenant reference.
    body = (await client.get("/health", headers={"X-Tenant-ID": "x" * 500})).json()
    assert body["status"] == "OK" and body["tenant"] is None


async def test_ready_checks_postgres_and_redis(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_ready_names_redis_when_it_is_down(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    # Nothing listens on port 1: the API starts (Redis is not needed to boot) and reports it.
    down = settings_for(database_url, "redis://127.0.0.1:1/0", tmp_path)
    async with open_client(down) as client:
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["checks"]["redis"].startswith("down") and body["checks"]["postgres"] == "ok"
        assert "redis" in body["detail"] and "postgres" not in body["detail"]


async def test_ready_names_postgres_when_it_is_down(servers: tuple[str, str], tmp_path: Path) -> None:
    # A PostgreSQL of our own, so that stopping it disturbs no other test.
    own = EmbeddedServices(
        load_settings(
            {"BUSINESSOS_DATA_DIR": str(tmp_path), "BUSINESSOS_SECRET_KEY": SECRET, "REDIS_URL": servers[1]}
        )
    ).start()
    try:
        assert own.database_url
        settings = settings_for(own.database_url, servers[1], tmp_path)
        await migrate.upgrade(settings, own.database_url, {})
        async with open_client(settings) as client:
            assert (await client.get("/ready")).status_code == 200
            own.stop()
            response = await client.get("/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["checks"]["postgres"].startswith("down") and body["checks"]["redis"] == "ok"
            assert "postgres" in body["detail"]
    finally:
        own.stop()


async def test_unknown_routes_and_methods_are_problems(client: AsyncTestClient[Any]) -> None:
    response = await client.get(f"/api/nothing-{uuid.uuid4().hex}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    response = await client.delete("/health")
    assert response.status_code == 405
    assert response.json()["title"] == "Method not allowed"
