"""Discover, check and order plugins; collect what each contributes.

The loader walks the ``businessos.plugins`` entry points itself (rather than letting pluggy do
it) so that each plugin can be judged on its own: a plugin that fails to import, asks for another
kernel API, lacks a dependency, or raises in a hook is recorded as disabled with the reason, and
the rest boot. Clashes between plugins (route, table, permission, node key) are different: they
stop the boot with a message naming both sides, because silently picking one would be worse.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pluggy
from litestar import Router
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from sqlalchemy import MetaData

from kernel import KERNEL_API_VERSION
from kernel.connections.contract import CREDENTIAL_KEY, ConnectionUsers, CredentialType, OAuth2Credentials
from kernel.entitlements import EntitlementProvider
from kernel.plugins import hookspecs
from kernel.plugins.contract import (
    PLUGIN_NAME,
    EventHandler,
    EventType,
    JobSpec,
    LifespanFactory,
    Manifest,
    NodeSpec,
    Permission,
    Schedule,
    SettingsCheck,
)
from kernel.webhooks.contract import WEBHOOK_NAME, WebhookRoute

__all__ = ["ENTRY_POINT_GROUP", "BootError", "PluginRecord", "PluginSet", "load_plugins", "route_keys"]

log = logging.getLogger("businessos.plugins")

ENTRY_POINT_GROUP = "businessos.plugins"
KERNEL = "kernel"
# Names whose namespace (routes, permissions, tables) the kernel uses itself.
RESERVED_NAMES = frozenset(
    {KERNEL, "auth", "tenant", "tenants", "modules", "roles", "audit", "ai", "v1", "events", "admin"}
)


class BootError(RuntimeError):
    """Plugins cannot be combined (a name is claimed twice); the message names both claimants."""


@dataclass
class PluginRecord:
    """One installed plugin: its manifest, its state, and what it contributes when active."""

    name: str
    distribution: str | None
    manifest: Manifest | None = None
    reason: str | None = None
    routes: list[Any] = field(default_factory=list)
    admin_routes: list[Any] = field(default_factory=list)
    """Operator routes, mounted under ``/api/admin/<name>``."""
    metadata: MetaData | None = None
    migrations: Path | None = None
    permissions: list[Permission] = field(default_factory=list)
    event_types: list[EventType] = field(default_factory=list)
    event_handlers: list[EventHandler] = field(default_factory=list)
    nodes: list[NodeSpec] = field(default_factory=list)
    settings_schema: type[msgspec.Struct] | None = None
    settings_check: SettingsCheck | None = None
    lifespan: LifespanFactory | None = None
    cli_commands: list[Any] = field(default_factory=list)
    webhooks: list[WebhookRoute] = field(default_factory=list)
    entitlements: EntitlementProvider | None = None
    jobs: list[JobSpec] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    credentials: list[CredentialType] = field(default_factory=list)
    connection_users: ConnectionUsers | None = None

    @property
    def active(self) -> bool:
        return self.reason is None

    @property
    def version(self) -> str:
        if self.manifest:
            return self.manifest.version
        if self.distribution:
            try:
                return importlib.metadata.version(self.distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
        return "unknown"

    @property
    def depends_on(self) -> tuple[str, ...]:
        return self.manifest.depends_on if self.manifest else ()

    def disable(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.warning("plugin %s disabled: %s", self.name, reason)

    def table_names(self) -> list[str]:
        return sorted(self.metadata.tables) if self.metadata is not None else []


@dataclass
class PluginSet:
    """Every installed plugin, in dependency order, with the pluggy manager of the active ones."""

    records: dict[str, PluginRecord]
    manager: pluggy.PluginManager

    def active(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.active]

    def get(self, name: str) -> PluginRecord | None:
        return self.records.get(name)

    def migration_folders(self) -> dict[str, Path]:
        return {r.name: r.migrations for r in self.active() if r.migrations is not None}

    def requirements(self, name: str) -> list[str]:
        """``name`` and everything it depends on, transitively, dependencies first."""
        order: list[str] = []

        def visit(n: str) -> None:
            record = self.records.get(n)
            if n in order or record is None:
                return
            for dep in record.depends_on:
                visit(dep)
            order.append(n)

        visit(name)
        return order

    def dependents(self, name: str) -> list[str]:
        """Active plugins that depend on ``name`` directly."""
        return [r.name for r in self.active() if name in r.depends_on]


def _version_ok(spec: str) -> str | None:
    try:
        specifier = SpecifierSet(spec)
    except InvalidSpecifier:
        return f"manifest.kernel_api {spec!r} is not a version specifier"
    if Version(KERNEL_API_VERSION) not in specifier:
        return f"needs kernel API {spec}, this kernel provides {KERNEL_API_VERSION}"
    return None


def _load_entry_point(ep: importlib.metadata.EntryPoint, record: PluginRecord) -> Any:
    try:
        obj = ep.load()
    except Exception as exc:
        record.disable(f"import failed: {type(exc).__name__}: {exc}")
        return None
    manifest = getattr(obj, "manifest", None)
    if not isinstance(manifest, Manifest):
        record.disable("has no `manifest` (a kernel.sdk.Manifest)")
        return None
    record.manifest = manifest
    if manifest.name != ep.name:
        record.disable(f"manifest name {manifest.name!r} differs from the entry point name {ep.name!r}")
    elif (problem := _version_ok(manifest.kernel_api)) is not None:
        record.disable(problem)
    return obj


def _order(records: dict[str, PluginRecord]) -> list[str]:
    """Dependency order; disables plugins with a missing, disabled or cyclic dependency."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> bool:
        record = records[name]
        if state.get(name) == "done":
            return record.active
        if state.get(name) == "visiting":
            record.disable("dependency cycle: " + " -> ".join([*path, name]))
            return False
        state[name] = "visiting"
        for dep in record.depends_on:
            if dep not in records:
                record.disable(f"missing dependency: {dep} is not installed")
            elif not visit(dep, [*path, name]):
                record.disable(f"dependency {dep} is disabled")
        state[name] = "done"
        order.append(name)
        return record.active

    for name in sorted(records):
        visit(name, [])
    return order


