"""Inbound webhooks, from outside: senders post to ``/hooks/<plugin>/<token>``.

A test plugin declares two webhook routes (one verifying Standard Webhooks signatures, one a
Slack-style HMAC with a timestamp), keeps each delivery in a tenant table, and lets a tenant's
owner manage endpoints and signing secrets. Two tenants use it; deliveries are signed with the
reference ``standardwebhooks`` package or plain ``hmac``, as a real sender would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook

from kernel import sdk
from kernel.app import load_app_plugins
from kernel.identity.tokens import OpaqueSecret
from kernel.settings import Settings
from tests.conftest import eventually, new_tenant, open_client, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, tenant_table_migration, unique
from tests.test_modules import migrated

PLUGIN = """
import sqlalchemy as sa
from litestar import Request, delete, put

PERM = {"permission": NAME + ".hooks.manage"}
SLACK = sdk.HmacScheme(
    header="X-Test-Signature", prefix="v0=", timestamp_header="X-Test-Timestamp", template="v0:{timestamp}:{body}"
)

async def keep(hook: sdk.InboundWebhook) -> None:
    async with hook.services.data.tenant(hook.tenant_id) as session:
        await session.execute(
            sa.text(
                f"insert into {NAME}_deliveries (tenant_id, id, route, body) values (:t, gen_random_uuid(), :r, :b)"
            ),
            {"t": hook.tenant_id, "r": hook.name, "b": hook.body.decode()},
        )

async def on_standard(hook: sdk.InboundWebhook) -> sdk.WebhookReply:
    await hook.verify_standard("standard.secret")
    await keep(hook)
    return sdk.WebhookReply(content={"received": True})

async def on_slack(hook: sdk.InboundWebhook) -> None:
    await hook.verify_hmac("slack.secret", SLACK)
    await keep(hook)

class EndpointIn(msgspec.Struct):
    name: str

class SecretIn(msgspec.Struct):
    value: str

@post(f"/api/{NAME}/endpoints", opt=PERM)
async def create(data: EndpointIn, tenant: sdk.Tenant, services: sdk.Services) -> sdk.WebhookEndpointCreated:
    return await services.webhooks.create(tenant.id, data.name)

@post(f"/api/{NAME}/endpoints/{{endpoint_id:uuid}}/rotate", opt=PERM)
async def rotate(endpoint_id: Any, tenant: sdk.Tenant, services: sdk.Services) -> sdk.WebhookEndpointCreated:
    return await services.webhooks.rotate(tenant.id, endpoint_id)

@delete(f"/api/{NAME}/endpoints/{{endpoint_id:uuid}}", opt=PERM, status_code=200)
async def revoke(endpoint_id: Any, tenant: sdk.Tenant, services: sdk.Services) -> sdk.WebhookEndpoint:
    return await services.webhooks.revoke(tenant.id, endpoint_id)

@get(f"/api/{NAME}/endpoints", opt=PERM)
async def endpoints(tenant: sdk.Tenant, services: sdk.Services) -> list[sdk.WebhookEndpoint]:
    return await services.webhooks.list(tenant.id)

@put(f"/api/{NAME}/secrets/{{name:str}}", opt=PERM, status_code=204)
async def store(name: str, data: SecretIn, tenant: sdk.Tenant, services: sdk.Services) -> None:
    await services.vault.put(tenant.id, name, data.value)

@get(f"/api/{NAME}/deliveries", opt=PERM)
async def deliveries(tenant: sdk.Tenant, services: sdk.Services) -> list[str]:
    async with services.data.tenant(tenant.id) as session:
        rows = await session.execute(sa.text(f"select body from {NAME}_deliveries order by body"))
        return [r.body for r in rows]

@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [create, rotate, revoke, endpoints, store, deliveries]

@sdk.hookimpl
def businessos_permissions() -> list[sdk.Permission]:
    return [sdk.Permission(NAME + ".hooks.manage")]

@sdk.hookimpl
def businessos_webhook_routes() -> list[sdk.WebhookRoute]:
    return [sdk.WebhookRoute("standard", on_standard), sdk.WebhookRoute("slack", on_slack)]

