"""Monthly budgets that concurrent calls cannot overspend: the tenant's, and optionally one
principal's (a user or an API key).

With Redis (``kernel.ai.budget_gate``, the API and worker always have it) a call is admitted by
one Redis script against a balance derived from PostgreSQL's settled spend, and the reservation
lives in Redis only (with an expiry); settling writes the spend in the settlement's transaction
and, once it committed, turns the reservation into spend in Redis. Redis unreachable refuses
budgeted calls with 503. Without Redis (a bare ``BudgetService``) the PostgreSQL path below admits:

Before a call the proxy reserves an upper bound of its cost and tokens in every budget that
applies (the tenant's and the caller's) with one conditional ``UPDATE`` on their month rows
(``spent + reserved + estimate <= limit``), after locking those rows in a fixed order. PostgreSQL
serializes updates of a row and re-checks the condition on its newest version, so N concurrent
calls are admitted only while their reservations fit together; when any budget refuses, the
transaction rolls back and nothing is reserved. After the call the reservation is settled at the
real cost (or released on failure and cancellation) in the transaction that writes the ledger
row. Nothing is counted in a process: any number of API replicas share it.

**The plan's AI tokens.** When an entitlement provider (the billing plugin) meters
``kernel.ai.tokens`` for the tenant, every call also reserves its upper bound of tokens in one
more balance, scope ``plan``, in the same admission script as the budgets (no extra round trip):
its limit is 0 and it holds ``-remaining`` as the provider counted it from the ledger, plus what
running calls hold, plus what settled since. A call that does not fit is refused with 402
``payment-required`` naming the limit and the remaining figure. Whether the plan meters AI tokens
is cached for a minute per process; each time that is read again the balance is marked stale, so
the next admission asks the provider for the remaining figure again (plan changes, a new period,
usage the billing plugin received otherwise are seen within the minute). Without Redis the
provider is asked before every call (exact for sequential calls only).

Crossing ``soft_limit_ratio`` of a limit emits ``ai.budget.soft_limit`` in the settling
transaction; exactly one settlement crosses it, because each sees its own before and after.

Each reservation is also a row of ``ai_reservations`` with an expiry (the longest the call can
take, plus a margin). Settling or releasing deletes that row and gives the reservation back only
if the delete found it, so a reservation is returned at most once. A process killed mid-call
never settles: :meth:`BudgetService.sweep_expired` (an arq cron job in the worker) releases the
reservations whose expiry passed, with the same delete, so sweeping twice, or a late settlement
after a sweep, returns nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.ai.budget_gate import BudgetGate, Limits
from kernel.ai.call_cache import CallCache
from kernel.ai.models import BudgetRow
from kernel.ai.schemas import Budget, BudgetUpdate
from kernel.audit.log import RequestMeta, record
from kernel.db.engine import Database
from kernel.db.models import utcnow, uuid7
from kernel.entitlements import EntitlementGate
from kernel.errors import FieldError, PaymentRequired, Problem, Unprocessable
from kernel.events.outbox import emit

__all__ = [
    "AI_TOKENS",
    "DEFAULT_RESERVATION_TTL",
    "PLAN_SCOPE",
    "TENANT_SCOPE",
    "BudgetExceeded",
    "BudgetService",
    "Reservation",
    "check_scope",
    "current_month",
]

log = logging.getLogger("businessos.ai")

SOFT_LIMIT_EVENT = "ai.budget.soft_limit"
# How long a reservation is held when the caller names no expiry.
DEFAULT_RESERVATION_TTL = 600.0
_SWEEP_BATCH = 500
TENANT_SCOPE = "tenant"
PLAN_SCOPE = "plan"
"""The balance of the plan's monthly AI tokens (the entitlement provider's figure)."""
AI_TOKENS = "kernel.ai.tokens"
"""The feature the entitlement provider is asked about before AI calls."""
_UNMETERED = 10**15
"""What a plan that stopped metering AI tokens leaves (no call reserves that much)."""
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


# Row-level security limits both to the session's tenant.
_PRINCIPAL_EXISTS = {
    "user": text("select 1 from memberships where user_id = cast(:id as uuid) limit 1"),
    "api_key": text("select 1 from api_keys where id = cast(:id as uuid) limit 1"),
}


async def _check_principal(session: AsyncSession, scope: str) -> None:
    """A principal's budget must name a member or an API key of the session's tenant (else 422)."""
    if scope == TENANT_SCOPE:
        return
    kind, _, ident = scope.partition(":")
    if (await session.execute(_PRINCIPAL_EXISTS[kind], {"id": ident})).first() is None:
        raise Unprocessable(
            "principal is not a member or API key of this tenant",
            errors=[FieldError(field="principal", message="no such member or API key in this tenant")],
        )


@dataclass(frozen=True)
class Charge:
    """One call's real cost, for :meth:`BudgetService.settle_many`."""

    principal: str | None
    reservation: Reservation | None
    cost: Decimal
    tokens: int


