"""Small per-process caches kept coherent across processes through Redis pub/sub.

A change publishes ``<topic>:<key>`` on one channel; every process drops that entry. Entries also
expire after a TTL. While a process is not subscribed (Redis unreachable, or not yet connected)
its caches are bypassed: every read goes to the source, since no invalidation would reach them;
once it subscribes again it starts from empty caches (a resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kernel.observability.logs import limit_repeats

__all__ = ["InvalidationBus", "TTLCache"]

log = logging.getLogger("businessos.cache")
# While Redis is down every change and every reconnection attempt would warn.
limit_repeats(log, 10.0)

K = TypeVar("K")
V = TypeVar("V")

CHANNEL = "businessos:invalidate"


class TTLCache(Generic[K, V]):
    """Entries expire after ``ttl`` seconds.

    A reader that misses should note :attr:`generation` before it reads the source and pass it
    to :meth:`put`: if anything was dropped in between, the value it read may predate that
    invalidation, and it is not cached.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self.generation = 0
        self.bypassed = False
        """While true, :meth:`get` misses and :meth:`put` keeps nothing (set by the bus)."""

    def get(self, key: K) -> V | None:
        if self.bypassed:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: K, value: V, generation: int | None = None) -> None:
        if self.bypassed or (generation is not None and generation != self.generation):
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, value)

    def drop(self, key: K) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


class InvalidationBus:
    """Fan-out of cache invalidations to every process that shares the Redis."""

    def __init__(self, redis: Redis, listener: Redis | None = None) -> None:
        self.redis = redis
        self.listener = listener or redis
        self._caches: dict[str, TTLCache[str, object]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def register(self, topic: str, cache: TTLCache[str, object]) -> None:
        cache.bypassed = not self.subscribed.is_set()
        self._caches[topic] = cache

    def _bypass(self, bypassed: bool) -> None:
        for cache in self._caches.values():
            cache.clear()
            cache.bypassed = bypassed

    def _drop(self, message: str) -> None:
        topic, _, key = message.partition(":")
        cache = self._caches.get(topic)
        if cache is not None:
            cache.drop(key)

    async def publish(self, topic: str, key: str) -> None:
        """Drop ``key`` from ``topic``'s cache here and in every other process."""
        self._drop(f"{topic}:{key}")
        try:
            await self.redis.publish(CHANNEL, f"{topic}:{key}")
        except RedisError as exc:
            # The change is already stored; the other processes are not subscribed either while
            # Redis is down, so they bypass their caches and resync when it is back.
            log.warning("cache invalidation not published: %s", type(exc).__name__)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="businessos-invalidation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self.listener.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    # Whatever happened while we were not listening is unknown: start clean.
                    self._bypass(False)
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            self._drop(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                self._bypass(True)
                log.warning(
                    "cache invalidation subscription lost (%s); caches bypassed, retrying", exc,
                    extra={"repeat_key": "invalidation-lost"},
                )
                await asyncio.sleep(1.0)