@sdk.hookimpl
def businessos_migrations() -> Path:
    return Path(__file__).parent / "migrations"
"""


def hooks_plugin(name: str) -> FakePlugin:
    migration = tenant_table_migration(
        name,
        f"{name}_deliveries",
        'sa.Column("route", sa.Text(), nullable=False), sa.Column("body", sa.Text(), nullable=False)',
    )
    return FakePlugin(name, plugin_source(name, PLUGIN), files={"migrations/first.py": migration})


def scoped(settings: Settings, tmp_path: Path, name: str, **env: str) -> Settings:
    assert settings.database_url and settings.redis_url
    return settings_for(settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS=name, **env)


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def standard_headers(secret: str, body: bytes, *, at: datetime | None = None) -> dict[str, str]:
    """Headers a Standard Webhooks sender attaches (signed with the reference package)."""
    at = at or datetime.now(UTC)
    msg_id = f"msg_{uuid.uuid4().hex}"
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode()),
        "content-type": "application/json",
    }


def slack_headers(secret: str, body: bytes, *, at: int | None = None) -> dict[str, str]:
    stamp = str(at if at is not None else int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Test-Signature": f"v0={digest}", "X-Test-Timestamp": stamp}


async def setup_tenant(client: AsyncTestClient[Any], name: str, prefix: str) -> dict[str, Any]:
    """A tenant with the plugin enabled, both signing secrets stored and an endpoint per route."""
    tenant = await new_tenant(client, prefix)
    headers = {"X-Tenant-ID": tenant["slug"]}
    assert (await client.post(f"/api/modules/{name}/enable", headers=headers)).status_code == 200
    secrets = {"standard": whsec(), "slack": f"slack-{uuid.uuid4().hex}"}
    for route, value in secrets.items():
        stored = await client.put(f"/api/{name}/secrets/{route}.secret", json={"value": value}, headers=headers)
        assert stored.status_code == 204, stored.text
    paths = {}
    for route in secrets:
        created = await client.post(f"/api/{name}/endpoints", json={"name": route}, headers=headers)
        assert created.status_code == 201, created.text
        paths[route] = created.json()["path"]
        assert paths[route].startswith(f"/hooks/{name}/whk_")
    return {**tenant, "headers": headers, "secrets": secrets, "paths": paths, "ids": {}}


async def deliveries(client: AsyncTestClient[Any], name: str, tenant: dict[str, Any]) -> list[str]:
    response = await client.get(f"/api/{name}/deliveries", headers=tenant["headers"])
    assert response.status_code == 200, response.text
    return list(response.json())


def anonymous(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


Tenant = dict[str, Any]


@asynccontextmanager
async def two_tenants(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, Any, Tenant, Tenant]]:
    """A fresh webhook plugin, installed and migrated, and two tenants set up for it."""
    name = unique("hk")
    with installed(tmp_path, hooks_plugin(name)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, await migrated(s)) as client:
            yield name, client, await setup_tenant(client, name, "ha"), await setup_tenant(client, name, "hb")


async def test_a_signed_delivery_reaches_only_its_tenant_and_bad_ones_are_refused(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_tenants(settings, tmp_path) as (name, client, a, b):
        body = b'{"type": "invoice.paid", "n": 1}'

        # A valid Standard Webhooks delivery to A runs the handler in A, and only A.
        signed = standard_headers(a["secrets"]["standard"], body)
        ok = await client.post(a["paths"]["standard"], content=body, headers=signed)
        assert ok.status_code == 200 and ok.json() == {"received": True}, ok.text
        assert await deliveries(client, name, a) == [body.decode()]
        assert await deliveries(client, name, b) == []
        # A sender's own Authorization header is not taken for our credentials.
        auth = {**standard_headers(a["secrets"]["standard"], b'{"n": 2}'), "Authorization": "Basic dXNlcjpwYXNz"}
        assert (await client.post(a["paths"]["standard"], content=b'{"n": 2}', headers=auth)).status_code == 200

        # Forged (B's secret), tampered (body changed after signing), replayed (ten minutes
        # old), unsigned: all 401, and the handler never ran.
        old = datetime.now(UTC) - timedelta(minutes=10)
        refused = {
            "forged": (body, standard_headers(b["secrets"]["standard"], body)),
            "tampered": (b'{"type": "invoice.paid", "n": 9}', standard_headers(a["secrets"]["standard"], body)),
            "replayed": (body, standard_headers(a["secrets"]["standard"], body, at=old)),
            "unsigned": (body, {"content-type": "application/json"}),
            "garbled": (body, {**standard_headers(a["secrets"]["standard"], body), "webhook-signature": "v1"}),
        }
        for case, (content, headers) in refused.items():
            response = await client.post(a["paths"]["standard"], content=content, headers=headers)
            problem = anonymous(response, 401)
            assert problem["type"].endswith("/invalid-signature"), (case, problem)
            assert a["secrets"]["standard"] not in response.text
        assert len(await deliveries(client, name, a)) == 2

        # Provider-style HMAC with a timestamp: valid, wrong secret, stale timestamp.
        slack = b"token=x&text=hello"
        good = await client.post(
            a["paths"]["slack"], content=slack, headers=slack_headers(a["secrets"]["slack"], slack)
        )
        assert good.status_code == 204, good.text
        for headers in (
            slack_headers(b["secrets"]["slack"], slack),
            slack_headers(a["secrets"]["slack"], slack, at=int(time.time()) - 600),
            {**slack_headers(a["secrets"]["slack"], slack), "X-Test-Signature": "v0=zz"},
        ):
            anonymous(await client.post(a["paths"]["slack"], content=slack, headers=headers), 401)
        assert await deliveries(client, name, a) == sorted([body.decode(), '{"n": 2}', slack.decode()])

        # A token of A sent with B's signature under B's plugin path: nothing of B is reached.
        assert await deliveries(client, name, b) == []

        # Every delivery that reached A's handler is in A's audit log, with its outcome.
        logs = await client.get("/api/audit/logs?action=webhook.received&limit=100", headers=a["headers"])
        received = logs.json()["items"]
        assert all(e["actor"].startswith("webhook:") and e["details"]["plugin"] == name for e in received)
        results = sorted(e["result"] for e in received)
        assert results.count("success") == 3 and results.count("rejected") == 8, results
        b_logs = (await client.get("/api/audit/logs", headers=b["headers"])).text
        assert "webhook.received" not in b_logs


async def test_unknown_revoked_rotated_and_disabled_endpoints_answer_the_same_404(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_tenants(settings, tmp_path) as (name, client, a, b):
        body = b'{"n": 1}'

        def signed(tenant: dict[str, Any]) -> dict[str, str]:
            return standard_headers(tenant["secrets"]["standard"], body)

        async def status(path: str, tenant: dict[str, Any] = a) -> int:
            response = await client.post(path, content=body, headers=signed(tenant))
            if response.status_code == 404:
                assert response.json()["detail"] == "no such webhook endpoint", response.text
            return response.status_code

        path = a["paths"]["standard"]
        token = path.rsplit("/", 1)[1]
        assert await status(path) == 200
        # Unknown tokens: a well-formed one for A, garbage, A's token under another plugin's
        # path, and a well-formed token naming A that was made for B's endpoint's hash.
        assert await status(f"/hooks/{name}/{OpaqueSecret.new('whk', uuid.UUID(a['id'])).value}") == 404
        assert await status(f"/hooks/{name}/whk_nonsense") == 404
        assert await status(f"/hooks/other_plugin/{token}") == 404
        b_token = b["paths"]["standard"].rsplit("/", 1)[1]
        assert await status(f"/hooks/{name}/{b_token}", b) == 200

        # Undeclared routes cannot get an endpoint.
        bad = await client.post(f"/api/{name}/endpoints", json={"name": "nope"}, headers=a["headers"])
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "name"

        # Disabled module: 404; enabled again: delivered again.
        await client.post(f"/api/modules/{name}/disable", headers=a["headers"])
        assert await status(path) == 404
        await client.post(f"/api/modules/{name}/enable", headers=a["headers"])
        assert await status(path) == 200

        # Rotation: the old path dies at once, the new one works; revocation kills it.
        listed = (await client.get(f"/api/{name}/endpoints", headers=a["headers"])).json()
        endpoint = next(e for e in listed if e["name"] == "standard")
        assert "path" not in endpoint and token not in str(listed)
        rotated = await client.post(f"/api/{name}/endpoints/{endpoint['id']}/rotate", headers=a["headers"])
        assert rotated.status_code == 201, rotated.text
        new_path = rotated.json()["path"]
        assert new_path != path and await status(path) == 404 and await status(new_path) == 200
        # B cannot revoke A's endpoint (another tenant's id is not found).
        other = await client.delete(f"/api/{name}/endpoints/{endpoint['id']}", headers=b["headers"])
        assert other.status_code == 404
        revoked = await client.delete(f"/api/{name}/endpoints/{endpoint['id']}", headers=a["headers"])
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert await status(new_path) == 404
        assert await status(f"/hooks/{name}/{b_token}", b) == 200

        # Purging the module's data removes its endpoints in that tenant only.
        await client.post(f"/api/modules/{name}/disable", headers=a["headers"])
        purged = await client.delete(f"/api/modules/{name}/data", headers=a["headers"])
        assert purged.json()["deleted"]["webhook_endpoints"] == 2, purged.text
        await client.post(f"/api/modules/{name}/enable", headers=a["headers"])
        assert await status(a["paths"]["slack"]) == 404
        assert (await client.get(f"/api/{name}/endpoints", headers=a["headers"])).json() == []
        assert await status(f"/hooks/{name}/{b_token}", b) == 200


async def test_another_process_stops_accepting_a_cached_endpoint_once_it_is_rotated_revoked_or_purged(
    settings: Settings, tmp_path: Path
) -> None:
    """What a token opens is cached per process; a change made in one process reaches the cache of
    another through the invalidation bus, well before the entries' time to live."""
    async with two_tenants(settings, tmp_path) as (name, client, a, b):
        body = b'{"n": 1}'
        async with open_client(scoped(settings, tmp_path, name)) as other:

            async def status(path: str, tenant: Tenant = a) -> int:
                headers = standard_headers(tenant["secrets"]["standard"], body)
                return (await other.post(path, content=body, headers=headers)).status_code

            async def refused(path: str) -> bool:
                return await status(path) == 404

            path = a["paths"]["standard"]
            assert await status(path) == 200  # now cached in the other process
            listed = (await client.get(f"/api/{name}/endpoints", headers=a["headers"])).json()
            endpoint = next(e for e in listed if e["name"] == "standard")
            rotated = await client.post(f"/api/{name}/endpoints/{endpoint['id']}/rotate", headers=a["headers"])
            new_path = rotated.json()["path"]
            await eventually(lambda: refused(path))
            assert await status(new_path) == 200
            assert (await client.delete(f"/api/{name}/endpoints/{endpoint['id']}", headers=a["headers"])).is_success
            await eventually(lambda: refused(new_path))

            # Purged with the module's data: gone there too once the module is back.
            slack = a["paths"]["slack"]
            signed = slack_headers(a["secrets"]["slack"], body)
            assert (await other.post(slack, content=body, headers=signed)).status_code == 204
            await client.post(f"/api/modules/{name}/disable", headers=a["headers"])
            assert (await client.delete(f"/api/modules/{name}/data", headers=a["headers"])).is_success
            await client.post(f"/api/modules/{name}/enable", headers=a["headers"])
            secret = await client.put(
                f"/api/{name}/secrets/standard.secret", json={"value": a["secrets"]["standard"]}, headers=a["headers"]
            )
            assert secret.status_code == 204
            fresh = (await client.post(f"/api/{name}/endpoints", json={"name": "standard"}, headers=a["headers"]))
            fresh_path = fresh.json()["path"]

            async def enabled_again() -> bool:
                return await status(fresh_path) == 200

            await eventually(enabled_again)  # the other process has seen the module enabled again
            signed = slack_headers(a["secrets"]["slack"], body)
            assert (await other.post(slack, content=body, headers=signed)).status_code == 404
            assert await status(b["paths"]["standard"], b) == 200


