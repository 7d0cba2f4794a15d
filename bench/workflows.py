"""Workflow executions end to end, beside the raw job queue's floor, in one run.

Everything runs on this machine: a PostgreSQL and a Redis (embedded, in a temporary data
directory), the API (``businessos serve --no-jobs``, its own process) and the job worker
(``businessos worker``, its own process). One tenant publishes a 4-node workflow,
webhook trigger -> set -> if -> set, and the bench then, per round:

- fires ``--executions`` webhook deliveries at its URL, ``--concurrency`` at a time, and waits
  until every run is ``succeeded``: **executions/s** end to end (first delivery sent -> last run
  finished, read from PostgreSQL), the webhook's answer time, and **trigger -> first step**
  (the run's row committed -> its first step started, both stamped by the database's clock);
- enqueues as many no-op arq jobs on the same Redis and runs them in an arq worker with the same
  poll delay as the platform's: **raw arq jobs/s**, the floor of anything that wakes a worker
  through the queue;
- fires ``--latency-runs`` deliveries one at a time (each waits for its run to finish): trigger
  -> first step and trigger -> finished on an otherwise idle platform.

Rounds alternate (workflow, arq, workflow, arq, ...); medians are printed.

    python bench/workflows.py [--executions 1000] [--concurrency 32] [--rounds 3] [--profile]

``--foreach 100000`` first runs one for-each over that many items and prints the worker's RSS
before, at its peak and every 10 s (memory must stay flat).

``--profile`` runs ``py-spy record`` on the worker during the first round (``pip install
py-spy``, in the dev extra) and prints the hottest frames, to say where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any

import asyncpg
import httpx
import msgspec
import psutil
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis.asyncio import Redis

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.jobs.worker import POLL_DELAY
from kernel.settings import load_settings

SECRET = "bench-secret-" + "x" * 40
PLUGINS = "workflows"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


GRAPH = {
    "nodes": [
        {"id": "hook", "node": "workflows.webhook", "config": {}},
        {"id": "shape", "node": "workflows.set", "config": {"values": {
            "n": "{{ trigger.body.n }}", "name": "order {{ trigger.body.n }}",
        }}},
        {"id": "big", "node": "workflows.if", "config": {"condition": "{{ steps.shape.output.n % 2 == 0 }}"}},
        {"id": "done", "node": "workflows.set", "config": {"values": {"label": "{{ steps.shape.output.name }} even"}}},
    ],
    "edges": [
        {"source": "hook", "target": "shape"},
        {"source": "shape", "target": "big"},
        {"source": "big", "target": "done", "port": "true"},
    ],
}


async def _setup(api: httpx.AsyncClient) -> tuple[dict[str, str], str, str]:
    slug = f"bench-{uuid.uuid4().hex[:8]}"
    owner = {"email": f"owner@{slug}.example.com", "password": f"pw-{uuid.uuid4().hex}", "name": "Owner"}
    made = await api.post("/api/tenants", json={"name": "Bench", "slug": slug, "owner": owner})
    made.raise_for_status()
    body = made.json()
    h = {"X-Tenant-ID": slug, "Authorization": f"Bearer {body['access_token']}"}
    (await api.post("/api/modules/workflows/enable", headers=h)).raise_for_status()
    created = await api.post("/api/workflows", json={"name": "bench", "graph": GRAPH, "settings": {}}, headers=h)
    created.raise_for_status()
    wid = created.json()["id"]
    (await api.post(f"/api/workflows/{wid}/publish", headers=h)).raise_for_status()
    hook = await api.post(f"/api/workflows/{wid}/webhook", headers=h)
    hook.raise_for_status()
    return h, body["tenant"]["id"], hook.json()["path"]


async def _counts(db: asyncpg.Connection, redis: Any) -> tuple[int, int, int]:
    """PostgreSQL transactions and sessions opened (every database) and Redis commands so far."""
    row = await db.fetchrow("select sum(xact_commit + xact_rollback) as x, sum(sessions) as s from pg_stat_database")
    commands = int((await redis.info("stats"))["total_commands_processed"]) if redis is not None else 0
    return int(row["x"] or 0), commands, int(row["s"] or 0)


class CpuMeter:
    """CPU seconds (user + system) each process of the platform spends, to say where the time of a
    round goes: the API, the worker, PostgreSQL (the postmaster, its backends, and the ones it
    reaped), Redis and this bench (its HTTP client)."""

    def __init__(self, groups: dict[str, list[int]], postmaster: int | None) -> None:
        self.groups = groups
        self.postmaster = postmaster

    def _process_seconds(self, pid: int, *, reaped: bool = False) -> float:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        seconds = float(times.user + times.system)
        if reaped:
            seconds += times.children_user + times.children_system
        return seconds

    def snapshot(self) -> dict[str, float]:
        out = {name: sum(self._process_seconds(p) for p in pids) for name, pids in self.groups.items()}
        if self.postmaster is not None:
            total = self._process_seconds(self.postmaster, reaped=True)
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.postmaster).children():
                    total += self._process_seconds(child.pid)
            out["postgres"] = total
        return out

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before.get(name, 0.0) for name in after}


class LeanClient:
    """The webhook load generator: a bare HTTP/1.1 keep-alive client on asyncio streams.

    It shares the 2 cores with what it measures, so it must cost little: httpx spent about 2 ms of
    CPU per request here, this a fraction of that. Each request takes a free connection (opened on
    first use), sends a JSON POST and reads the status, headers and ``Content-Length`` body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        conn = self.free.pop() if self.free else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), self.host.encode(), len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        content = await reader.readexactly(length) if length else b""
        self.free.append(conn)
        return status, content

    async def close(self) -> None:
        for _, writer in self.free:
            writer.close()
        self.free.clear()


