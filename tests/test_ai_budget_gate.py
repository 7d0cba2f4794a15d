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
from sqlalchemy import text

from kernel.ai.budget_gate import SCALE, BudgetGate
from kernel.ai.budgets import BudgetExceeded, BudgetService, current_month
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


async def _held(redis: Redis, tenant_id: uuid.UUID) -> dict[str, int]:
    found = await redis.hgetall(BudgetGate.balance_key(tenant_id, "tenant", current_month()))  # type: ignore[misc]
    return {key.decode(): int(value) for key, value in found.items() if key != b"stale"}


def _units(amount: str) -> int:
    return int(Decimal(amount) * SCALE)


async def test_reservations_live_in_redis_only_and_expire_into_a_balance_derived_again(
    api: AsyncTestClient[Any], ai_settings: Settings
) -> None:
    """No PostgreSQL record per reservation: the month row holds only settled spend. A reservation
    whose process died expires; the balance it held is derived again from the settled spend plus
    what the running calls still hold, so neither the dead call nor a running one is lost."""
    assert ai_settings.redis_url
    redis = Redis.from_url(ai_settings.redis_url)
    tenant = await new_tenant(api, "gate-expiry")
    tenant_id = uuid.UUID(tenant["id"])
    await api.put("/api/ai/budgets", json={"monthly_cost_limit": 10}, headers=_headers(tenant))
    try:
        async with other_process(ai_settings) as kernel:
            budgets = kernel.ai.budgets
            dead = await budgets.reserve(tenant_id, None, Decimal("3"), 300, ttl_seconds=0)
            running = await budgets.reserve(tenant_id, None, Decimal("2"), 200, ttl_seconds=600)
            assert dead is not None and running is not None
            async with kernel.db.tenant(tenant_id) as session:
                rows = (await session.execute(text("select count(*) from ai_reservations"))).scalar_one()
                month = (await session.execute(text("select reserved_cost from ai_budget_months"))).all()
            assert rows == 0 and all(r.reserved_cost == 0 for r in month)
            assert await _held(redis, tenant_id) == {
                "cost": _units("5"), "tokens": 500, "held_cost": _units("5"), "held_tokens": 500
            }
            state = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
            assert Decimal(state["reserved_cost"]) == 5 and Decimal(state["remaining_cost"]) == 5

            # The dead call's process settles nothing; its expiry passes and the sweeper gives it back.
            async with kernel.db.tenant(tenant_id) as session:  # meanwhile, another call's spend lands
                charged = await budgets.settle(session, tenant_id, None, None, Decimal("1"), 100)
            assert charged is not None
            await charged
            assert await kernel.ai.budgets.gate.sweep() >= 1  # type: ignore[union-attr]
            assert await redis.hget(BudgetGate.balance_key(tenant_id, "tenant", current_month()), "stale")  # type: ignore[misc]
            # The next admission derives the balance: settled spend 1 + the running call's 2 + its own 4.
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(tenant_id, None, Decimal("7.5"), 10)
            assert Decimal(refused.value.extra["remaining_cost"]) == 7
            later = await budgets.reserve(tenant_id, None, Decimal("4"), 10)
            assert later is not None
            assert (await _held(redis, tenant_id))["cost"] == _units("7")
            async with kernel.db.tenant(tenant_id) as session:
                await budgets.release(session, running)
                await budgets.release(session, later)
            assert await _held(redis, tenant_id) == {
                "cost": _units("1"), "tokens": 100, "held_cost": 0, "held_tokens": 0
            }
    finally:
        await redis.aclose()


async def test_a_settlement_turns_the_reservation_into_spend_only_once_committed(
    api: AsyncTestClient[Any], ai_settings: Settings
) -> None:
    """Rolled back: the reservation keeps holding the budget. Redis unreachable when settling: the
    spend is in PostgreSQL, the reservation stays held until it expires, and the balance is then
    derived from the spend, which is never lost. A budget edit has the balance derived again."""
    assert ai_settings.redis_url
    redis = Redis.from_url(ai_settings.redis_url)
    tenant = await new_tenant(api, "gate-settle")
    tenant_id = uuid.UUID(tenant["id"])
    await api.put("/api/ai/budgets", json={"monthly_cost_limit": 10}, headers=_headers(tenant))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    down = Redis.from_url(dead, socket_connect_timeout=1, socket_timeout=1)
    try:
        async with other_process(ai_settings) as kernel:
            budgets = kernel.ai.budgets
            held = await budgets.reserve(tenant_id, None, Decimal("4"), 40, ttl_seconds=0)
            assert held is not None
            with pytest.raises(RuntimeError):
                async with kernel.db.tenant(tenant_id) as session:
                    pending = await budgets.settle(session, tenant_id, None, held, Decimal("1"), 10)
                    raise RuntimeError("the batch fails before it commits")
            assert pending is not None
            await pending
            assert await _held(redis, tenant_id) == {
                "cost": _units("4"), "tokens": 40, "held_cost": _units("4"), "held_tokens": 40
            }

            # Settled while Redis cannot be reached (another process's view of the same database).
            blind = BudgetService(kernel.db, CallCache(None), down)
            async with kernel.db.tenant(tenant_id) as session:
                pending = await blind.settle(session, tenant_id, None, held, Decimal("1"), 10)
            assert pending is not None
            await pending
            assert (await _held(redis, tenant_id))["held_cost"] == _units("4")  # still held, not lost
            assert await budgets.gate.sweep() >= 1  # type: ignore[union-attr]  # its expiry passed
            later = await budgets.reserve(tenant_id, None, Decimal("2"), 20)
            assert await _held(redis, tenant_id) == {
                "cost": _units("3"), "tokens": 30, "held_cost": _units("2"), "held_tokens": 20
            }  # the settled 1 (from PostgreSQL) + the new call's 2

            # A balance that drifted (say, a settlement counted twice) is derived again on a budget edit.
            key = BudgetGate.balance_key(tenant_id, "tenant", current_month())
            await redis.hincrby(key, "cost", _units("6"))  # type: ignore[misc]
            with pytest.raises(BudgetExceeded):
                await budgets.reserve(tenant_id, None, Decimal("2"), 20)
            edited = await api.put("/api/ai/budgets", json={"monthly_cost_limit": 10}, headers=_headers(tenant))
            assert edited.status_code == 200, edited.text
            assert Decimal(edited.json()["reserved_cost"]) == 2 and Decimal(edited.json()["spent_cost"]) == 1
            again = await budgets.reserve(tenant_id, None, Decimal("2"), 20)
            assert (await _held(redis, tenant_id))["cost"] == _units("5")
            async with kernel.db.tenant(tenant_id) as session:
                for reservation in (later, again):
                    await budgets.release(session, reservation)
    finally:
        await down.aclose()
        await redis.aclose()
