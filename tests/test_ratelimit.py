from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from kernel.errors import TooManyRequests
from kernel.http.ratelimit import KEY_PREFIX, RateLimiter, check, ip_bucket, principal_bucket
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, settings_for
from tests.servers import api_servers


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client: Redis = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


def _bucket() -> str:
    return f"test:{uuid.uuid4().hex}"


def _is_429(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    for name in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy"):
        assert name in response.headers, name
    assert response.headers["ratelimit-remaining"] == "0"
    body: dict[str, Any] = response.json()
    assert body["status"] == 429 and body["type"].endswith("/rate-limited")
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_concurrent_hits_never_admit_more_than_the_limit(settings: Settings) -> None:
    assert settings.redis_url
    # Four clients with their own connection pools, as four processes would have.
    clients = [Redis.from_url(settings.redis_url) for _ in range(4)]
    try:
        limiters = [RateLimiter(client) for client in clients]
        key = _bucket()
        decisions = await asyncio.gather(*(limiters[i % 4].hit(key, 50, 60) for i in range(200)))
    finally:
        for client in clients:
            await client.aclose()
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 50
    assert sorted(d.remaining for d in allowed) == list(range(50))
    assert all(d.retry_after > 0 and d.remaining == 0 for d in decisions if not d.allowed)


async def test_a_bucket_allows_a_burst_then_refills_at_its_rate(redis: Redis) -> None:
    limiter, key = RateLimiter(redis), _bucket()
    burst = [await limiter.hit(key, 5, 5.0) for _ in range(5)]  # refills one per second
    assert [d.remaining for d in burst] == [4, 3, 2, 1, 0] and all(d.allowed for d in burst)
    assert 4.5 < burst[-1].reset_after <= 5.0
    refused = await limiter.hit(key, 5, 5.0)
    assert not refused.allowed and refused.remaining == 0
    assert 0 < refused.retry_after <= 1.0
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await limiter.hit(key, 5, 5.0)).allowed
    assert not (await limiter.hit(key, 5, 5.0)).allowed
    # The key expires once the bucket would be full again: an idle bucket costs no memory.
    ttl = await redis.pttl(KEY_PREFIX + key)
    assert 4000 < ttl <= 5000


async def test_cost_spends_several_and_bad_arguments_are_refused(redis: Redis) -> None:
    limiter, key = RateLimiter(redis), _bucket()
    assert (await limiter.hit(key, 10, 60, cost=7)).remaining == 3
    refused = await limiter.hit(key, 10, 60, cost=4)
    assert not refused.allowed and refused.remaining == 3
    assert (await limiter.hit(key, 10, 60, cost=3)).remaining == 0
    for limit, period, cost in ((0, 60.0, 1), (10, 0.0, 1), (10, 60.0, 11), (10, 60.0, 0)):
        with pytest.raises(ValueError):
            await limiter.hit(key, limit, period, cost)


async def test_check_raises_a_429_problem_with_headers(redis: Redis) -> None:
    limiter, key = RateLimiter(redis), _bucket()
    decision = await check(limiter, key, 1, 60)
    assert decision.headers()["RateLimit-Remaining"] == "0"
    with pytest.raises(TooManyRequests) as refused:
        await check(limiter, key, 1, 60)
    assert refused.value.status == 429
    headers = refused.value.headers
    assert headers["RateLimit-Limit"] == "1" and headers["RateLimit-Policy"] == "1;w=60"
    assert 59 <= int(headers["Retry-After"]) <= 60


async def test_tenant_buckets_are_independent(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    actor = f"user:{uuid.uuid4()}"  # the same principal id in both tenants, to be strict
    for _ in range(3):
        assert (await limiter.hit(principal_bucket(tenant_a, actor), 3, 60)).allowed
    assert not (await limiter.hit(principal_bucket(tenant_a, actor), 3, 60)).allowed
    fresh = await limiter.hit(principal_bucket(tenant_b, actor), 3, 60)
    assert fresh.allowed and fresh.remaining == 2


async def test_tenant_a_exhausting_its_limit_leaves_tenant_b_untouched(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_url and settings.redis_url
    low = settings_for(
        settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_RATE_LIMIT_PER_MINUTE="5"
    )
    async with open_client(low) as client:
        a, b = await new_tenant(client, "rl-a"), await new_tenant(client, "rl-b")

        async def current(tenant: dict[str, Any]) -> httpx.Response:
            response: httpx.Response = await client.get(
                "/api/tenants/current",
                headers={"Authorization": f"Bearer {tenant['access_token']}"},
            )
            return response

        seen = [await current(a) for _ in range(5)]
        assert [r.status_code for r in seen] == [200] * 5
        assert [r.headers["ratelimit-remaining"] for r in seen] == ["4", "3", "2", "1", "0"]
        assert all(r.headers["ratelimit-limit"] == "5" for r in seen)
        _is_429(await current(a))
        other = await current(b)
        assert other.status_code == 200 and other.headers["ratelimit-remaining"] == "4"


async def test_auth_routes_have_a_stricter_bucket_per_ip(
    settings: Settings, tmp_path: Path, redis: Redis
) -> None:
    assert settings.database_url and settings.redis_url
    strict = settings_for(
        settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE="3"
    )
    # The test client always calls from "testclient": start from, and leave, an empty bucket.
    key = KEY_PREFIX + ip_bucket("auth", "testclient")
    await redis.delete(key)
    try:
        async with open_client(strict) as client:
            login = {"email": f"nobody-{uuid.uuid4().hex[:6]}@example.com", "password": "wrong-password"}
            tried = [await client.post("/api/auth/login", json=login) for _ in range(3)]
            assert all(r.status_code != 429 for r in tried), [r.status_code for r in tried]
            assert [r.headers["ratelimit-limit"] for r in tried] == ["3"] * 3
            body = _is_429(await client.post("/api/auth/login", json=login))
            assert body["instance"] == "/api/auth/login"
            assert 19 <= int((await client.post("/api/auth/login", json=login)).headers["retry-after"]) <= 20
            # Other routes answer from the general bucket.
            health = await client.get("/health")
            assert health.status_code == 200 and health.headers["ratelimit-limit"] != "3"
    finally:
        await redis.delete(key)


async def test_limits_hold_across_two_api_processes(settings: Settings, tmp_path: Path, redis: Redis) -> None:
    # Both servers trust 127.0.0.1 as a proxy, so X-Forwarded-For gives this run its own bucket.
    env = {"BUSINESSOS_RATE_LIMIT_PER_MINUTE": "10", "BUSINESSOS_TRUSTED_PROXIES": "127.0.0.1"}
    client_ip = f"198.51.100.{random.randint(1, 254)}"
    await redis.delete(KEY_PREFIX + ip_bucket("req", client_ip))
    async with api_servers(settings, tmp_path, count=2, env=env) as urls, httpx.AsyncClient() as http:
        headers = {"X-Forwarded-For": client_ip}
        responses = await asyncio.gather(
            *(http.get(urls[i % 2] + "/health", headers=headers) for i in range(30))
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses
    # Both processes answered, and both refused once the shared bucket was empty.
    for served in (responses[0::2], responses[1::2]):
        assert {r.status_code for r in served} <= {200, 429} and any(r.status_code == 429 for r in served)
    for response in responses:
        if response.status_code == 429:
            _is_429(response)
