"""Workflow runs through chaos, measured: 500 runs whose two steps each call a local HTTP sink that
counts idempotency keys, while the ``businessos worker`` process is SIGKILLed several times,
Redis is flushed and PostgreSQL restarted mid-run.

Counted afterwards: runs that did not end, side effects (distinct idempotency keys the sink
applied) against the steps that should have made them, deliveries beyond the first per key
(retries of a step whose outcome was lost with the worker: harmless, the key is the same), keys
that are not the stable ``execution:node:iteration`` of a step (a side effect done twice).

Like tests/test_event_outages.py this starts a PostgreSQL and a ``redis-server`` of its own (the
suite's servers cannot be stopped). The test process stands in for a second worker's sweeper
(``Engine.due``/``wake`` every second) so that recovery waits for the 30 s lease, not for the
minute of the sweep schedule.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from litestar import Litestar, Request, post

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.runtime import open_kernel
from kernel.settings import load_settings
from kernel.testing import open_client, start_worker_process
from plugins.workflows.engine import Engine
from tests.conftest import SECRET, _dsn, new_tenant, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique
from tests.test_event_outages import RedisServer, scratch

__all__ = ["scratch"]  # the fixture, shared with tests/test_event_outages.py

RUNS = 500
STEPS = ("first", "second")


@dataclass
class Sink:
    """A side effect keyed by ``Idempotency-Key``: applied once per key, every delivery counted."""

    url: str = ""
    deliveries: Counter[str] = field(default_factory=Counter)
    applied: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def sink_server() -> Iterator[Sink]:
    sink = Sink()

    @post("/effect", status_code=200)
    async def effect(request: Request[Any, Any, Any]) -> dict[str, Any]:
        key = request.headers.get("idempotency-key", "")
        with sink.lock:
            sink.deliveries[key] += 1
            first = sink.deliveries[key] == 1
            if first:
                sink.applied.append(key)
        await asyncio.sleep(0.005)  # a real call takes a while: kills land between effect and checkpoint
        return {"key": key, "applied": first}

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Litestar([effect]), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the sink did not start"
        time.sleep(0.01)
    sink.url = f"http://127.0.0.1:{port}/effect"
    try:
        yield sink
    finally:
        server.should_exit = True
        thread.join(10)


def effect_plugin(name: str) -> FakePlugin:
    """An action calling a URL with the step's idempotency key (the way a connector would)."""
    body = '''
    import httpx

    class EffectConfig(msgspec.Struct, frozen=True):
        url: str

    class EffectOut(msgspec.Struct, frozen=True):
        key: str
        applied: bool

    async def effect(ctx: sdk.NodeContext, config: EffectConfig) -> EffectOut:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(config.url, headers={"Idempotency-Key": ctx.idempotency_key})
            response.raise_for_status()
        body = response.json()
        return EffectOut(key=body["key"], applied=body["applied"])

    @sdk.hookimpl
    def businessos_workflow_nodes():
        return [sdk.NodeSpec(key=NAME + ".effect", kind="action", title="Effect", config=EffectConfig,
                             output=EffectOut, run=effect)]
    '''
    return FakePlugin(name=name, source=plugin_source(name, body))


