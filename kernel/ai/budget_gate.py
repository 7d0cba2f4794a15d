"""Budget admission and reservations in Redis, so a budgeted AI call waits for no transaction.

PostgreSQL holds what was *settled* (``ai_budget_months.spent_*``, the ledger); Redis holds, per
tenant, scope and month, one balance hash: ``cost``/``tokens``, what is *in use* (the settled
spend plus the upper bounds of the calls still running), and ``held_cost``/``held_tokens``, the
running calls' part of it, in units of 10^-10 (the money columns' scale). A call is admitted by
:data:`_RESERVE`, which checks every budget of the call against its limit and, only when all fit,
adds the reservation to each and remembers it (with an expiry) in one atomic script: N concurrent
calls are admitted only while their reservations fit together, across every API process sharing
the Redis. A reservation is never written to PostgreSQL: nothing waits for a transaction before
or beside the provider call.

Settling (:data:`_SETTLE`) runs *after* the transaction that wrote the real spend has committed:
it gives the reservation back (once: only the script that removes it from the held set does) and
adds the real spend to the balance. Between the commit and the script the call is counted twice
(its reservation and its spend), which errs on the side of refusing.

A balance is derived from PostgreSQL (settled spend of the month row, plus what the balance still
holds for running calls) when it is missing (first call of the month, a Redis that lost its data)
or marked *stale*: when a reservation expires (its process died, or its settlement could not reach
Redis) and when the budget is edited (``PUT /api/ai/budgets``). Every settlement bumps a counter
per tenant, and a derivation is applied only if no settlement happened between its PostgreSQL read
and its script (else it reads again), so a spend is never lost between the two stores. Expired
reservations are given back by :meth:`BudgetGate.sweep` (the worker's cron job, every minute) and,
should no worker run, by the admission script itself (a few at a time, a minute later).

Redis unreachable: a budgeted call is refused with 503 (fails closed) rather than admitted
without a check; unbudgeted calls do not touch Redis; a settlement that cannot reach Redis leaves
its reservation held until it expires, then the balance is derived again. A Redis that *loses its
data* forgets the reservations of the calls running at that moment: the balance is derived again
from the settled spend, so at most those calls' upper bounds can be admitted twice. The scripts
name keys they read from data, so the Redis must be a single instance (not a cluster), as the rest
of the kernel assumes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kernel.errors import ServiceUnavailable

__all__ = ["SCALE", "Admission", "BudgetGate", "Limits"]

log = logging.getLogger("businessos.ai")

SCALE = Decimal(10) ** 10
"""Balances are integers of 10^-10 (``Numeric(20, 10)``, the money columns)."""
_HELD = "ai:budget:held"
_DETAILS = "ai:budget:held:details"
_BALANCE_TTL = 40 * 86400  # a month's balance outlives its month
_SWEEP_BATCH = 500
_EXPIRE_ON_ADMIT = 10  # expired reservations given back by each admission ...
_ADMIT_GRACE = 60.0  # ... once their expiry is this long past (the sweeper's job comes first)
_DERIVE_ATTEMPTS = 5

# Gives one reservation back (when it is still held): KEYS_HELD / KEYS_DETAILS are set by the
# script that includes it. ``stale``: mark its balances to be derived again from PostgreSQL.
_GIVE_BACK = """
local function give_back(held, details_key, member, stale)
  if redis.call('ZREM', held, member) == 0 then return 0 end
  local details = redis.call('HGET', details_key, member)
  redis.call('HDEL', details_key, member)
  if not details then return 1 end
  local parts = {}
  for part in string.gmatch(details, '%S+') do parts[#parts + 1] = part end
  local cost, tokens = 0 - tonumber(parts[1]), 0 - tonumber(parts[2])
  for j = 3, #parts do
    if redis.call('EXISTS', parts[j]) == 1 then
      redis.call('HINCRBY', parts[j], 'cost', cost)
      redis.call('HINCRBY', parts[j], 'tokens', tokens)
      redis.call('HINCRBY', parts[j], 'held_cost', cost)
      redis.call('HINCRBY', parts[j], 'held_tokens', tokens)
      if stale then redis.call('HSET', parts[j], 'stale', '1') end
    end
  end
  return 1
end
"""

_RESERVE = _GIVE_BACK + """
-- KEYS: n balances, held set, details, the tenant's settlement counter.
-- ARGV: n, cost, tokens, member, expiry, now, balance ttl, counter seen ('' = no seeds),
--       expired per call, then per balance: limit cost, limit tokens, seed cost, seed tokens.
local n = tonumber(ARGV[1])
local held, details = KEYS[n + 1], KEYS[n + 2]
local expired = redis.call('ZRANGEBYSCORE', held, '-inf', ARGV[6], 'LIMIT', 0, tonumber(ARGV[9]))
for _, member in ipairs(expired) do give_back(held, details, member, true) end
local derive = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 or redis.call('HEXISTS', KEYS[i], 'stale') == 1 then
    derive[#derive + 1] = i
  end
end
if #derive > 0 then
  local counter = redis.call('GET', KEYS[n + 3]) or '0'
  if ARGV[8] ~= counter then return {'seed', counter} end
  for _, i in ipairs(derive) do
    local base = 9 + (i - 1) * 4
    local held_cost = redis.call('HGET', KEYS[i], 'held_cost') or '0'
    local held_tokens = redis.call('HGET', KEYS[i], 'held_tokens') or '0'
    redis.call('HSET', KEYS[i], 'cost', ARGV[base + 3], 'tokens', ARGV[base + 4],
               'held_cost', held_cost, 'held_tokens', held_tokens)
    redis.call('HINCRBY', KEYS[i], 'cost', held_cost)
    redis.call('HINCRBY', KEYS[i], 'tokens', held_tokens)
    redis.call('HDEL', KEYS[i], 'stale')
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[7]))
  end
