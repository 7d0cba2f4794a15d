"""Budget admission in one Redis script call, so a budgeted AI call waits for no transaction.

PostgreSQL stays the record (``ai_budget_months``, ``ai_reservations``, the ledger); Redis holds,
per tenant, scope and month, one balance: what is *in use*, the spend charged plus the upper bounds
of the calls still running, in units of 10^-10 (the money columns' scale). A call is admitted by
:data:`_RESERVE`, which checks every budget of the call against its limit and, only when all fit,
adds the reservation to each and remembers it (with an expiry) in one atomic script: N concurrent
calls are admitted only while their reservations fit together, across every API process sharing
the Redis. The PostgreSQL record of the reservation is written beside the provider call.

The balance is derived from PostgreSQL (spent + reserved of the month row) the first time a
budget is used in a month, or after it was dropped, in the same script that admits (a second
caller finds it already there). Settling replaces the call's reservation by its real cost
(:data:`_SETTLE`, after the ledger row), and spend charged to a scope whose balance exists is
added even when no reservation was held, so the balance follows the record. Every way this can
drift errs on the side of refusing: a lost settlement leaves the (larger) reservation counted. A
reservation whose expiry passes (its process died) makes :meth:`BudgetGate.sweep` drop the
balances it held, so the next call derives them again from PostgreSQL.

Redis unreachable: a budgeted call is refused with 503 (fails closed) rather than admitted
without a check; unbudgeted calls do not touch Redis. The scripts name keys they read from data,
so the Redis must be a single instance (not a cluster), as the rest of the kernel assumes.
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

_RESERVE = """
local n = tonumber(ARGV[1])
local cost, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local seed = ARGV[7 + (i - 1) * 4 + 3]
    if seed == '' then return {'seed'} end
    redis.call('HSET', KEYS[i], 'cost', seed, 'tokens', ARGV[7 + (i - 1) * 4 + 4])
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[7]))
  end
end
for i = 1, n do
  local limit_cost, limit_tokens = tonumber(ARGV[7 + (i - 1) * 4 + 1]), tonumber(ARGV[7 + (i - 1) * 4 + 2])
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
  keys[i] = KEYS[i]
end
redis.call('ZADD', KEYS[n + 1], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[n + 2], ARGV[4], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. table.concat(keys, ' '))
return {'ok'}
"""

_SETTLE = """
-- KEYS: held set, details, then balances to charge; ARGV: m, m members, then cost/tokens per balance
local m = tonumber(ARGV[1])
for i = 2, m + 1 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local details = redis.call('HGET', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    if details then
      local parts = {}
      for part in string.gmatch(details, '%S+') do parts[#parts + 1] = part end
      for j = 3, #parts do
        if redis.call('EXISTS', parts[j]) == 1 then
          redis.call('HINCRBY', parts[j], 'cost', -tonumber(parts[1]))
          redis.call('HINCRBY', parts[j], 'tokens', -tonumber(parts[2]))
        end
      end
    end
  end
end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'cost', ARGV[m + 2 + (i - 3) * 2])
    redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[m + 3 + (i - 3) * 2])
  end
end
return 1
"""

_EXPIRE = """
-- Reservations whose expiry passed: forget them and drop the balances they held (re-derived
-- from PostgreSQL by the next call).
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  local details = redis.call('HGET', KEYS[2], member)
  redis.call('HDEL', KEYS[2], member)
  if details then
    local j = 0
    for part in string.gmatch(details, '%S+') do
      j = j + 1
      if j > 2 then redis.call('DEL', part) end
    end
  end
end
return #expired
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
    """The Redis side of budgets: admit, settle, sweep."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._expire = redis.register_script(_EXPIRE)

    @staticmethod
    def balance_key(tenant_id: uuid.UUID, scope: str, month: date) -> str:
        return f"ai:budget:{tenant_id}:{month.isoformat()}:{scope}"

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
        in_use: Callable[[], Awaitable[dict[str, tuple[Decimal, int]]]],
    ) -> Admission:
        """Reserve ``cost``/``tokens`` in every scope of ``limits`` or in none. ``in_use()`` reads
        the scopes' spent + reserved from PostgreSQL; it is called only when a balance is missing.
        503 when Redis cannot be reached."""
        scopes = sorted(limits)
        keys = [self.balance_key(tenant_id, s, month) for s in scopes] + [_HELD, _DETAILS]
        head = [
            len(scopes), _units(cost, ROUND_CEILING), tokens, self.member(tenant_id, reservation_id),
            time.time() + ttl_seconds, "", _BALANCE_TTL,
        ]

        def arguments(seeds: dict[str, tuple[Decimal, int]] | None) -> list[Any]:
            args: list[Any] = list(head)
            for scope in scopes:
                limit = limits[scope]
                args += [
                    -1 if limit.cost is None else _units(limit.cost, ROUND_FLOOR),
                    -1 if limit.tokens is None else limit.tokens,
                ]
                seed = None if seeds is None else seeds.get(scope, (Decimal(0), 0))
                args += ["", ""] if seed is None else [_units(seed[0], ROUND_CEILING), seed[1]]
            return args

        try:
            result = _text(await self._reserve(keys=keys, args=arguments(None)))
            if result[0] == "seed":
                result = _text(await self._reserve(keys=keys, args=arguments(await in_use())))
        except RedisError:
            log.warning("budget admission: Redis unreachable, refusing the budgeted call")
            raise ServiceUnavailable("AI budgets cannot be checked right now; try again shortly") from None
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
        exists. Failures are logged, not raised: the record is already written, and what stays
        counted is the larger reservation."""
        if not reservation_ids and not charges:
            return
        ordered = sorted(charges)
        keys = [_HELD, _DETAILS] + [self.balance_key(tenant_id, scope, month) for scope, month in ordered]
        args: list[Any] = [len(reservation_ids), *(self.member(tenant_id, r) for r in reservation_ids)]
        for key in ordered:
            cost, tokens = charges[key]
            args += [_units(cost, ROUND_CEILING), tokens]
        try:
            await self._settle(keys=keys, args=args)
        except RedisError:
            log.warning("budget settlement: Redis unreachable; the reservations stay counted until they expire")

    async def sweep(self) -> int:
        """Forget the reservations whose expiry passed and drop the balances they held."""
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