def _collect(record: PluginRecord, manager: pluggy.PluginManager) -> None:
    """Call each of the plugin's hook implementations and validate what they return."""
    prefix = record.name
    for hook_name in (
        "businessos_routes",
        "businessos_metadata",
        "businessos_migrations",
        "businessos_permissions",
        "businessos_event_types",
        "businessos_event_handlers",
        "businessos_workflow_nodes",
        "businessos_settings_schema",
        "businessos_settings_check",
        "businessos_lifespan",
        "businessos_cli_commands",
        "businessos_webhook_routes",
        "businessos_entitlements",
        "businessos_jobs",
        "businessos_schedules",
        "businessos_admin_routes",
        "businessos_credentials",
        "businessos_connection_users",
    ):
        caller = getattr(manager.hook, hook_name)
        impls = [i for i in caller.get_hookimpls() if i.plugin_name == record.name]
        if not impls:
            continue
        try:
            value = impls[0].function()
        except Exception as exc:
            record.disable(f"{hook_name} raised {type(exc).__name__}: {exc}")
            return
        if value is None:
            continue
        try:
            match hook_name:
                case "businessos_routes":
                    record.routes = list(value)
                case "businessos_metadata":
                    record.metadata = value
                    bad = [t for t in value.tables if not t.startswith(prefix + "_")]
                    if bad:
                        record.disable(f"table {bad[0]!r} is not namespaced (must start with {prefix}_)")
                case "businessos_migrations":
                    path = Path(value)
                    if not path.is_dir():
                        record.disable(f"migrations folder {path} does not exist")
                    record.migrations = path
                case "businessos_permissions":
                    record.permissions = list(value)
                    _check_names(record, "permission", [p.name for p in record.permissions], 3)
                case "businessos_event_types":
                    record.event_types = list(value)
                    _check_names(record, "event", [e.name for e in record.event_types], 3)
                case "businessos_event_handlers":
                    record.event_handlers = list(value)
                case "businessos_workflow_nodes":
                    record.nodes = list(value)
                    _check_names(record, "node key", [n.key for n in record.nodes], 2)
                    _check_nodes(record)
                case "businessos_settings_schema":
                    if not (isinstance(value, type) and issubclass(value, msgspec.Struct)):
                        record.disable("businessos_settings_schema must return a msgspec.Struct class")
                    else:
                        record.settings_schema = value
                        try:
                            msgspec.convert({}, value)
                        except msgspec.ValidationError as exc:
                            record.disable(f"settings schema needs defaults for every field: {exc}")
                case "businessos_settings_check":
                    if not callable(value):
                        record.disable("businessos_settings_check must return an async callable")
                    else:
                        record.settings_check = value
                case "businessos_lifespan":
                    record.lifespan = value
                case "businessos_cli_commands":
                    record.cli_commands = list(value)
                case "businessos_webhook_routes":
                    record.webhooks = list(value)
                    _check_webhooks(record)
                case "businessos_entitlements":
                    if not isinstance(value, EntitlementProvider):
                        record.disable("businessos_entitlements must return a sdk.EntitlementProvider")
                    else:
                        record.entitlements = value
                case "businessos_jobs":
                    record.jobs = list(value)
                    _check_names(record, "job", [j.name for j in record.jobs], 2)
                case "businessos_schedules":
                    record.schedules = list(value)
                    _check_names(record, "schedule", [s.name for s in record.schedules], 2)
                    _check_schedules(record)
                case "businessos_admin_routes":
                    record.admin_routes = list(value)
                case "businessos_credentials":
                    record.credentials = list(value)
                    _check_credentials(record)
                case "businessos_connection_users":
                    if not callable(value):
                        record.disable("businessos_connection_users must return an async callable")
                    else:
                        record.connection_users = value
        except (TypeError, AttributeError, ValueError) as exc:
            # A wrong shape (a Permission instead of a list, a str instead of MetaData) is the
            # plugin's own fault: disable it like a hook that raised, rather than fail the boot.
            record.disable(f"{hook_name} returned an unusable value: {type(exc).__name__}: {exc}")
            return
    if record.active and record.routes:
        _check_route_permissions(record)


