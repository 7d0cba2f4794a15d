"""What plugins contribute at run time: event handlers in the worker, a lifespan, CLI commands,
and errors from their routes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
from arq import create_pool
from arq.connections import RedisSettings

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.events.outbox import OutboxDispatcher
from kernel.jobs.worker import build_worker
from kernel.settings import Settings
from tests.conftest import SECRET, new_tenant, open_client, other_process
from tests.plugin_factory import FakePlugin, installed, plugin_source, table_plugin, unique


def _event_plugin(name: str) -> FakePlugin:
    body = f'''
    from sqlalchemy import Text
    from sqlalchemy.orm import Mapped, mapped_column

    Base = sdk.declarative_base()

    class Seen(sdk.TenantScoped, Base):
        __tablename__ = "{name}_seen"
        note: Mapped[str] = mapped_column(Text)

    async def remember(ctx: sdk.EventContext) -> None:
        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            session.add(Seen(tenant_id=ctx.tenant_id, note=ctx.payload["note"]))

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.thing.happened")]

    @sdk.hookimpl
    def businessos_event_handlers():
        return [sdk.EventHandler("{name}.thing.happened", remember)]
    '''
    return table_plugin(name, body, f"{name}_seen", 'sa.Column("note", sa.Text(), nullable=False)')


async def test_worker_runs_event_handlers_only_for_tenants_that_enabled_the_plugin(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("ev")
    with installed(tmp_path, _event_plugin(name)):
        plugins = load_app_plugins(frozenset({name}))
        assert plugins.get(name) and plugins.get(name).active  # type: ignore[union-attr]
        assert settings.database_url and settings.redis_url
        await migrate.upgrade(settings, settings.database_url, plugins.migration_folders())
        scoped = msgspec.structs.replace(settings, plugins_allowlist=frozenset({name}))

        async with open_client(scoped, plugins) as client:
            on, off = await new_tenant(client, "ev-on"), await new_tenant(client, "ev-off")
            await client.post(f"/api/modules/{name}/enable", headers={"X-Tenant-ID": on["slug"]})

        queue = f"test-jobs-{uuid.uuid4().hex[:8]}"
        pool = await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=queue)
        try:
            for tenant in (on, off):
                await pool.enqueue_job(
                    "kernel.run_event_handlers",
                    tenant["id"],
                    f"{name}.thing.happened",
                    {"note": tenant["slug"]},
                )
            # Jobs are enqueued by hand here: the outbox dispatcher stays off, and so do the
            # kernel's cron jobs (one would otherwise be counted whenever the test meets its tick).
            worker = build_worker(
                scoped, plugins, settings.redis_url, burst=True, queue=queue, dispatch=False, cron_jobs=False
            )
            await worker.main()
            assert (worker.jobs_complete, worker.jobs_failed) == (2, 0)
            await worker.close()
        finally:
            await pool.aclose()

        async with other_process(scoped) as kernel:
            from sqlalchemy import text

            for tenant, expected in ((on, [on["slug"]]), (off, [])):
                async with kernel.db.tenant(uuid.UUID(tenant["id"])) as session:
                    notes = (await session.execute(text(f"select note from {name}_seen"))).scalars().all()
                assert list(notes) == expected


async def test_plugin_lifespan_runs_with_the_app_and_route_errors_hide_the_trace(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("life")
    marker = tmp_path / "lifespan.log"
    body = f'''
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan():
        Path({str(marker)!r}).write_text("started")
        yield
        Path({str(marker)!r}).write_text("stopped")

    @get("/api/{name}/boom", opt={{"permission": sdk.AUTHENTICATED}})
    async def boom() -> dict:
        raise RuntimeError("database password is hunter2")

    @sdk.hookimpl
    def businessos_lifespan():
        return lifespan

    @sdk.hookimpl
    def businessos_routes():
        return [boom]
    '''
    with installed(tmp_path, FakePlugin(name=name, source=plugin_source(name, body))):
        plugins = load_app_plugins(frozenset({name}))
        async with open_client(settings, plugins) as client:
            assert marker.read_text() == "started"
            tenant = await new_tenant(client)
            headers = {"X-Tenant-ID": tenant["slug"]}
            await client.post(f"/api/modules/{name}/enable", headers=headers)
            response = await client.get(f"/api/{name}/boom", headers=headers)
            assert response.status_code == 500
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "hunter2" not in response.text and "Traceback" not in response.text
            assert response.json()["title"] == "Internal server error"
        assert marker.read_text() == "stopped"


async def test_a_lifespan_factory_taking_a_parameter_gets_the_plugins_services(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("lifesvc")
    marker = tmp_path / "services.log"
    body = f'''
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(services: sdk.Services):
        Path({str(marker)!r}).write_text(services.plugin + " " + str(len(await services.tenants.enabled_ids())))
        yield

    @sdk.hookimpl
    def businessos_lifespan():
        return lifespan
    '''
    with installed(tmp_path, FakePlugin(name=name, source=plugin_source(name, body))):
        plugins = load_app_plugins(frozenset({name}))
        async with open_client(settings, plugins) as client:
            assert marker.read_text() == f"{name} 0"  # no tenant has the module yet
            tenant = await new_tenant(client)
            enabled = await client.post(f"/api/modules/{name}/enable", headers={"X-Tenant-ID": tenant["slug"]})
            assert enabled.is_success
            async with other_process(settings) as kernel:
                assert tenant["id"] in {str(t) for t in await kernel.services(name).tenants.enabled_ids()}


def test_plugin_cli_commands_appear_under_the_plugin_name(tmp_path: Path, settings: Settings) -> None:
    name = unique("cli")
    body = '''
    import click

    @click.command("greet")
    @click.argument("who")
    def greet(who: str) -> None:
        """Greet someone."""
        click.echo(f"hello {who}")

    @sdk.hookimpl
    def businessos_cli_commands():
        return [greet]
    '''
    with installed(tmp_path, FakePlugin(name=name, source=plugin_source(name, body))) as site:
        env = {
            **os.environ,
            "PYTHONPATH": str(site),
            "BUSINESSOS_PLUGINS": name,
            "BUSINESSOS_SECRET_KEY": SECRET,
        }
        result = subprocess.run(
            [sys.executable, "-m", "kernel.cli", name, "greet", "ada"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "hello ada"
        top = subprocess.run(
            [sys.executable, "-m", "kernel.cli", "--help"], env=env, capture_output=True, text=True
        )
        assert name in top.stdout


async def test_a_plugin_mutation_that_audits_nothing_still_leaves_an_audit_row(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("quiet")
    body = f'''
    @post("/api/{name}/things", opt={{"permission": sdk.AUTHENTICATED}})
    async def make_thing() -> dict:
        return {{"made": True}}

    @post("/api/{name}/audited", opt={{"permission": sdk.AUTHENTICATED}})
    async def make_audited(request: Any, tenant: sdk.Tenant, services: sdk.Services) -> dict:
        async with services.data.tenant(tenant.id) as session:
            await services.changes.audit(
                session, sdk.Actor.of_request(request), tenant_id=tenant.id, action=NAME + ".thing.made"
            )
        return {{"made": True}}

    @sdk.hookimpl
    def businessos_routes():
        return [make_thing, make_audited]
    '''
    source = plugin_source(name, body).replace(
        "from litestar import get, post", "from litestar import Request, get, post"
    )
    source = source.replace("request: Any", "request: Request")
    with installed(tmp_path, FakePlugin(name=name, source=source)):
        plugins = load_app_plugins(frozenset({name}))
        assert plugins.get(name) and plugins.get(name).active, plugins.get(name)  # type: ignore[union-attr]
        async with open_client(settings, plugins) as client:
            tenant = await new_tenant(client)
            headers = {"X-Tenant-ID": tenant["slug"]}
            await client.post(f"/api/modules/{name}/enable", headers=headers)
            assert (await client.post(f"/api/{name}/things", headers=headers)).status_code == 201
            assert (await client.post(f"/api/{name}/audited", headers=headers)).status_code == 201
            logs = (await client.get("/api/audit/logs", headers=headers)).json()["items"]
            actions = [entry["action"] for entry in logs]
            assert actions.count("http.post") == 1 and actions.count(f"{name}.thing.made") == 1
            generic = next(entry for entry in logs if entry["action"] == "http.post")
            assert generic["resource_id"] == f"/api/{name}/things"
            assert generic["actor"] == f"user:{tenant['user_id']}"


def _outbox_plugin(name: str) -> FakePlugin:
    body = f'''
    from litestar import Request
    from sqlalchemy import Text, select
    from sqlalchemy.orm import Mapped, mapped_column

    Base = sdk.declarative_base()

    class Seen(sdk.TenantScoped, Base):
        __tablename__ = "{name}_seen"
        note: Mapped[str] = mapped_column(Text)

    async def remember(ctx: sdk.EventContext) -> None:
        async with ctx.services.data.tenant(ctx.tenant_id) as session:
            # Idempotent: one row per event, however often it is delivered.
            if (await session.execute(select(Seen).where(Seen.id == ctx.event_id))).first() is None:
                session.add(Seen(tenant_id=ctx.tenant_id, id=ctx.event_id, note=ctx.payload["note"]))

    @post("/api/{name}/things/{{note:str}}", opt={{"permission": sdk.AUTHENTICATED}})
    async def make(note: str, tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        async with services.data.tenant(tenant.id) as session:
            await services.changes.emit(
                session, tenant_id=tenant.id, event="{name}.thing.made", payload={{"note": note}}
            )
            await services.changes.audit(
                session, sdk.Actor.of_request(request), tenant_id=tenant.id, action="{name}.thing.made"
            )
            if note == "rollback":
                raise sdk.Conflict("the change fails after emitting")
        return {{"note": note}}

    @sdk.hookimpl
    def businessos_routes():
        return [make]

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.thing.made")]

    @sdk.hookimpl
    def businessos_event_handlers():
        return [sdk.EventHandler("{name}.thing.made", remember)]
    '''
    return table_plugin(name, body, f"{name}_seen", 'sa.Column("note", sa.Text(), nullable=False)')


async def test_events_commit_with_their_change_and_reach_handlers_through_the_outbox(
    settings: Settings, tmp_path: Path
) -> None:
    import asyncio

    from sqlalchemy import text

    name = unique("box")
    with installed(tmp_path, _outbox_plugin(name)):
        plugins = load_app_plugins(frozenset({name}))
        assert plugins.get(name) and plugins.get(name).active, plugins.get(name)  # type: ignore[union-attr]
        assert settings.database_url and settings.redis_url
        await migrate.upgrade(settings, settings.database_url, plugins.migration_folders())
        scoped = msgspec.structs.replace(settings, plugins_allowlist=frozenset({name}))
        async with other_process(scoped) as kernel:
            # The session's database holds other tests' pending events: move them aside (onto a
            # queue nobody works) so that this test's worker sees only its own.
            from arq import create_pool as arq_pool

            junk = await arq_pool(RedisSettings.from_dsn(settings.redis_url))
            try:
                while await OutboxDispatcher(kernel.deliveries, junk, f"junk-{uuid.uuid4().hex}").dispatch_once():
                    pass
            finally:
                await junk.aclose()
        async with open_client(scoped, plugins) as client:
            tenant = await new_tenant(client, "box")
            headers = {"X-Tenant-ID": tenant["slug"]}
            await client.post(f"/api/modules/{name}/enable", headers=headers)
            assert (await client.post(f"/api/{name}/things/kept", headers=headers)).status_code == 201
            assert (await client.post(f"/api/{name}/things/rollback", headers=headers)).status_code == 409

        queue = f"test-jobs-{uuid.uuid4().hex[:8]}"
        worker = build_worker(scoped, plugins, settings.redis_url, queue=queue)
        running = asyncio.create_task(worker.main())
        try:
            async with other_process(scoped) as kernel:

                async def notes() -> list[str]:
                    async with kernel.db.tenant(uuid.UUID(tenant["id"])) as session:
                        return list((await session.execute(text(f"select note from {name}_seen"))).scalars())

                deadline = asyncio.get_running_loop().time() + 10
                while await notes() != ["kept"]:
                    assert asyncio.get_running_loop().time() < deadline, await notes()
                    await asyncio.sleep(0.05)
                # The rolled-back change left no event behind, and the kept one is marked dispatched.
                async with kernel.db.tenant(uuid.UUID(tenant["id"])) as session:
                    rows = (
                        await session.execute(
                            text("select event, status from events_outbox where event not like 'kernel.%'")
                        )
                    ).all()
                assert [(r.event, r.status) for r in rows] == [(f"{name}.thing.made", "dispatched")]
        finally:
            await worker.close()
            running.cancel()
