"""Billing's answers on hot paths: the AI-token allowance, the plan's rate limit, the API-call count.

Runs against the embedded PostgreSQL and Redis (temporary directory), in one process, through the
kernel's entitlement gate (``kernel.entitlements``, what the AI proxy and the rate-limit guard call):

1. **AI tokens**: ``ask(tenant, "kernel.ai.tokens", 1)`` for a tenant with ``--calls`` rows in
   the AI ledger this period (answered from the process's copy), the read that refreshes that copy
   at most once a second (one statement on the read path, ``Billing._quick``), and as the baseline
   in the same run the transaction path it replaced (live subscription, clock, rollups, the
   ledger's sum: ``Billing._slow``).
2. **rate limit**: ``kernel.entitlements.rate_limit(tenant)``, cached (what every request pays)
   and uncached (the answer dropped before each call: what a process pays once a minute per
   tenant, or after a plan change).
3. **API-call count**: ``limiter.hit`` with the tenant's counter (the guard's call) against the
   same hit without it (the script without ``HINCRBY``).

    python bench/billing_entitlements.py [--calls 20000] [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"p50 {statistics.median(ordered):7.3f} ms  p90 {ordered[int(len(ordered) * 0.9)]:7.3f} ms"


async def _timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def main(args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from kernel import sdk
    from kernel.app import load_app_plugins
    from kernel.db import migrate
    from kernel.embedded import EmbeddedServices
    from kernel.runtime import open_kernel
    from kernel.settings import load_settings
    from kernel.tenants.schemas import TenantCreate
    from plugins.billing.service import Billing

    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-billing-ent-"))
    settings = load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": "billing",
                              "BUSINESSOS_LOG_LEVEL": "WARNING"})
    embedded = EmbeddedServices(settings).start()
    try:
        resolved = embedded.resolved()
        assert resolved.database_url
        plugins = load_app_plugins(frozenset({"billing"}))
        await migrate.upgrade(resolved, resolved.database_url, plugins.migration_folders())
        async with open_kernel(resolved, plugins) as kernel:
            services = kernel.services("billing")
            billing = Billing(services)
            actor = sdk.Actor.system("bench")
            tenant = await kernel.tenants.create(TenantCreate(name="AI", slug="bench-ai", plan="pro"))
            async with services.data.tenant(tenant.id) as session:
                await billing.current(session, services.changes.by(actor, tenant.id))
            async with kernel.db.engine.begin() as conn:  # the ledger as the proxy would have written it
                await conn.execute(text("select set_config('app.tenant_id', :t, true)"), {"t": str(tenant.id)})
                await conn.execute(text(
                    "insert into ai_usage (tenant_id, id, created_at, provider, model, prompt_tokens, "
                    "completion_tokens, cached_tokens, latency_ms, cost, price_version, status, surface, stream) "
                    "select :t, gen_random_uuid(), now(), 'openai', 'gpt-4o-mini', "
                    "100, 20, 0, 10, 0.0001, 'v1', 'ok', 'api', false from generate_series(1, :n) g"),
                    {"t": tenant.id, "n": args.calls})
                await conn.execute(text("analyze ai_usage"))
            gate = kernel.entitlements
            answer = await gate.ask(tenant.id, "kernel.ai.tokens", 0)
            cached, quick, slow = [], [], []
            for _ in range(3):  # alternate, so all see the same moment of the machine
                cached += await _timed(args.n // 3, lambda: gate.ask(tenant.id, "kernel.ai.tokens", 1))
                quick += await _timed(args.n // 3, lambda: billing._quick(tenant.id))
                slow += await _timed(args.n // 3, lambda: billing._slow(tenant.id, actor))
            print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
            print(f"\n1. AI tokens, {args.calls:,} ledger rows this period (remaining {answer.remaining:,}):")
            print(f"  gate.ask kernel.ai.tokens (per call, cached)      {_ms(cached)}")
            print(f"  its read (one statement, once a second a tenant)  {_ms(quick)}")
            print(f"  transaction path (baseline)                       {_ms(slow)}")
            print(f"  ratio baseline/read: {statistics.median(slow) / statistics.median(quick):.2f}")

            await gate.rate_limit(tenant.id)
            cached = await _timed(args.n, lambda: gate.rate_limit(tenant.id))

            async def uncached() -> None:
                await gate.forget(tenant.id)
                await gate.rate_limit(tenant.id)

            missed = await _timed(args.n // 3, uncached)
            print(f"\n2. rate limit (the plan says {await gate.rate_limit(tenant.id)} a minute):")
            print(f"  cached (every request)     {_ms(cached)}")
            print(f"  uncached (once a minute)   {_ms(missed)}")

            limiter, counted, plain = kernel.limiter, [], []
            for r in range(3):
                with_count, without = f"bench:c{r}", f"bench:p{r}"
                counted += await _timed(args.n // 3, lambda k=with_count: limiter.hit(  # type: ignore[misc]
                    k, 10**9, 60, count_for=str(tenant.id)))
                plain += await _timed(args.n // 3, lambda k=without: limiter.hit(k, 10**9, 60))  # type: ignore[misc]
            print("\n3. the rate limiter's script per request:")
            print(f"  with the API-call count    {_ms(counted)}")
            print(f"  without (baseline)         {_ms(plain)}")
            print(f"  ratio: {statistics.median(counted) / statistics.median(plain):.2f}")
    finally:
        embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--n", type=int, default=300)
    asyncio.run(main(parser.parse_args()))
