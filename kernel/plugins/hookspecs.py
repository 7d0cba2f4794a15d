# mypy: disable-error-code="empty-body"
# (a hook specification has a signature and a docstring, never a body)
"""Hook specifications: everything a plugin can contribute.

Hooks are synchronous and called once at start-up, one plugin at a time; each returns
declarative data. Runtime work happens in the async callables that data carries (route handlers,
event handlers, node runners, the lifespan). Every hook is optional. Each one has a section in
``docs/plugins.md``; ``tests/test_hookspecs.py`` fails when one is missing or lacks a docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    import msgspec
    from litestar.types import ControllerRouterHandler
    from sqlalchemy import MetaData

    from kernel.connections.contract import ConnectionUsers, CredentialType
    from kernel.entitlements import EntitlementProvider
    from kernel.plugins.contract import (
        EventHandler,
        EventType,
        JobSpec,
        LifespanFactory,
        NodeSpec,
        Permission,
        Schedule,
        SettingsCheck,
    )
    from kernel.webhooks.contract import WebhookRoute

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "businessos"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def businessos_routes() -> Sequence[ControllerRouterHandler]:
    """Return the plugin's HTTP route handlers, controllers or routers.

    Paths should live under ``/api/<plugin>``. The kernel mounts them behind the module guard, so
    they answer 404 for a tenant that has not enabled the plugin. A method and path already served
    by the kernel or another plugin stops the boot.
    """


@hookspec
def businessos_metadata() -> MetaData:
    """Return the SQLAlchemy ``MetaData`` holding the plugin's tables.

    Table names must start with ``<plugin>_``. Tables are created by the plugin's migrations,
    not from this metadata; the kernel uses it to check names and to purge a tenant's rows.
    """


@hookspec
def businessos_migrations() -> Path:
    """Return the folder of the plugin's Alembic revisions (its own branch).

    The first revision sets ``down_revision = None`` and ``branch_labels = ("<plugin>",)``, and
    no revision points into another branch. ``businessos migrate`` upgrades the kernel first,
    then each plugin's branch in dependency order, so the kernel's tables always exist.
    """


@hookspec
def businessos_permissions() -> Sequence[Permission]:
    """Return the permissions the plugin's routes require, named ``<plugin>.<resource>.<verb>``."""


@hookspec
def businessos_event_types() -> Sequence[EventType]:
    """Return the domain events the plugin emits, named ``<plugin>.<entity>.<verb>``."""


@hookspec
def businessos_event_handlers() -> Sequence[EventHandler]:
    """Return handlers for events (the plugin's own or others'). A handler runs only for tenants
    that enabled the plugin; it must be idempotent, since jobs are delivered at least once."""


@hookspec
def businessos_workflow_nodes() -> Sequence[NodeSpec]:
    """Return workflow node specs (actions and triggers), keyed ``<plugin>.<node>``.

    An action carries its runner, ``run(ctx: NodeContext, config) -> output``; a trigger names the
    ``event`` it starts on and may carry a ``filter(config, payload)``.
    """


@hookspec
def businessos_settings_schema() -> type[msgspec.Struct]:
    """Return the msgspec Struct describing the plugin's per-tenant settings.

    Every field needs a default. Tenants read and write these settings through
    ``GET/PUT /api/modules/<plugin>/settings``; the body is validated against this Struct.
    """


@hookspec
def businessos_settings_check() -> SettingsCheck:
    """Return ``async check(services, tenant_id, settings) -> list[sdk.FieldError]``: the rules of
    the plugin's settings its schema cannot state (ids that must name the tenant's own rows or
    connections). ``PUT /api/modules/<plugin>/settings`` calls it with the body converted to the
    schema's Struct; any error answers 422 naming its fields, and nothing is saved.
    """


@hookspec
def businessos_lifespan() -> LifespanFactory:
    """Return a factory of an async context manager entered when a process starts and exited
    when it stops (open clients, start background tasks): the API, and the job worker."""


@hookspec
def businessos_jobs() -> Sequence[JobSpec]:
    """Return the plugin's background jobs, named ``<plugin>.<job>``. The worker runs them; code
    enqueues them through ``services.jobs.enqueue``. They run at least once: make them idempotent."""


@hookspec
def businessos_schedules() -> Sequence[Schedule]:
    """Return cron schedules, named ``<plugin>.<schedule>``, each enqueuing one of the plugin's
    jobs at every tick (in the schedule's time zone), once per tick across all workers."""


@hookspec
def businessos_entitlements() -> EntitlementProvider:
    """Return the provider that answers "may this tenant do X, and how much of Y remains".

    At most one installed plugin may implement it (billing); a second stops the boot. The kernel
    asks it before enabling a module, adding a member and creating an API key; plugins ask it
    through ``services.entitlements``. Without a provider everything is allowed.
    """


@hookspec
def businessos_admin_routes() -> Sequence[ControllerRouterHandler]:
    """Return route handlers for the installation's operators, mounted under
    ``/api/admin/<plugin>`` (declare paths relative to it, e.g. ``@get("/stats")``).

    They answer operators only (an operator token; tenant credentials get 401), whatever
    permission they declare, for no tenant in particular: they receive ``operator`` (the calling
    ``sdk.Operator``) and ``services`` (the plugin's facade) as dependencies. Record what they
    change in the affected tenant's audit log, with ``operator.actor`` as the actor.
    """


@hookspec
def businessos_cli_commands() -> Sequence[click.Command]:
    """Return click commands added under ``businessos <plugin> ...``."""


@hookspec
def businessos_webhook_routes() -> Sequence[WebhookRoute]:
    """Return the plugin's inbound webhook routes, each an ``sdk.WebhookRoute(name, handler)``.

    Deliveries arrive at ``/hooks/<plugin>/<token>`` of an endpoint the plugin created for a tenant
    (``services.webhooks.create``); the tenant comes from the token, never from a header. The
    kernel answers 404 for unknown or revoked tokens and disabled modules, rate-limits per token,
    audits each delivery and calls ``handler(sdk.InboundWebhook)``, which verifies the signature.
    """


@hookspec
def businessos_credentials() -> Sequence[CredentialType]:
    """Return the credential types the plugin offers, each an ``sdk.CredentialType`` keyed
    ``<plugin>.<name>``: its Struct schema, its secret fields, its ``check`` and, for OAuth 2.0, an
    ``sdk.OAuth2Config``.

    Tenants store credentials of these types as connections (``/api/connections``, secrets sealed
    in the vault); a node config names one by id (``connection: uuid.UUID``) and the runner opens
    it with ``await ctx.services.connections.open(ctx.tenant_id, config.connection, Schema)``.
    """


@hookspec
def businessos_connection_users() -> ConnectionUsers:
    """Return ``async users(services, tenant_id, connection_id) -> list[str]``: what of the plugin
    uses a connection (e.g. published workflows whose nodes name it), as names a person
    recognises. Deleting a connection answers 409 naming them while any plugin reports one.
    """