def _check_schedules(record: PluginRecord) -> None:
    """Each schedule names a job of its own plugin, a cron expression and a time zone that parse."""
    from kernel.jobs.schedules import check_schedule

    jobs = {job.name for job in record.jobs}
    for schedule in record.schedules:
        problem = check_schedule(schedule, jobs)
        if problem:
            record.disable(f"schedule {schedule.name!r}: {problem}")
            return


def _check_credentials(record: PluginRecord) -> None:
    """Each credential type is keyed ``<plugin>.<name>`` once, has a Struct schema whose secret
    fields exist, and an OAuth 2.0 type's schema extends ``sdk.OAuth2Credentials``."""
    keys: list[str] = []
    for kind in record.credentials:
        if not isinstance(kind, CredentialType):
            record.disable("businessos_credentials must return sdk.CredentialType values")
            return
        if not CREDENTIAL_KEY.match(kind.key) or not kind.key.startswith(record.name + ".") or kind.key in keys:
            record.disable(f"credential type {kind.key!r} is declared twice or is not named {record.name}.<name>")
            return
        keys.append(kind.key)
        if not (isinstance(kind.schema, type) and issubclass(kind.schema, msgspec.Struct)):
            record.disable(f"credential type {kind.key!r}: schema must be a msgspec.Struct class")
            return
        fields = set(kind.schema.__struct_encode_fields__)
        missing = sorted(set(kind.secret_fields) - fields)
        if missing:
            record.disable(f"credential type {kind.key!r}: secret field {missing[0]!r} is not in its schema")
            return
        if kind.oauth is not None and not issubclass(kind.schema, OAuth2Credentials):
            record.disable(f"credential type {kind.key!r} is OAuth 2.0: its schema must extend sdk.OAuth2Credentials")
            return


