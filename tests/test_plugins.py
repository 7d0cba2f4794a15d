"""The plugin loader: discovery through entry points, manifests, dependencies, hooks and clashes.

Every plugin here is a real distribution on ``sys.path`` (see ``tests/plugin_factory.py``), found
through the ``businessos.plugins`` entry point group exactly as an installed one would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel import KERNEL_API_VERSION
from kernel.app import load_app_plugins
from kernel.plugins.loader import BootError, PluginSet, load_plugins
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

ROUTE = """
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


# Routes must require a permission the plugin declares; this one is for the clash tests' routes.
OPT = """
OPT = {"permission": NAME + ".things.read"}

@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [sdk.Permission(NAME + ".things.read")]
"""


def route_plugin(name: str, body: str = "", **manifest: Any) -> FakePlugin:
    """A plugin serving ``GET /api/<name>/hi``, plus ``body``."""
    return FakePlugin(name, plugin_source(name, ROUTE + body, **manifest))


def bare_plugin(name: str, body: str = "", **manifest: Any) -> FakePlugin:
    return FakePlugin(name, plugin_source(name, body, **manifest))


def load(*allowed: str) -> PluginSet:
    return load_app_plugins(frozenset(allowed))


def reason(plugins: PluginSet, name: str) -> str:
    record = plugins.get(name)
    assert record is not None, f"{name} was not discovered"
    assert not record.active, f"{name} is active"
    assert record.reason
    return record.reason


def active(plugins: PluginSet, name: str) -> bool:
    record = plugins.get(name)
    assert record is not None, f"{name} was not discovered"
    return record.active


def scoped(settings: Settings, tmp_path: Path, *allowed: str) -> Settings:
    """The session's servers with ``BUSINESSOS_PLUGINS`` set to ``allowed``."""
    assert settings.database_url and settings.redis_url
    return settings_for(
        settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS=",".join(allowed)
    )


# --- a plugin's own problems disable it, with the reason; the rest boot -------------------------


async def test_a_plugin_that_fails_to_import_is_disabled_and_the_rest_boot_and_serve(
    settings: Settings, tmp_path: Path
) -> None:
    good, bad = unique("good"), unique("bad")
    broken = bare_plugin(bad, 'raise RuntimeError("cannot reach the licence server")')
    with installed(tmp_path, route_plugin(good), broken):
        plugins = load(good, bad)
        assert reason(plugins, bad) == "import failed: RuntimeError: cannot reach the licence server"
        assert active(plugins, good)

        async with open_client(scoped(settings, tmp_path, good, bad), plugins) as client:
            tenant = await new_tenant(client)
            headers = {"X-Tenant-ID": tenant["slug"]}
            assert (await client.post(f"/api/modules/{good}/enable", headers=headers)).status_code == 200
            response = await client.get(f"/api/{good}/hi", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json() == {"plugin": good, "tenant": tenant["slug"]}
            modules = {
                m["name"]: m for m in (await client.get("/api/modules", headers=headers)).json()["modules"]
            }
            assert modules[bad]["status"] == "disabled"
            assert "cannot reach the licence server" in modules[bad]["reason"]


def test_a_manifest_for_another_kernel_api_is_disabled_with_the_reason(tmp_path: Path) -> None:
    future, fine = unique("future"), unique("fine")
    with installed(tmp_path, bare_plugin(future, kernel_api=">=2"), bare_plugin(fine, kernel_api=">=1.0,<2")):
        plugins = load(future, fine)
        assert reason(plugins, future) == f"needs kernel API >=2, this kernel provides {KERNEL_API_VERSION}"
        assert active(plugins, fine)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param('"""No manifest here."""\n', "has no `manifest`", id="no-manifest"),
        pytest.param(None, "differs from the entry point name", id="manifest-name-differs"),
        pytest.param("KERNEL_API", "is not a version specifier", id="kernel-api-not-a-specifier"),
    ],
)
def test_an_unusable_manifest_disables_the_plugin_with_the_reason(
    tmp_path: Path, source: str | None, expected: str
) -> None:
    name = unique("manifest")
    if source is None:
        plugin = FakePlugin(name, plugin_source(unique("other")), entry_point_name=name, module=f"{name}_pkg")
    elif source == "KERNEL_API":
        plugin = bare_plugin(name, kernel_api="version one")
    else:
        plugin = FakePlugin(name, source)
    with installed(tmp_path, plugin):
        assert expected in reason(load(name), name)


