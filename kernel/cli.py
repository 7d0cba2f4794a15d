"""The ``businessos`` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kernel import __version__
from kernel.settings import Settings, load_settings, plugins_allowlist

if TYPE_CHECKING:
    from kernel.embedded import EmbeddedServices

__all__ = ["main"]

log = logging.getLogger("businessos.cli")


@contextmanager
def _services(*, redis: bool = True) -> Iterator[tuple[Settings, EmbeddedServices]]:
    """Settings with every URL filled in, starting the embedded servers where none is set.

    Yields the settings and the embedded servers' handle (``.settings.embedded_database`` says
    whether the database is the embedded one). A server another process runs on the same data
    directory (a ``serve`` beside this command) is used, and left running on exit. The URLs are
    also put in ``os.environ`` so that child processes (API workers, the job worker) use the same
    servers.
    """
    from kernel.embedded import EmbeddedServices

    settings = load_settings()
    embedded = EmbeddedServices(settings)
    try:
        embedded.start(redis=redis)  # inside the try: if Redis fails, PostgreSQL is stopped again
        os.environ.update(embedded.environment())
        yield embedded.resolved(), embedded
    finally:
        embedded.stop()


def _where(embedded: EmbeddedServices, host: str, port: int) -> list[str]:
    """What ``serve`` tells its operator: data directory, URL, where each server listens."""
    settings = embedded.settings
    started = embedded.started

    def origin(name: str) -> str:
        return "started here" if name in started else "already running, used as it is"

    lines = [f"data directory: {settings.data_dir}", f"API: http://{host}:{port}"]
    if settings.embedded_database:
        lines.append(f"PostgreSQL (embedded, {origin('postgres')}): socket in {embedded.postgres_socket_dir}")
    else:
        lines.append("PostgreSQL: DATABASE_URL")
    if settings.embedded_redis:
        lines.append(f"Redis (embedded, {origin('redis')}): unix://{embedded.redis_socket}")
    else:
        lines.append("Redis: REDIS_URL")
    return lines


def _plugins(allowlist: frozenset[str] | None) -> Any:
    from kernel.app import load_app_plugins

    return load_app_plugins(allowlist)


def _setup_logging(settings: Settings, level: str | None = None) -> None:
    from kernel.observability.logs import configure_logging

    configure_logging(level or settings.log_level, settings.log_format)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="businessos", message="%(prog)s %(version)s")
def cli() -> None:
    """BusinessOS: a multi-tenant business platform.

    With DATABASE_URL and REDIS_URL unset, an embedded PostgreSQL and Redis are started under
    BUSINESSOS_DATA_DIR (default ./.businessos).
    """


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="API processes.")
@click.option(
    "--jobs/--no-jobs",
    default=None,
    help="Also run the job worker. Default: on with the embedded database, off otherwise "
    "(in production run `businessos worker` separately).",
)
def serve(host: str, port: int, workers: int, jobs: bool | None) -> None:
    """Run the HTTP API (and, on the embedded default, the job worker).

    On the embedded database, pending migrations are applied first; on an external one, serve
    refuses to start until `businessos migrate` has run.
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from kernel.observability.metrics import prepare_multiprocess_dir
    from kernel.runtime import prepare_database

    # uvicorn handles SIGTERM itself, then re-raises it once it has shut down; with the default
    # disposition that kills this process before the `finally` blocks below run, leaving the job
    # worker, the embedded PostgreSQL and Redis behind. Turn it into an orderly exit instead.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with _services() as (settings, servers):
        _setup_logging(settings)
        assert settings.database_url
        embedded = servers.settings.embedded_database
        plugins = _plugins(settings.plugins_allowlist)
        asyncio.run(prepare_database(settings, plugins, settings.database_url, migrate_now=embedded))
        # Before any process counts: the API workers and the job worker then share their metrics.
        prepare_multiprocess_dir(settings.data_dir)
        for line in _where(servers, host, port):
            click.echo(f"businessos: {line}", err=True)
        worker = None
        if jobs if jobs is not None else embedded:
            worker = subprocess.Popen([sys.executable, "-m", "kernel.cli", "worker"], env=dict(os.environ))
        try:
            uvicorn.run(
                "kernel.app:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=settings.log_level.lower(),
                # JSON: uvicorn's loggers go through ours (the root handler) instead of its own.
                log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
                proxy_headers=False,
                server_header=False,
            )
        finally:
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()


@cli.command()
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
def worker(burst: bool) -> None:
    """Run the job worker (arq): event deliveries, plugin jobs and schedules.

    It rides out Redis and PostgreSQL outages (reconnecting by itself) and stops on SIGTERM or
    Ctrl-C after the jobs in hand.
    """
    import asyncio
    import signal

    from kernel.jobs.worker import Supervisor, build_worker

    with _services() as (settings, _):
        _setup_logging(settings)
        assert settings.redis_url
        plugins = _plugins(settings.plugins_allowlist)
        if burst:
            build_worker(settings, plugins, settings.redis_url, burst=True).run()
            return
        supervisor = Supervisor(settings, plugins, settings.redis_url)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, supervisor.stop)
            await supervisor.run()

        _run_fast(main())