@dataclass(frozen=True)
class Reservation:
    month: date
    cost: Decimal
    tokens: int
    scopes: tuple[str, ...]
    """The budgets this reservation holds (those of the call's scopes that have a limit)."""
    id: uuid.UUID | None = None
    """Its ``ai_reservations`` row."""
    tenant_id: uuid.UUID | None = None
    in_redis: bool = field(default=False, compare=False)
    """Held in Redis only (no ``ai_reservations`` row): settled and released there."""


_CLAIM = text(
    # Each budgeted scope's month row, created if missing and locked, in scope order (two calls of
    # one principal cannot deadlock on its two rows).
    """insert into ai_budget_months (tenant_id, id, scope, month)
       select :t, u.id, u.scope, :m
         from unnest(cast(:ids as uuid[]), cast(:s as text[])) with ordinality as u(id, scope, n)
        order by u.n
       on conflict (tenant_id, scope, month) do update set reserved_tokens = ai_budget_months.reserved_tokens"""
)
_RESERVE = text(
    # Reserve in every budget the call fits, and hold the reservation only when it fits them all
    # (else the caller raises, and the transaction undoes the partial reservations).
    """with admitted as (
           update ai_budget_months m
              set reserved_cost = m.reserved_cost + cast(:c as numeric),
                  reserved_tokens = m.reserved_tokens + cast(:k as bigint)
             from ai_budgets b
            where m.tenant_id = :t and m.month = :m and m.scope = any(cast(:s as text[]))
              and b.tenant_id = :t and b.scope = m.scope
              and (b.monthly_cost_limit is null
                   or m.spent_cost + m.reserved_cost + cast(:c as numeric) <= b.monthly_cost_limit)
              and (b.monthly_token_limit is null
                   or m.spent_tokens + m.reserved_tokens + cast(:k as bigint) <= b.monthly_token_limit)
           returning m.scope
       ), held as (
           insert into ai_reservations (tenant_id, id, month, scopes, cost, tokens, expires_at)
           select :t, :i, :m, cast(:s as text[]), :c, :k, :e
            where (select count(*) from admitted) = cardinality(cast(:s as text[]))
           returning id
       )
       select array(select scope from admitted) as admitted, (select id from held) as held"""
)
_SETTLED = text(
    """select scope, spent_cost as cost, spent_tokens as tokens
         from ai_budget_months where month = :m and scope = any(cast(:s as text[]))"""
)
_STATE = text(
    """select b.monthly_cost_limit, b.monthly_token_limit, b.soft_limit_ratio,
              coalesce(m.spent_cost, 0) as spent_cost, coalesce(m.spent_tokens, 0) as spent_tokens,
              coalesce(m.reserved_cost, 0) as reserved_cost, coalesce(m.reserved_tokens, 0) as reserved_tokens
         from (select 1) as one
         left join ai_budgets b on b.scope = :s
         left join ai_budget_months m on m.month = :m and m.scope = :s"""
)
_CHARGE = text(
    # Spend added to each (scope, month) once (the pairs are unique), with the budgets that apply
    # (for the soft limits).
    """with charged as (
           insert into ai_budget_months (tenant_id, id, scope, month, spent_cost, spent_tokens)
           select :t, u.id, u.scope, u.month, u.cost, u.tokens
             from unnest(cast(:ids as uuid[]), cast(:s as text[]), cast(:m as date[]), cast(:c as numeric[]),
                         cast(:k as bigint[])) as u(id, scope, month, cost, tokens)
           on conflict (tenant_id, scope, month) do update
              set spent_cost = ai_budget_months.spent_cost + excluded.spent_cost,
                  spent_tokens = ai_budget_months.spent_tokens + excluded.spent_tokens
           returning scope, month, spent_cost, spent_tokens
       )
       select c.scope, c.month, c.spent_cost, c.spent_tokens,
              b.monthly_cost_limit, b.monthly_token_limit, b.soft_limit_ratio, b.scope is not null as budgeted
         from charged c left join ai_budgets b on b.scope = c.scope"""
)
_RELEASE_MANY = text(
    """update ai_budget_months m
          set reserved_cost = greatest(m.reserved_cost - u.cost, 0),
              reserved_tokens = greatest(m.reserved_tokens - u.tokens, 0)
         from unnest(cast(:s as text[]), cast(:m as date[]), cast(:c as numeric[]), cast(:k as bigint[]))
              as u(scope, month, cost, tokens)
        where m.scope = u.scope and m.month = u.month"""
)
_TAKE_MANY = text("delete from ai_reservations where id = any(:ids) returning id")
_TAKE = text("delete from ai_reservations where id = :i returning id")
_EXPIRED = text(
    "select tenant_id, id from ai_reservations where expires_at < now() order by expires_at limit :n"
)
_TAKE_EXPIRED = text(
    "delete from ai_reservations where id = any(:ids) and expires_at < now() returning month, scopes, cost, tokens"
)
_RELEASE = text(
    """update ai_budget_months
          set reserved_cost = greatest(reserved_cost - :rc, 0), reserved_tokens = greatest(reserved_tokens - :rk, 0)
        where month = :m and scope = any(:s)"""
)


