"""The plan's monthly AI tokens over HTTP, with the billing plugin answering the entitlement: past
the allowance a call is refused with 402 naming the limit and what remains, concurrent calls
through two API processes are admitted only while their upper bounds fit together, and another
tenant is not affected."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from kernel.ai.budget_gate import BudgetGate
from kernel.ai.budgets import PLAN_SCOPE, current_month
from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from tests import test_ai
from tests.conftest import eventually, open_client, settings_for
from tests.fake_openai import PROMPT_TOKENS, REPLY, FakeOpenAI
from tests.servers import api_servers
from tests.test_ai import MODEL, _api_key, _headers, _problem, _tenant_with_key

provider = test_ai.provider

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 8
# What the proxy reserves for one such call: the prompt's JSON size plus 8 per message plus 16,
# and max_tokens (kernel.ai.proxy._prompt_estimate).
RESERVED = len('[{"role":"user","content":"hi"}]') + 8 + 16 + MAX_TOKENS
USED = PROMPT_TOKENS + len(REPLY)  # what the local provider reports for one call


@pytest.fixture(scope="module")
async def billed(database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The suite's database with the billing plugin installed (it answers entitlements)."""
    result = settings_for(
        database_url, servers[1], tmp_path_factory.mktemp("ai-allowance"),
        BUSINESSOS_PLUGINS="billing", BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1",
    )
    plugins = load_app_plugins(result.plugins_allowlist)
    billing = plugins.get("billing")
    assert billing is not None and billing.active, billing and billing.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def servers_billed(billed: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[str]]:
    """Two API processes with the billing plugin, sharing the suite's PostgreSQL and Redis."""
    data_dir: Path = tmp_path_factory.mktemp("ai-allowance-servers")
    env = {"BUSINESSOS_AI_ALLOW_PRIVATE_BASES": "1", "BUSINESSOS_PLUGINS": "billing"}
    async with api_servers(billed, data_dir, count=2, env=env) as urls:
        yield urls


@pytest.fixture
async def api(billed: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(billed) as client:
        yield client


async def _ai_tokens(api: AsyncTestClient[Any], tenant: dict[str, str]) -> dict[str, Any]:
    response = await api.get("/api/billing/usage", headers=_headers(tenant))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = next(m for m in response.json()["metrics"] if m["metric"] == "ai_tokens")
    return found


async def test_past_the_plans_ai_tokens_calls_are_refused_and_another_tenant_still_works(
    api: AsyncTestClient[Any], provider: FakeOpenAI, billed: Settings, servers_billed: list[str]
) -> None:
    over, other = await _tenant_with_key(api, provider), await _tenant_with_key(api, provider)
    allowance = int((await _ai_tokens(api, over))["included"])
    # Usage the billing plugin received leaves room for two running calls' upper bounds, not three.
    left = 2 * RESERVED + RESERVED // 2
    metered = await api.post(
        "/api/billing/usage",
        json={"events": [{"transaction_id": f"ai-{uuid.uuid4().hex}", "metric": "ai_tokens",
                          "value": allowance - left}]},
        headers=_headers(over),
    )
    assert metered.status_code == 200 and metered.json()["accepted"] == 1, metered.text
    chat = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    auth = {"Authorization": f"Bearer {await _api_key(api, over)}"}
    sent = len(provider.requests)
    burst = 8  # even one after another, the last of them cannot fit: left - 7 * USED < RESERVED
    provider.delay = 0.05  # the calls overlap
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            responses = await asyncio.gather(
                *(http.post(f"{servers_billed[i % 2]}/api/ai/chat", json=chat, headers=auth) for i in range(burst))
            )
    finally:
        provider.delay = 0.0
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 402}, [r.text for r in responses]
    admitted = statuses.count(200)
    # However the calls interleaved, the first two always fit, and a refused call never reached
    # the provider.
    assert admitted >= 2 and len(provider.requests) - sent == admitted
    for refused in (r for r in responses if r.status_code == 402):
        body = _problem(refused, 402)
        assert body["feature"] == "kernel.ai.tokens" and body["limit"] == "ai_tokens"
        assert 0 <= body["remaining"] < RESERVED  # what running and settled calls left: too little
        assert body["estimated_tokens"] == RESERVED and body["lift"]

    # Each call is settled at what the provider reported: calls fit until fewer tokens remain than
    # one call may use.
    remaining = left - admitted * USED
    assert remaining >= 0  # never past the allowance
    await eventually(lambda: _used(api, over, allowance - remaining))
    assert billed.redis_url
    redis = Redis.from_url(billed.redis_url)
    try:  # and their reservations given back in Redis (just after their batch committed)
        await eventually(lambda: _nothing_held(redis, over))
    finally:
        await redis.aclose()
    while remaining >= RESERVED:
        answered = await api.post("/api/ai/chat", json=chat, headers=_headers(over))
        assert answered.status_code == 200, answered.text
        remaining -= USED
    await eventually(lambda: _used(api, over, allowance - remaining))
    body = _problem(await api.post("/api/ai/chat", json=chat, headers=_headers(over)), 402)
    assert body["remaining"] == remaining and body["limit"] == "ai_tokens"
    assert str(remaining) in body["detail"]  # the billing plugin's words name the figure

    # The other tenant's allowance is its own.
    answered = await api.post("/api/ai/chat", json=chat, headers=_headers(other))
    assert answered.status_code == 200, answered.text
    await eventually(lambda: _used(api, other, USED))


async def _used(api: AsyncTestClient[Any], tenant: dict[str, str], expected: int) -> bool:
    return int((await _ai_tokens(api, tenant))["used"]) == expected


async def _nothing_held(redis: Redis, tenant: dict[str, str]) -> bool:
    key = BudgetGate.balance_key(uuid.UUID(tenant["id"]), PLAN_SCOPE, current_month())
    return int(await redis.hget(key, "held_tokens") or 0) == 0  # type: ignore[misc]
