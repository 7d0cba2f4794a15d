"""Billing: usage ingestion, the current-period usage read, and the period-end invoice run.

Runs against the embedded PostgreSQL and Redis (temporary directory) through the plugin's
service layer (``Billing`` on ``kernel.services("billing")``, the same code the HTTP handlers
call, without HTTP; ``bench/billing_http.py`` takes the ingest through the endpoint), in one process:

1. **ingest**: batches of 1,000 events through ``Billing.ingest`` (idempotent insert + rollup
   update in one statement), ``--writers`` concurrent writers, fresh transaction ids; then the
   same batches again (all duplicates). Baseline in the same run: the bare idempotent insert
   (``INSERT ... SELECT FROM unnest ... ON CONFLICT DO NOTHING``) without the rollup.
2. **read**: one tenant with ``--events`` events in its current period (loaded with one SQL
   statement as the owner, rollups built from them), then ``Billing.usage_report`` (what
   ``GET /api/billing/usage`` answers) timed ``--reads`` times; baseline: the same figures by
   scanning the events (``count/sum/max ... group by metric``).
3. **invoice run**: ``--tenants`` tenants on one test clock, each with a Pro subscription and a
   few usage events; the clock moves past the period end and its grace, and ``run_due`` renews,
   drafts, finalizes (numbered) every one. Time per invoice and SQL statements per invoice.

    python bench/billing.py [--events 1000000] [--tenants 1000] [--batches 40] [--writers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"p50 {statistics.median(ordered):7.2f} ms  p90 {ordered[int(len(ordered) * 0.9)]:7.2f} ms"


async def main(args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from kernel import sdk
    from kernel.app import load_app_plugins
    from kernel.db import migrate
    from kernel.embedded import EmbeddedServices
    from kernel.runtime import open_kernel
    from kernel.settings import load_settings
    from kernel.tenants.schemas import TenantCreate
    from plugins.billing.schemas import UsageEvent
    from plugins.billing.service import Billing

    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-billing-"))
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

            parts = set(args.parts.split(","))
            # -- 1. ingest ------------------------------------------------------------------------
            ingest_tenant = await kernel.tenants.create(TenantCreate(name="Ingest", slug="bench-ingest"))
            base_tenant = await kernel.tenants.create(TenantCreate(name="Base", slug="bench-base"))
            for t in (ingest_tenant, base_tenant):
                async with services.data.tenant(t.id) as session:
                    await billing.current(session, services.changes.by(actor, t.id))
            batch_size = 1000

            def batch(prefix: str, n: int) -> list[UsageEvent]:
                return [UsageEvent(transaction_id=f"{prefix}-{n}-{i}", metric=("api_calls", "tokens", "storage")[i % 3],
                                   value=i % 17, unique_key=f"u{i % 50}") for i in range(batch_size)]

            async def writer(w: int, batches: int, prefix: str) -> None:
                for n in range(batches):
                    await billing.ingest(ingest_tenant.id, actor, batch(f"{prefix}{w}", n))

            async def base_writer(w: int, batches: int, prefix: str) -> None:
                async with services.data.tenant(base_tenant.id) as session:
                    period = (await session.execute(text("select current_period_start from billing_subscriptions")))
                    start = period.scalar_one()
                for n in range(batches):
                    events = batch(f"{prefix}{w}", n)
                    async with services.data.tenant(base_tenant.id) as session:
                        await session.execute(text(
                            "insert into billing_usage_events (tenant_id, id, transaction_id, metric, occurred_at, "
                            "value, unique_key, period_start) select :t, gen_random_uuid(), tx, m, now(), v, u, :p "
                            "from unnest(cast(:tx as text[]), cast(:m as text[]), cast(:v as numeric[]), "
                            "cast(:u as text[])) as b(tx, m, v, u) on conflict (tenant_id, transaction_id) do nothing"
                        ), {"t": base_tenant.id, "p": start, "tx": [e.transaction_id for e in events],
                            "m": [e.metric for e in events], "v": [e.value for e in events],
                            "u": [e.unique_key for e in events]})

            per_writer = max(1, args.batches // args.writers)
            total = per_writer * args.writers * batch_size
            rounds: dict[str, list[float]] = {"billing ingest (new)": [], "bare insert (baseline)": [],
                                              "billing ingest (all duplicates)": []}
            for r in range(args.rounds if "ingest" in parts else 0):
                started = time.perf_counter()
                await asyncio.gather(*(base_writer(w, per_writer, f"b{r}-") for w in range(args.writers)))
                rounds["bare insert (baseline)"].append(total / (time.perf_counter() - started))
                started = time.perf_counter()
                await asyncio.gather(*(writer(w, per_writer, f"r{r}-") for w in range(args.writers)))
                rounds["billing ingest (new)"].append(total / (time.perf_counter() - started))
                started = time.perf_counter()
                await asyncio.gather(*(writer(w, per_writer, f"r{r}-") for w in range(args.writers)))
                rounds["billing ingest (all duplicates)"].append(total / (time.perf_counter() - started))
            if "ingest" in parts:
                print(f"\n1. ingest: {total:,} events per round in batches of {batch_size}, {args.writers} writers, "
                      f"{args.rounds} rounds (median events/s):")
                for name, values in rounds.items():
                    print(f"  {name:34s} {statistics.median(values):10,.0f} events/s")
                async with services.data.tenant(ingest_tenant.id) as session:
                    check = (await session.execute(text(
                        "select (select count(*) from billing_usage_events) as events, "
                        "(select sum(events)::bigint from billing_usage_rollups) as rolled"))).one()
                print(f"  check: {check.events:,} events stored, rollups count {check.rolled:,} (equal: "
                      f"{check.events == check.rolled})")

            # -- 2. read --------------------------------------------------------------------------
            if "read" in parts:
                await read_part(kernel, services, billing, actor, args)
            if "run" in parts:
                await run_part(kernel, services, billing, actor, args)
    finally:
        embedded.stop()


async def read_part(kernel: Any, services: Any, billing: Any, actor: Any, args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from kernel.tenants.schemas import TenantCreate

    if True:
        if True:
            reader = await kernel.tenants.create(TenantCreate(name="Reader", slug="bench-reader"))
            async with services.data.tenant(reader.id) as session:
                row, _ = await billing.current(session, services.changes.by(actor, reader.id))
                start = row.current_period_start
            load_started = time.perf_counter()
            async with kernel.db.engine.begin() as conn:  # the owner's bulk load (not the product path)
                await conn.execute(text("select set_config('app.tenant_id', :t, true)"), {"t": str(reader.id)})
                await conn.execute(text(
                    "insert into billing_usage_events (tenant_id, id, transaction_id, metric, occurred_at, value, "
                    "period_start) select :t, gen_random_uuid(), 'tx-' || g, (array['api_calls','tokens','storage',"
                    "'workflow_executions'])[1 + g % 4], :p, g % 100, :p from generate_series(1, :n) g"),
                    {"t": reader.id, "p": start, "n": args.events})
                await conn.execute(text(
                    "insert into billing_usage_rollups (tenant_id, id, metric, period_start, events, total, maximum, "
                    "latest, latest_at) select :t, gen_random_uuid(), metric, period_start, count(*), sum(value), "
                    "max(value), max(value), max(occurred_at) from billing_usage_events where tenant_id = :t "
                    "group by metric, period_start"), {"t": reader.id})
                await conn.execute(text("analyze billing_usage_events"))
            loaded = time.perf_counter() - load_started
            print(f"\n2. read: {args.events:,} events loaded for one tenant in {loaded:.1f} s")
            timings: dict[str, list[float]] = {"usage_report (rollups)": [], "scan of the events (baseline)": []}
            # In two blocks: a scan of the events between two reads would evict what the reads use.
            for _ in range(args.reads):
                started = time.perf_counter()
                report = await billing.usage_report(reader.id, actor)
                timings["usage_report (rollups)"].append((time.perf_counter() - started) * 1000)
            for _ in range(max(5, args.reads // 10)):
                started = time.perf_counter()
                async with services.data.tenant(reader.id) as session:
                    await session.execute(text(
                        "select metric, count(*), sum(value), max(value) from billing_usage_events "
                        "where period_start = :p group by metric"), {"p": start})
                timings["scan of the events (baseline)"].append((time.perf_counter() - started) * 1000)
            for name, values in timings.items():
                print(f"  {name:34s} {_ms(values)}")
            used = {m["metric"]: m["used"] for m in report["metrics"]}
            print(f"  check: workflow_executions used {used.get('workflow_executions')}")



async def run_part(kernel: Any, services: Any, billing: Any, actor: Any, args: argparse.Namespace) -> None:
    from sqlalchemy import event, text

    from kernel.tenants.schemas import TenantCreate
    from plugins.billing.schemas import UsageEvent
    from plugins.billing.service import run_due

    if True:
        if True:
            # -- 3. invoice run -------------------------------------------------------------------
            clock_at = datetime(2030, 1, 15, tzinfo=UTC)
            clock_id = uuid.uuid4()
            async with services.data.installation() as session:
                await session.execute(text("insert into billing_clocks (id, name, frozen_at) values (:i, 'bench', :f)"),
                                      {"i": clock_id, "f": clock_at})
            setup_started = time.perf_counter()
            tenant_ids = []
            for n in range(args.tenants):
                t = await kernel.tenants.create(TenantCreate(name=f"Run {n}", slug=f"bench-run-{n}", plan="pro"))
                tenant_ids.append(t.id)
                log = services.changes.by(actor, t.id)
                async with services.data.tenant(t.id) as session:
                    await session.execute(text("insert into billing_profiles (tenant_id, id, clock_id, tax_rate) "
                                               "values (:t, :i, :c, 20)"),
                                          {"t": t.id, "i": uuid.uuid4(), "c": clock_id})
                    await billing.subscriptions.ensure(session, log, "pro")
                await billing.ingest(t.id, actor, [UsageEvent(transaction_id=f"e{i}", metric="workflow_executions")
                                                   for i in range(20)])
            print(f"\n3. invoice run: {args.tenants:,} tenants set up in {time.perf_counter() - setup_started:.1f} s")
            statements = 0

            def count(*_: Any) -> None:
                nonlocal statements
                statements += 1

            event.listen(kernel.db.engine.sync_engine, "before_cursor_execute", count)
            # Past the trial (14 days) and the grace of its invoice (1 day): each tenant ends one
            # period (a draft) and the run finalizes it with a number.
            async with services.data.installation() as session:
                await session.execute(text("update billing_clocks set frozen_at = :t where id = :i"),
                                      {"t": clock_at + timedelta(days=16), "i": clock_id})
            started = time.perf_counter()
            ran = await run_due(services, clock_id=clock_id)
            elapsed = time.perf_counter() - started
            event.remove(kernel.db.engine.sync_engine, "before_cursor_execute", count)
            async with services.data.installation() as session:
                numbered = (await session.execute(text("select next_value - 1 from billing_sequences "
                                                       "where name = 'invoices'"))).scalar_one()
            invoices = ran["finalized"]
            print(f"  run_due: {ran}")
            print(f"  {elapsed:.1f} s for {invoices:,} invoices: {elapsed / max(invoices, 1) * 1000:.1f} ms and "
                  f"{statements / max(invoices, 1):.0f} SQL statements per invoice ({statements:,} in all); "
                  f"last invoice number {numbered}")
            again = time.perf_counter()
            rerun = await run_due(services, clock_id=clock_id)
            print(f"  second run (nothing due): {rerun} in {time.perf_counter() - again:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--parts", default="ingest,read,run", help="which of ingest,read,run to measure")
    asyncio.run(main(parser.parse_args()))
