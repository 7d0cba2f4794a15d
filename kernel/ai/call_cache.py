"""What every AI call reads before it reaches the provider, kept per process.

A call needs the tenant's AI settings, its opened provider key, the model's price and which of
its budgets apply. Reading them costs a transaction and a key opening per call; they change
rarely. Entries live for a minute at most and are dropped in every process (through the
invalidation bus) when the tenant changes them: ``forget`` is called after the change commits.

Price overrides are global rows the operator edits outside the API, so they only expire.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from kernel.cache import InvalidationBus, TTLCache

__all__ = ["CallCache"]

TOPIC = "ai"
_TTL_SECONDS = 60.0

T = TypeVar("T")


class CallCache:
    def __init__(self, bus: InvalidationBus | None) -> None:
        self.bus = bus
        self._entries: TTLCache[str, object] = TTLCache(_TTL_SECONDS)
        if bus is not None:
            bus.register(TOPIC, self._entries)

    @staticmethod
    def key(tenant_id: uuid.UUID | None, what: str) -> str:
        return f"{tenant_id or '*'}/{what}"

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """The cached value of ``key``, else ``load()``'s (cached unless an invalidation of this
        cache arrived while it loaded). What ``load`` raises is not cached."""
        found = self._entries.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
        generation = self._entries.generation
        value = await load()
        self._entries.put(key, value, generation)
        return value

    async def forget(self, key: str) -> None:
        """Drop ``key`` here and in every other process (call after the change has committed)."""
        if self.bus is not None:
            await self.bus.publish(TOPIC, key)
        else:
            self._entries.drop(key)
