"""crm: contacts, companies, pipelines and deals, activities, CSV import and export.

A built-in module written exactly like a third-party plugin: it imports nothing from the kernel
but ``kernel.sdk`` and is registered through the ``businessos.plugins`` entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernel import sdk
from plugins.crm.cli import COMMANDS
from plugins.crm.models import Base
from plugins.crm.nodes import NODES
from plugins.crm.routes import ROUTES

__all__ = ["manifest"]

manifest = sdk.Manifest(
    name="crm",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="CRM",
    description="Contacts, companies, deal pipelines and activities.",
)

PERMISSIONS = [
    sdk.Permission("crm.contacts.read", "See contacts and export them"),
    sdk.Permission("crm.contacts.write", "Create, change, delete and import contacts"),
    sdk.Permission("crm.companies.read", "See companies and export them"),
    sdk.Permission("crm.companies.write", "Create, change, delete and import companies"),
    sdk.Permission("crm.deals.read", "See deals and their stage history"),
    sdk.Permission("crm.deals.write", "Create, change, move and delete deals"),
    sdk.Permission("crm.pipelines.read", "See pipelines and their stages"),
    sdk.Permission("crm.pipelines.write", "Create, change and delete pipelines and their stages"),
    sdk.Permission("crm.activities.read", "See notes, calls, meetings and tasks"),
    sdk.Permission("crm.activities.write", "Log and change notes, calls, meetings and tasks"),
]

EVENT_TYPES = (
    [
        sdk.EventType(f"crm.{entity}.{verb}", f"A {entity.replace('_', ' ')} was {verb}")
        for entity in ("contact", "company", "deal", "activity")
        for verb in ("created", "updated", "deleted")
    ]
    + [
        sdk.EventType(f"crm.{entity}.{verb}", f"A {entity} was {verb}")
        for entity in ("pipeline", "stage")
        for verb in ("created", "updated", "deleted")
    ]
    + [
        sdk.EventType("crm.deal.stage_changed", "A deal moved to another stage"),
        sdk.EventType("crm.deal.won", "A deal moved to a won stage"),
        sdk.EventType("crm.deal.lost", "A deal moved to a lost stage"),
    ]
)


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return ROUTES


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return PERMISSIONS


@sdk.hookimpl
def businessos_event_types() -> list[sdk.EventType]:
    return EVENT_TYPES


@sdk.hookimpl
def businessos_workflow_nodes() -> list[sdk.NodeSpec]:
    return NODES


@sdk.hookimpl
def businessos_cli_commands() -> list[Any]:
    return COMMANDS