async def _workflow_round(
    api: LeanClient, db: asyncpg.Connection, tenant_id: str, path: str, n: int, concurrency: int,
    meter: CpuMeter | None = None, redis: Any = None,
) -> dict[str, Any]:
    ids: list[str] = []
    answer: list[float] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)

    async def fire(i: int) -> None:
        nonlocal failures
        async with gate:
            started = time.perf_counter()
            status, content = await api.post(path, b'{"n": %d}' % i)
            answer.append(time.perf_counter() - started)
            if status != 202:
                failures += 1
                return
            ids.append(msgspec.json.decode(content)["execution_id"])

    cpu_before = meter.snapshot() if meter is not None else {}
    counts_before = await _counts(db, redis)
    before = await db.fetchval("select now()")
    started = time.perf_counter()
    await asyncio.gather(*(fire(i) for i in range(n)))
    sent = time.perf_counter() - started
    polls = 0
    while True:
        polls += 1
        left = await db.fetchval(
            "select count(*) from workflows_executions where id = any($1::uuid[]) and status not in "
            "('succeeded', 'failed', 'cancelled')", ids,
        )
        if not left:
            break
        await asyncio.sleep(0.02)
    cpu = CpuMeter.spent(cpu_before, meter.snapshot()) if meter is not None else {}
    await asyncio.sleep(1.1)  # PostgreSQL flushes its transaction counters within a second
    counts = [b - a for a, b in zip(counts_before, await _counts(db, redis), strict=True)]
    # Rows one transaction inserted share its xmin: how many webhook audit rows each commit carried.
    audited = await db.fetchrow(
        "select count(*) as n, count(distinct xmin::text) as xacts from audit_logs where action = 'webhook.received' "
        "and occurred_at >= $1", before,
    )
    rows = await db.fetch(
        "select e.status, e.created_at, e.finished_at, (select min(s.started_at) from workflows_steps s "
        "where s.execution_id = e.id) as first_step from workflows_executions e where e.id = any($1::uuid[])",
        ids,
    )
    last = max(r["finished_at"] for r in rows)
    wall = (last - before).total_seconds()
    first = [(r["first_step"] - r["created_at"]).total_seconds() for r in rows if r["first_step"] is not None]
    return {
        "executions": len(rows),
        "failed": failures + sum(1 for r in rows if r["status"] != "succeeded"),
        "per_second": len(rows) / wall,
        "sent_per_second": n / sent,
        "answer_p50": _pct(answer, 0.5),
        "answer_p99": _pct(answer, 0.99),
        "first_p50": _pct(first, 0.5) if first else float("nan"),
        "first_p99": _pct(first, 0.99) if first else float("nan"),
        "cpu_ms": {name: seconds * 1000 / max(len(rows), 1) for name, seconds in cpu.items()},
        "pg_xacts": (counts[0] - polls - 2) / max(len(rows), 1),  # less the bench's own statements
        "redis_commands": counts[1] / max(len(rows), 1),
        "pg_sessions": counts[2] / max(len(rows), 1),
        "audit_batch": audited["n"] / max(audited["xacts"], 1),
    }


