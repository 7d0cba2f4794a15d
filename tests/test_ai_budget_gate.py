"""Budgets admitted in Redis: the balance follows PostgreSQL's record, is derived again from it
when missing, and a Redis that cannot be reached refuses budgeted calls (503), not admits them.
(The 20-concurrent-calls test in test_ai.py is the overspending proof; it runs on this path.)"""

from __future__ import annotations

import socket
import uuid
from decimal import Decimal
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from kernel.ai.budget_gate import SCALE, BudgetGate
from kernel.ai.budgets import BudgetService, current_month
from kernel.ai.call_cache import CallCache
from kernel.errors import ServiceUnavailable
from kernel.settings import Settings
from tests import test_ai
from tests.conftest import eventually, new_tenant, other_process
from tests.fake_openai import FakeOpenAI
from tests.test_ai import MODEL, _headers, _problem, _tenant_with_key

provider, ai_settings, api = test_ai.provider, test_ai.ai_settings, test_ai.api


async def _balance(redis: Redis, tenant_id: str) -> tuple[int, int] | None:
    key = BudgetGate.balance_key(uuid.UUID(tenant_id), "tenant", current_month())
    found = await redis.hgetall(key)  # type: ignore[misc]
    return None if not found else (int(found[b"cost"]), int(found[b"tokens"]))


async def test_the_redis_balance_follows_the_record_and_is_derived_again_when_missing(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    assert ai_settings.redis_url
    redis = Redis.from_url(ai_settings.redis_url)
    tenant = await _tenant_with_key(api, provider)
    await api.put("/api/ai/budgets", json={"monthly_token_limit": 10_000}, headers=_headers(tenant))
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    budget: dict[str, Any] = {}

    async def settled() -> bool:
        budget.update((await api.get("/api/ai/budgets", headers=_headers(tenant))).json())
        return budget["reserved_tokens"] == 0 and budget["spent_tokens"] > 0

    try:
        assert (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 200
        await eventually(settled)
        balance = await _balance(redis, tenant["id"])
        assert balance is not None and balance[1] == budget["spent_tokens"]  # the reservation became the spend
        assert balance[0] == int(Decimal(budget["spent_cost"]) * SCALE)

        # Lost (a Redis restart, or dropped by the sweeper): the next call derives it from PostgreSQL.
        await redis.delete(BudgetGate.balance_key(uuid.UUID(tenant["id"]), "tenant", current_month()))
        first = budget["spent_tokens"]
        budget.clear()
        assert (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 200
        await eventually(lambda: _more(api, tenant, budget, first))
        balance = await _balance(redis, tenant["id"])
        assert balance is not None and balance[1] == budget["spent_tokens"]

        # A limit below what is in use refuses, with what remains, and holds nothing.
        lower = {"monthly_token_limit": budget["spent_tokens"] + 5}
        await api.put("/api/ai/budgets", json=lower, headers=_headers(tenant))
        refused = _problem(await api.post("/api/ai/chat", json=chat, headers=_headers(tenant)), 402)
        assert refused["remaining_tokens"] == 5 and refused["scope"] == "tenant"
        assert await _balance(redis, tenant["id"]) == balance
    finally:
        await redis.aclose()


async def _more(api: AsyncTestClient[Any], tenant: dict[str, str], budget: dict[str, Any], than: int) -> bool:
    budget.update((await api.get("/api/ai/budgets", headers=_headers(tenant))).json())
    return bool(budget["reserved_tokens"] == 0 and budget["spent_tokens"] > than)


async def test_an_unreachable_redis_refuses_budgeted_calls_and_leaves_others_alone(
    api: AsyncTestClient[Any], ai_settings: Settings
) -> None:
    budgeted = await new_tenant(api, "gate")
    free = await new_tenant(api, "gate-free")
    await api.put("/api/ai/budgets", json={"monthly_cost_limit": 5}, headers=_headers(budgeted))
    with socket.socket() as probe:  # a port nothing listens on: Redis is down
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    down = Redis.from_url(dead, socket_connect_timeout=1, socket_timeout=1)
    async with other_process(ai_settings) as kernel:
        budgets = BudgetService(kernel.db, CallCache(None), down)
        with pytest.raises(ServiceUnavailable):
            await budgets.reserve(uuid.UUID(budgeted["id"]), None, Decimal("0.01"), 100)
        assert await budgets.reserve(uuid.UUID(free["id"]), None, Decimal("0.01"), 100) is None
    await down.aclose()
    state = (await api.get("/api/ai/budgets", headers=_headers(budgeted))).json()
    assert Decimal(state["reserved_cost"]) == 0  # nothing was held anywhere
