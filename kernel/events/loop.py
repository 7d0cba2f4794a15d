"""Background loops of the worker (outbox dispatch, delivery sweep) and their quiet logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

__all__ = ["BackgroundLoop", "LogEvery"]


class LogEvery:
    """A warning at most once per ``interval`` seconds (per key), saying how many were held back:
    an outage polled 20 times a second must not write 20 lines a second."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} more since the last report)" if held else ""
        self._log.warning(message + suffix, *args)

    def recovered(self, key: str, message: str) -> None:
        """Say once that ``key``'s trouble is over (if it was reported)."""
        if self._last.pop(key, None) is not None:
            self._held.pop(key, None)
            self._log.warning(message)


class BackgroundLoop:
    """Calls :meth:`step` every ``interval`` seconds in a task until stopped; a step that fails
    (an outage) is logged once per interval and tried again, never ends the loop. A step that
    returns ``True`` has more work at hand and runs again at once."""

    name = "loop"

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.interval = interval
        self._trouble = LogEvery(logger)
        self._task: asyncio.Task[None] | None = None

    async def step(self) -> bool:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            try:
                if await self.step():
                    continue
                self._trouble.recovered(self.name, f"{self.name} works again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._trouble.warning(self.name, "%s failed (%s); retrying", self.name, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"businessos-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