def _run_fast(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on uvloop where it is installed (uvicorn's ``standard`` extra brings it, and
    the API already runs on it): the worker spends much of its time writing small messages to
    PostgreSQL and Redis sockets, which uvloop's C transports do for a fraction of the CPU."""
    try:
        import uvloop
    except ImportError:  # not built for this platform
        asyncio.run(main)
        return
    uvloop.run(main)


@cli.command()
def migrate() -> None:
    """Upgrade the database: the kernel's and every loaded plugin's migrations, to their heads."""
    from kernel.db import migrate as migrations

    with _services(redis=False) as (settings, _):
        _setup_logging(settings)
        assert settings.database_url
        plugins = _plugins(settings.plugins_allowlist)
        folders = plugins.migration_folders()
        asyncio.run(migrations.upgrade(settings, settings.database_url, folders))
        click.echo(f"database at head: kernel{''.join(', ' + n for n in sorted(folders))}")


@cli.group()
def plugins() -> None:
    """Inspect installed plugins."""


@plugins.command("list")
def plugins_list() -> None:
    """List installed plugins, their versions, and why any is disabled."""
    records = _plugins(plugins_allowlist()).records.values()
    if not records:
        click.echo("no plugins installed")
        return
    width = max(len(r.name) for r in records)
    for r in records:
        state = "active" if r.active else f"disabled: {r.reason}"
        click.echo(f"{r.name:<{width}}  {r.version:<10}  {state}")


@cli.group("plugin")
def plugin_group() -> None:
    """Make a new plugin."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--connector", is_flag=True, help="Add a credential type with its check and a node that uses it.")
@click.option("--with-migration", is_flag=True, help="Add a tenant table, its model and its first migration.")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where to write the package (default: ./NAME).",
)
def plugin_new(name: str, connector: bool, with_migration: bool, directory: Path | None) -> None:
    """Write a plugin package NAME whose tests pass after `pip install -e`."""
    from kernel.scaffold import ScaffoldError, scaffold

    target = directory or Path.cwd() / name
    try:
        written = scaffold(name, target, connector=connector, with_migration=with_migration)
    except ScaffoldError as error:
        raise click.ClickException(str(error)) from None
    for path in written:
        click.echo(f"  {target / path}")
    click.echo(f"next: cd {target} && pip install -e . && pytest")


@cli.group()
def secrets() -> None:
    """Manage the encryption of stored secrets."""


@secrets.command("rotate")
def secrets_rotate() -> None:
    """Re-seal every stored secret (TOTP seeds, AI provider keys, plugins' vault) under the newest master key.

    Add the new key to BUSINESSOS_MASTER_KEYS (version:base64url key) on every process first;
    keep the old ones until this command reports no failures.
    """
    from kernel.rotation import rotate_secrets

    report = _with_kernel(rotate_secrets)
    click.echo(
        f"master key v{report.version}: {report.resealed} re-sealed, {report.current} already current, "
        f"{len(report.failures)} failed"
    )
    for failure in report.failures:
        click.echo(f"  {failure}", err=True)
    if report.failures:
        sys.exit(1)


@cli.group()
def tenants() -> None:
    """Create and manage tenants."""


def _with_kernel(action: Any) -> Any:
    from kernel.runtime import open_kernel

    async def run(settings: Settings) -> Any:
        async with open_kernel(settings, _plugins(settings.plugins_allowlist)) as kernel:
            return await action(kernel)

    with _services() as (settings, _):
        _setup_logging(settings, "WARNING")
        return asyncio.run(run(settings))


def _password(prompt: str) -> str:
    """A password typed twice at a terminal, or the first line of standard input (scripts)."""
    if sys.stdin.isatty():
        password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
        return password
    return sys.stdin.readline().rstrip("\r\n")


@tenants.command("create")
@click.argument("name")
@click.option("--slug", required=True, help="Unique, lower-case: letters, digits, hyphens.")
@click.option("--plan", help="Plan code (the entitlement provider's default when omitted).")
@click.option(
    "--owner-email",
    help="Also create the owner account (the password is asked for, or read from standard input).",
)
def tenants_create(name: str, slug: str, plan: str | None, owner_email: str | None) -> None:
    """Create a tenant, and with --owner-email its owner.

    Without an owner nobody can sign in to the tenant until one is added; an operator's tool.
    """
    import msgspec

    from kernel.audit.log import RequestMeta
    from kernel.identity.schemas import TenantSignup
    from kernel.tenants.schemas import TenantCreate

    if owner_email is None:
        try:
            data = msgspec.convert({"name": name, "slug": slug, "plan": plan}, TenantCreate)
        except msgspec.ValidationError as exc:
            raise click.UsageError(str(exc)) from None
        tenant = _with_kernel(lambda k: k.tenants.create(data, actor="cli"))
        click.echo(f"{tenant.id}  {tenant.slug}  {tenant.name}")
        return
    password = _password("Owner password")
    try:
        signup = msgspec.convert(
            {"name": name, "slug": slug, "plan": plan, "owner": {"email": owner_email, "password": password}},
            TenantSignup,
        )
    except msgspec.ValidationError as exc:
        raise click.UsageError(str(exc)) from None
    made = _with_kernel(lambda k: k.identity.create_tenant(signup, RequestMeta(user_agent="businessos-cli")))
    click.echo(f"{made.tenant.id}  {made.tenant.slug}  {made.tenant.name}  owner: {owner_email}")


@tenants.command("list")
def tenants_list() -> None:
    """List tenants."""
    for t in _with_kernel(lambda k: k.tenants.list()):
        click.echo(f"{t.id}  {t.slug:<20}  {t.status:<9}  {t.plan:<10}  {t.name}")


@tenants.command("suspend")
@click.argument("tenant")
def tenants_suspend(tenant: str) -> None:
    """Suspend a tenant (id or slug): its requests answer 403."""
    t = _with_kernel(lambda k: k.tenants.set_status(tenant, "suspended"))
    click.echo(f"{t.slug} suspended")


@tenants.command("activate")
@click.argument("tenant")
def tenants_activate(tenant: str) -> None:
    """Re-activate a suspended tenant."""
    t = _with_kernel(lambda k: k.tenants.set_status(tenant, "active"))
    click.echo(f"{t.slug} active")


@cli.group()
def operators() -> None:
    """Manage the installation's operators (credentials for /api/admin and /metrics)."""


@operators.command("create")
@click.argument("email")
def operators_create(email: str) -> None:
    """Create an operator: the password is asked for, or read from the first line of standard input."""
    password = _password("Operator password")
    made = _with_kernel(lambda k: k.operators.create(email, password))
    click.echo(f"{made.id}  {made.email}")


@operators.command("list")
def operators_list() -> None:
    """List operators."""
    for o in _with_kernel(lambda k: k.operators.list()):
        state = "disabled" if o.disabled else "active"
        last = o.last_login_at.isoformat(timespec="seconds") if o.last_login_at else "never"
        click.echo(f"{o.id}  {o.email:<30}  {state:<8}  last log-in: {last}")


@operators.command("disable")
@click.argument("email")
def operators_disable(email: str) -> None:
    """Disable an operator: log-ins and tokens already issued are refused from now on."""
    o = _with_kernel(lambda k: k.operators.disable(email))
    click.echo(f"{o.email} disabled")


def _add_plugin_commands() -> None:
    """Mount each active plugin's commands under ``businessos <plugin>``."""
    try:
        records = _plugins(plugins_allowlist()).active()
    except Exception:  # a boot error is reported by the command that runs next
        return
    for record in records:
        if record.cli_commands and record.name not in cli.commands:
            group = click.Group(record.name, help=record.manifest.description if record.manifest else None)
            for command in record.cli_commands:
                group.add_command(command)
            cli.add_command(group)


def _unreachable(exc: BaseException) -> str | None:
    """Which server a connection error came from, judged by the driver it passed through."""
    import traceback

    if not isinstance(exc, OSError):  # refused, unknown host, timeout
        return None
    modules = {frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(exc.__traceback__)}
    if any(m.startswith(("asyncpg", "sqlalchemy")) for m in modules):
        return "the database (DATABASE_URL)"
    if any(m.startswith("redis") for m in modules):
        return "Redis (REDIS_URL)"
    return None


def _one_line(exc: BaseException) -> str:
    from sqlalchemy.exc import DBAPIError

    from kernel.errors import Problem

    if isinstance(exc, Problem):
        return exc.detail
    source = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(source).strip().splitlines()
    line = text[0] if text else type(source).__name__
    server = _unreachable(exc)
    if server:
        return f"cannot connect to {server}: {line}"
    if isinstance(exc, DBAPIError):
        return f"database: {line}"
    return line


def main() -> None:
    """Entry point: failures exit non-zero with one line (set BUSINESSOS_DEBUG=1 for a traceback)."""
    _add_plugin_commands()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        exc.show()  # with the usage line, the way click shows it
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # Every command's failure, the kernel's and the plugins' alike, in one format.
        click.echo(f"businessos: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except BaseException as exc:
        if os.environ.get("BUSINESSOS_DEBUG"):
            raise
        click.echo(f"businessos: error: {_one_line(exc)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