end
local cost, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, n do
  local base = 9 + (i - 1) * 4
  local limit_cost, limit_tokens = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local used_cost = tonumber(redis.call('HGET', KEYS[i], 'cost') or '0')
  local used_tokens = tonumber(redis.call('HGET', KEYS[i], 'tokens') or '0')
  if (limit_cost >= 0 and used_cost + cost > limit_cost)
     or (limit_tokens >= 0 and used_tokens + tokens > limit_tokens) then
    return {'refused', tostring(i), redis.call('HGET', KEYS[i], 'cost'), redis.call('HGET', KEYS[i], 'tokens')}
  end
end
local keys = {}
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'cost', ARGV[2])
  redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[3])
  redis.call('HINCRBY', KEYS[i], 'held_cost', ARGV[2])
  redis.call('HINCRBY', KEYS[i], 'held_tokens', ARGV[3])
  keys[i] = KEYS[i]
end
redis.call('ZADD', held, ARGV[5], ARGV[4])
redis.call('HSET', details, ARGV[4], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. table.concat(keys, ' '))
return {'ok'}
"""

_SETTLE = _GIVE_BACK + """
-- KEYS: held set, details, the tenant's settlement counter, then balances to charge.
-- ARGV: m, m members, then cost/tokens per balance, then the counter's ttl.
local m = tonumber(ARGV[1])
if #KEYS > 3 then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[#ARGV]))
end
for i = 2, m + 1 do give_back(KEYS[1], KEYS[2], ARGV[i], false) end
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'cost', ARGV[m + 2 + (i - 4) * 2])
    redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[m + 3 + (i - 4) * 2])
  end
end
return 1
"""

_EXPIRE = _GIVE_BACK + """
-- Reservations whose expiry passed: give them back and mark their balances to be derived again.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(expired) do give_back(KEYS[1], KEYS[2], member, true) end
return #expired
"""

_STALE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'stale', '1') end
end
return 1
"""


def _units(value: Decimal, rounding: str) -> int:
    return int((value * SCALE).to_integral_value(rounding=rounding))


def _text(result: list[Any]) -> list[str]:
    return [item.decode() if isinstance(item, bytes) else str(item) for item in result]


def _money(units: int) -> Decimal:
    return (Decimal(units) / SCALE).normalize()


@dataclass(frozen=True)
class Limits:
    """One scope's monthly limits (``None``: no limit of that kind)."""

    cost: Decimal | None
    tokens: int | None


@dataclass(frozen=True)
class Admission:
    """What :meth:`BudgetGate.admit` decided: admitted, or which scope refused and what it had in use."""

    admitted: bool
    refused_scope: str | None = None
    used_cost: Decimal = Decimal(0)
    used_tokens: int = 0