def _remaining(limit: Any, spent: Any, reserved: Any) -> Any:
    return None if limit is None else max(limit - spent - reserved, 0)


def _exceeded(scope: str, remaining_cost: Any, remaining_tokens: Any, cost: Decimal, tokens: int) -> BudgetExceeded:
    return BudgetExceeded(
        "this call could exceed the " + ("tenant's" if scope == TENANT_SCOPE else f"{scope}'s") + " monthly AI budget",
        extra={
            "scope": scope,
            "remaining_cost": None if remaining_cost is None else str(remaining_cost),
            "remaining_tokens": remaining_tokens,
            "estimated_cost": str(cost),
            "estimated_tokens": tokens,
        },
    )


def _scopes(principal: str | None) -> list[str]:
    return [TENANT_SCOPE] if principal is None else sorted({TENANT_SCOPE, principal})


def _allowance_refused(remaining: int, tokens: int, provider_says: Any = None) -> PaymentRequired:
    """402 for a call past the plan's AI tokens; the provider's own words when it gave them."""
    refused = provider_says is not None and not provider_says.allowed
    return PaymentRequired(
        (provider_says.detail if refused and provider_says.detail else "")
        or f"this call could use up to {tokens} AI tokens; the plan has {remaining} left this period",
        extra={
            "feature": AI_TOKENS,
            "limit": (provider_says.limit if refused and provider_says.limit else "") or "ai_tokens",
            "remaining": remaining,
            "estimated_tokens": tokens,
            "lift": (provider_says.lift if refused and provider_says.lift else "")
            or "upgrade to a plan with more AI tokens",
        },
    )


