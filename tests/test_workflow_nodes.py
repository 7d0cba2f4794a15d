"""The node catalogue (``GET /api/workflows/nodes``), testing one node without saving
(``POST /api/workflows/nodes/{key}/test``) and ``services.nodes.run``, from outside, with two
tenants that enabled different modules."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, other_process, settings_for
from tests.test_access import at, new_key, problem


@pytest.fixture(scope="module")
async def wf_settings(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    result = settings_for(
        database_url,
        servers[1],
        tmp_path_factory.mktemp("wfnodes"),
        BUSINESSOS_PLUGINS="crm,projects,workflows",
        BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1",
    )
    plugins = load_app_plugins(result.plugins_allowlist)
    for name in ("crm", "projects", "workflows"):
        record = plugins.get(name)
        assert record is not None and record.active, record and record.reason
    await migrate.upgrade(result, database_url, plugins.migration_folders())
    return result


@pytest.fixture(scope="module")
async def api(wf_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(wf_settings) as client:
        yield client


async def tenant_with(api: AsyncTestClient[Any], *modules: str) -> dict[str, Any]:
    """A new tenant with ``modules`` enabled; ``h`` holds its owner's headers."""
    tenant = await new_tenant(api, "wf")
    h = {"X-Tenant-ID": tenant["slug"]}
    for module in modules:
        response = await api.post(f"/api/modules/{module}/enable", headers=h)
        assert response.status_code == 200, response.text
    return {**tenant, "h": h}


def by_key(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["key"]: n for n in body["nodes"]}


async def test_the_catalogue_lists_only_the_nodes_of_modules_the_tenant_enabled(api: AsyncTestClient[Any]) -> None:
    crm = await tenant_with(api, "crm", "workflows")
    bare = await tenant_with(api, "workflows")
    listed = (await api.get("/api/workflows/nodes", headers=crm["h"])).json()
    nodes = by_key(listed)
    assert {
        "crm.create_contact",
        "crm.update_deal_stage",
        "crm.deal_stage_changed",
        "workflows.ai",
        "workflows.agent",
    } <= set(nodes)
    assert not [k for k in nodes if k.startswith("projects.")]
    assert listed["pagination"]["total"] == len(nodes)
    create = nodes["crm.create_contact"]
    assert (create["kind"], create["plugin"], create["permission"], create["allowed"]) == (
        "action",
        "crm",
        "crm.contacts.write",
        True,
    )
    config = create["config_schema"]
    root = config["$defs"][config["$ref"].rsplit("/", 1)[1]]
    assert root["required"] == ["first_name"] and "email" in root["properties"]
    assert "id" in create["output_schema"]["$defs"]["ContactOut"]["properties"]
    trigger = nodes["crm.deal_stage_changed"]
    assert (trigger["kind"], trigger["event"], trigger["permission"]) == ("trigger", "crm.deal.stage_changed", None)
    assert create["ports"] == ["main"]

    other = by_key((await api.get("/api/workflows/nodes", headers=bare["h"])).json())
    assert "workflows.ai" in other and not [k for k in other if k.startswith("crm.")]
    triggers = (await api.get("/api/workflows/nodes", params={"kind": "trigger"}, headers=crm["h"])).json()
    assert {n["kind"] for n in triggers["nodes"]} == {"trigger"}
    only_crm = (await api.get("/api/workflows/nodes", params={"plugin": "crm", "limit": 2}, headers=crm["h"])).json()
    assert len(only_crm["nodes"]) == 2 and only_crm["pagination"] == {"page": 1, "limit": 2, "total": 3, "pages": 2}
    problem(await api.get("/api/workflows/nodes", params={"limit": 0}, headers=crm["h"]), 422)

    # Without the workflows module its routes answer 404.
    without = await tenant_with(api, "crm")
    problem(await api.get("/api/workflows/nodes", headers=without["h"]), 404)


