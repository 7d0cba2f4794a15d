"""Rate limits shared by every API process: GCRA in one atomic Redis script.

Each bucket is one Redis key (``bos:rl:<bucket>``) holding its *theoretical arrival time* (TAT) in
microseconds of the Redis server's clock. A hit of ``cost`` moves the TAT ``cost`` emission
intervals (``period / limit``) ahead and is allowed while the TAT stays within ``limit`` intervals
of now, so a full bucket allows a burst of ``limit`` and then refills one request per interval.
Reading, deciding and writing happen in one Lua script, so concurrent hits from any number of
processes are serialized by Redis and never over-admit; the clock is Redis's, so process clocks do
not matter.

How requests are limited (:func:`rate_limit_guard`, an app-level guard, so it runs after
authentication and before the permission guard):

- a route with ``opt["rate_limit"] = "auth"`` (log-in, MFA, registration, sign-up):
  ``settings.auth_rate_limit_per_minute`` per client IP (IPv6: per /64);
- otherwise, with a principal: ``settings.rate_limit_per_minute`` per tenant and principal;
- otherwise: the same number per client IP;
- ``opt["rate_limit"] = "exempt"``: not limited.

Response headers (draft-ietf-httpapi-ratelimit-headers, the separate-fields form of draft 07),
on every limited response: ``RateLimit-Limit`` (requests per window), ``RateLimit-Remaining``,
``RateLimit-Reset`` (seconds until the bucket is full again) and ``RateLimit-Policy``
(``<limit>;w=<window seconds>``). A refusal is a 429 problem with ``Retry-After`` (seconds).

A tenant's plan may set its own limit: the entitlement provider (billing) answers
``kernel.rate_limit`` and the gate caches that answer per process (see
``EntitlementGate.rate_limit``), so the guard costs no database round trip. The same script also
counts each allowed request of a tenant's principal in the hash ``bos:calls`` (tenant -> count):
no extra round trip. :class:`ApiCalls` hands those counts to the plugin that meters them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kernel.errors import ServiceUnavailable, TooManyRequests
from kernel.observability.logs import limit_repeats

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from kernel.context import Kernel

__all__ = [
    "AUTH_POLICY",
    "DEFAULT_PERIOD",
    "EXEMPT_POLICY",
    "KEY_PREFIX",
    "RATE_LIMIT_OPT",
    "ApiCalls",
    "Decision",
    "RateLimiter",
    "check",
    "ip_bucket",
    "principal_bucket",
    "rate_limit_guard",
]

log = logging.getLogger("businessos.ratelimit")
# During a Redis outage every request would log the fail-open warning: once a minute is enough.
limit_repeats(log, 60.0)

KEY_PREFIX = "bos:rl:"
RATE_LIMIT_OPT = "rate_limit"
"""The route ``opt`` key naming the route's policy."""
AUTH_POLICY = "auth"
EXEMPT_POLICY = "exempt"
DEFAULT_PERIOD = 60.0
"""Window of the per-minute limits, in seconds."""
CALLS_KEY = "bos:calls"
"""Hash of API calls per tenant not yet handed to the meter."""