async def _latency_round(
    api: httpx.AsyncClient, db: asyncpg.Connection, path: str, n: int
) -> tuple[float, float, float, float]:
    """One delivery at a time on an otherwise idle platform: trigger -> first step and trigger ->
    finished, p50 and p99 (database clock)."""
    first, whole = [], []
    for i in range(n):
        response = await api.post(path, json={"n": i})
        execution_id = response.json()["execution_id"]
        while True:
            row = await db.fetchrow(
                "select e.status, e.created_at, e.finished_at, (select min(s.started_at) from workflows_steps s "
                "where s.execution_id = e.id) as first_step from workflows_executions e where e.id = $1",
                uuid.UUID(execution_id),
            )
            if row is not None and row["status"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.002)
        first.append((row["first_step"] - row["created_at"]).total_seconds())
        whole.append((row["finished_at"] - row["created_at"]).total_seconds())
    return _pct(first, 0.5), _pct(first, 0.99), _pct(whole, 0.5), _pct(whole, 0.99)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _foreach_round(
    api: httpx.AsyncClient, db: asyncpg.Connection, h: dict[str, str], worker_pid: int, items: int
) -> None:
    """A manual run whose for-each walks ``items`` items (a set per item), sampling the worker's
    RSS every 0.2 s: memory must stay flat whatever the list's length."""
    graph = {
        "nodes": [
            {"id": "start", "node": "workflows.manual"},
            {"id": "loop", "node": "workflows.for_each", "config": {"items": "{{ trigger.items }}", "concurrency": 10}},
            {"id": "each", "node": "workflows.set", "config": {"values": {"double": "{{ item * 2 }}"}}},
        ],
        "edges": [{"source": "start", "target": "loop"}, {"source": "loop", "target": "each", "port": "each"}],
    }
    created = await api.post("/api/workflows", json={"name": "foreach", "graph": graph, "settings": {}}, headers=h)
    created.raise_for_status()
    wid = created.json()["id"]
    (await api.post(f"/api/workflows/{wid}/publish", headers=h)).raise_for_status()
    before = _rss_mib(worker_pid)
    samples = [before]
    started = time.perf_counter()
    run = await api.post(f"/api/workflows/{wid}/run", json={"input": {"items": list(range(items))}}, headers=h)
    run.raise_for_status()
    execution_id = uuid.UUID(run.json()["execution_id"])
    marks = []
    while True:
        status = await db.fetchval("select status from workflows_executions where id = $1", execution_id)
        samples.append(_rss_mib(worker_pid))
        elapsed = time.perf_counter() - started
        if not marks or elapsed - marks[-1][0] >= 10:
            marks.append((elapsed, samples[-1]))
        if status in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.2)
    took = time.perf_counter() - started
    print(f"\nfor-each over {items} items ({status}) in {took:.1f} s ({items / took:.0f} items/s); worker RSS MiB: "
          f"before {before:.1f}, peak {max(samples):.1f}, end {samples[-1]:.1f}; every 10 s: "
          + ", ".join(f"{m[1]:.0f}" for m in marks))


