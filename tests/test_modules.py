"""Per-tenant modules: enabling with dependencies, disabling that keeps data, settings, the
module guard on plugin routes, and the enabled-set cache across processes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.plugins.loader import PluginSet
from kernel.settings import Settings
from tests.conftest import _dsn, eventually, new_tenant, open_client, other_process, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, tenant_table_migration, unique

NOTES = """
from sqlalchemy import Text, select
from sqlalchemy.orm import Mapped, mapped_column

Base = sdk.declarative_base()


class Note(sdk.TenantScoped, Base):
    __tablename__ = NAME + "_notes"

    body: Mapped[str] = mapped_column(Text)


class NoteIn(msgspec.Struct):
    body: str


@post(f"/api/{NAME}/notes", status_code=201, opt={"permission": NAME + ".notes.write"})
async def add_note(data: NoteIn, tenant: sdk.Tenant, services: sdk.Services) -> dict[str, str]:
    async with services.data.tenant(tenant.id) as session:
        session.add(Note(tenant_id=tenant.id, body=data.body))
    return {"body": data.body}


@get(f"/api/{NAME}/notes", opt={"permission": NAME + ".notes.read"})
async def list_notes(tenant: sdk.Tenant, services: sdk.Services) -> list[str]:
    async with services.data.tenant(tenant.id) as session:
        rows = await session.execute(select(Note.body).order_by(Note.id))
        return list(rows.scalars())


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [add_note, list_notes]


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [sdk.Permission(NAME + ".notes.read"), sdk.Permission(NAME + ".notes.write")]


@sdk.hookimpl
def businessos_metadata() -> Any:
    return Base.metadata


@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"
"""

HELLO = """
@get(f"/api/{NAME}/hi", opt={"permission": NAME + ".greetings.read"})
async def hi(tenant: sdk.Tenant) -> dict[str, str]:
    return {"plugin": NAME, "tenant": tenant.slug}


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [hi]


@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [sdk.Permission(NAME + ".greetings.read")]
"""

SETTINGS = """
class Options(msgspec.Struct, kw_only=True):
    greeting: str = "hello"
    page_size: int = 20


@sdk.hookimpl
def businessos_settings_schema() -> type[Options]:
    return Options