# KEYS[1] bucket, optional KEYS[2] the API-call counters; ARGV limit, emission interval (integer
# microseconds), cost, and with KEYS[2] the tenant whose allowed request is counted.
# Integer microseconds (about 2^51 today) stay exact in Lua's doubles; string.format('%d') keeps
# them exact in Redis too (plain tostring would round to 14 digits).
_GCRA = """
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local capacity = limit * interval
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead > capacity then
  local remaining = math.floor((capacity - (tat - now)) / interval)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, tat - now, ahead - capacity}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000))
if KEYS[2] then
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
end
return {1, math.floor((capacity - ahead) / interval), ahead, 0}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one hit on a bucket."""

    allowed: bool
    limit: int
    remaining: int
    """Hits of cost 1 the bucket would still allow right now."""
    reset_after: float
    """Seconds until the bucket is full again."""
    retry_after: float
    """Seconds until this hit would have been allowed; 0 when it was."""
    period: float

    def headers(self) -> dict[str, str]:
        """The RateLimit header fields (and ``Retry-After`` when refused)."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after)),
            "RateLimit-Policy": f"{self.limit};w={_seconds(self.period)}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


def _seconds(period: float) -> str:
    return str(int(period)) if period == int(period) else f"{period:g}"


class RateLimiter:
    """Atomic GCRA buckets in Redis, shared by every process that uses the same Redis."""

    def __init__(self, redis: Redis, *, prefix: str = KEY_PREFIX) -> None:
        self._prefix = prefix
        # register_script runs EVALSHA and falls back to SCRIPT LOAD once per server.
        self._script = redis.register_script(_GCRA)

    async def hit(
        self, key: str, limit: int, period: float, cost: int = 1, *, count_for: str | None = None
    ) -> Decision:
        """Spend ``cost`` from the bucket ``key`` that allows ``limit`` per ``period`` seconds;
        when allowed and ``count_for`` (a tenant id) is given, count one API call for it.

        Raises ``ValueError`` for a limit below 1, a period not above 0, or a cost outside
        ``1..limit``, and ``redis.exceptions.RedisError`` when Redis cannot be reached.
        """
        if limit < 1 or period <= 0 or not 1 <= cost <= limit:
            raise ValueError(f"invalid rate limit: limit={limit}, period={period}, cost={cost}")
        interval = max(1, int(period * 1_000_000) // limit)
        keys: list[str] = [self._prefix + key]
        args: list[int | str] = [limit, interval, cost]
        if count_for is not None:
            keys.append(CALLS_KEY)
            args.append(count_for)
        raw: Any = await self._script(keys=keys, args=args)
        allowed, remaining, reset_us, retry_us = (int(value) for value in raw)
        return Decision(
            allowed=bool(allowed),
            limit=limit,
            remaining=remaining,
            reset_after=reset_us / 1_000_000,
            retry_after=retry_us / 1_000_000,
            period=period,
        )


async def check(limiter: RateLimiter, key: str, limit: int, period: float, cost: int = 1) -> Decision:
    """Spend from a bucket of your own; a refusal raises :class:`TooManyRequests` (429).

    For throttles beyond the per-request ones, e.g. log-in attempts per e-mail address. Keep
    personal data out of ``key`` (hash an e-mail address): keys are visible to Redis operators.
    """
    decision = await limiter.hit(key, limit, period, cost)
    if not decision.allowed:
        raise TooManyRequests(
            f"rate limit exceeded: retry in {max(1, math.ceil(decision.retry_after))} s",
            headers=decision.headers(),
        )
    return decision


def ip_bucket(policy: str, ip: str | None) -> str:
    """The bucket of one client address; IPv6 addresses share their /64 (one end site)."""
    if ip is None:
        return f"{policy}:ip:unknown"
    if ":" in ip:
        with contextlib.suppress(ValueError):
            ip = str(ipaddress.IPv6Network((ip, 64), strict=False).network_address)
    return f"{policy}:ip:{ip}"


def principal_bucket(tenant_id: object, actor: str) -> str:
    """The bucket of one principal within one tenant."""
    return f"req:t:{tenant_id}:{actor}"


async def rate_limit_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Spend one request from the caller's bucket; refuse with 429 when it is empty.

    The decision is left in ``scope["state"]["rate_limit"]`` for the response headers. When Redis
    is unreachable the general limit lets the request through (logged) rather than take the API
    down, while the strict ``auth`` policy refuses with 503: brute force must not get a free pass.
    """
    policy = handler.opt.get(RATE_LIMIT_OPT)
    if policy == EXEMPT_POLICY:
        return
    state = connection.scope["state"]
    kernel: Kernel = connection.app.state.kernel
    counted: str | None = None
    if policy == AUTH_POLICY:
        key = ip_bucket(AUTH_POLICY, state.get("client_ip"))
        limit = kernel.settings.auth_rate_limit_per_minute
    else:
        principal = state.get("principal")
        operator = state.get("operator")
        limit = kernel.settings.rate_limit_per_minute
        if principal is not None:
            key = principal_bucket(principal.tenant_id, principal.actor)
            counted = str(principal.tenant_id)
            limit = await kernel.entitlements.rate_limit(principal.tenant_id) or limit
        elif operator is not None:
            key = f"req:{operator.actor}"
        else:
            key = ip_bucket("req", state.get("client_ip"))
    try:
        decision = await kernel.limiter.hit(key, limit, DEFAULT_PERIOD, count_for=counted)
    except RedisError as exc:
        if policy == AUTH_POLICY:
            raise ServiceUnavailable(
                "rate limiting is unavailable; try again shortly", headers={"Retry-After": "5"}
            ) from exc
        # The logger's repeat filter keeps this to one line per interval during an outage.
        log.warning("rate limiter unavailable, requests let through: %s", type(exc).__name__)
        return
    state["rate_limit"] = decision
    if not decision.allowed:
        raise TooManyRequests(
            f"rate limit exceeded: retry in {max(1, math.ceil(decision.retry_after))} s",
            headers=decision.headers(),
        )


# Rename the counters aside under a fresh take id (Redis's clock, microseconds), atomically: a
# request counted after the rename lands in a new hash and in the next take.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local clock = redis.call('TIME')
local id = clock[1] .. string.format('%06d', tonumber(clock[2]))
redis.call('RENAME', KEYS[1], KEYS[1] .. ':take:' .. id)
redis.call('SADD', KEYS[1] .. ':takes', id)
return id
"""


class ApiCalls:
    """The API calls counted per tenant, for the plugin that meters them (``services.api_calls``).

    :meth:`take` moves the counts aside under a take id and answers every take not yet
    :meth:`done` (a crash between the two leaves the take to be answered again); the meter stores
    each under an idempotency key made from the take id, then calls :meth:`done`.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take = redis.register_script(_TAKE)

    async def take(self) -> list[tuple[str, dict[str, int]]]:
        """Every pending take, oldest first: ``(take id, {tenant id: calls})``."""
        await self._take(keys=[CALLS_KEY])
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m)
                     for m in await self._redis.smembers(CALLS_KEY + ":takes"))  # type: ignore[misc]
        taken: list[tuple[str, dict[str, int]]] = []
        for take_id in ids:
            raw: dict[Any, Any] = await self._redis.hgetall(f"{CALLS_KEY}:take:{take_id}")  # type: ignore[misc]
            counts = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
            taken.append((take_id, counts))
        return taken

    async def done(self, take_id: str) -> None:
        """The take ``take_id`` is stored: forget it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{CALLS_KEY}:take:{take_id}")
            pipe.srem(CALLS_KEY + ":takes", take_id)
            await pipe.execute()
