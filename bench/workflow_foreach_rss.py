"""The job worker's memory while one run walks a for-each over 100,000 items.

Everything runs here: PostgreSQL and Redis (embedded, in a temporary data directory), the API
(``businessos serve --no-jobs``) and the worker (``businessos worker``), each its own process.
One tenant publishes manual -> for_each(items) -> set; then, in this order on the same worker:

1. a baseline run over ``--baseline`` items (1,000 by default), its RSS sampled the same way;
2. the measured run over ``--items`` items (100,000 by default).

The worker's RSS (``VmRSS`` from ``/proc/<pid>/status``) is sampled every ``--every`` seconds
with the loop's checkpointed progress (items done). Printed: RSS at the start, peak, end and
median of each run, the ratio of the big run's peak over the baseline's, and the growth between
the first and the last quarter of the big run's items (MiB per 10,000 items), which stays near
zero when memory is flat; the load average at the start and at the end.

    python bench/workflow_foreach_rss.py [--items 100000] [--baseline 1000] [--every 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.settings import load_settings

SECRET = "bench-secret-" + "x" * 40
GRAPH = {
    "nodes": [
        {"id": "start", "node": "workflows.manual"},
        {"id": "loop", "node": "workflows.for_each", "config": {"items": "{{ trigger.items }}", "concurrency": 10}},
        {"id": "each", "node": "workflows.set", "config": {"values": {"double": "{{ item * 2 }}", "i": "{{ index }}"}}},
    ],
    "edges": [{"source": "start", "target": "loop"}, {"source": "loop", "target": "each", "port": "each"}],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def one_run(
    api: httpx.AsyncClient, db: asyncpg.Connection, h: dict[str, str], wid: str, worker_pid: int, items: int,
    every: float,
) -> tuple[list[tuple[int, float]], float, str]:
    """Start a run over ``items`` items; (items done, RSS MiB) samples until it ends, its time, its status."""
    samples = [(0, rss_mib(worker_pid))]
    started = time.perf_counter()
    run = await api.post(f"/api/workflows/{wid}/run", json={"input": {"items": list(range(items))}}, headers=h)
    run.raise_for_status()
    execution_id = uuid.UUID(run.json()["execution_id"])
    while True:
        row = await db.fetchrow(
            "select e.status, (select (s.output ->> 'done')::int from workflows_steps s where s.execution_id = e.id "
            "and s.node_id = 'loop' and s.iteration = '0') as done from workflows_executions e where e.id = $1",
            execution_id,
        )
        assert row is not None
        samples.append((int(row["done"] or 0), rss_mib(worker_pid)))
        if row["status"] in ("succeeded", "failed", "cancelled"):
            if row["status"] == "succeeded":
                samples[-1] = (items, samples[-1][1])
            else:
                error = await db.fetchval("select error from workflows_executions where id = $1", execution_id)
                claims = await db.fetchval("select claims from workflows_executions where id = $1", execution_id)
                print(f"run {execution_id} {row['status']} after {claims} claims: {error}", flush=True)
            return samples, time.perf_counter() - started, str(row["status"])
        await asyncio.sleep(every)  # the sampling interval of a measurement, not a synchronisation


def summary(label: str, samples: list[tuple[int, float]], took: float, items: int, status: str) -> float:
    values = [mib for _, mib in samples]
    print(f"{label}: {items} items, {status} in {took:.1f} s ({items / took:.0f} items/s), {len(values)} samples; "
          f"worker RSS MiB start {values[0]:.1f}, peak {max(values):.1f}, end {values[-1]:.1f}, "
          f"median {statistics.median(values):.1f}", flush=True)
    return max(values)


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-foreach-"))
    os.chmod(data_dir, 0o755)  # run as root, the pgserver user must reach it
    embedded = EmbeddedServices(load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_SECRET_KEY": SECRET}))
    processes: list[subprocess.Popen[bytes]] = []
    print(f"load average at start: {load()}", flush=True)
    try:
        await asyncio.to_thread(embedded.start)
        database_url, redis_url = embedded.database_url, embedded.redis_url
        assert database_url and redis_url
        env = {
            **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "BUSINESSOS_SECRET_KEY": SECRET,
            "BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": "workflows", "BUSINESSOS_LOG_LEVEL": "WARNING",
            "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        }
        settings = load_settings(env)
        await migrate.upgrade(settings, database_url, load_app_plugins(frozenset({"workflows"})).migration_folders())
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with (data_dir / "serve.log").open("wb") as out:
            processes.append(subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [sys.executable, "-m", "kernel.cli", "serve", "--no-jobs", "--port", str(port)],
                env=env, stdout=out, stderr=out,
            ))
        with (data_dir / "worker.log").open("wb") as out:
            worker = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "kernel.cli", "worker"], env=env, stdout=out, stderr=out
            )
        processes.append(worker)
        async with httpx.AsyncClient(base_url=url, timeout=120) as api:
            for _ in range(1200):
                try:
                    if (await api.get("/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)  # waiting for the API process to come up
            slug = f"bench-{uuid.uuid4().hex[:8]}"
            owner = {"email": f"owner@{slug}.example.com", "password": f"pw-{uuid.uuid4().hex}", "name": "Owner"}
            made = await api.post("/api/tenants", json={"name": "Bench", "slug": slug, "owner": owner})
            made.raise_for_status()
            h = {"X-Tenant-ID": slug, "Authorization": f"Bearer {made.json()['access_token']}"}
            (await api.post("/api/modules/workflows/enable", headers=h)).raise_for_status()
            created = await api.post("/api/workflows", json={"name": "foreach", "graph": GRAPH}, headers=h)
            created.raise_for_status()
            wid = created.json()["id"]
            (await api.post(f"/api/workflows/{wid}/publish", headers=h)).raise_for_status()
            db = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                base, base_took, base_status = await one_run(api, db, h, wid, worker.pid, args.baseline, args.every)
                base_peak = summary("baseline", base, base_took, args.baseline, base_status)
                big, took, status = await one_run(api, db, h, wid, worker.pid, args.items, args.every)
                peak = summary("measured", big, took, args.items, status)
            finally:
                await db.close()
        quarter = args.items // 4
        early = [mib for done, mib in big if 0 < done <= quarter] or [big[0][1]]
        late = [mib for done, mib in big if done >= args.items - quarter] or [big[-1][1]]
        growth = (statistics.median(late) - statistics.median(early)) / max((args.items - quarter * 2) / 10_000, 1)
        print(f"peak ratio measured / baseline: {peak / base_peak:.2f}; median RSS first quarter "
              f"{statistics.median(early):.1f} MiB, last quarter {statistics.median(late):.1f} MiB "
              f"({growth:+.2f} MiB per 10,000 items)")
        print(f"load average at end: {load()}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        await asyncio.to_thread(embedded.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between RSS samples")
    asyncio.run(main(parser.parse_args()))