def test_a_missing_dependency_disables_the_plugin(tmp_path: Path) -> None:
    name, absent = unique("needy"), unique("absent")
    with installed(tmp_path, bare_plugin(name, depends_on=[absent])):
        assert reason(load(name, absent), name) == f"missing dependency: {absent} is not installed"


def test_dependents_of_a_disabled_plugin_are_disabled(tmp_path: Path) -> None:
    # One base fails to import, the other fails in a hook: both take their dependents down.
    broken, child, grandchild = unique("broken"), unique("child"), unique("grandchild")
    failing, dependent = unique("failing"), unique("dependent")
    raising_hook = """
@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    raise LookupError("no permissions table")
"""
    with installed(
        tmp_path,
        bare_plugin(broken, "import no_such_module_anywhere"),
        bare_plugin(child, depends_on=[broken]),
        bare_plugin(grandchild, depends_on=[child]),
        bare_plugin(failing, raising_hook),
        route_plugin(dependent, depends_on=[failing]),
    ):
        plugins = load(broken, child, grandchild, failing, dependent)
        assert reason(plugins, broken).startswith("import failed: ModuleNotFoundError")
        assert reason(plugins, child) == f"dependency {broken} is disabled"
        assert reason(plugins, grandchild) == f"dependency {child} is disabled"
        assert reason(plugins, failing) == "businessos_permissions raised LookupError: no permissions table"
        assert reason(plugins, dependent) == f"dependency {failing} is disabled"
        assert not plugins.manager.has_plugin(dependent) and not plugins.manager.has_plugin(failing)


def test_a_dependency_cycle_disables_the_plugins_in_it(tmp_path: Path) -> None:
    a, b = unique("cycle_a"), unique("cycle_b")
    with installed(tmp_path, bare_plugin(a, depends_on=[b]), bare_plugin(b, depends_on=[a])):
        plugins = load(a, b)
        assert "dependency cycle" in reason(plugins, a) or "dependency cycle" in reason(plugins, b)
        assert not active(plugins, a) and not active(plugins, b)


def test_plugins_load_in_dependency_order(tmp_path: Path) -> None:
    # Names sort the opposite way to the dependencies, so alphabetical order would be wrong.
    token = unique("o")
    top, middle, bottom = f"a_{token}", f"m_{token}", f"z_{token}"
    calls = tmp_path / "calls.log"
    log_call = f"""
@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    with open({str(calls)!r}, "a") as log:
        log.write(NAME + "\\n")
    return []
"""
    with installed(
        tmp_path,
        bare_plugin(top, log_call, depends_on=[middle, bottom]),
        bare_plugin(middle, log_call, depends_on=[bottom]),
        bare_plugin(bottom, log_call),
    ):
        plugins = load(top, middle, bottom)
        assert [r.name for r in plugins.active()] == [bottom, middle, top]
        assert calls.read_text().split() == [bottom, middle, top]
        assert plugins.requirements(top) == [bottom, middle, top]


def test_the_allowlist_leaves_other_plugins_disabled_and_unimported(tmp_path: Path) -> None:
    allowed, other = unique("allowed"), unique("other")
    with installed(tmp_path, bare_plugin(allowed), bare_plugin(other)):
        plugins = load(allowed)
        assert active(plugins, allowed)
        assert reason(plugins, other) == "not in the BUSINESSOS_PLUGINS allowlist"
        assert f"{other}_pkg" not in sys.modules
        # No allowlist (BUSINESSOS_PLUGINS unset or "*") lets every installed plugin load.
        everything = load_app_plugins(None)
        assert active(everything, allowed) and active(everything, other)