class BudgetGate:
    """The Redis side of budgets: admit, settle, sweep, mark for a resync."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._expire = redis.register_script(_EXPIRE)
        self._stale = redis.register_script(_STALE)

    @staticmethod
    def balance_key(tenant_id: uuid.UUID, scope: str, month: date) -> str:
        return f"ai:budget:{tenant_id}:{month.isoformat()}:{scope}"

    @staticmethod
    def counter_key(tenant_id: uuid.UUID) -> str:
        """The tenant's settlement counter (bumped by every settlement)."""
        return f"ai:budget:{tenant_id}:settled"

    @staticmethod
    def member(tenant_id: uuid.UUID, reservation_id: uuid.UUID) -> str:
        return f"{tenant_id}:{reservation_id}"

    async def admit(
        self,
        tenant_id: uuid.UUID,
        month: date,
        limits: dict[str, Limits],
        cost: Decimal,
        tokens: int,
        reservation_id: uuid.UUID,
        ttl_seconds: float,
        settled: Callable[[], Awaitable[dict[str, tuple[Decimal, int]]]],
    ) -> Admission:
        """Reserve ``cost``/``tokens`` in every scope of ``limits`` or in none, for ``ttl_seconds``.
        ``settled()`` reads the scopes' settled spend from PostgreSQL; it is called only when a
        balance is missing or stale. 503 when Redis cannot be reached."""
        scopes = sorted(limits)
        keys = [self.balance_key(tenant_id, s, month) for s in scopes] + [_HELD, _DETAILS, self.counter_key(tenant_id)]
        now = time.time()
        head: list[Any] = [
            len(scopes), _units(cost, ROUND_CEILING), tokens, self.member(tenant_id, reservation_id),
            now + ttl_seconds, now - _ADMIT_GRACE, _BALANCE_TTL,
        ]

        def arguments(counter: str, seeds: dict[str, tuple[Decimal, int]] | None) -> list[Any]:
            args: list[Any] = [*head, counter, _EXPIRE_ON_ADMIT]
            for scope in scopes:
                limit = limits[scope]
                args += [
                    -1 if limit.cost is None else _units(limit.cost, ROUND_FLOOR),
                    -1 if limit.tokens is None else limit.tokens,
                ]
                seed = None if seeds is None else seeds.get(scope, (Decimal(0), 0))
                args += [0, 0] if seed is None else [_units(seed[0], ROUND_CEILING), seed[1]]
            return args

        try:
            result = _text(await self._reserve(keys=keys, args=arguments("", None)))
            for _ in range(_DERIVE_ATTEMPTS):
                if result[0] != "seed":
                    break
                # Read the settled spend, then derive only if no settlement landed in between.
                counter = result[1]
                result = _text(await self._reserve(keys=keys, args=arguments(counter, await settled())))
        except RedisError:
            log.warning("budget admission: Redis unreachable, refusing the budgeted call")
            raise ServiceUnavailable("AI budgets cannot be checked right now; try again shortly") from None
        if result[0] == "seed":
            raise ServiceUnavailable("AI budgets are being recounted; try again shortly")
        if result[0] == "ok":
            return Admission(admitted=True)
        index = int(result[1]) - 1
        return Admission(
            admitted=False, refused_scope=scopes[index], used_cost=_money(int(result[2])), used_tokens=int(result[3])
        )

    async def settle(
        self,
        tenant_id: uuid.UUID,
        reservation_ids: Sequence[uuid.UUID],
        charges: dict[tuple[str, date], tuple[Decimal, int]],
    ) -> None:
        """Give back the reservations (each once) and add the real spend to every balance that
        exists; call it once the spend is committed to PostgreSQL (or with no ``charges`` to
        release). Failures are logged, not raised: the spend is already recorded, and the
        reservations stay counted until they expire (then the balances are derived again)."""
        if not reservation_ids and not charges:
            return
        ordered = sorted(charges)
        keys = [_HELD, _DETAILS, self.counter_key(tenant_id)]
        keys += [self.balance_key(tenant_id, scope, month) for scope, month in ordered]
        args: list[Any] = [len(reservation_ids), *(self.member(tenant_id, r) for r in reservation_ids)]
        for key in ordered:
            cost, tokens = charges[key]
            args += [_units(cost, ROUND_CEILING), tokens]
        args.append(_BALANCE_TTL)
        try:
            await self._settle(keys=keys, args=args)
        except RedisError:
            log.warning("budget settlement: Redis unreachable; the reservations stay counted until they expire")

    async def held(self, tenant_id: uuid.UUID, scope: str, month: date) -> tuple[Decimal, int] | None:
        """What running calls hold of the scope's month budget; ``None`` when Redis cannot be reached."""
        try:
            cost, tokens = await self.redis.hmget(  # type: ignore[misc]
                self.balance_key(tenant_id, scope, month), ["held_cost", "held_tokens"]
            )
        except RedisError:
            return None
        return _money(int(cost or 0)), int(tokens or 0)

    async def resync(self, tenant_id: uuid.UUID, scopes: Sequence[str], month: date) -> None:
        """Mark the scopes' balances to be derived again from PostgreSQL by the next admission (a
        budget was edited). Redis unreachable: logged; the balances are kept."""
        try:
            await self._stale(keys=[self.balance_key(tenant_id, s, month) for s in scopes], args=[])
        except RedisError:
            log.warning("budget edit: Redis unreachable; the balance is not recounted")

    async def sweep(self) -> int:
        """Give back the reservations whose expiry passed (their process died, or their settlement
        could not reach Redis) and mark their balances to be derived again; returns how many."""
        swept = 0
        try:
            while True:
                count = int(await self._expire(keys=[_HELD, _DETAILS], args=[time.time(), _SWEEP_BATCH]))
                swept += count
                if count < _SWEEP_BATCH:
                    return swept
        except RedisError:
            log.warning("budget sweep: Redis unreachable; expired reservations are swept on a later run")
            return swept