async def test_runs_end_once_each_through_worker_kills_a_redis_flush_and_a_postgres_restart(scratch: Path) -> None:
    name = unique("chaos")
    redis = RedisServer(scratch)
    redis.start()
    data_dir = scratch / "data"
    embedded = EmbeddedServices(load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_SECRET_KEY": SECRET,
                                               "REDIS_URL": redis.url}))
    worker: subprocess.Popen[bytes] | None = None
    log = scratch / "worker.log"
    try:
        await asyncio.to_thread(embedded.start, redis=False)
        database_url = embedded.database_url
        assert database_url
        with sink_server() as sink, installed(scratch, effect_plugin(name)) as site:
            allow = f"workflows,{name}"
            settings = settings_for(database_url, redis.url, data_dir, BUSINESSOS_PLUGINS=allow)
            plugins = load_app_plugins(frozenset({"workflows", name}))
            await migrate.upgrade(settings, database_url, plugins.migration_folders())
            env = {
                **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis.url, "BUSINESSOS_SECRET_KEY": SECRET,
                "BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": allow,
                "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", ""), str(Path.cwd())]),
            }
            owner = await asyncpg.connect(_dsn(database_url))

            async def count(sql: str, *args: Any) -> int:
                nonlocal owner
                for _ in range(100):  # the owner's connection is lost with the restart: reopen it
                    try:
                        return int(await owner.fetchval(sql, *args))
                    except (asyncpg.PostgresError, ConnectionError, OSError, asyncpg.InterfaceError):
                        await asyncio.sleep(0.2)
                        with suppress(Exception):
                            owner = await asyncpg.connect(_dsn(database_url))
                raise AssertionError("owner connection lost")

            async with open_client(settings, plugins) as api, open_kernel(settings, plugins) as kernel:
                tenant = await new_tenant(api, "chaos")
                h = {"X-Tenant-ID": tenant["slug"]}
                for module in ("workflows", name):
                    assert (await api.post(f"/api/modules/{module}/enable", headers=h)).status_code == 200
                retry = {"attempts": 10, "backoff_seconds": 0.2, "retry_on": "any"}
                graph = {
                    "nodes": [
                        {"id": "start", "node": "workflows.manual"},
                        *({"id": step, "node": f"{name}.effect", "config": {"url": sink.url}, "retry": retry}
                          for step in STEPS),
                    ],
                    "edges": [{"source": "start", "target": "first"}, {"source": "first", "target": "second"}],
                }
                made = await api.post("/api/workflows", json={"name": "chaos", "graph": graph}, headers=h)
                assert made.status_code == 201, made.text
                wid = made.json()["id"]
                assert (await api.post(f"/api/workflows/{wid}/publish", headers=h)).status_code == 201

                worker = start_worker_process(env, log)
                ids: list[str] = []
                for i in range(RUNS):
                    started = await api.post(f"/api/workflows/{wid}/run", json={"input": {"n": i}}, headers=h)
                    assert started.status_code == 202, started.text
                    ids.append(started.json()["execution_id"])

                stop_sweeping = asyncio.Event()

                async def sweeper() -> None:
                    """A second worker's safety net: wake a worker for due runs every second."""
                    engine = Engine(kernel.services("workflows"))
                    while not stop_sweeping.is_set():
                        with suppress(Exception):  # PostgreSQL or Redis may be down
                            if await engine.due():
                                await engine.wake()
                        with suppress(TimeoutError):
                            await asyncio.wait_for(stop_sweeping.wait(), 1.0)

                sweeping = asyncio.create_task(sweeper())
                kills = 0
                started_at = time.monotonic()

                async def until_applied(n: int) -> None:
                    while len(sink.applied) < n:
                        assert time.monotonic() - started_at < 600, "no progress"
                        await asyncio.sleep(0.05)

                for threshold in (150, 300, 450):
                    await until_applied(threshold)
                    assert worker.poll() is None, log.read_text()[-3000:]
                    worker.send_signal(signal.SIGKILL)
                    worker.wait()
                    kills += 1
                    worker = start_worker_process(env, log)
                await until_applied(600)
                flush = await asyncio.create_subprocess_exec("redis-cli", "-s", str(redis.socket), "flushall")
                await flush.wait()
                await until_applied(750)
                pg = embedded._pg
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(2)  # down for a moment (a pace, not a synchronisation)
                await asyncio.to_thread(pg.ensure_postgres_running)

                terminal = "status in ('succeeded', 'failed', 'cancelled')"
                ended = f"select count(*) from workflows_executions where {terminal}"
                while (done := await count(ended)) < RUNS:
                    assert time.monotonic() - started_at < 900, f"runs left: {RUNS - done}"
                    await asyncio.sleep(0.2)
                took = time.monotonic() - started_at
                stop_sweeping.set()
                await sweeping
                succeeded = await count("select count(*) from workflows_executions where status = 'succeeded'")
                claims = await count("select coalesce(sum(claims), 0) from workflows_executions")
            await owner.close()
        expected = {f"{eid}:{step}:0" for eid in ids for step in STEPS}
        applied = set(sink.applied)
        repeated = sum(n - 1 for n in sink.deliveries.values())
        print(
            f"\n{RUNS} runs, {len(expected)} side effects expected, {kills} worker SIGKILLs, a Redis flush, a "
            f"PostgreSQL restart: ended {RUNS} (succeeded {succeeded}) in {took:.1f} s; side effects applied "
            f"{len(applied)}, unexpected keys {len(applied - expected)}, deliveries repeated with the same key "
            f"{repeated}; claims {claims} for {RUNS} runs"
        )
        assert len(sink.applied) == len(applied)  # the sink applied each key once (its own guard)
        assert applied - expected == set()  # no effect under another key: none done twice
        assert succeeded == RUNS and applied == expected
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        redis.kill()
        await asyncio.to_thread(embedded.stop)