async def test_a_hook_that_raises_disables_the_plugin_and_leaves_its_routes_unmounted(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique("raises")
    body = """
@sdk.hookimpl
def businessos_settings_schema() -> Any:
    raise KeyError("greeting")
"""
    with installed(tmp_path, route_plugin(name, body)):
        plugins = load(name)
        assert reason(plugins, name) == "businessos_settings_schema raised KeyError: 'greeting'"
        assert not plugins.manager.has_plugin(name)
        async with open_client(scoped(settings, tmp_path, name), plugins) as client:
            tenant = await new_tenant(client)
            response = await client.get(f"/api/{name}/hi", headers={"X-Tenant-ID": tenant["slug"]})
            assert response.status_code == 404
            assert "no route matches" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "@sdk.hookimpl\ndef businessos_permissions() -> Any:\n"
            "    return sdk.Permission(NAME + '.x.read')\n",
            "businessos_permissions returned an unusable value",
            id="one-permission-instead-of-a-list",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n    return [NAME + '.send']\n",
            "businessos_workflow_nodes returned an unusable value",
            id="strings-instead-of-node-specs",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_metadata() -> Any:\n    return 'tables'\n",
            "businessos_metadata returned an unusable value",
            id="text-instead-of-metadata",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_settings_schema() -> Any:\n    return dict\n",
            "must return a msgspec.Struct class",
            id="settings-schema-not-a-struct",
        ),
        pytest.param(
            "class S(msgspec.Struct):\n    api_key: str\n\n"
            "@sdk.hookimpl\ndef businessos_settings_schema() -> Any:\n    return S\n",
            "settings schema needs defaults for every field",
            id="settings-field-without-default",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_migrations() -> Path:\n"
            "    return Path(__file__).parent / 'nowhere'\n",
            "does not exist",
            id="missing-migrations-folder",
        ),
        pytest.param(
            "@get('/api/' + NAME + '/x', opt={'permission': sdk.AUTHENTICATED})\n"
            "async def x(kernel: Any) -> dict:\n    return {}\n\n"
            "@sdk.hookimpl\ndef businessos_routes() -> Any:\n    return [x]\n",
            "asks for the kernel: take services: sdk.Services instead",
            id="route-asking-for-the-kernel",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n"
            "    return [sdk.NodeSpec(key=NAME + '.sent', kind='trigger', title='Sent', event='sent')]\n",
            "not an event name",
            id="trigger-event-not-an-event",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n"
            "    return [sdk.NodeSpec(key=NAME + '.send', kind='action', title='Send', event='crm.deal.won')]\n",
            "event and filter belong to triggers",
            id="action-with-an-event",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n"
            "    return [sdk.NodeSpec(key=NAME + '.send', kind='action', title='Send', permission='write')]\n",
            "not a permission name",
            id="node-permission-not-a-permission",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n"
            "    return [sdk.NodeSpec(key=NAME + '.send', kind='action', title='Send', ports=())]\n",
            "port name",
            id="node-without-ports",
        ),
    ],
)
def test_a_hook_returning_the_wrong_shape_disables_the_plugin(
    tmp_path: Path, body: str, expected: str
) -> None:
    name, bystander = unique("shape"), unique("bystander")
    with installed(tmp_path, bare_plugin(name, body), bare_plugin(bystander)):
        plugins = load(name, bystander)
        assert expected in reason(plugins, name)
        assert active(plugins, bystander)


NAMESPACE_CASES = [
    pytest.param(
        "from sqlalchemy import Column, Integer, MetaData, Table\nmetadata = MetaData()\n"
        "Table('orders', metadata, Column('id', Integer, primary_key=True))\n"
        "@sdk.hookimpl\ndef businessos_metadata() -> Any:\n    return metadata\n",
        "table 'orders' is not namespaced",
        id="table",
    ),
    pytest.param(
        "@sdk.hookimpl\ndef businessos_permissions() -> Any:\n    return [sdk.Permission('orders.read')]\n",
        "permission 'orders.read' must look like",
        id="permission",
    ),
    pytest.param(
        "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n"
        "    return [sdk.NodeSpec(key='send_email', kind='action', title='Send')]\n",
        "node key 'send_email' must look like",
        id="node-key",
    ),
    pytest.param(
        "@sdk.hookimpl\ndef businessos_event_types() -> Any:\n    return [sdk.EventType('crm.deal.won')]\n",
        "event 'crm.deal.won' must look like",
        id="event",
    ),
]


