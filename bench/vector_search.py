"""Nearest-chunk search on pgvector: the HNSW index path the retrieval service takes against an
exact scan of the same rows, for latency and recall@10.

In one run: a throw-away database (the embedded PostgreSQL in a temporary directory, or a new
database next to ``DATABASE_URL``), migrated; ``--rows`` clustered 384-dimension vectors in
``ai_chunks`` for one tenant and as many again spread over ``--other-tenants`` other tenants (so
row-level security has rows to filter out of what the index returns); the partial HNSW index
built as the migration defines it (timed). Then for ``--queries`` queries drawn from the same
clusters, alternating, each in its own tenant transaction on the runtime role:

- **hnsw**: the service's statement (``kernel.ai.retrieval.service._search_sql``) with its
  settings (``hnsw.ef_search``, ``hnsw.iterative_scan = relaxed_order``);
- **exact**: the same statement with ``enable_indexscan = off`` (what the service falls back to).

It prints p50/p99 of each, the exact/hnsw p50 ratio and recall@10 (the share of the exact top 10
the index path returns), then the same for a few other ``hnsw.ef_search`` values.

    python bench/vector_search.py [--rows 100000] [--queries 200] [--other-tenants 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.ai.retrieval.schema import HNSW_EF_CONSTRUCTION, HNSW_M
from kernel.ai.retrieval.service import EF_SEARCH, _search_sql
from kernel.db import migrate
from kernel.db.engine import Database
from kernel.db.urls import runtime_url
from kernel.embedded import EmbeddedServices
from kernel.settings import load_settings

DIMENSIONS = 384
K = 10
MODEL = "bench/minilm-384"
CLUSTERS = 400
SPREAD = 0.6
"""Per-dimension noise around a cluster centre (centres are N(0, 1) per dimension)."""


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _p(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _load(dsn: str, tenants: list[tuple[uuid.UUID, int]]) -> tuple[float, str]:
    """Tenants, one document each, and their chunks generated inside PostgreSQL, with the 384
    index dropped first (an HNSW index is built far faster over loaded rows than row by row);
    returns the seconds taken and the index's definition."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        definition: str = await conn.fetchval(
            "select indexdef from pg_indexes where indexname = 'ix_ai_chunks_embedding_384'"
        )
        await conn.execute("drop index ix_ai_chunks_embedding_384")
        await conn.execute("set synchronous_commit = off")
        await conn.execute(
            f"""create table bench_centres as
                select i, array(select random_normal() + 0 * i from generate_series(1, {DIMENSIONS}))::vector as c
                  from generate_series(0, {CLUSTERS - 1}) i"""
        )
        for tenant_id, rows in tenants:
            slug = f"bench-{tenant_id.hex[:8]}"
            await conn.execute("insert into tenants (id, name, slug) values ($1, $2, $2)", tenant_id, slug)
            document_id = uuid.uuid4()
            await conn.execute(
                """insert into ai_documents (tenant_id, id, title, model, dimensions, chunk_count, chunk_size,
                                             chunk_overlap, characters)
                   values ($1, $2, 'bench', $3, $4, $5, 1000, 200, 0)""",
                tenant_id, document_id, MODEL, DIMENSIONS, rows,
            )
            # Batches keep each statement's memory small.
            for first in range(0, rows, 20_000):
                count = min(20_000, rows - first)
                await conn.execute(
                    f"""insert into ai_chunks (tenant_id, id, document_id, ordinal, text, model, dimensions, embedding)
                        select $1::uuid, gen_random_uuid(), $2::uuid, n, 'chunk ' || n, $3, {DIMENSIONS},
                               c.c + array(select {SPREAD} * random_normal() + 0 * n
                                             from generate_series(1, {DIMENSIONS}))::vector
                          from generate_series($4::int, $5::int) n
                          join bench_centres c
                            on c.i = (hashint8(n::bigint * 7919 + hashtext($1::uuid::text)) & 2147483647)
                                     % {CLUSTERS}""",
                    tenant_id, document_id, MODEL, first, first + count - 1,
                )
        await conn.execute("analyze ai_chunks; analyze ai_documents")
    finally:
        await conn.close()
    return time.perf_counter() - started, definition


