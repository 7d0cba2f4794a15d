"""Background loops of the worker (outbox dispatch, delivery sweep, schedules)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kernel.observability.logs import limit_repeats

__all__ = ["TROUBLE_INTERVAL", "BackgroundLoop"]

TROUBLE_INTERVAL = 30.0
"""Seconds between two warnings of the same background trouble (an outage polled 20 times a
second must not write 20 lines a second)."""


class BackgroundLoop:
    """Calls :meth:`step` every ``interval`` seconds in a task until stopped; a step that fails
    (an outage) is logged once per interval and tried again, never ends the loop. A step that
    returns ``True`` has more work at hand and runs again at once."""

    name = "loop"

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.interval = interval
        self._log = logger
        self._trouble = limit_repeats(logger, TROUBLE_INTERVAL)
        self._task: asyncio.Task[None] | None = None

    async def step(self) -> bool:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            try:
                if await self.step():
                    continue
                if self._trouble.recovered(self.name):
                    self._log.warning("%s works again", self.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("%s failed (%s); retrying", self.name, exc, extra={"repeat_key": self.name})
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"businessos-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
