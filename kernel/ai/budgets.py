"""Monthly budgets that concurrent calls cannot overspend: the tenant's, and optionally one
principal's (a user or an API key).

Before a call the proxy reserves an upper bound of its cost and tokens in every budget that
applies (the tenant's and the caller's) with one conditional ``UPDATE`` on their month rows
(``spent + reserved + estimate <= limit``), after locking those rows in a fixed order. PostgreSQL
serializes updates of a row and re-checks the condition on its newest version, so N concurrent
calls are admitted only while their reservations fit together; when any budget refuses, the
transaction rolls back and nothing is reserved. After the call the reservation is settled at the
real cost (or released on failure and cancellation) in the transaction that writes the ledger
row. Nothing is counted in a process: any number of API replicas share it.

Crossing ``soft_limit_ratio`` of a limit emits ``ai.budget.soft_limit`` in the settling
transaction; exactly one settlement crosses it, because each sees its own before and after.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.models import BudgetRow
from kernel.ai.schemas import Budget, BudgetUpdate
from kernel.audit.log import RequestMeta, record
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.errors import FieldError, Problem, Unprocessable
from kernel.events.outbox import emit

__all__ = ["TENANT_SCOPE", "BudgetExceeded", "BudgetService", "Reservation", "check_scope", "current_month"]

SOFT_LIMIT_EVENT = "ai.budget.soft_limit"
TENANT_SCOPE = "tenant"
_PRINCIPAL_SCOPE = re.compile(r"^(user|api_key):[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class BudgetExceeded(Problem):
    status, slug, title = 402, "ai-budget-exceeded", "AI budget exceeded"


def current_month() -> date:
    now = datetime.now(UTC)
    return date(now.year, now.month, 1)


def check_scope(principal: str | None) -> str:
    """``tenant`` for ``None``, else the principal (``user:<id>`` / ``api_key:<id>``) or 422."""
    if principal is None:
        return TENANT_SCOPE
    value = principal.strip().lower()
    if not _PRINCIPAL_SCOPE.match(value):
        raise Unprocessable(
            "principal must be user:<id> or api_key:<id>",
            errors=[FieldError(field="principal", message="expected user:<uuid> or api_key:<uuid>")],
        )
    return value


@dataclass(frozen=True)
class Reservation:
    month: date
    cost: Decimal
    tokens: int
    scopes: tuple[str, ...]
    """The budgets this reservation holds (those of the call's scopes that have a limit)."""


_ENSURE_MONTH = text(
    "insert into ai_budget_months (tenant_id, id, scope, month) values (:t, :i, :s, :m) "
    "on conflict (tenant_id, scope, month) do nothing"
)
_LOCK = text(
    "select scope from ai_budget_months where month = :m and scope = any(:s) order by scope for update"
)
_RESERVE = text(
    """update ai_budget_months m
          set reserved_cost = m.reserved_cost + :c, reserved_tokens = m.reserved_tokens + :k
         from ai_budgets b
        where m.tenant_id = :t and m.month = :m and m.scope = any(:s) and b.tenant_id = :t and b.scope = m.scope
          and (b.monthly_cost_limit is null or m.spent_cost + m.reserved_cost + :c <= b.monthly_cost_limit)
          and (b.monthly_token_limit is null or m.spent_tokens + m.reserved_tokens + :k <= b.monthly_token_limit)
    returning m.scope"""
)
_STATE = text(
    """select b.monthly_cost_limit, b.monthly_token_limit, b.soft_limit_ratio,
              coalesce(m.spent_cost, 0) as spent_cost, coalesce(m.spent_tokens, 0) as spent_tokens,
              coalesce(m.reserved_cost, 0) as reserved_cost, coalesce(m.reserved_tokens, 0) as reserved_tokens
         from (select 1) as one
         left join ai_budgets b on b.scope = :s
         left join ai_budget_months m on m.month = :m and m.scope = :s"""
)
_SETTLE = text(
    """insert into ai_budget_months (tenant_id, id, scope, month, spent_cost, spent_tokens)
       values (:t, :i, :s, :m, :c, :k)
       on conflict (tenant_id, scope, month) do update
          set spent_cost = ai_budget_months.spent_cost + excluded.spent_cost,
              spent_tokens = ai_budget_months.spent_tokens + excluded.spent_tokens,
              reserved_cost = greatest(ai_budget_months.reserved_cost - :rc, 0),
              reserved_tokens = greatest(ai_budget_months.reserved_tokens - :rk, 0)
    returning spent_cost, spent_tokens"""
)
_RELEASE = text(
    """update ai_budget_months
          set reserved_cost = greatest(reserved_cost - :rc, 0), reserved_tokens = greatest(reserved_tokens - :rk, 0)
        where month = :m and scope = any(:s)"""
)


def _remaining(limit: Any, spent: Any, reserved: Any) -> Any:
    return None if limit is None else max(limit - spent - reserved, 0)


def _scopes(principal: str | None) -> list[str]:
    return [TENANT_SCOPE] if principal is None else sorted({TENANT_SCOPE, principal})


class BudgetService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, tenant_id: uuid.UUID, scope: str = TENANT_SCOPE) -> Budget:
        month = current_month()
        async with self.db.tenant(tenant_id) as session:
            row = (await session.execute(_STATE, {"m": month, "s": scope})).one()
        return Budget(
            scope=scope,
            monthly_cost_limit=None if row.monthly_cost_limit is None else str(row.monthly_cost_limit),
            monthly_token_limit=row.monthly_token_limit,
            soft_limit_ratio=str(row.soft_limit_ratio if row.soft_limit_ratio is not None else Decimal("0.8")),
            month=month,
            spent_cost=str(row.spent_cost),
            spent_tokens=row.spent_tokens,
            reserved_cost=str(row.reserved_cost),
            reserved_tokens=row.reserved_tokens,
            remaining_cost=(
                None
                if row.monthly_cost_limit is None
                else str(_remaining(row.monthly_cost_limit, row.spent_cost, row.reserved_cost))
            ),
            remaining_tokens=_remaining(row.monthly_token_limit, row.spent_tokens, row.reserved_tokens),
        )

    async def put(
        self, tenant_id: uuid.UUID, data: BudgetUpdate, *, actor: str | None, meta: RequestMeta
    ) -> Budget:
        scope = check_scope(data.principal)
        values = {
            "monthly_cost_limit": None if data.monthly_cost_limit is None else Decimal(str(data.monthly_cost_limit)),
            "monthly_token_limit": data.monthly_token_limit,
            "soft_limit_ratio": Decimal(str(data.soft_limit_ratio)),
            "updated_at": utcnow(),
        }
        async with self.db.tenant(tenant_id) as session:
            stmt = insert(BudgetRow).values(tenant_id=tenant_id, id=uuid7(), scope=scope, **values)
            await session.execute(stmt.on_conflict_do_update(index_elements=["tenant_id", "scope"], set_=values))
            await record(
                session, tenant_id=tenant_id, actor=actor, action="ai.budget.updated", resource_type="ai_budget",
                resource_id=scope, meta=meta,
                after={
                    "monthly_cost_limit": data.monthly_cost_limit,
                    "monthly_token_limit": data.monthly_token_limit,
                    "soft_limit_ratio": data.soft_limit_ratio,
                },
            )
        return await self.get(tenant_id, scope)

    async def reserve(
        self, tenant_id: uuid.UUID, principal: str | None, cost: Decimal, tokens: int
    ) -> Reservation | None:
        """Reserve ``cost`` and ``tokens`` in every budget of the tenant and of ``principal``
        (``user:<id>`` / ``api_key:<id>``); ``None`` when none applies; 402 with what remains in
        the budget that refused, reserving nothing, when the call does not fit."""
        month = current_month()
        async with self.db.tenant(tenant_id) as session:
            budgeted = sorted(
                (
                    await session.execute(
                        text("select scope from ai_budgets where scope = any(:s)"), {"s": _scopes(principal)}
                    )
                ).scalars()
            )
            if not budgeted:
                return None
            for scope in budgeted:
                await session.execute(_ENSURE_MONTH, {"t": tenant_id, "i": uuid7(), "s": scope, "m": month})
            # A fixed lock order: two calls of one principal cannot deadlock on its two rows.
            await session.execute(_LOCK, {"m": month, "s": budgeted})
            admitted = set(
                (
                    await session.execute(
                        _RESERVE, {"t": tenant_id, "m": month, "s": budgeted, "c": cost, "k": tokens}
                    )
                ).scalars()
            )
            if admitted == set(budgeted):
                return Reservation(month=month, cost=cost, tokens=tokens, scopes=tuple(budgeted))
            refused = next(scope for scope in budgeted if scope not in admitted)
            state = (await session.execute(_STATE, {"m": month, "s": refused})).one()
            remaining_cost = _remaining(state.monthly_cost_limit, state.spent_cost, state.reserved_cost)
            remaining_tokens = _remaining(state.monthly_token_limit, state.spent_tokens, state.reserved_tokens)
            # Raised inside the transaction: the other budgets' reservations roll back with it.
            raise BudgetExceeded(
                "this call could exceed the "
                + ("tenant's" if refused == TENANT_SCOPE else f"{refused}'s")
                + " monthly AI budget",
                extra={
                    "scope": refused,
                    "remaining_cost": None if remaining_cost is None else str(remaining_cost),
                    "remaining_tokens": remaining_tokens,
                    "estimated_cost": str(cost),
                    "estimated_tokens": tokens,
                },
            )

    async def settle(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        principal: str | None,
        reservation: Reservation | None,
        cost: Decimal,
        tokens: int,
    ) -> None:
        """Charge the real ``cost`` and ``tokens`` to the tenant's and the principal's month and
        drop the reservation, in ``session``'s transaction; emit the soft-limit event for each
        budget this call crossed."""
        month = reservation.month if reservation else current_month()
        held = set(reservation.scopes) if reservation else set()
        for scope in _scopes(principal):
            row = (
                await session.execute(
                    _SETTLE,
                    {
                        "t": tenant_id, "i": uuid7(), "s": scope, "m": month, "c": cost, "k": tokens,
                        "rc": reservation.cost if scope in held and reservation else 0,
                        "rk": reservation.tokens if scope in held and reservation else 0,
                    },
                )
            ).one()
            budget = (
                await session.execute(
                    text(
                        "select monthly_cost_limit, monthly_token_limit, soft_limit_ratio from ai_budgets "
                        "where scope = :s"
                    ),
                    {"s": scope},
                )
            ).first()
            if budget is not None:
                await self._soft_limit(session, tenant_id, scope, month, budget, row, cost, tokens)

    async def _soft_limit(
        self, session: AsyncSession, tenant_id: uuid.UUID, scope: str, month: date,
        budget: Any, row: Any, cost: Decimal, tokens: int,
    ) -> None:
        ratio = Decimal(budget.soft_limit_ratio)
        crossed = []
        if budget.monthly_cost_limit is not None:
            soft = Decimal(budget.monthly_cost_limit) * ratio
            if row.spent_cost - cost < soft <= row.spent_cost:
                crossed.append("cost")
        if budget.monthly_token_limit is not None:
            soft_tokens = Decimal(budget.monthly_token_limit) * ratio
            if row.spent_tokens - tokens < soft_tokens <= row.spent_tokens:
                crossed.append("tokens")
        if crossed:
            await emit(
                session, tenant_id=tenant_id, event=SOFT_LIMIT_EVENT,
                payload={
                    "scope": scope, "month": month.isoformat(), "crossed": crossed, "soft_limit_ratio": str(ratio),
                    "spent_cost": str(row.spent_cost), "spent_tokens": row.spent_tokens,
                    "monthly_cost_limit": None if budget.monthly_cost_limit is None else str(budget.monthly_cost_limit),
                    "monthly_token_limit": budget.monthly_token_limit,
                },
            )

    async def release(self, session: AsyncSession, reservation: Reservation | None) -> None:
        if reservation is not None:
            await session.execute(
                _RELEASE,
                {
                    "m": reservation.month, "s": list(reservation.scopes),
                    "rc": reservation.cost, "rk": reservation.tokens,
                },
            )
