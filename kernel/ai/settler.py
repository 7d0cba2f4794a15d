"""Writes answered AI calls' settlements in batches, after the answers have gone out.

A successful call outside a conversation is answered first; its settlement (ledger row, budget
months, audit row, ``ai.call.completed``) waits here for up to :data:`WINDOW_SECONDS` so that the
calls of a busy moment share one transaction per tenant: one multi-row ledger insert, one audit
chain append and one outbox insert instead of a transaction each. The call's budget reservation
keeps holding the budget until its batch commits, so concurrent calls still cannot overspend.

A batch whose transaction fails is retried one settlement at a time, so one bad row cannot lose
the others; what still fails is logged. ``drain`` writes everything pending at once (shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["WINDOW_SECONDS", "Settler"]

log = logging.getLogger("businessos.ai")

WINDOW_SECONDS = 0.05
"""How long a settlement may wait for others to share its transaction."""

S = TypeVar("S")


class Settler(Generic[S]):
    """Batches of settlements ``S``, written per tenant by ``write(tenant_id, batch)``."""

    def __init__(
        self,
        write: Callable[[uuid.UUID, Sequence[S]], Awaitable[None]],
        tenant_of: Callable[[S], uuid.UUID],
    ) -> None:
        self._write = write
        self._tenant_of = tenant_of
        self._pending: list[tuple[S, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, settlement: S) -> asyncio.Future[None]:
        """Queue ``settlement``; the future resolves once it is written."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((settlement, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="businessos-ai-settler")
        self._wake.set()
        return done

    async def drain(self) -> None:
        """Write everything queued now, and wait for it."""
        while self._pending or (self._writing is not None and not self._writing.done()):
            self._hurry.set()
            self._wake.set()
            waiting = [done for _, done in self._pending]
            if self._writing is not None:
                waiting.append(self._writing)
            await asyncio.wait(waiting)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), WINDOW_SECONDS)
            self._hurry.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._writing = asyncio.get_running_loop().create_future()
            try:
                # Shielded: a cancelled settler (shutdown) still finishes the batch it holds.
                await asyncio.shield(self._write_all(batch))
            finally:
                self._writing.set_result(None)

    async def _write_all(self, batch: list[tuple[S, asyncio.Future[None]]]) -> None:
        by_tenant: dict[uuid.UUID, list[tuple[S, asyncio.Future[None]]]] = defaultdict(list)
        for item in batch:
            by_tenant[self._tenant_of(item[0])].append(item)
        for tenant_id, items in by_tenant.items():
            try:
                await self._write(tenant_id, [settlement for settlement, _ in items])
            except Exception:
                log.warning("settling %d AI calls together failed; settling them one by one", len(items))
                for settlement, done in items:
                    try:
                        await self._write(tenant_id, [settlement])
                    except Exception as exc:
                        log.exception("settling an AI call failed")
                        done.set_exception(exc)
                        done.exception()  # retrieved: the failure is logged here, once
                    else:
                        done.set_result(None)
            else:
                for _, done in items:
                    done.set_result(None)