async def _arq_round(redis_url: str, n: int, max_jobs: int) -> float:
    """No-op jobs through arq on the platform's Redis (a queue of their own): enqueue all, then
    count completions in a worker with the platform's poll delay."""
    done = asyncio.Event()
    count = 0

    async def noop(ctx: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings, default_queue_name=queue)
    worker = Worker(
        functions=[func(noop, name="noop", keep_result=0)],  # type: ignore[arg-type]
        queue_name=queue, redis_settings=settings, poll_delay=POLL_DELAY, max_jobs=max_jobs,
        handle_signals=False, keep_result=0,
    )
    running = asyncio.create_task(worker.async_run())
    started = time.perf_counter()
    await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(n)))
    await done.wait()
    took = time.perf_counter() - started
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    with contextlib.suppress(asyncio.CancelledError):  # the jobs it was finishing, cancelled with it
        await worker.close()
    await pool.aclose()
    return n / took


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not come up")


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-wf-"))
    os.chmod(data_dir, 0o755)  # run as root, the pgserver user must reach it
    embedded = EmbeddedServices(load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_SECRET_KEY": SECRET}))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(embedded.start)
        database_url, redis_url = embedded.database_url, embedded.redis_url
        assert database_url and redis_url
        env = {
            **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "BUSINESSOS_SECRET_KEY": SECRET,
            "BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": PLUGINS, "BUSINESSOS_LOG_LEVEL": "WARNING",
            "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000", "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        }
        settings = load_settings(env)
        plugins = load_app_plugins(frozenset({PLUGINS}))
        await migrate.upgrade(settings, database_url, plugins.migration_folders())
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        api_log, worker_log = data_dir / "serve.log", data_dir / "worker.log"
        with api_log.open("wb") as out:
            processes.append(subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [sys.executable, "-m", "kernel.cli", "serve", "--no-jobs", "--port", str(port)],
                env=env, stdout=out, stderr=out,
            ))
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "kernel.cli", "worker"], env=env, stdout=out, stderr=out
            )
        processes.append(worker)
        await asyncio.to_thread(_wait_healthy, url, processes[0], api_log)
        redis_pid = getattr(getattr(embedded, "_redis", None), "pid", None)
        pg = getattr(embedded, "_pg", None)
        meter = CpuMeter(
            {"api": [processes[0].pid], "worker": [worker.pid], "redis": [redis_pid] if redis_pid else [],
             "bench": [os.getpid()]},
            pg.get_postmaster_info().pid if pg is not None else None,
        )
        db = await asyncpg.connect(_dsn(database_url))
        counter = Redis.from_url(redis_url)
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as api:
            h, tenant_id, path = await _setup(api)
            if args.foreach:
                await _foreach_round(api, db, h, worker.pid, args.foreach)
            hooks = LeanClient("127.0.0.1", port)
            await _workflow_round(hooks, db, tenant_id, path, min(100, args.executions), args.concurrency)  # warm-up
            await _arq_round(redis_url, 200, 10)
            # As autovacuum would have by now on a platform that has been running (it first looks
            # after a minute): without statistics, plans cached per connection (the foreign-key
            # check of each step row among them) pick an index by the tenant alone and slow down
            # with every run kept, which is the cold start, not the engine.
            await db.execute("analyze")
            results, floors, latencies = [], [], []
            profilers: list[subprocess.Popen[bytes]] = []
            for round_no in range(1, args.rounds + 1):
                if args.profile and round_no == 1:
                    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                    for name, pid in (("worker", worker.pid), ("api", processes[0].pid)):
                        profilers.append(subprocess.Popen(  # noqa: ASYNC220
                            [spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                             "--output", str(data_dir / f"{name}.spy"), "--rate", "200", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        ))
                result = await _workflow_round(hooks, db, tenant_id, path, args.executions, args.concurrency, meter,
                                               counter)
                for profiler in profilers:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(60)
                profilers = []
                floor = await _arq_round(redis_url, args.executions, 10)
                latency = await _latency_round(api, db, path, args.latency_runs)
                results.append(result)
                floors.append(floor)
                latencies.append(latency)
                print(
                    f"round {round_no}: {result['per_second']:7.1f} executions/s ({result['failed']} failed), "
                    f"trigger->first step p50 {result['first_p50'] * 1000:6.1f} ms p99 "
                    f"{result['first_p99'] * 1000:6.1f} ms, webhook answer p50 {result['answer_p50'] * 1000:6.1f} ms; "
                    f"raw arq {floor:7.1f} jobs/s; one at a time: trigger->first step p50 {latency[0] * 1000:6.1f} ms, "
                    f"->finished p50 {latency[2] * 1000:6.1f} ms",
                    flush=True,
                )
        await hooks.close()
        await db.close()
        await counter.aclose()

        def med(key: str) -> float:
            return statistics.median(r[key] for r in results)

        print(f"\nmedians of {args.rounds} rounds, {args.executions} executions each, {args.concurrency} in flight:")
        print(f"  webhook -> set -> if -> set, end to end   {med('per_second'):8.1f} executions/s")
        print(f"  trigger -> first step                     p50 {med('first_p50') * 1000:6.1f} ms   "
              f"p99 {med('first_p99') * 1000:6.1f} ms")
        print(f"  webhook answer (202 with the id)          p50 {med('answer_p50') * 1000:6.1f} ms   "
              f"p99 {med('answer_p99') * 1000:6.1f} ms")
        print(f"  raw arq no-op jobs (same Redis, floor)    {statistics.median(floors):8.1f} jobs/s")
        print(f"  ratio to the arq floor                    {med('per_second') / statistics.median(floors):8.3f}")
        names = list(results[0]["cpu_ms"])
        cpu = {n: statistics.median(r["cpu_ms"].get(n, 0.0) for r in results) for n in names}
        print("  CPU ms per execution, by process:         " + ", ".join(f"{n} {v:.2f}" for n, v in cpu.items())
              + f"; total {sum(cpu.values()):.2f} (2 cores give {2000 / max(med('per_second'), 1e-9):.2f} ms "
              "per execution at this rate)")
        print(f"  per execution: {statistics.median(r['pg_xacts'] for r in results):.1f} PostgreSQL transactions, "
              f"{statistics.median(r['redis_commands'] for r in results):.1f} Redis commands (everything running), "
              f"{statistics.median(r['pg_sessions'] for r in results):.2f} PostgreSQL connections opened; "
              f"{statistics.median(r['audit_batch'] for r in results):.1f} webhook audit rows per commit")
        print(f"  one run at a time ({args.latency_runs} per round):")
        lat = [statistics.median(x[i] for x in latencies) * 1000 for i in range(4)]
        print(f"    trigger -> first step                   p50 {lat[0]:6.1f} ms   p99 {lat[1]:6.1f} ms")
        print(f"    trigger -> finished                     p50 {lat[2]:6.1f} ms   p99 {lat[3]:6.1f} ms")
        for name in ("worker", "api"):
            if args.profile and (data_dir / f"{name}.spy").exists():
                _top_frames(data_dir / f"{name}.spy", name)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        await asyncio.to_thread(embedded.stop)
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def _top_frames(path: Path, process: str, top: int = 25) -> None:
    """Where a process's time goes, from py-spy's raw output: the project's functions (and the
    driver and queue libraries under them) by share of samples, inclusive, and the leaves."""
    inclusive: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")]
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    ours = ("engine.py", "triggers.py", "deliveries.py", "outbox.py", "worker.py:", "nodes.py", "expressions.py",
            "services.py", "sandbox.py", "routes.py", "middleware", "audit", "limiter", "facade.py")
    print(f"\n{process}, py-spy ({total} samples): the project's functions by share of samples (inclusive)")
    chosen = [(n, c) for n, c in inclusive.items() if any(o in n for o in ours)]
    for name, count in sorted(chosen, key=lambda kv: -kv[1])[:top]:
        print(f"  {count / total * 100:5.1f}%  {name}")
    print("leaves (self time):")
    for name, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {count / total * 100:5.1f}%  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=50, help="runs fired one at a time per round")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--foreach", type=int, default=0, metavar="ITEMS",
                        help="first, a for-each over ITEMS items with the worker's RSS sampled")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    asyncio.run(main(parser.parse_args()))
