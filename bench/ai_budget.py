"""What a budget adds before an AI call: the reservation, on its own.

Starts the embedded PostgreSQL and Redis in a temporary directory, migrates, creates a tenant
with a budget and times ``BudgetService.reserve`` the way the proxy calls it, two ways side by
side in alternating blocks: the PostgreSQL transaction (a ``BudgetService`` without Redis) and
the Redis admission (one script call; the reservation lives in Redis only). Each reservation is
released after it is timed (not counted).

    python bench/ai_budget.py [--reservations 400]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.ai.budgets import BudgetService
from kernel.ai.call_cache import CallCache
from kernel.ai.schemas import BudgetUpdate
from kernel.app import load_app_plugins
from kernel.audit.log import RequestMeta
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.runtime import open_kernel
from kernel.settings import load_settings
from kernel.tenants.schemas import TenantCreate


async def _measure(n: int, data_dir: Path) -> None:
    env = {"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": ""}
    embedded = EmbeddedServices(load_settings(env)).start()
    try:
        settings = embedded.resolved()
        assert settings.database_url
        await migrate.upgrade(settings, settings.database_url, {})
        async with open_kernel(settings, load_app_plugins(frozenset())) as kernel:
            tenant = await kernel.tenants.create(TenantCreate(name="Bench", slug=f"bench-{uuid.uuid4().hex[:8]}"))
            await kernel.ai.budgets.put(
                tenant.id, BudgetUpdate(monthly_cost_limit=1_000_000.0), actor=None, meta=RequestMeta()
            )
            paths = {
                "PostgreSQL transaction (before)": (BudgetService(kernel.db, CallCache(None)), True),
                "Redis admission (after)": (BudgetService(kernel.db, CallCache(None), kernel.redis), False),
            }
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for service, wait in paths.values():  # warm both (scope cache, script load, balance)
                held = await service.reserve(tenant.id, None, Decimal("0.001"), 100, wait=wait)
                async with kernel.db.tenant(tenant.id) as session:
                    await service.release(session, held)
            rounds = 5
            for _ in range(rounds):
                for name, (service, wait) in paths.items():
                    for _ in range(max(1, n // rounds)):
                        start = time.perf_counter()
                        held = await service.reserve(tenant.id, None, Decimal("0.001"), 100, wait=wait)
                        samples[name].append((time.perf_counter() - start) * 1000)
                        async with kernel.db.tenant(tenant.id) as session:
                            await service.release(session, held)
    finally:
        embedded.stop()
    print(f"{'reserve before an AI call (ms), sequential':<44}{'p50':>8}{'p99':>8}")
    for name, timings in samples.items():
        ordered = sorted(timings)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"{name:<44}{statistics.median(ordered):>8.2f}{p99:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reservations", type=int, default=400)
    n = parser.parse_args().reservations
    with tempfile.TemporaryDirectory(prefix="bos-bench-budget-") as folder:
        asyncio.run(_measure(n, Path(folder)))


if __name__ == "__main__":
    main()