def _check_route_permissions(record: PluginRecord) -> None:
    """Deny by default: each route must declare a permission the plugin (or kernel) defines."""
    from kernel.identity.permissions import AUTHENTICATED, KERNEL_PERMISSIONS, PUBLIC

    allowed = {
        PUBLIC,
        AUTHENTICATED,
        *(p.name for p in record.permissions),
        *(p.name for p in KERNEL_PERMISSIONS),
    }
    try:
        routes = Router(path="/", route_handlers=list(record.routes)).routes
    except Exception as exc:
        record.disable(f"its routes are invalid: {type(exc).__name__}: {exc}")
        return
    for route in routes:
        for handler in getattr(route, "route_handlers", ()):
            if set(getattr(handler, "http_methods", ())) <= {"OPTIONS", "HEAD"}:
                continue  # Litestar's own OPTIONS handler
            if "kernel" in inspect.signature(handler.fn).parameters:
                # The kernel object is the platform's internals: a plugin works through its facade.
                record.disable(f"route {route.path} asks for the kernel: take services: sdk.Services instead")
                return
            permission = handler.opt.get("permission")
            if permission is None:
                record.disable(f"route {route.path} declares no permission (opt={{'permission': ...}})")
                return
            if permission not in allowed:
                record.disable(
                    f"route {route.path} requires {permission!r}, which the plugin does not declare"
                )
                return


def _check_webhooks(record: PluginRecord) -> None:
    names = []
    for route in record.webhooks:
        if not isinstance(route, WebhookRoute) or not callable(route.handler):
            record.disable("businessos_webhook_routes must return sdk.WebhookRoute values")
            return
        if not WEBHOOK_NAME.match(route.name) or route.name in names:
            record.disable(f"webhook route {route.name!r} is declared twice or is not a lower-case identifier")
            return
        names.append(route.name)


_DOTTED = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _check_names(record: PluginRecord, kind: str, names: Sequence[str], parts: int) -> None:
    for name in names:
        if names.count(name) > 1:
            record.disable(f"{kind} {name!r} is declared twice")
            return
        if not _DOTTED.match(name) or not name.startswith(record.name + ".") or name.count(".") != parts - 1:
            shape = ".".join([record.name, *(["<entity>", "<verb>"] if parts == 3 else ["<node>"])])
            record.disable(f"{kind} {name!r} must look like {shape}")
            return


def _check_nodes(record: PluginRecord) -> None:
    """An action has a runner; a trigger names the event it starts on (and maybe a filter)."""
    for node in record.nodes:
        if node.kind == "trigger" and node.run is not None:
            record.disable(f"node {node.key!r} is a trigger: only actions have run")
        elif node.kind == "action" and (node.event is not None or node.filter is not None):
            record.disable(f"node {node.key!r} is an action: event and filter belong to triggers")
        elif node.event is not None and (not _DOTTED.match(node.event) or node.event.count(".") != 2):
            record.disable(f"node {node.key!r} starts on {node.event!r}, not an event name (<plugin>.<entity>.<verb>)")
        elif node.permission is not None and (not _DOTTED.match(node.permission) or node.permission.count(".") < 2):
            record.disable(
                f"node {node.key!r} needs {node.permission!r}, not a permission name (<plugin>.<resource>.<verb>)"
            )
        elif not node.ports or any(not p or len(p) > 64 for p in node.ports):
            record.disable(f"node {node.key!r} has an empty or overlong port name")


def route_keys(handlers: Sequence[Any]) -> list[tuple[str, str]]:
    """(method, path) pairs served by ``handlers`` (OPTIONS and HEAD left out)."""
    router = Router(path="/", route_handlers=list(handlers))
    keys = []
    for route in router.routes:
        for method in sorted(getattr(route, "methods", ())):
            if method not in ("OPTIONS", "HEAD"):
                keys.append((method, route.path))
    return keys


_PATH_PARAM = re.compile(r"\{[^}]*\}")


def _route_shape(path: str) -> str:
    """``path`` with each parameter reduced to ``{}``: ``/x/{a:int}`` and ``/x/{b:str}`` are the
    same route to the router, so they must clash here too."""
    return _PATH_PARAM.sub("{}", path)


def _claim(
    owners: dict[tuple[str, str], str], kind: str, names: Iterable[str], plugin: str
) -> None:
    for name in names:
        first = owners.setdefault((kind, name), plugin)
        if first != plugin:
            raise BootError(f"{kind} {name} is claimed by both {first} and {plugin}")


