"""Outgoing webhook deliveries per second, signed and logged, next to raw httpx POSTs.

On embedded PostgreSQL and Redis (a temporary data directory), with the ``webhooks`` plugin: one
tenant per run subscribes ``--subscriptions`` URLs of a local receiver (a separate process on
127.0.0.1, let through by the operator allowlist) to one event type. Each run

1. records ``--events`` events in the outbox (batches of 200, before the clock starts), then
2. starts the job worker in this process (as ``businessos worker`` runs it: outbox dispatcher,
   event deliveries, webhook attempts) and times until every delivery is ``succeeded``: the whole
   path, outbox -> event delivery -> fan-out -> signed POST through the egress client -> attempt
   logged in PostgreSQL;

then, in the same run, two references: the kernel's floor (the same events through the same
worker with the plugin's ``"*"`` handler replaced by one that does nothing: what any event
consumer pays before doing its work), and a baseline: as many POSTs of a body of the same size to the same receiver
with a bare ``httpx.AsyncClient`` (as many in flight as the worker runs jobs; unsigned, unlogged).
It prints each run, the medians and the ratios, and the CPU time this process spent per
delivery, per floor event and per raw POST (steadier than rates on a busy machine), then the CPU
per delivery of every process on the path (this one, the receiver, PostgreSQL, Redis) and the
load average.

    python bench/webhook_deliveries.py [--events 2000] [--runs 3] [--subscriptions 1] [--receiver raw|aiohttp]
        [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
from sqlalchemy import text

from connectors.webhooks import schemas, service
from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.events.outbox import emit_many
from kernel.jobs.worker import build_worker
from kernel.plugins.contract import EventContext, EventHandler
from kernel.plugins.services import Actor
from kernel.runtime import open_kernel
from kernel.tenants.schemas import TenantCreate
from kernel.testing import running_servers, settings_for

EVENT = "kernel.api_key.created"
BATCH = 200
CONCURRENCY = 10  # arq's default max_jobs: how many jobs the worker runs at once
CPU: dict[str, float] = {}
"""CPU seconds this process spent in the last timed phase of each kind (the machine's load
stretches wall-clock times; CPU per delivery is steadier)."""
PROCESSES: dict[str, list[psutil.Process]] = {}
"""The other processes on the path, by role, whose CPU the webhook phase is charged with."""
SPENT: dict[str, float] = {}
"""CPU seconds per role in the last webhook phase, and its PostgreSQL transactions and Redis
commands."""
PAYLOAD = {"api_key_id": str(uuid.uuid4()), "name": "bench", "prefix": "bos_abcd", "role": "viewer",
           "actor": f"user:{uuid.uuid4()}"}


_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
_REFUSED = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _Receiver(asyncio.Protocol):
    """The cheapest honest HTTP/1.1 receiver: reads each request (head, then ``content-length``
    bytes of body), answers 200 with a small JSON body, keeps the connection alive. It verifies
    nothing (the bench measures the sender); anything it does not handle (no length, chunked
    bodies) gets a 400 and the connection closed."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        answers: list[bytes] = []
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            request, *lines = self.buffer[:end].split(b"\r\n")
            fields = {name.strip().lower(): value.strip() for name, _, value in (f.partition(b":") for f in lines)}
            length = fields.get(b"content-length", b"")
            if not request.startswith(b"POST ") or not length.isdigit() or b"transfer-encoding" in fields:
                self.transport.write(b"".join(answers) + _REFUSED)
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + int(length):
                break  # the rest of the body is still on its way
            self.buffer = self.buffer[end + 4 + int(length) :]
            answers.append(_ANSWER)
        if answers:
            self.transport.write(b"".join(answers))