"""


def notes_plugin(name: str, *, module: str = "") -> FakePlugin:
    """A plugin with a tenant table ``<name>_notes`` (and its migration) and routes on it."""
    migration = tenant_table_migration(name, f"{name}_notes", 'sa.Column("body", sa.Text(), nullable=False)')
    return FakePlugin(
        name, plugin_source(name, NOTES), module=module, files={"migrations/first.py": migration}
    )


def plugin(name: str, body: str = "", *, depends_on: Sequence[str] = ()) -> FakePlugin:
    return FakePlugin(name, plugin_source(name, body, depends_on=depends_on))


def scoped(settings: Settings, tmp_path: Path, *allowed: str) -> Settings:
    assert settings.database_url and settings.redis_url
    return settings_for(
        settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS=",".join(allowed)
    )


async def migrated(settings: Settings) -> PluginSet:
    """Load the allowed plugins and bring their branches to head, as ``businessos migrate`` would."""
    plugins = load_app_plugins(settings.plugins_allowlist)
    assert settings.database_url
    await migrate.upgrade(settings, settings.database_url, plugins.migration_folders())
    return plugins


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def modules_of(client: AsyncTestClient[Any], headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/modules", headers=headers)
    assert response.status_code == 200, response.text
    return {m["name"]: m for m in response.json()["modules"]}


# --- enabling and disabling ---------------------------------------------------------------------


async def test_enabling_a_module_enables_what_it_depends_on(settings: Settings, tmp_path: Path) -> None:
    base, middle, top = unique("base"), unique("middle"), unique("top")
    with installed(
        tmp_path, plugin(base), plugin(middle, depends_on=[base]), plugin(top, depends_on=[middle])
    ):
        s = scoped(settings, tmp_path, base, middle, top)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            response = await client.post(f"/api/modules/{top}/enable", headers=headers)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["changed"] == [base, middle, top]
            assert body["module"]["name"] == top and body["module"]["enabled"] is True
            listed = await modules_of(client, headers)
            assert all(listed[name]["enabled"] for name in (base, middle, top))
            # Enabling again changes nothing.
            again = await client.post(f"/api/modules/{top}/enable", headers=headers)
            assert again.json()["changed"] == []


async def test_disabling_a_module_answers_409_while_an_enabled_module_depends_on_it(
    settings: Settings, tmp_path: Path
) -> None:
    base, middle, top = unique("base"), unique("middle"), unique("top")
    with installed(
        tmp_path, plugin(base), plugin(middle, depends_on=[base]), plugin(top, depends_on=[middle])
    ):
        s = scoped(settings, tmp_path, base, middle, top)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            await client.post(f"/api/modules/{top}/enable", headers=headers)

            body = problem(await client.post(f"/api/modules/{base}/disable", headers=headers), 409)
            assert middle in body["detail"] and body["dependents"] == [middle]
            assert (await modules_of(client, headers))[base]["enabled"] is True

            for name in (top, middle, base):
                response = await client.post(f"/api/modules/{name}/disable", headers=headers)
                assert response.status_code == 200, response.text
                assert response.json()["changed"] == [name]
                assert response.json()["module"]["enabled"] is False
            assert not any(m["enabled"] for m in (await modules_of(client, headers)).values())
            # Disabling what is already off changes nothing.
            assert (await client.post(f"/api/modules/{base}/disable", headers=headers)).json()[
                "changed"
            ] == []


async def test_disabled_module_routes_answer_404_and_its_data_comes_back_on_enable(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("notes")
    with installed(tmp_path, notes_plugin(name)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, await migrated(s)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            await client.post(f"/api/modules/{name}/enable", headers=headers)
            for text in ("first", "second"):
                response = await client.post(f"/api/{name}/notes", json={"body": text}, headers=headers)
                assert response.status_code == 201, response.text

            await client.post(f"/api/modules/{name}/disable", headers=headers)
            for method, path in (("GET", f"/api/{name}/notes"), ("POST", f"/api/{name}/notes")):
                body = problem(await client.request(method, path, json={"body": "x"}, headers=headers), 404)
                assert body["module"] == name and name in body["detail"]

            await client.post(f"/api/modules/{name}/enable", headers=headers)
            response = await client.get(f"/api/{name}/notes", headers=headers)
            assert response.status_code == 200
            assert response.json() == ["first", "second"]


async def test_module_routes_answer_404_for_a_tenant_that_never_enabled_it(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("notes")
    with installed(tmp_path, notes_plugin(name)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, await migrated(s)) as client:
            owner = {"X-Tenant-ID": (await new_tenant(client, "owner"))["slug"]}
            stranger = await new_tenant(client, "stranger")
            await client.post(f"/api/modules/{name}/enable", headers=owner)
            await client.post(f"/api/{name}/notes", json={"body": "private"}, headers=owner)

            body = problem(
                await client.get(f"/api/{name}/notes", headers={"X-Tenant-ID": stranger["slug"]}), 404
            )
            assert body["module"] == name
            # The module is named; the tenant's slug is not (a public plugin route may be called
            # anonymously with the tenant's id, and must not tell the slug).
            assert name in body["detail"] and stranger["slug"] not in body["detail"]
            # Once the stranger enables it, it gets its own, empty, notes.
            await client.post(f"/api/modules/{name}/enable", headers={"X-Tenant-ID": stranger["slug"]})
            response = await client.get(f"/api/{name}/notes", headers={"X-Tenant-ID": stranger["slug"]})
            assert response.json() == []


async def test_an_unknown_module_answers_404(settings: Settings, tmp_path: Path) -> None:
    async with open_client(scoped(settings, tmp_path)) as client:
        headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
        missing = unique("missing")
        for method, path in (
            ("POST", f"/api/modules/{missing}/enable"),
            ("POST", f"/api/modules/{missing}/disable"),
            ("GET", f"/api/modules/{missing}/settings"),
            ("PUT", f"/api/modules/{missing}/settings"),
        ):
            body = problem(await client.request(method, path, json={}, headers=headers), 404)
            assert missing in body["detail"], (method, path)


async def test_enabling_a_plugin_that_did_not_load_answers_409_with_the_reason(
    settings: Settings, tmp_path: Path
) -> None:
    broken, unlisted = unique("broken"), unique("unlisted")
    with installed(tmp_path, plugin(broken, 'raise ImportError("needs libfoo")'), plugin(unlisted)):
        s = scoped(settings, tmp_path, broken)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            body = problem(await client.post(f"/api/modules/{broken}/enable", headers=headers), 409)
            assert "import failed: ImportError: needs libfoo" in body["detail"]
            body = problem(await client.post(f"/api/modules/{unlisted}/enable", headers=headers), 409)
            assert "not in the BUSINESSOS_PLUGINS allowlist" in body["detail"]
            modules = await modules_of(client, headers)
            assert modules[broken]["enabled"] is False and modules[unlisted]["enabled"] is False


# --- per-tenant settings ------------------------------------------------------------------------


async def test_module_settings_start_at_the_defaults_and_keep_valid_changes(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("configured")
    with installed(tmp_path, plugin(name, SETTINGS)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            other = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            url = f"/api/modules/{name}/settings"
            response = await client.get(url, headers=headers)
            assert response.status_code == 200
            body = response.json()
            assert body["module"] == name and body["settings"] == {"greeting": "hello", "page_size": 20}
            # The settings' JSON Schema comes along, so a client (the console) can build the form.
            options = body["schema"]["$defs"]["Options"]
            assert options["properties"]["page_size"] == {"type": "integer", "default": 20}

            response = await client.put(url, json={"greeting": "hi there", "page_size": 50}, headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["settings"] == {"greeting": "hi there", "page_size": 50}
            assert (await client.get(url, headers=headers)).json()["settings"] == {
                "greeting": "hi there",
                "page_size": 50,
            }
            # A field left out goes back to its default: PUT replaces the settings.
            await client.put(url, json={"page_size": 5}, headers=headers)
            assert (await client.get(url, headers=headers)).json()["settings"] == {
                "greeting": "hello",
                "page_size": 5,
            }

            # Settings are the tenant's own, and writing them does not switch the module on.
            assert (await client.get(url, headers=other)).json()["settings"]["page_size"] == 20
            assert (await modules_of(client, headers))[name]["enabled"] is False


async def test_invalid_module_settings_answer_422_naming_the_field(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("configured")
    with installed(tmp_path, plugin(name, SETTINGS)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            url = f"/api/modules/{name}/settings"
            await client.put(url, json={"page_size": 7}, headers=headers)

            body = problem(await client.put(url, json={"page_size": "many"}, headers=headers), 422)
            assert [e["field"] for e in body["errors"]] == ["page_size"]
            assert name in body["detail"]
            assert (await client.get(url, headers=headers)).json()["settings"]["page_size"] == 7


async def test_a_module_without_a_settings_schema_has_no_settings(settings: Settings, tmp_path: Path) -> None:
    name = unique("plain")
    with installed(tmp_path, plugin(name)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            headers = {"X-Tenant-ID": (await new_tenant(client))["slug"]}
            url = f"/api/modules/{name}/settings"
            assert "has no settings" in problem(await client.get(url, headers=headers), 404)["detail"]
            assert (
                "has no settings" in problem(await client.put(url, json={}, headers=headers), 404)["detail"]
            )


# --- across processes and installs --------------------------------------------------------------


async def test_a_module_enabled_by_another_process_starts_answering(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("remote")
    with installed(tmp_path, plugin(name, HELLO)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
            tenant = await new_tenant(client)
            headers = {"X-Tenant-ID": tenant["slug"]}

            async def status() -> int:
                return (await client.get(f"/api/{name}/hi", headers=headers)).status_code

            # The API has now cached this tenant's (empty) set of modules.
            assert await status() == 404
            async with other_process(s) as kernel:
                assert await kernel.modules.enable(uuid.UUID(tenant["id"]), name) == [name]
                await eventually(lambda: _is(status(), 200))
                assert (await modules_of(client, headers))[name]["enabled"] is True
                await kernel.modules.disable(uuid.UUID(tenant["id"]), name)
                await eventually(lambda: _is(status(), 404))


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_an_uninstalled_plugin_is_set_aside_and_a_reinstall_resumes_with_its_data(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("notes")
    assert settings.database_url
    s = scoped(settings, tmp_path, name)
    with installed(tmp_path, notes_plugin(name)):
        async with open_client(s, await migrated(s)) as client:
            tenant = await new_tenant(client)
            headers = {"X-Tenant-ID": tenant["slug"]}
            await client.post(f"/api/modules/{name}/enable", headers=headers)
            await client.post(f"/api/{name}/notes", json={"body": "kept"}, headers=headers)

    # Uninstalled: the kernel migrates and boots without it; its revision stays recorded.
    await migrate.upgrade(settings, settings.database_url, {})
    assert await migrate.pending_heads(settings.database_url, {}) == []
    conn = await asyncpg.connect(_dsn(settings.database_url))
    try:
        versions = {r["version_num"] for r in await conn.fetch("select version_num from alembic_version")}
    finally:
        await conn.close()
    assert f"{name}_0001" in versions
    async with open_client(s) as client:
        assert name not in await modules_of(client, headers)

    # Reinstalled (another package, same plugin): nothing to migrate, the tenant's notes are there.
    with installed(tmp_path, notes_plugin(name, module=unique("notes_again"))):
        plugins = load_app_plugins(s.plugins_allowlist)
        assert await migrate.pending_heads(settings.database_url, plugins.migration_folders()) == []
        await migrate.upgrade(s, settings.database_url, plugins.migration_folders())
        async with open_client(s, plugins) as client:
            assert (await modules_of(client, headers))[name]["enabled"] is True
            response = await client.get(f"/api/{name}/notes", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json() == ["kept"]


async def test_purging_a_module_deletes_only_this_tenants_data_and_is_audited(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("notes")
    with installed(tmp_path, notes_plugin(name)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, await migrated(s)) as client:
            mine = {"X-Tenant-ID": (await new_tenant(client, "mine"))["slug"]}
            theirs = {"X-Tenant-ID": (await new_tenant(client, "theirs"))["slug"]}
            for headers, text in ((mine, "mine"), (theirs, "theirs")):
                await client.post(f"/api/modules/{name}/enable", headers=headers)
                await client.post(f"/api/{name}/notes", json={"body": text}, headers=headers)

            # Purging an enabled module is refused: disable first.
            problem(await client.delete(f"/api/modules/{name}/data", headers=mine), 409)
            await client.post(f"/api/modules/{name}/disable", headers=mine)
            purged = await client.delete(f"/api/modules/{name}/data", headers=mine)
            assert purged.status_code == 200, purged.text
            assert purged.json() == {"module": name, "deleted": {f"{name}_notes": 1}}

            await client.post(f"/api/modules/{name}/enable", headers=mine)
            assert (await client.get(f"/api/{name}/notes", headers=mine)).json() == []
            assert (await client.get(f"/api/{name}/notes", headers=theirs)).json() == ["theirs"]
            logs = (await client.get("/api/audit/logs?action=module.purged", headers=mine)).json()["items"]
            assert [entry["resource_id"] for entry in logs] == [name]