def load_plugins(
    *,
    allowlist: frozenset[str] | None,
    kernel_routes: Sequence[tuple[str, str]] = (),
    kernel_tables: Sequence[str] = (),
    kernel_permissions: Sequence[str] = (),
    entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None = None,
) -> PluginSet:
    """Load every plugin of the ``businessos.plugins`` group; see the module docstring."""
    eps = list(entry_points() if entry_points else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    spec_names = {name for name in dir(hookspecs) if name.startswith("businessos_")}

    records: dict[str, PluginRecord] = {}
    objects: dict[str, Any] = {}
    for ep in sorted(eps, key=lambda e: e.name):
        dist = ep.dist.name if ep.dist else None
        if ep.name in records:
            other = records[ep.name].distribution
            raise BootError(f"plugin name {ep.name} is claimed by both {other} and {dist}")
        record = records[ep.name] = PluginRecord(name=ep.name, distribution=dist)
        if not PLUGIN_NAME.match(ep.name):
            record.disable("name must be a lower-case identifier of at most 40 characters")
            continue
        if ep.name in RESERVED_NAMES:
            record.disable(f"the name {ep.name!r} is reserved for the kernel")
            continue
        if allowlist is not None and ep.name not in allowlist:
            record.reason = "not in the BUSINESSOS_PLUGINS allowlist"  # a choice, not a fault: no warning
            continue
        obj = _load_entry_point(ep, record)
        if obj is not None:
            objects[ep.name] = obj

    order = _order(records)
    for name in order:
        record = records[name]
        if not record.active:
            continue
        obj = objects[name]
        unknown = [
            attr
            for attr in dir(obj)
            if manager.parse_hookimpl_opts(obj, attr) is not None and attr not in spec_names
        ]
        if unknown:
            record.disable(f"implements unknown hook {unknown[0]}")
            continue
        try:
            manager.register(obj, name=name)
        except Exception as exc:
            record.disable(f"hook registration failed: {exc}")
            continue
        _collect(record, manager)
        if not record.active:
            manager.unregister(name=name)

    # A plugin whose hooks failed takes its dependents down with it.
    order = _order(records)
    for record in records.values():
        if not record.active and manager.has_plugin(record.name):
            manager.unregister(name=record.name)

    owners: dict[tuple[str, str], str] = {}
    _claim(owners, "route", (f"{m} {_route_shape(p)}" for m, p in kernel_routes), KERNEL)
    _claim(owners, "table", kernel_tables, KERNEL)
    _claim(owners, "permission", kernel_permissions, KERNEL)
    for name in order:
        record = records[name]
        if not record.active:
            continue
        try:
            keys = route_keys(record.routes)
        except Exception as exc:
            raise BootError(f"plugin {name}: its routes are invalid: {exc}") from exc
        _claim(owners, "route", (f"{m} {_route_shape(p)}" for m, p in keys), name)
        _claim(owners, "table", record.table_names(), name)
        _claim(owners, "permission", (p.name for p in record.permissions), name)
        _claim(owners, "node key", (n.key for n in record.nodes), name)
        _claim(owners, "event", (e.name for e in record.event_types), name)
        _claim(owners, "credential type", (c.key for c in record.credentials), name)

    answering = [records[n].name for n in order if records[n].active and records[n].entitlements is not None]
    if len(answering) > 1:
        raise BootError(
            f"plugins {' and '.join(answering)} both answer entitlements (businessos_entitlements): "
            "only one plugin may decide what tenants are entitled to; uninstall or disallow all but one"
        )

    from kernel.events.catalog import KERNEL_EVENT_TYPES

    declared = {e.name for e in KERNEL_EVENT_TYPES}
    declared |= {e.name for r in records.values() if r.active for e in r.event_types}
    for name in order:
        record = records[name]
        for handler in record.event_handlers if record.active else ():
            if handler.event != "*" and handler.event not in declared:
                log.warning("plugin %s handles undeclared event %s", name, handler.event)

    ordered = {name: records[name] for name in order}
    ordered.update({n: r for n, r in records.items() if n not in ordered})
    return PluginSet(records=ordered, manager=manager)