def _receiver(port: int, ready: Any, kind: str = "raw") -> None:
    if kind == "raw":

        async def serve() -> None:
            server = await asyncio.get_running_loop().create_server(_Receiver, "127.0.0.1", port)
            ready.set()
            await server.serve_forever()

        asyncio.run(serve())
        return

    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text='{"ok":true}', content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """CPU time of the processes, with their children that have exited (PostgreSQL's backends)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _roles(receiver: int, data_dir: Path) -> dict[str, list[psutil.Process]]:
    postmaster = psutil.Process(int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0]))
    registry = msgspec.json.decode((data_dir / "redis" / "redis.db.settings").read_bytes())
    redis = psutil.Process(int(Path(registry["pidfile"]).read_text().strip()))
    return {"receiver": [psutil.Process(receiver)], "postgres": [postmaster], "redis": [redis]}


def _snapshot() -> dict[str, float]:
    found = {role: _cpu_seconds(processes) for role, processes in PROCESSES.items()}
    # PostgreSQL's backends are the postmaster's children; the pool keeps them alive, so count
    # the live ones too.
    found["postgres"] += _cpu_seconds(PROCESSES["postgres"][0].children()) if PROCESSES.get("postgres") else 0.0
    return found


async def _counters(kernel: Any) -> tuple[int, int]:
    """PostgreSQL transactions in the database so far, Redis commands served so far. PostgreSQL's
    backends report their counts when idle, at most once a second: wait for them first."""
    await asyncio.sleep(1.5)
    async with kernel.db.global_() as session:
        await session.execute(text("select pg_stat_clear_snapshot()"))
        transactions = (await session.execute(text(
            "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"
        ))).scalar_one()
    stats = await kernel.redis.info("commandstats")
    return int(transactions), sum(int(found["calls"]) for found in stats.values())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_succeeded(kernel: Any, tenant_id: uuid.UUID, expected: int, table: str) -> None:
    while True:
        async with kernel.db.tenant(tenant_id) as session:
            done = (
                await session.execute(text(f"select count(*) from {table} where status = 'succeeded'"))
            ).scalar_one()
        if done >= expected:
            return
        await asyncio.sleep(0.05)


async def _baseline(url: str, body: bytes, count: int) -> float:
    async with httpx.AsyncClient() as client:
        await client.post(url, content=body)  # warm the connection
        left = [count]

        async def one() -> None:
            while left[0] > 0:
                left[0] -= 1
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
                assert response.status_code == 200

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        CPU["baseline"] = time.process_time() - cpu
        return time.perf_counter() - started


async def _noop(ctx: EventContext) -> None:
    return None


def _floor_plugins(settings: Any) -> Any:
    plugins = load_app_plugins(settings.plugins_allowlist)
    record = plugins.get("webhooks")
    assert record is not None
    record.event_handlers = [EventHandler("*", _noop, name="fan_out")]
    return plugins


async def _timed(kernel: Any, settings: Any, plugins: Any, redis_url: str, tenant_id: uuid.UUID, events: int,
                 expected: int, table: str) -> float:
    """Start a worker, wait until it is ready, then queue ``events`` events and time until
    ``expected`` rows of ``table`` succeeded (the worker's start-up is not counted)."""
    async with kernel.db.tenant(tenant_id) as session:  # leave only the benchmark's events queued
        await session.execute(text("delete from events_outbox where dispatched_at is null"))
    worker = build_worker(settings, plugins, redis_url, cron_jobs=False)
    task = asyncio.create_task(worker.main())
    while "kernel" not in worker.ctx:  # noqa: ASYNC110 - arq offers no ready event
        await asyncio.sleep(0.05)
    counted = await _counters(kernel) if table == "webhooks_deliveries" else (0, 0)
    started, cpu, others = time.perf_counter(), time.process_time(), _snapshot()
    for start in range(0, events, BATCH):
        async with kernel.db.tenant(tenant_id) as session:
            await emit_many(session, tenant_id=tenant_id, events=[(EVENT, PAYLOAD)] * min(BATCH, events - start))
    await _wait_succeeded(kernel, tenant_id, expected, table)
    elapsed = time.perf_counter() - started
    CPU[table] = time.process_time() - cpu
    if table == "webhooks_deliveries":
        SPENT.update({role: seconds - others[role] for role, seconds in _snapshot().items()})
        SPENT["worker"] = CPU[table]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
    if table == "webhooks_deliveries":  # counted once the worker stopped polling Redis
        transactions, commands = await _counters(kernel)
        SPENT["transactions"], SPENT["commands"] = transactions - counted[0], commands - counted[1]
    return elapsed


async def _one_run(kernel: Any, settings: Any, plugins: Any, floor: Any, redis_url: str, url: str, events: int,
                   subscriptions: int) -> tuple[float, float, float, tuple[float, float, float], dict[str, float]]:
    services = kernel.services("webhooks")
    tenant = await kernel.tenants.create(TenantCreate(name="Bench", slug=f"b-{uuid.uuid4().hex[:8]}"))
    await kernel.modules.enable(tenant.id, "webhooks")
    log = services.changes.by(Actor.system("bench"), tenant.id)
    async with services.data.tenant(tenant.id) as session:
        for index in range(subscriptions):
            await service.create(
                session, services, log, schemas.SubscriptionCreate(url=f"{url}/{index}", event_types=[EVENT])
            )
    total = events * subscriptions
    elapsed = await _timed(kernel, settings, plugins, redis_url, tenant.id, events, total, "webhooks_deliveries")
    other = await kernel.tenants.create(TenantCreate(name="Floor", slug=f"f-{uuid.uuid4().hex[:8]}"))
    await kernel.modules.enable(other.id, "webhooks")
    floor_elapsed = await _timed(kernel, settings, floor, redis_url, other.id, events, events, "event_deliveries")
    body = msgspec.json.encode({"type": EVENT, "timestamp": "2026-11-30T00:00:00+00:00", "data": PAYLOAD})
    base = total / await _baseline(url, body, total)
    cpu = (CPU["webhooks_deliveries"] / total * 1000, CPU["event_deliveries"] / events * 1000,
           CPU["baseline"] / total * 1000)
    share = {role: spent / total * 1000 for role, spent in SPENT.items()}
    share["transactions"], share["commands"] = SPENT["transactions"] / total, SPENT["commands"] / total
    return total / elapsed, events / floor_elapsed, base, cpu, share


async def run(events: int, runs: int, subscriptions: int, receiver_kind: str) -> None:
    port = _free_port()
    ready = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receiver, args=(port, ready, receiver_kind), daemon=True)
    receiver.start()
    ready.wait(10)
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-hooks-"))
    rates, floors, bases, cpus, shares = [], [], [], [], []
    loads = [os.getloadavg()[0]]
    try:
        with running_servers(data_dir / "servers") as (database_url, redis_url):
            settings = settings_for(
                database_url, redis_url, data_dir, BUSINESSOS_PLUGINS="webhooks",
                BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32", BUSINESSOS_LOG_LEVEL="WARNING",
            )
            plugins = load_app_plugins(settings.plugins_allowlist)
            await migrate.upgrade(settings, database_url, plugins.migration_folders())
            PROCESSES.update(_roles(receiver.pid or 0, data_dir / "servers"))
            async with open_kernel(settings, plugins) as kernel:
                for number in range(runs):
                    rate, floor, base, cpu, share = await _one_run(
                        kernel, settings, plugins, _floor_plugins(settings), redis_url,
                        f"http://127.0.0.1:{port}/hook", events, subscriptions,
                    )
                    rates.append(rate)
                    floors.append(floor)
                    bases.append(base)
                    cpus.append(cpu)
                    shares.append(share)
                    loads.append(os.getloadavg()[0])
                    print(f"run {number + 1}: {rate:8.1f} deliveries/s (signed, logged); kernel floor "
                          f"{floor:8.1f} events/s; raw httpx {base:8.1f} POSTs/s; CPU of this process: "
                          f"{cpu[0]:.2f} ms/delivery, {cpu[1]:.2f} ms/event (floor), {cpu[2]:.2f} ms/POST (raw); "
                          f"CPU ms per delivery by process: {_shown(share)}; load {loads[-1]:.1f}", flush=True)
    finally:
        receiver.terminate()
        shutil.rmtree(data_dir, ignore_errors=True)
    rate, floor, base = statistics.median(rates), statistics.median(floors), statistics.median(bases)
    print(f"median of {runs} runs, {events} events x {subscriptions} subscription(s): {rate:.1f} deliveries/s; "
          f"kernel floor {floor:.1f} events/s (ratio {rate / floor:.2f}); raw httpx {base:.1f} POSTs/s "
          f"(ratio {rate / base:.2f}); CPU ms per delivery {statistics.median(c[0] for c in cpus):.2f}, "
          f"per floor event {statistics.median(c[1] for c in cpus):.2f}, per raw POST "
          f"{statistics.median(c[2] for c in cpus):.2f}")
    print(f"CPU ms per delivery by process (medians): "
          f"{_shown({role: statistics.median(s[role] for s in shares) for role in shares[0]})}; "
          f"load average {min(loads):.1f}-{max(loads):.1f}")


def _shown(share: dict[str, float]) -> str:
    roles = ("worker", "receiver", "postgres", "redis")
    return (", ".join(f"{role} {share[role]:.2f}" for role in roles) + f" (all {sum(share[r] for r in roles):.2f}); "
            f"per delivery {share['transactions']:.2f} PostgreSQL transactions, {share['commands']:.2f} Redis "
            "commands")


def main() -> None:
    parser = argparse.ArgumentParser(description="Outgoing webhook deliveries per second")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subscriptions", type=int, default=1)
    parser.add_argument("--receiver", choices=("raw", "aiohttp"), default="raw",
                        help="the receiving server: a bare asyncio protocol (default) or aiohttp")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the event loop of this process, which runs the worker (`businessos worker` runs on "
                             "uvloop)")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args.events, args.runs, args.subscriptions, args.receiver))
    else:
        asyncio.run(run(args.events, args.runs, args.subscriptions, args.receiver))


if __name__ == "__main__":
    main()