async def test_testing_a_node_runs_it_with_rendered_expressions_as_the_caller(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with(api, "crm", "workflows")
    b = await tenant_with(api, "workflows")
    body = {
        "config": {"first_name": "{{ trigger.name }}", "email": "{{ trigger.email }}", "tags": "{{ trigger.tags }}"},
        "input": {"trigger": {"name": "Ada", "email": "ada@example.com", "tags": ["vip", "new"]}},
    }
    response = await api.post("/api/workflows/nodes/crm.create_contact/test", json=body, headers=a["h"])
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["ok"] is True and result["node"] == "crm.create_contact" and result["error"] is None
    assert result["config"]["tags"] == ["vip", "new"]
    contact = result["output"]
    assert (contact["first_name"], contact["email"], contact["tags"]) == ("Ada", "ada@example.com", ["vip", "new"])
    assert (await api.get(f"/api/crm/contacts/{contact['id']}", headers=a["h"])).json()["first_name"] == "Ada"
    # The other tenant has not enabled the CRM: neither the node nor the contact is there.
    problem(await api.post("/api/workflows/nodes/crm.create_contact/test", json=body, headers=b["h"]), 404)
    problem(await api.get(f"/api/crm/contacts/{contact['id']}", headers=(await tenant_with(api, "crm"))["h"]), 404)

    # What the node raises is the answer (a step would record it), not a failed request.
    again = (await api.post("/api/workflows/nodes/crm.create_contact/test", json=body, headers=a["h"])).json()
    assert again["ok"] is False and again["error"]["status"] == 409 and again["output"] is None

    logs = (await api.get("/api/audit/logs", params={"action": "workflows.node.tested"}, headers=a["h"])).json()
    assert sorted(r["result"] for r in logs["items"]) == ["failure", "success"]
    assert {r["resource_id"] for r in logs["items"]} == {"crm.create_contact"}
    created = (await api.get("/api/audit/logs", params={"action": "crm.contact.created"}, headers=a["h"])).json()
    assert created["items"][0]["actor"] == f"user:{a['user_id']}"


async def test_bad_node_tests_answer_4xx_naming_the_field(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with(api, "crm", "workflows")
    url = "/api/workflows/nodes/crm.create_contact/test"
    bad_email = problem(await api.post(url, json={"config": {"first_name": "A", "email": "nope"}}, headers=a["h"]), 422)
    assert bad_email["errors"][0]["field"] == "config.email"
    missing = problem(await api.post(url, json={"config": {"email": "a@example.com"}}, headers=a["h"]), 422)
    assert missing["errors"][0]["field"] == "config" and "first_name" in missing["errors"][0]["message"]
    undefined = problem(
        await api.post(
            url,
            json={"config": {"first_name": "{{ trigger.nmae }}"}, "input": {"trigger": {"name": "x"}}},
            headers=a["h"],
        ),
        422,
    )
    assert undefined["errors"][0]["field"] == "config.first_name" and "nmae" in undefined["detail"]
    escape = problem(
        await api.post(url, json={"config": {"first_name": "{{ trigger.__class__ }}"}}, headers=a["h"]), 422
    )
    assert escape["errors"][0]["field"] == "config.first_name"
    trigger = problem(await api.post("/api/workflows/nodes/crm.deal_stage_changed/test", json={}, headers=a["h"]), 422)
    assert trigger["errors"][0]["field"] == "key"
    problem(await api.post("/api/workflows/nodes/crm.nope/test", json={}, headers=a["h"]), 404)
    assert (
        problem(await api.post(url, json={"config": {}, "surprise": 1}, headers=a["h"]), 422)["errors"][0]["field"]
        == "surprise"
    )


async def test_a_caller_without_the_nodes_permission_may_not_run_it(api: AsyncTestClient[Any]) -> None:
    a = await tenant_with(api, "crm", "workflows")
    owner = {**a["h"], "Authorization": f"Bearer {a['access_token']}"}
    tester = await new_key(api, owner, scopes=["workflows.nodes.test", "workflows.definitions.read"])
    as_tester = at(a, key=tester["key"])
    listed = by_key((await api.get("/api/workflows/nodes", headers=as_tester)).json())
    assert listed["crm.create_contact"]["allowed"] is False and listed["workflows.ai"]["allowed"] is True
    refused = problem(
        await api.post(
            "/api/workflows/nodes/crm.create_contact/test", json={"config": {"first_name": "Z"}}, headers=as_tester
        ),
        403,
    )
    assert refused["permission"] == "crm.contacts.write"
    reader = await new_key(api, owner, scopes=["workflows.definitions.read"])
    problem(
        await api.post("/api/workflows/nodes/crm.create_contact/test", json={}, headers=at(a, key=reader["key"])), 403
    )
    contacts = (await api.get("/api/crm/contacts", headers=a["h"])).json()
    assert contacts["pagination"]["total"] == 0


async def test_services_nodes_run_uses_the_nodes_own_plugin_and_the_principals_permissions(
    api: AsyncTestClient[Any], wf_settings: Settings
) -> None:
    a = await tenant_with(api, "crm", "workflows")
    b = await tenant_with(api, "workflows")
    tenant_id = uuid.UUID(a["id"])

    def actor(*permissions: str) -> sdk.Actor:
        principal = sdk.Principal(
            kind="api_key", id=uuid.uuid4(), tenant_id=tenant_id, role=None, permissions=frozenset(permissions)
        )
        return sdk.Actor.system("workflow", principal=principal)

    run: dict[str, Any] = {"execution_id": uuid.uuid4(), "step_id": "s1", "attempt": 1}
    async with other_process(wf_settings) as kernel:
        nodes = kernel.services("workflows").nodes
        with pytest.raises(sdk.Forbidden):
            await nodes.run(
                "crm.create_contact",
                tenant_id=tenant_id,
                actor=sdk.Actor.system("workflow"),
                config={"first_name": "X"},
                **run,
            )
        with pytest.raises(sdk.Forbidden):
            await nodes.run(
                "crm.create_contact",
                tenant_id=tenant_id,
                actor=actor("crm.contacts.read"),
                config={"first_name": "X"},
                **run,
            )
        with pytest.raises(sdk.Unprocessable) as bad:
            await nodes.run(
                "crm.create_contact",
                tenant_id=tenant_id,
                actor=actor("crm.contacts.write"),
                config={"first_name": "X", "owner_id": "nope"},
                **run,
            )
        assert bad.value.errors[0].field == "config.owner_id"
        with pytest.raises(sdk.NotFound):
            await nodes.run(
                "crm.create_contact",
                tenant_id=uuid.UUID(b["id"]),
                actor=actor("crm.contacts.write"),
                config={"first_name": "X"},
                **run,
            )
        made = await nodes.run(
            "crm.create_contact",
            tenant_id=tenant_id,
            actor=actor("crm.contacts.write"),
            config={"first_name": "Flow", "email": "flow@example.com"},
            **run,
        )
        assert [n.key for n in await nodes.catalogue(uuid.UUID(b["id"])) if n.plugin == "crm"] == []
    assert made.first_name == "Flow"
    # The change is the CRM's (its audit name and event), by the workflow's actor.
    logs = (await api.get("/api/audit/logs", params={"action": "crm.contact.created"}, headers=a["h"])).json()
    assert [(r["actor"], r["resource_id"]) for r in logs["items"]] == [("workflow", str(made.id))]