async def test_deliveries_are_rate_limited_per_token(settings: Settings, tmp_path: Path) -> None:
    name = unique("hk")
    with installed(tmp_path, hooks_plugin(name)):
        s = scoped(settings, tmp_path, name)
        async with open_client(s, await migrated(s)) as client:
            a = await setup_tenant(client, name, "he")
        # The same database, served by a process whose limit is three requests a minute.
        async with open_client(scoped(settings, tmp_path, name, BUSINESSOS_RATE_LIMIT_PER_MINUTE="3")) as limited:
            body = b'{"n": 1}'
            codes = []
            for _ in range(4):
                response = await limited.post(
                    a["paths"]["standard"], content=body, headers=standard_headers(a["secrets"]["standard"], body)
                )
                codes.append(response.status_code)
            assert codes == [200, 200, 200, 429], codes
            assert response.headers["retry-after"]
            # Another token has its own bucket.
            slack = b"x"
            other = await limited.post(
                a["paths"]["slack"], content=slack, headers=slack_headers(a["secrets"]["slack"], slack)
            )
            assert other.status_code == 204


def test_the_sdk_hmac_schemes_of_common_providers() -> None:
    body, secret = b'{"action": "opened"}', "provider-secret"
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    github = sdk.HmacScheme(header="X-Hub-Signature-256", prefix="sha256=")
    shopify = sdk.HmacScheme(header="X-Shopify-Hmac-Sha256", encoding="base64")
    sdk.verify_hmac(secret, body, {"x-hub-signature-256": "sha256=" + mac.hex()}, github)
    sdk.verify_hmac(secret, body, {"X-Shopify-Hmac-SHA256": base64.b64encode(mac).decode()}, shopify)
    for headers, scheme in (
        ({"X-Hub-Signature-256": mac.hex()}, github),  # prefix missing
        ({"X-Hub-Signature-256": "sha256=" + mac.hex()[:-2]}, github),  # truncated
        ({"X-Hub-Signature-256": "sha256=not-hex"}, github),
        ({"X-Shopify-Hmac-Sha256": mac.hex()}, shopify),  # hex where base64 is expected
        ({}, shopify),
    ):
        with pytest.raises(sdk.InvalidSignature):
            sdk.verify_hmac(secret, body, headers, scheme)
    # A timestamp far from now is refused even with a valid MAC over it.
    slack = sdk.HmacScheme(header="S", prefix="v0=", timestamp_header="T", template="v0:{timestamp}:{body}")
    stamp = "1000000000"
    signed = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    sdk.verify_hmac(secret, body, {"S": "v0=" + signed, "T": stamp}, slack, now=1000000100)
    with pytest.raises(sdk.InvalidSignature, match="tolerance"):
        sdk.verify_hmac(secret, body, {"S": "v0=" + signed, "T": stamp}, slack, now=1000000301)
    with pytest.raises(ValueError):
        sdk.HmacScheme(header="S", algorithm="md5")  # type: ignore[arg-type]


def test_a_plugin_declaring_a_webhook_route_twice_or_badly_is_disabled(tmp_path: Path) -> None:
    twice, bad = unique("hk"), unique("hk")
    body = """
async def handle(hook: sdk.InboundWebhook) -> None: ...

@sdk.hookimpl
def businessos_webhook_routes() -> list[sdk.WebhookRoute]:
    return [sdk.WebhookRoute(%r, handle), sdk.WebhookRoute(%r, handle)]
"""
    with installed(
        tmp_path,
        FakePlugin(twice, plugin_source(twice, body % ("events", "events"))),
        FakePlugin(bad, plugin_source(bad, body % ("events", "Not-An-Identifier"))),
    ):
        plugins = load_app_plugins(frozenset({twice, bad}))
        for name in (twice, bad):
            record = plugins.get(name)
            assert record is not None and not record.active and "webhook route" in (record.reason or "")