@pytest.mark.parametrize(("body", "expected"), NAMESPACE_CASES)
def test_an_unnamespaced_name_disables_the_plugin(tmp_path: Path, body: str, expected: str) -> None:
    name = unique("ns")
    with installed(tmp_path, route_plugin(name, body)):
        plugins = load(name)
        assert expected in reason(plugins, name)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "@sdk.hookimpl\ndef businessos_permissions() -> Any:\n"
            "    return [sdk.Permission(NAME + '.deals.read'), sdk.Permission(NAME + '.deals.read')]\n",
            "permission '{name}.deals.read' is declared twice",
            id="permission",
        ),
        pytest.param(
            "@sdk.hookimpl\ndef businessos_workflow_nodes() -> Any:\n"
            "    return [sdk.NodeSpec(key=NAME + '.send', kind='action', title='Send'),\n"
            "            sdk.NodeSpec(key=NAME + '.send', kind='trigger', title='Sent')]\n",
            "node key '{name}.send' is declared twice",
            id="node-key",
        ),
    ],
)
def test_a_name_declared_twice_by_one_plugin_disables_it(tmp_path: Path, body: str, expected: str) -> None:
    name = unique("twice")
    with installed(tmp_path, bare_plugin(name, body)):
        assert reason(load(name), name) == expected.format(name=name)


def test_an_unknown_hook_disables_the_plugin(tmp_path: Path) -> None:
    name = unique("typo")
    body = """
@sdk.hookimpl
def businessos_route() -> list[Any]:
    return []
"""
    with installed(tmp_path, bare_plugin(name, body)):
        plugins = load(name)
        assert reason(plugins, name) == "implements unknown hook businessos_route"
        assert not plugins.manager.has_plugin(name)


# --- clashes between plugins (or with the kernel) stop the boot, naming both sides --------------


def test_two_plugins_serving_the_same_route_stop_the_boot_naming_both(tmp_path: Path) -> None:
    first, second = unique("first"), unique("second")
    shared = unique("shared")
    body = f"""
@get("/api/{shared}/x", opt=OPT)
async def x() -> str:
    return NAME

@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [x]
"""
    with (
        installed(tmp_path, bare_plugin(first, OPT + body), bare_plugin(second, OPT + body)),
        pytest.raises(BootError) as caught,
    ):
        load(first, second)
    message = str(caught.value)
    assert f"GET /api/{shared}/x" in message
    assert first in message and second in message


@pytest.mark.parametrize(
    ("decorator", "route"),
    [
        pytest.param('get("/api/modules", opt=OPT)', "GET /api/modules", id="same-path"),
        # Another parameter name is still the same route to the router.
        pytest.param(
            'post("/api/modules/{other:str}/enable", opt=OPT)', "POST /api/modules/{}/enable", id="same-shape"
        ),
    ],
)
def test_a_plugin_route_clashing_with_a_kernel_route_stops_the_boot(
    tmp_path: Path, decorator: str, route: str
) -> None:
    name = unique("clash")
    body = f"""
@{decorator}
async def mine(other: str = "") -> str:
    return NAME

@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [mine]
"""
    with installed(tmp_path, bare_plugin(name, OPT + body)), pytest.raises(BootError) as caught:
        load(name)
    assert str(caught.value) == f"route {route} is claimed by both kernel and {name}"


def test_a_table_claimed_twice_stops_the_boot_naming_both(tmp_path: Path) -> None:
    # "shop" may own "shop_eu_orders", and so may "shop_eu": the prefix rule cannot keep them apart.
    shop = unique("shop")
    shop_eu = f"{shop}_eu"
    table = f"{shop}_eu_orders"
    body = f"""
from sqlalchemy import Column, Integer, MetaData, Table
metadata = MetaData()
Table({table!r}, metadata, Column("id", Integer, primary_key=True))

@sdk.hookimpl
def businessos_metadata() -> Any:
    return metadata
"""
    with (
        installed(tmp_path, bare_plugin(shop, body), bare_plugin(shop_eu, body)),
        pytest.raises(BootError) as caught,
    ):
        load(shop, shop_eu)
    assert str(caught.value) == f"table {table} is claimed by both {shop} and {shop_eu}"


def test_a_plugin_table_named_like_a_kernel_table_stops_the_boot(tmp_path: Path) -> None:
    body = """
from sqlalchemy import Column, Integer, MetaData, Table
metadata = MetaData()
Table("user_recovery_codes", metadata, Column("id", Integer, primary_key=True))

@sdk.hookimpl
def businessos_metadata() -> Any:
    return metadata
"""
    plugin = FakePlugin("user", plugin_source("user", body), module=unique("user_pkg"))
    with installed(tmp_path, plugin), pytest.raises(BootError) as caught:
        load("user")
    assert str(caught.value) == "table user_recovery_codes is claimed by both kernel and user"