async def _build_index(dsn: str, definition: str) -> float:
    """The migration's 384 index, built over the loaded rows as fast as an owner can (in memory,
    parallel workers); returns seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("set maintenance_work_mem = '1GB'")
        await conn.execute("set max_parallel_maintenance_workers = 2")
        started = time.perf_counter()
        await conn.execute(definition)
        elapsed = time.perf_counter() - started
        await conn.execute("analyze ai_chunks")
    finally:
        await conn.close()
    return elapsed


async def _queries(dsn: str, n: int, seed: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("select c::text as c from bench_centres order by i")
        centres = [[float(x) for x in r["c"].strip("[]").split(",")] for r in rows]
    finally:
        await conn.close()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        centre = rng.choice(centres)
        out.append("[" + ",".join(f"{x + SPREAD * rng.gauss(0, 1):.5f}" for x in centre) + "]")
    return out


async def _search(db: Database, tenant_id: uuid.UUID, query: str, *, exact: bool, ef: int) -> tuple[float, list[str]]:
    statement = _search_sql(DIMENSIONS, None)
    started = time.perf_counter()
    async with db.tenant(tenant_id) as session:
        await session.execute(text("select set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef)})
        await session.execute(text("select set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
        if exact:
            await session.execute(text("select set_config('enable_indexscan', 'off', true)"))
        rows = (await session.execute(statement, {"query": query, "model": MODEL, "k": K})).all()
    return (time.perf_counter() - started) * 1000, [str(r.id) for r in rows]


async def _plan(db: Database, tenant_id: uuid.UUID, query: str) -> str:
    statement = _search_sql(DIMENSIONS, None)
    async with db.tenant(tenant_id) as session:
        await session.execute(text("select set_config('hnsw.ef_search', :ef, true)"), {"ef": str(EF_SEARCH)})
        await session.execute(text("select set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
        rows = (
            await session.execute(
                text("explain " + str(statement)), {"query": query, "model": MODEL, "k": K}
            )
        ).all()
    return "\n".join(r[0] for r in rows)


async def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-vector-"))
    env = {
        "BUSINESSOS_DATA_DIR": str(data_dir),
        "BUSINESSOS_SECRET_KEY": "bench-secret-key-for-vector-search-0123456789",
        "BUSINESSOS_LOG_LEVEL": "WARNING",
    }
    base = os.environ.get("DATABASE_URL")
    if base:
        env["DATABASE_URL"] = base
    embedded = EmbeddedServices(load_settings(env)).start(redis=False)
    name = f"bos_bench_vector_{uuid.uuid4().hex[:8]}"
    owner = embedded.resolved().database_url
    assert owner
    admin = await asyncpg.connect(_dsn(owner))
    await admin.execute(f'create database "{name}"')
    await admin.close()
    url = make_url(owner).set(database=name).render_as_string(hide_password=False)
    settings = load_settings({**env, "DATABASE_URL": url})
    db: Database | None = None
    try:
        await migrate.upgrade(settings, url, {})
        check = await asyncpg.connect(_dsn(url))
        version = await check.fetchval("select extversion from pg_extension where extname = 'vector'")
        server = await check.fetchval("show server_version")
        await check.close()
        if version is None:
            raise SystemExit("this PostgreSQL has no pgvector: nothing to measure")
        main = uuid.uuid4()
        others = [uuid.uuid4() for _ in range(args.other_tenants)]
        per_other = args.rows // max(1, args.other_tenants)
        loaded, definition = await _load(_dsn(url), [(main, args.rows), *((t, per_other) for t in others)])
        total = args.rows + per_other * len(others)
        print(f"PostgreSQL {server}, pgvector {version}; {total:,} rows of {DIMENSIONS} dimensions loaded "
              f"in {loaded:.1f} s ({args.rows:,} for the measured tenant, {per_other:,} for each of "
              f"{len(others)} others; {CLUSTERS} clusters)")
        built = await _build_index(_dsn(url), definition)
        print(f"HNSW index (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) built in {built:.1f} s")

        db = Database(runtime_url(settings, url), pool_size=2)
        queries = await _queries(_dsn(url), args.queries, args.seed)
        plan = await _plan(db, main, queries[0])
        uses = "ix_ai_chunks_embedding_384" in plan
        print(f"plan of the service's statement uses the partial HNSW index: {'yes' if uses else 'NO'}")
        if not uses:
            print(plan)
        for query in queries[:5]:  # warm the caches and the pool
            await _search(db, main, query, exact=False, ef=EF_SEARCH)
            await _search(db, main, query, exact=True, ef=EF_SEARCH)

        exact_ms: list[float] = []
        truth: list[list[str]] = []
        results: dict[int, tuple[list[float], list[float]]] = {}
        sweep = sorted({40, 100, 200, 400, EF_SEARCH})
        for query in queries:
            ms, ids = await _search(db, main, query, exact=True, ef=EF_SEARCH)
            exact_ms.append(ms)
            truth.append(ids)
            for ef in sweep:
                ms, got = await _search(db, main, query, exact=False, ef=ef)
                latencies, recalls = results.setdefault(ef, ([], []))
                latencies.append(ms)
                recalls.append(len(set(got) & set(ids)) / max(1, len(ids)))

        exact_p50, exact_p99 = _p(exact_ms)
        print(f"\n{len(queries)} queries, k = {K}, each a tenant transaction on the runtime role (RLS), "
              "alternating exact and hnsw:")
        print(f"  {'path':<28}{'p50 ms':>9}{'p99 ms':>9}{'exact/this p50':>16}{'recall@10':>11}")
        print(f"  {'exact (enable_indexscan off)':<28}{exact_p50:>9.2f}{exact_p99:>9.2f}{1.0:>15.1f}x{1.0:>11.3f}")
        for ef in sweep:
            latencies, recalls = results[ef]
            p50, p99 = _p(latencies)
            label = f"hnsw ef_search={ef}" + (" (service)" if ef == EF_SEARCH else "")
            print(f"  {label:<28}{p50:>9.2f}{p99:>9.2f}{exact_p50 / p50:>15.1f}x{statistics.fmean(recalls):>11.3f}")
    finally:
        if db is not None:
            await db.dispose()
        admin = await asyncpg.connect(_dsn(owner))
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()
        embedded.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="vectors of the measured tenant")
    parser.add_argument("--other-tenants", type=int, default=4, help="tenants sharing as many rows again")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
