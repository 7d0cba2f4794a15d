"""``businessos crm import FILE --tenant T [--mode ...] [--companies]``: CSV import with progress.

The same validation and modes as ``POST /api/crm/contacts/import``; the audit row names the
actor ``cli``. The plugin's facade is opened through ``sdk.open_services("crm")``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kernel import sdk
from plugins.crm import csvio
from plugins.crm.schemas import ImportReport

__all__ = ["CLI_ACTOR", "COMMANDS", "import_file", "run_import"]


CLI_ACTOR = sdk.Actor.system("cli", user_agent="businessos-cli")


async def run_import(
    services: sdk.Services,
    tenant_ref: str,
    body: bytes,
    *,
    mode: csvio.Mode,
    companies: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import ``body`` (CSV) into the tenant named by id or slug, which must have the CRM enabled."""
    tenant = await services.tenants.find(tenant_ref)
    if tenant is None:
        raise click.ClickException(f"no tenant {tenant_ref!r}")
    if not await services.tenants.enabled(tenant.id):
        raise click.ClickException(f"the crm module is not enabled for {tenant.slug}")
    importer = csvio.import_companies if companies else csvio.import_contacts
    async with services.data.tenant(tenant.id) as session:
        return await importer(session, services.changes.by(CLI_ACTOR, tenant.id), body, mode, progress)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", "tenant_ref", required=True, help="Tenant id or slug.")
@click.option(
    "--mode",
    type=click.Choice(["all_or_nothing", "per_row"]),
    default="all_or_nothing",
    show_default=True,
    help="all_or_nothing: any bad row and nothing is imported; per_row: import the good rows.",
)
@click.option("--companies", is_flag=True, help="The file holds companies, not contacts.")
def import_file(file: Path, tenant_ref: str, mode: str, companies: bool) -> None:
    """Import contacts (or companies) from a CSV FILE, reporting bad rows by number."""
    body = file.read_bytes()
    refused: sdk.Problem | None = None
    with click.progressbar(length=csvio.count_rows(body), label="importing", file=sys.stderr) as bar:

        async def run() -> ImportReport:
            async with sdk.open_services("crm") as services:
                return await run_import(
                    services,
                    tenant_ref,
                    body,
                    mode="per_row" if mode == "per_row" else "all_or_nothing",
                    companies=companies,
                    progress=bar.update,
                )

        try:
            report = asyncio.run(run())
        except sdk.Problem as exc:
            refused = exc
    # Only now, with the bar's line ended, the row errors: each on a line of its own.
    if refused is not None:
        rejected: list[dict[str, Any]] = refused.extra.get("errors", [])
        for item in rejected:
            click.echo(f"row {item['row']}: {item['field']}: {item['message']}", err=True)
        raise click.ClickException(refused.detail)
    for e in report.errors:
        click.echo(f"row {e.row}: {e.field}: {e.message}", err=True)
    click.echo(f"imported {report.imported} row(s), {len(report.errors)} rejected")
    if report.errors:
        raise SystemExit(1)


COMMANDS = [import_file]
