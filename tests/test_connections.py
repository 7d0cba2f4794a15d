"""Connections over HTTP with two tenants: sealed credentials, checks, OAuth 2.0 with PKCE against a
local provider, refresh before expiry, broken connections, and the 409 while something uses one.

The credential types are the ``http`` connector's (bearer, basic, API key, OAuth 2.0); the local
provider (connectors/http/tests/local_api.py) speaks the real token endpoint protocol, reached
through the egress client with 127.0.0.1 on the operator allowlist.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from connectors.http.credentials import BearerToken, OAuth2
from connectors.http.tests.local_api import LocalApi, local_api
from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.errors import NotFound, Unprocessable
from kernel.settings import Settings
from tests.conftest import new_tenant, open_client, other_process, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

TOKEN = "tok-" + "s3cr3t" * 5


@pytest.fixture(scope="module")
def api() -> Iterator[LocalApi]:
    with local_api() as running:
        running.bearer_tokens.add(TOKEN)
        yield running


def _settings(base: Settings, tmp: Path, plugins: str) -> Settings:
    assert base.database_url and base.redis_url
    return settings_for(
        base.database_url, base.redis_url, tmp, BUSINESSOS_PLUGINS=plugins,
        BUSINESSOS_EGRESS_ALLOW_NETWORKS="127.0.0.1/32",
    )


@pytest.fixture(scope="module")
def http_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _settings(settings, tmp_path_factory.mktemp("connections"), "http")


@pytest.fixture
async def client(http_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(http_settings) as c:
        yield c


async def _tenant(client: AsyncTestClient[Any], enable: bool = True) -> dict[str, str]:
    made = await new_tenant(client, "conn")
    headers = {"X-Tenant-ID": made["slug"]}
    if enable:
        response = await client.post("/api/modules/http/enable", headers=headers)
        assert response.status_code == 200, response.text
    return {**made, "headers": headers}  # type: ignore[dict-item]


async def _bearer(client: AsyncTestClient[Any], tenant: dict[str, Any], api: LocalApi, **extra: Any) -> dict[str, Any]:
    body = {
        "type": "http.bearer", "name": extra.pop("name", f"api-{uuid.uuid4().hex[:6]}"),
        "credentials": {"token": TOKEN, "check_url": f"{api.url}/api/me", **extra},
    }
    response = await client.post("/api/connections", json=body, headers=tenant["headers"])
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_types_are_those_of_enabled_modules_with_secret_fields_marked(client: AsyncTestClient[Any]) -> None:
    off = await _tenant(client, enable=False)
    response = await client.get("/api/connections/types", headers=off["headers"])
    assert response.status_code == 200 and response.json() == {"types": []}
    on = await _tenant(client)
    types = {t["key"]: t for t in (await client.get("/api/connections/types", headers=on["headers"])).json()["types"]}
    assert set(types) == {"http.bearer", "http.basic", "http.api_key", "http.oauth2"}
    bearer = types["http.bearer"]
    assert bearer["secret_fields"] == ["token"] and bearer["checkable"] and not bearer["oauth"]
    properties = bearer["schema"]["$defs"]["BearerToken"]["properties"]
    assert properties["token"]["writeOnly"] is True and "writeOnly" not in properties["check_url"]
    assert types["http.oauth2"]["oauth"] and "client_secret" in types["http.oauth2"]["secret_fields"]


async def test_a_connection_answers_masked_and_only_to_its_tenant(
    client: AsyncTestClient[Any], api: LocalApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    owner, other = await _tenant(client), await _tenant(client)
    made = await _bearer(client, owner, api, name="Billing API")
    assert made["secrets"] == {"token": "••••" + TOKEN[-4:]}
    assert made["fields"] == {"check_url": f"{api.url}/api/me"} and made["status"] == "active"
    path = f"/api/connections/{made['id']}"
    for response in [
        await client.get(path, headers=owner["headers"]),
        await client.get("/api/connections", headers=owner["headers"]),
    ]:
        assert response.status_code == 200 and TOKEN not in response.text
    listed = (await client.get("/api/connections", headers=owner["headers"])).json()
    assert [c["name"] for c in listed["connections"]] == ["Billing API"] and listed["pagination"]["total"] == 1
    # The other tenant: every route answers 404 for the id, and its list is empty.
    assert (await client.get(path, headers=other["headers"])).status_code == 404
    assert (await client.patch(path, json={"name": "x"}, headers=other["headers"])).status_code == 404
    assert (await client.post(path + "/test", headers=other["headers"])).status_code == 404
    assert (await client.delete(path, headers=other["headers"])).status_code == 404
    assert (await client.get("/api/connections", headers=other["headers"])).json()["connections"] == []
    # Stored sealed: the token is nowhere in the row in clear.
    audit = await client.get("/api/audit/logs", headers=owner["headers"], params={"limit": 100})
    assert audit.status_code == 200 and TOKEN not in audit.text and "connection.created" in audit.text
    assert TOKEN not in caplog.text


async def test_credentials_that_do_not_fit_answer_422_naming_the_field(
    client: AsyncTestClient[Any], api: LocalApi
) -> None:
    tenant = await _tenant(client)
    cases = [
        ({"type": "http.bearer", "name": "a", "credentials": {}}, "credentials.token"),
        ({"type": "http.api_key", "name": "a", "credentials": {"name": "k", "value": "v", "location": "body"}},
         "credentials.location"),
        ({"type": "http.bearer", "name": "a", "credentials": {"token": 5}}, "credentials.token"),
        ({"type": "nope.kind", "name": "a", "credentials": {}}, "type"),
        ({"type": "http.bearer", "name": " ", "credentials": {"token": "t"}}, "name"),
    ]
    for body, field in cases:
        response = await client.post("/api/connections", json=body, headers=tenant["headers"])
        assert response.status_code == 422, (body, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field], response.text
    await _bearer(client, tenant, api, name="same")
    again = await client.post(
        "/api/connections", json={"type": "http.bearer", "name": "same", "credentials": {"token": "t"}},
        headers=tenant["headers"],
    )
    assert again.status_code == 409


async def test_rename_and_replace_are_audited_without_secrets(client: AsyncTestClient[Any], api: LocalApi) -> None:
    tenant = await _tenant(client)
    made = await _bearer(client, tenant, api, name="old")
    path = f"/api/connections/{made['id']}"
    renamed = await client.patch(path, json={"name": "new"}, headers=tenant["headers"])
    assert renamed.status_code == 200 and renamed.json()["name"] == "new"
    other_secret = "replaced-" + "z" * 20
    replaced = await client.patch(path, json={"credentials": {"token": other_secret}}, headers=tenant["headers"])
    assert replaced.status_code == 200 and replaced.json()["secrets"] == {"token": "••••zzzz"}
    bad = await client.patch(path, json={"credentials": {"token": None}}, headers=tenant["headers"])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "credentials.token"
    logs = (await client.get("/api/audit/logs", headers=tenant["headers"], params={"limit": 100})).text
    assert "connection.renamed" in logs and "connection.updated" in logs
    assert TOKEN not in logs and other_secret not in logs and "zzzz" not in logs


async def test_testing_a_connection_says_what_failed(client: AsyncTestClient[Any], api: LocalApi) -> None:
    tenant = await _tenant(client)
    good = await _bearer(client, tenant, api)
    ok = await client.post(f"/api/connections/{good['id']}/test", headers=tenant["headers"])
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["error"] is None
    assert (await client.get(f"/api/connections/{good['id']}", headers=tenant["headers"])).json()["last_check"]["ok"]

    wrong = "wrong-token-" + "q" * 20
    bad = (await client.post("/api/connections", headers=tenant["headers"], json={
        "type": "http.bearer", "name": "bad", "credentials": {"token": wrong, "check_url": f"{api.url}/api/me"},
    })).json()
    failed = await client.post(f"/api/connections/{bad['id']}/test", headers=tenant["headers"])
    assert failed.status_code == 200, failed.text
    answer = failed.json()
    assert answer["ok"] is False and answer["error"]["status"] == 403 and "401" in answer["error"]["detail"]
    assert wrong not in failed.text
    shown = (await client.get(f"/api/connections/{bad['id']}", headers=tenant["headers"])).json()
    assert shown["last_check"]["ok"] is False and "401" in shown["last_check"]["error"]

    unchecked = (await client.post("/api/connections", headers=tenant["headers"], json={
        "type": "http.basic", "name": "no url", "credentials": {"username": "u", "password": "p" * 20},
    })).json()
    answer = (await client.post(f"/api/connections/{unchecked['id']}/test", headers=tenant["headers"])).json()
    assert answer["ok"] is False and answer["error"]["errors"][0]["field"] == "credentials.check_url"

    # A key sent in the query, refused, and the URL in the failure does not show it.
    key = "key-" + "k" * 24
    keyed = (await client.post("/api/connections", headers=tenant["headers"], json={
        "type": "http.api_key", "name": "query key",
        "credentials": {"name": "api_key", "value": key, "location": "query", "check_url": f"{api.url}/api/me"},
    })).json()
    answer_response = await client.post(f"/api/connections/{keyed['id']}/test", headers=tenant["headers"])
    assert answer_response.json()["ok"] is False and key not in answer_response.text
    api.api_keys.add(key)
    assert (await client.post(f"/api/connections/{keyed['id']}/test", headers=tenant["headers"])).json()["ok"]


def _users_plugin(name: str, marker: Path) -> FakePlugin:
    body = f"""
    import uuid

    async def users(services, tenant_id, connection_id):
        used = open({str(marker)!r}).read().split() if Path({str(marker)!r}).exists() else []
        return ["workflow 'Sync leads' (version 2)"] if str(connection_id) in used else []

    @sdk.hookimpl
    def businessos_connection_users():
        return users
    """
    return FakePlugin(name=name, source=plugin_source(name, body))


async def test_delete_answers_409_naming_what_uses_the_connection(
    settings: Settings, api: LocalApi, tmp_path: Path
) -> None:
    name = unique("wfuse")
    marker = tmp_path / "used"
    with installed(tmp_path, _users_plugin(name, marker)):
        own = _settings(settings, tmp_path / "data", f"http,{name}")
        async with open_client(own) as client:
            tenant = await _tenant(client)
            made = await _bearer(client, tenant, api)
            marker.write_text(made["id"])
            refused = await client.delete(f"/api/connections/{made['id']}", headers=tenant["headers"])
            assert refused.status_code == 409, refused.text
            assert refused.json()["used_by"] == ["workflow 'Sync leads' (version 2)"]
            assert "Sync leads" in refused.json()["detail"]
            marker.write_text("")
            gone = await client.delete(f"/api/connections/{made['id']}", headers=tenant["headers"])
            assert gone.status_code == 204
            assert (await client.get(f"/api/connections/{made['id']}", headers=tenant["headers"])).status_code == 404
            logs = (await client.get("/api/audit/logs", headers=tenant["headers"], params={"limit": 100})).text
            assert "connection.deleted" in logs and TOKEN not in logs


async def test_nodes_open_only_their_tenants_and_their_plugins_connections(
    client: AsyncTestClient[Any], api: LocalApi, http_settings: Settings
) -> None:
    owner, other = await _tenant(client), await _tenant(client)
    made = await _bearer(client, owner, api)
    connection_id = uuid.UUID(made["id"])
    async with other_process(http_settings) as kernel:
        services = kernel.services("http")
        creds = await services.connections.open(uuid.UUID(owner["id"]), connection_id, BearerToken)
        assert isinstance(creds, BearerToken) and creds.token == TOKEN
        with pytest.raises(NotFound):
            await services.connections.open(uuid.UUID(other["id"]), connection_id)
        with pytest.raises(Unprocessable) as wrong_schema:
            await services.connections.open(uuid.UUID(owner["id"]), connection_id, OAuth2)
        assert wrong_schema.value.errors[0].field == "connection"
        with pytest.raises(Unprocessable) as other_plugin:
            await kernel.services("crm").connections.open(uuid.UUID(owner["id"]), connection_id)
        assert other_plugin.value.errors[0].field == "connection"


# -- OAuth 2.0 -------------------------------------------------------------------------------------


async def _authorize(
    client: AsyncTestClient[Any], tenant: dict[str, Any], api: LocalApi, name: str, **start: Any
) -> tuple[httpx.Response, str]:
    body = {
        "type": "http.oauth2", "name": name,
        "credentials": {
            "client_id": "client-1", "client_secret": "client-secret-1", "authorize_url": f"{api.url}/oauth/authorize",
            "token_url": f"{api.url}/oauth/token", "scopes": ["read", "write"], "check_url": f"{api.url}/api/me",
        },
        **start,
    }
    started = await client.post("/api/connections/oauth/start", json=body, headers=tenant["headers"])
    assert started.status_code == 200, started.text
    url = started.json()["authorize_url"]
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["scope"] == ["read write"]
    assert query["redirect_uri"] == ["http://testserver.local/api/connections/oauth/callback"]
    async with httpx.AsyncClient() as browser:  # the user's browser at the provider
        consent = await browser.get(url)
    assert consent.status_code == 302, consent.text
    location = urlsplit(consent.headers["location"])
    # The browser back at the callback, without credentials.
    callback = await client.get(f"{location.path}?{location.query}", follow_redirects=False)
    return callback, location.query


async def test_oauth_authorization_code_with_pkce_stores_sealed_tokens(
    client: AsyncTestClient[Any], api: LocalApi, http_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant, other = await _tenant(client), await _tenant(client)
    callback, query = await _authorize(client, tenant, api, "Provider")
    assert callback.status_code == 200, callback.text
    made = callback.json()
    assert made["oauth"] and made["status"] == "active" and made["name"] == "Provider"
    assert set(made["secrets"]) == {"client_secret", "access_token", "refresh_token"}
    exchange = api.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code" and len(exchange["code_verifier"]) >= 43
    # The state is single-use.
    again = await client.get(f"/api/connections/oauth/callback?{query}")
    assert again.status_code == 404 and again.json()["errors"][0]["field"] == "state"
    assert (await client.get(f"/api/connections/{made['id']}", headers=other["headers"])).status_code == 404
    async with other_process(http_settings) as kernel:
        creds = await kernel.services("http").connections.open(uuid.UUID(tenant["id"]), uuid.UUID(made["id"]), OAuth2)
        assert creds.access_token in api.access_tokens
        tokens = [creds.access_token, creds.refresh_token]
    tested = await client.post(f"/api/connections/{made['id']}/test", headers=tenant["headers"])
    assert tested.json()["ok"] is True
    for response in [callback, tested, await client.get("/api/connections", headers=tenant["headers"])]:
        assert not any(t in response.text for t in tokens) and "client-secret-1" not in response.text
    logs = (await client.get("/api/audit/logs", headers=tenant["headers"], params={"limit": 100})).text
    assert "connection.authorized" in logs and not any(t in logs for t in tokens)
    assert not any(t in caplog.text for t in tokens)


async def test_oauth_start_checks_its_input_and_a_refusal_comes_back_to_the_redirect(
    client: AsyncTestClient[Any], api: LocalApi
) -> None:
    tenant = await _tenant(client)
    bearer = await client.post("/api/connections/oauth/start", headers=tenant["headers"], json={
        "type": "http.bearer", "name": "x", "credentials": {"token": "t"},
    })
    assert bearer.status_code == 422 and bearer.json()["errors"][0]["field"] == "type"
    no_url = await client.post("/api/connections/oauth/start", headers=tenant["headers"], json={
        "type": "http.oauth2", "name": "x", "credentials": {"client_id": "c", "token_url": f"{api.url}/oauth/token"},
    })
    assert no_url.status_code == 422 and no_url.json()["errors"][0]["field"] == "credentials.authorize_url"
    unknown = await client.get("/api/connections/oauth/callback?state=nope&code=x")
    assert unknown.status_code == 404
    started = await client.post("/api/connections/oauth/start", headers=tenant["headers"], json={
        "type": "http.oauth2", "name": "denied", "redirect": "https://app.example/connections",
        "credentials": {"client_id": "client-1", "authorize_url": f"{api.url}/oauth/authorize",
                        "token_url": f"{api.url}/oauth/token"},
    })
    state = started.json()["state"]
    denied = await client.get(
        f"/api/connections/oauth/callback?state={state}&error=access_denied", follow_redirects=False
    )
    assert denied.status_code == 303
    assert denied.headers["location"] == "https://app.example/connections?error=access_denied"
    # A good one with a redirect: back to the app with the connection's id.
    callback, _ = await _authorize(client, tenant, api, "redirected", redirect="https://app.example/c?x=1")
    assert callback.status_code == 303 and callback.headers["location"].startswith("https://app.example/c?x=1&connection_id=")


async def _outbox(settings: Settings, tenant_id: str, event: str) -> list[dict[str, Any]]:
    async with other_process(settings) as kernel, kernel.db.tenant(uuid.UUID(tenant_id)) as session:
        rows = await session.execute(
            text("select payload from events_outbox where event = :e order by id"), {"e": event}
        )
        return [r.payload for r in rows]


async def test_tokens_refresh_before_expiry_and_a_refused_refresh_breaks_the_connection(
    client: AsyncTestClient[Any], api: LocalApi, http_settings: Settings
) -> None:
    tenant = await _tenant(client)
    tenant_id = uuid.UUID(tenant["id"])
    api.expires_in = 60  # inside the refresh margin: every open refreshes first
    try:
        callback, _ = await _authorize(client, tenant, api, "short-lived")
        made = callback.json()
        connection_id = uuid.UUID(made["id"])
        async with other_process(http_settings) as kernel:
            services = kernel.services("http")
            first = (await services.connections.open(tenant_id, connection_id, OAuth2)).access_token
            second = (await services.connections.open(tenant_id, connection_id, OAuth2)).access_token
            assert first != second and second in api.access_tokens
            assert [r["grant_type"] for r in api.token_requests[-2:]] == ["refresh_token", "refresh_token"]
            # The cron job refreshes what expires soon.
            before = len(api.token_requests)
            assert await kernel.connections.refresh_expiring(timedelta(minutes=10)) >= 1
            assert len(api.token_requests) > before
            # The provider revokes the grant: the connection breaks, once, with an event.
            api.refuse_refresh = True
            with pytest.raises(Exception) as broken:
                await services.connections.open(tenant_id, connection_id, OAuth2)
            assert getattr(broken.value, "status", None) == 409 and "invalid_grant" in str(broken.value)
            with pytest.raises(Exception) as still:
                await services.connections.open(tenant_id, connection_id, OAuth2)
            assert getattr(still.value, "status", None) == 409
        shown = (await client.get(f"/api/connections/{made['id']}", headers=tenant["headers"])).json()
        assert shown["status"] == "broken" and "invalid_grant" in shown["broken_reason"]
        events = await _outbox(http_settings, tenant["id"], "kernel.connection.broken")
        assert [(e["connection_id"], e["name"]) for e in events] == [(made["id"], "short-lived")]
        tested = (await client.post(f"/api/connections/{made['id']}/test", headers=tenant["headers"])).json()
        assert tested["ok"] is False and tested["error"]["status"] == 409
        # Authorizing it again makes it active.
        api.refuse_refresh = False
        api.expires_in = 3600
        again, _ = await _authorize(client, tenant, api, "short-lived", connection_id=made["id"])
        assert again.status_code == 200 and again.json()["status"] == "active" and again.json()["id"] == made["id"]
    finally:
        api.refuse_refresh = False
        api.expires_in = 3600


async def test_the_connections_table_is_under_forced_row_level_security(http_settings: Settings) -> None:
    async with other_process(http_settings) as kernel, kernel.db.global_() as session:
        row = (await session.execute(text(
            "select relrowsecurity, relforcerowsecurity from pg_class where relname = 'connections'"
        ))).one()
        assert row == (True, True)
        # Without a tenant set, nothing answers.
        assert (await session.execute(text("select count(*) from connections"))).scalar_one() == 0


def test_migrations_of_the_http_plugin_are_none(http_settings: Settings) -> None:
    # The http connector has no tables: the kernel's connections table serves it.
    assert load_app_plugins(http_settings.plugins_allowlist).migration_folders() == {}
    assert migrate is not None


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ('[sdk.CredentialType(key="other.token", title="T", schema=Creds)]', "is not named"),
        ('[sdk.CredentialType(key=NAME + ".t", title="T", schema=dict)]', "must be a msgspec.Struct"),
        ('[sdk.CredentialType(key=NAME + ".t", title="T", schema=Creds, secret_fields=("nope",))]', "'nope'"),
        (
            '[sdk.CredentialType(key=NAME + ".t", title="T", schema=Creds, oauth=sdk.OAuth2Config())]',
            "OAuth2Credentials",
        ),
        ('[sdk.CredentialType(key=NAME + ".t", title="T", schema=Creds)] * 2', "declared twice"),
    ],
)
def test_an_unusable_credential_type_disables_its_plugin_with_the_reason(
    tmp_path: Path, types: str, expected: str
) -> None:
    name = unique("creds")
    body = f"""
    class Creds(msgspec.Struct):
        token: sdk.Secret

    @sdk.hookimpl
    def businessos_credentials():
        return {types}
    """
    with installed(tmp_path, FakePlugin(name=name, source=plugin_source(name, body))):
        record = load_app_plugins(frozenset({name})).get(name)
    assert record is not None and record.reason is not None and expected in record.reason, record.reason