def test_a_plugin_may_not_take_a_name_the_kernel_uses(tmp_path: Path) -> None:
    plugin = FakePlugin("tenant", plugin_source("tenant"), module=unique("tenant_pkg"))
    with installed(tmp_path, plugin):
        record = load("tenant").get("tenant")
    assert record is not None and record.reason == "the name 'tenant' is reserved for the kernel"


def test_a_permission_the_kernel_declares_stops_the_boot(tmp_path: Path) -> None:
    name = unique("perm")
    body = """
@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [sdk.Permission(NAME + ".members.invite")]
"""
    with installed(tmp_path, bare_plugin(name, body)), pytest.raises(BootError) as caught:
        load_plugins(allowlist=frozenset({name}), kernel_permissions=[f"{name}.members.invite"])
    assert str(caught.value) == f"permission {name}.members.invite is claimed by both kernel and {name}"


def test_two_distributions_with_one_plugin_name_stop_the_boot_naming_both(tmp_path: Path) -> None:
    name = unique("twin")
    one = FakePlugin(name, plugin_source(name), module=f"{name}_one", dist=f"{name}-one")
    two = FakePlugin(name, plugin_source(name), module=f"{name}_two", dist=f"{name}-two")
    with installed(tmp_path, one, two), pytest.raises(BootError) as caught:
        load(name)
    message = str(caught.value)
    assert f"plugin name {name} is claimed by both" in message
    assert f"{name}-one" in message and f"{name}-two" in message


# --- what operators and tenants see -------------------------------------------------------------


async def test_the_module_list_shows_each_plugin_with_its_state(settings: Settings, tmp_path: Path) -> None:
    ok, broken, unlisted = unique("ok"), unique("broken"), unique("unlisted")
    with installed(
        tmp_path,
        route_plugin(ok, version="2.3.4", title="Okay"),
        bare_plugin(broken, "1 / 0"),
        bare_plugin(unlisted),
    ):
        plugins = load(ok, broken)
        async with open_client(scoped(settings, tmp_path, ok, broken), plugins) as client:
            tenant = await new_tenant(client)
            headers = {"X-Tenant-ID": tenant["slug"]}
            response = await client.get("/api/modules", headers=headers)
            assert response.status_code == 200
            modules = {m["name"]: m for m in response.json()["modules"]}
            # Every installed plugin is listed (built-in ones too); these three are the test's.
            assert {ok, broken, unlisted} <= set(modules)
            for module in modules.values():
                assert {"name", "version", "status", "enabled", "reason"} <= set(module)
            assert modules[ok] | {"reason": None} == modules[ok]
            assert (modules[ok]["version"], modules[ok]["status"], modules[ok]["enabled"]) == (
                "2.3.4",
                "active",
                False,
            )
            assert modules[ok]["title"] == "Okay"
            assert modules[broken]["status"] == "disabled" and modules[broken]["enabled"] is False
            assert modules[broken]["reason"] == "import failed: ZeroDivisionError: division by zero"
            assert modules[broken]["version"] == "0.1.0"  # from the distribution: no manifest was read
            assert modules[unlisted]["reason"] == "not in the BUSINESSOS_PLUGINS allowlist"

            await client.post(f"/api/modules/{ok}/enable", headers=headers)
            modules = {
                m["name"]: m for m in (await client.get("/api/modules", headers=headers)).json()["modules"]
            }
            assert modules[ok]["enabled"] is True


def test_plugins_list_command_shows_versions_and_reasons(tmp_path: Path) -> None:
    ok, future, unlisted = unique("ok"), unique("future"), unique("unlisted")
    with installed(
        tmp_path,
        bare_plugin(ok, version="2.3.4"),
        bare_plugin(future, kernel_api=">=2"),
        bare_plugin(unlisted),
    ) as site:
        path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "BUSINESSOS_PLUGINS": f"{ok},{future}"}
        result = subprocess.run(
            [sys.executable, "-m", "kernel.cli", "plugins", "list"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in result.stdout.splitlines() if line.strip()}
    assert lines[ok] == ["2.3.4", "active"]
    assert lines[future] == ["0.1.0", f"disabled: needs kernel API >=2, this kernel provides {KERNEL_API_VERSION}"]
    assert lines[unlisted] == ["0.1.0", "disabled: not in the BUSINESSOS_PLUGINS allowlist"]
