"""What the OpenAPI document says, and that the server does what it says (issue 10 item 6).

The broad check is tests/test_openapi_fuzz.py (schemathesis over every operation); these are the
specific promises, each tested from outside: security, problem+json errors, request schemas that
carry what the server enforces, CSV as text/csv, a right ``Allow``, strict dates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, settings_for


@pytest.fixture(scope="module")
async def api(
    database_url: str, servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncTestClient[Any]]:
    settings: Settings = settings_for(
        database_url, servers[1], tmp_path_factory.mktemp("openapi"), BUSINESSOS_PLUGINS="crm,projects,webhooks"
    )
    await migrate.upgrade(settings, database_url, load_app_plugins(settings.plugins_allowlist).migration_folders())
    async with open_client(settings) as client:
        yield client


async def _document(api: AsyncTestClient[Any]) -> dict[str, Any]:
    response = await api.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def _crm_tenant(api: AsyncTestClient[Any]) -> dict[str, str]:
    tenant = await new_tenant(api, "oas")
    headers = {"X-Tenant-ID": tenant["slug"]}
    assert (await api.post("/api/modules/crm/enable", headers=headers)).status_code == 200
    return headers


async def test_security_and_errors_are_declared_on_every_operation(api: AsyncTestClient[Any]) -> None:
    document = await _document(api)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = document["paths"]
    assert paths["/health"]["get"]["security"] == []
    assert paths["/api/auth/login"]["post"]["security"] == []
    contacts = paths["/api/crm/contacts"]
    assert contacts["get"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert {"400", "401", "403", "404", "422", "429", "503"} <= set(contacts["get"]["responses"])
    assert {"409", "413", "415", "422"} <= set(contacts["post"]["responses"])
    patch = paths["/api/crm/contacts/{contact_id}"]["patch"]
    assert {"412", "428", "409", "404"} <= set(patch["responses"])
    assert any(p["name"] == "If-Match" and p["in"] == "header" for p in patch["parameters"])
    assert "402" in paths["/api/ai/chat"]["post"]["responses"]
    # Every error answer is problem+json; 422 names its errors; no Litestar-shaped 400 is left.
    for item in paths.values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (status, response)
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance", "request_id", "errors"} <= set(problem["properties"])
    assert contacts["post"]["responses"]["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationProblem"
    }


async def test_request_schemas_carry_what_the_server_enforces(api: AsyncTestClient[Any]) -> None:
    schemas = (await _document(api))["components"]["schemas"]
    assert schemas["ContactCreate"]["additionalProperties"] is False
    assert schemas["ColumnPatch"]["properties"]["position"]["minimum"] == 0
    assert schemas["TaskIn"]["properties"]["priority"]["enum"] == ["high", "low", "normal", "urgent"]
    version = schemas["RenderRequest"]["properties"]["version"]["anyOf"][0]
    assert version["maximum"] == 2**31 - 1
    headers = await _crm_tenant(api)
    unknown = await api.post("/api/crm/contacts", json={"first_name": "A", "nickname": "x"}, headers=headers)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "nickname"
    # JSON types are strict: 0 is not a boolean, "5" is not an integer.
    pipeline = await api.post(
        "/api/crm/pipelines", json={"name": "P", "stages": [{"name": "S"}], "is_default": 0}, headers=headers
    )
    assert pipeline.status_code == 422 and pipeline.json()["errors"][0]["field"] == "is_default"
    assert pipeline.headers["content-type"] == "application/problem+json"
    # A body field named like a dependency of the app (``tenant``) is checked like any other.
    switch = await api.post("/api/auth/switch-tenant", json={"tenant": ""}, headers=headers)
    assert switch.status_code == 422 and switch.json()["errors"][0]["field"] == "tenant"


async def test_dates_in_queries_are_rfc3339_text(api: AsyncTestClient[Any]) -> None:
    headers = await _crm_tenant(api)
    refused = await api.get("/api/crm/contacts", params={"created_before": "0.5"}, headers=headers)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "created_before"
    taken = await api.get("/api/crm/contacts", params={"created_before": "2030-01-01T00:00:00Z"}, headers=headers)
    assert taken.status_code == 200, taken.text


async def test_csv_is_documented_and_sent_as_text_csv_with_one_charset(api: AsyncTestClient[Any]) -> None:
    paths = (await _document(api))["paths"]
    assert list(paths["/api/crm/contacts/export"]["get"]["responses"]["200"]["content"]) == ["text/csv"]
    assert list(paths["/api/crm/contacts/import"]["post"]["requestBody"]["content"]) == ["text/csv"]
    headers = await _crm_tenant(api)
    export = await api.get("/api/crm/contacts/export", headers=headers)
    assert export.status_code == 200 and export.headers["content-type"] == "text/csv; charset=utf-8"


async def test_allow_lists_every_method_of_the_path(api: AsyncTestClient[Any]) -> None:
    headers = await _crm_tenant(api)
    options = await api.options("/api/crm/contacts", headers=headers)
    assert options.status_code == 204 and options.headers["allow"] == "GET, OPTIONS, POST"
    one = await api.options("/api/crm/contacts/01a229e1-3d3f-7de1-b9d3-4acb2cac497d", headers=headers)
    assert one.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    refused = await api.put("/api/crm/contacts", json={}, headers=headers)
    assert refused.status_code == 405 and set(refused.headers["allow"].split(", ")) == {"GET", "OPTIONS", "POST"}


def _operations(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        operation["operationId"]: (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }


async def test_creating_operations_link_to_what_they_created(api: AsyncTestClient[Any]) -> None:
    """Links (for schemathesis' stateful phase) are derived from the routes: a POST answering an
    object with an ``id`` leads to the operations of the path below it, with that id."""
    document = await _document(api)
    operations = _operations(document)
    links = document["paths"]["/api/crm/contacts"]["post"]["responses"]["201"]["links"]
    targets = {operations[link["operationId"]]: link["parameters"] for link in links.values()}
    one = "/api/crm/contacts/{contact_id}"
    assert set(targets) == {(one, "get"), (one, "patch"), (one, "delete")}
    assert all(parameters == {"contact_id": "$response.body#/id"} for parameters in targets.values())
    # A resource below another passes the parent's id on from the request's path.
    nested = [
        link
        for item in document["paths"].values()
        for link in item.get("post", {}).get("responses", {}).get("201", {}).get("links", {}).values()
        if any(value.startswith("$request.path.") for value in link["parameters"].values())
    ]
    every = [
        link
        for item in document["paths"].values()
        for response in item.get("post", {}).get("responses", {}).values()
        for link in response.get("links", {}).values()
    ]
    print(f"\n{len(every)} links, {len(nested)} of them below another resource")
    assert nested and len(every) >= 20
    for link in every:  # every link names an operation that exists, and each of its path parameters
        path, method = operations[link["operationId"]]
        assert set(link["parameters"]) == {p["name"] for p in document["paths"][path][method]["parameters"]
                                           if p["in"] == "path"}

    # Followed over HTTP: the created contact's id answers in its tenant, and 404 in another.
    headers = await _crm_tenant(api)
    other = await _crm_tenant(api)
    created = await api.post("/api/crm/contacts", json={"first_name": "Linked"}, headers=headers)
    assert created.status_code == 201, created.text
    path = one.replace("{contact_id}", created.json()[targets[(one, "get")]["contact_id"].rpartition("/")[2]])
    assert (await api.get(path, headers=headers)).json()["first_name"] == "Linked"
    assert (await api.get(path, headers=other)).status_code == 404