class BudgetService:
    def __init__(
        self, db: Database, cache: CallCache, redis: Redis | None = None, entitlements: EntitlementGate | None = None
    ) -> None:
        self.db = db
        self.cache = cache
        self.gate = None if redis is None else BudgetGate(redis)
        self.entitlements = entitlements

    async def _metered(self, tenant_id: uuid.UUID) -> bool:
        """Whether the tenant's plan meters AI tokens (cached a minute; no provider: never). Each
        time it is read again the plan balance is marked stale, so that the next admission takes
        the provider's remaining figure again."""
        gate = self.entitlements
        if gate is None or gate.provider is None:
            return False

        async def read() -> bool:
            answer = await gate.ask(tenant_id, AI_TOKENS, 0)
            metered = answer.remaining is not None or not answer.allowed
            if metered and self.gate is not None:
                await self.gate.resync(tenant_id, [PLAN_SCOPE], current_month())
            return metered

        return await self.cache.get(CallCache.key(tenant_id, "ai-allowance"), read)

    async def _plan_remaining(self, tenant_id: uuid.UUID) -> int:
        """The AI tokens the plan has left, as the provider counts them from the ledger."""
        assert self.entitlements is not None
        answer = await self.entitlements.ask(tenant_id, AI_TOKENS, 0)
        if answer.remaining is None:
            return 0 if not answer.allowed else _UNMETERED
        return max(int(answer.remaining), 0)

    async def _plan_refusal(self, tenant_id: uuid.UUID, remaining: int, tokens: int) -> PaymentRequired:
        assert self.entitlements is not None
        try:  # the provider's words for the refusal (only on this rare path)
            words = await self.entitlements.ask(tenant_id, AI_TOKENS, tokens)
        except Problem:
            words = None
        return _allowance_refused(remaining, tokens, words)

    async def _budgeted(self, tenant_id: uuid.UUID) -> dict[str, Limits]:
        """The tenant's budgets by scope (cached; dropped when one is set)."""

        async def read() -> dict[str, Limits]:
            async with self.db.tenant(tenant_id) as session:
                rows = await session.execute(
                    text("select scope, monthly_cost_limit, monthly_token_limit from ai_budgets")
                )
                return {row.scope: Limits(row.monthly_cost_limit, row.monthly_token_limit) for row in rows}

        return await self.cache.get(CallCache.key(tenant_id, "budgets"), read)

    async def get(self, tenant_id: uuid.UUID, scope: str = TENANT_SCOPE) -> Budget:
        month = current_month()
        async with self.db.tenant(tenant_id) as session:
            row = (await session.execute(_STATE, {"m": month, "s": scope})).one()
        reserved_cost, reserved_tokens = row.reserved_cost, row.reserved_tokens
        if self.gate is not None:
            # Running calls' reservations live in Redis (unreachable: none are shown).
            held = await self.gate.held(tenant_id, scope, month)
            if held is not None:
                reserved_cost, reserved_tokens = reserved_cost + held[0], reserved_tokens + held[1]
        return Budget(
            scope=scope,
            monthly_cost_limit=None if row.monthly_cost_limit is None else str(row.monthly_cost_limit),
            monthly_token_limit=row.monthly_token_limit,
            soft_limit_ratio=str(row.soft_limit_ratio if row.soft_limit_ratio is not None else Decimal("0.8")),
            month=month,
            spent_cost=str(row.spent_cost),
            spent_tokens=row.spent_tokens,
            reserved_cost=str(reserved_cost),
            reserved_tokens=reserved_tokens,
            remaining_cost=(
                None
                if row.monthly_cost_limit is None
                else str(_remaining(row.monthly_cost_limit, row.spent_cost, reserved_cost))
            ),
            remaining_tokens=_remaining(row.monthly_token_limit, row.spent_tokens, reserved_tokens),
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
            await _check_principal(session, scope)
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
        await self.cache.forget(CallCache.key(tenant_id, "budgets"))
        if self.gate is not None:
            await self.gate.resync(tenant_id, [scope], current_month())
        return await self.get(tenant_id, scope)

    async def reserve(
        self,
        tenant_id: uuid.UUID,
        principal: str | None,
        cost: Decimal,
        tokens: int,
        ttl_seconds: float = DEFAULT_RESERVATION_TTL,
        *,
        wait: bool = True,
    ) -> Reservation | None:
        """Reserve ``cost`` and ``tokens`` in every budget of the tenant and of ``principal``
        (``user:<id>`` / ``api_key:<id>``) for at most ``ttl_seconds`` (then the sweeper releases
        it); ``None`` when none applies; 402 with what remains in the budget that refused,
        reserving nothing, when the call does not fit. With Redis the reservation is held there
        only (``wait`` is kept for callers; nothing is written beside the call)."""
        limits = await self._budgeted(tenant_id)
        budgeted = sorted(set(_scopes(principal)) & set(limits))
        metered = await self._metered(tenant_id)
        if metered and self.gate is None:
            # No Redis: the provider is asked before each call (running calls are not counted).
            remaining = await self._plan_remaining(tenant_id)
            if tokens > remaining:
                raise await self._plan_refusal(tenant_id, remaining, tokens)
        if not budgeted and not (metered and self.gate is not None):
            return None  # the common case: no budget, no transaction
        month = current_month()
        if self.gate is not None:
            scopes = {s: limits[s] for s in budgeted}
            if metered:
                scopes[PLAN_SCOPE] = Limits(None, 0)  # holds -remaining: see the module's docstring
            return await self._admit(tenant_id, month, scopes, cost, tokens, ttl_seconds)
        async with self.db.tenant(tenant_id) as session:
            await session.execute(
                _CLAIM, {"t": tenant_id, "m": month, "s": budgeted, "ids": [uuid7() for _ in budgeted]}
            )
            held = uuid7()
            result = (
                await session.execute(
                    _RESERVE,
                    {
                        "t": tenant_id, "m": month, "s": budgeted, "c": cost, "k": tokens, "i": held,
                        "e": datetime.now(UTC) + timedelta(seconds=ttl_seconds),
                    },
                )
            ).one()
            if result.held is not None:
                return Reservation(month=month, cost=cost, tokens=tokens, scopes=tuple(budgeted), id=held)
            admitted = set(result.admitted)
            refused = next(scope for scope in budgeted if scope not in admitted)
            state = (await session.execute(_STATE, {"m": month, "s": refused})).one()
            remaining_cost = _remaining(state.monthly_cost_limit, state.spent_cost, state.reserved_cost)
            remaining_tokens = _remaining(state.monthly_token_limit, state.spent_tokens, state.reserved_tokens)
            # Raised inside the transaction: the other budgets' reservations roll back with it.
            raise _exceeded(refused, remaining_cost, remaining_tokens, cost, tokens)

    async def _admit(
        self, tenant_id: uuid.UUID, month: date, limits: dict[str, Limits], cost: Decimal, tokens: int,
        ttl_seconds: float,
    ) -> Reservation:
        assert self.gate is not None
        scopes = sorted(limits)
        budgets = [s for s in scopes if s != PLAN_SCOPE]

        async def settled() -> dict[str, tuple[Decimal, int]]:
            seeds: dict[str, tuple[Decimal, int]] = {}
            if budgets:
                async with self.db.tenant(tenant_id) as session:
                    rows = await session.execute(_SETTLED, {"m": month, "s": budgets})
                    seeds = {row.scope: (Decimal(row.cost), int(row.tokens)) for row in rows}
            if PLAN_SCOPE in limits:
                seeds[PLAN_SCOPE] = (Decimal(0), -await self._plan_remaining(tenant_id))
            return seeds

        held = uuid7()
        admission = await self.gate.admit(tenant_id, month, limits, cost, tokens, held, ttl_seconds, settled)
        if not admission.admitted:
            refused = admission.refused_scope or TENANT_SCOPE
            if refused == PLAN_SCOPE:
                raise await self._plan_refusal(tenant_id, max(-admission.used_tokens, 0), tokens)
            limit = limits[refused]
            raise _exceeded(
                refused,
                None if limit.cost is None else max(Decimal(limit.cost) - admission.used_cost, Decimal(0)),
                None if limit.tokens is None else max(limit.tokens - admission.used_tokens, 0),
                cost,
                tokens,
            )
        return Reservation(
            month=month, cost=cost, tokens=tokens, scopes=tuple(scopes), id=held, tenant_id=tenant_id, in_redis=True
        )

    async def settle(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        principal: str | None,
        reservation: Reservation | None,
        cost: Decimal,
        tokens: int,
    ) -> asyncio.Future[None] | None:
        """Charge the real ``cost`` and ``tokens`` to the tenant's and the principal's month and
        drop the reservation, in ``session``'s transaction; emit the soft-limit event for each
        budget this call crossed."""
        return await self.settle_many(session, tenant_id, [Charge(principal, reservation, cost, tokens)])

    async def settle_many(
        self, session: AsyncSession, tenant_id: uuid.UUID, charges: Sequence[Charge], *,
        after_commit: list[Callable[[], Awaitable[None]]] | None = None,
    ) -> asyncio.Future[None] | None:
        """:meth:`settle` for several calls in at most three statements: their reservations are
        taken back, their spend is summed per scope and month, and each budget's soft limit is
        checked once against the batch's total. Reservations held in Redis are turned into spend
        there once ``session``'s transaction has committed (never before: a rolled back batch
        keeps holding them); the returned future resolves when that is done.

        A caller that commits ``session`` itself may pass ``after_commit``: the Redis work is then
        appended to it, for the caller to run once committed (nothing is returned); that spares the
        per-session commit listeners."""
        if not charges:
            return None
        ids = [
            c.reservation.id for c in charges
            if c.reservation is not None and c.reservation.id is not None and not c.reservation.in_redis
        ]
        taken = set((await session.execute(_TAKE_MANY, {"ids": ids})).scalars()) if ids else set()
        spent: dict[tuple[str, date], list[Any]] = defaultdict(lambda: [Decimal(0), 0])
        plan: dict[tuple[str, date], int] = defaultdict(int)
        released: dict[tuple[str, date], list[Any]] = defaultdict(lambda: [Decimal(0), 0])
        in_redis: list[uuid.UUID] = []
        for charge in charges:
            reservation = charge.reservation
            if reservation is not None and reservation.in_redis and reservation.id is not None:
                in_redis.append(reservation.id)
                # Charged to the month it was admitted in; Redis gives the reservation back only
                # while it is still held (not expired and swept).
                month, held = reservation.month, False
            else:
                # Already given back by the sweeper: charge, release nothing.
                held = reservation is not None and (reservation.id is None or reservation.id in taken)
                month = reservation.month if reservation is not None and held else current_month()
            for scope in _scopes(charge.principal):
                spent[(scope, month)][0] += charge.cost
                spent[(scope, month)][1] += charge.tokens
            plan[(PLAN_SCOPE, month)] += charge.tokens  # in Redis only, where the plan balance exists
            if held and reservation is not None:
                for scope in reservation.scopes:
                    released[(scope, reservation.month)][0] += reservation.cost
                    released[(scope, reservation.month)][1] += reservation.tokens
        if released:
            keys = sorted(released)
            await session.execute(
                _RELEASE_MANY,
                {
                    "s": [k[0] for k in keys], "m": [k[1] for k in keys],
                    "c": [released[k][0] for k in keys], "k": [released[k][1] for k in keys],
                },
            )
        keys = sorted(spent)  # a fixed order: concurrent batches lock the rows alike
        rows = (
            await session.execute(
                _CHARGE,
                {
                    "t": tenant_id, "ids": [uuid7() for _ in keys], "s": [k[0] for k in keys],
                    "m": [k[1] for k in keys], "c": [spent[k][0] for k in keys], "k": [spent[k][1] for k in keys],
                },
            )
        ).all()
        for row in rows:
            if row.budgeted:
                total_cost, total_tokens = spent[(row.scope, row.month)]
                await self._soft_limit(session, tenant_id, row.scope, row.month, row, row, total_cost, total_tokens)
        if self.gate is None:
            return None
        gate, charged = self.gate, {k: (v[0], v[1]) for k, v in spent.items()}
        charged.update({k: (Decimal(0), v) for k, v in plan.items()})
        if after_commit is not None:
            after_commit.append(lambda: gate.settle(tenant_id, in_redis, charged))
            return None
        return _after_commit(session, lambda: gate.settle(tenant_id, in_redis, charged))

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

    async def _take(self, session: AsyncSession, reservation: Reservation | None) -> bool:
        """Delete ``reservation``'s row; whether it was still held (and so is this caller's to give back)."""
        if reservation is None:
            return False
        if reservation.id is None:
            return True
        return (await session.execute(_TAKE, {"i": reservation.id})).first() is not None

    async def release(self, session: AsyncSession, reservation: Reservation | None) -> None:
        """Give ``reservation`` back (once): in Redis at once, or in ``session``'s transaction."""
        if reservation is not None and reservation.in_redis:
            if self.gate is not None and reservation.id and reservation.tenant_id:
                await self.gate.settle(reservation.tenant_id, [reservation.id], {})
            return
        if await self._take(session, reservation) and reservation is not None:
            await session.execute(
                _RELEASE,
                {
                    "m": reservation.month, "s": list(reservation.scopes),
                    "rc": reservation.cost, "rk": reservation.tokens,
                },
            )

    async def sweep_expired(self) -> int:
        """Release every reservation whose expiry has passed (its call's process died); returns
        how many. Safe to run concurrently and repeatedly: each is released by whoever deletes it."""
        released = 0
        while True:
            async with self.db.global_() as session:
                await session.execute(text("select set_config('app.ai_sweep', 'on', true)"))
                rows = (await session.execute(_EXPIRED, {"n": _SWEEP_BATCH})).all()
            by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
            for row in rows:
                by_tenant[row.tenant_id].append(row.id)
            for tenant_id, ids in by_tenant.items():
                async with self.db.tenant(tenant_id) as session:
                    for held in (await session.execute(_TAKE_EXPIRED, {"ids": ids})).all():
                        await session.execute(
                            _RELEASE, {"m": held.month, "s": list(held.scopes), "rc": held.cost, "rk": held.tokens}
                        )
                        released += 1
            if len(rows) < _SWEEP_BATCH:
                if self.gate is not None:
                    released += await self.gate.sweep()
                return released


def _after_commit(session: AsyncSession, work: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
    """Run ``work()`` once ``session``'s transaction has committed (never if it rolls back); the
    future resolves when it ran, or at once on a rollback."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish(_: object = None) -> None:
        if not done.done():
            done.set_result(None)

    async def run() -> None:
        try:
            await work()
        finally:
            finish()

    def committed(_: object) -> None:
        if done.done() or started:
            return
        started.append(True)
        task = loop.create_task(run())
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    def rolled_back(_: object) -> None:
        if not started:
            finish()

    # Listeners of this session only; it is discarded after its one transaction.
    started: list[bool] = []
    event.listen(session.sync_session, "after_commit", committed)
    event.listen(session.sync_session, "after_rollback", rolled_back)
    return done


_RUNNING: set[asyncio.Task[None]] = set()
"""Redis settlements started after a commit (held so they are not garbage-collected midway)."""
