"""The kernel's own domain events, from the outside: each action over HTTP or the CLI leaves
exactly its event in the outbox, for its tenant and never for another; ``GET /api/events/types``
lists every event type with its payload's JSON Schema."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from kernel.app import load_app_plugins
from kernel.settings import Settings
from tests.conftest import SECRET, _dsn, new_tenant, open_client
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique
from tests.test_cli import run_cli


async def outbox(database_url: str, tenant_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The tenant's kernel events, oldest first (events of one transaction in any order)."""
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        rows = await conn.fetch(
            "select event, payload::text as payload from events_outbox "
            "where tenant_id = $1 and event like 'kernel.%' order by created_at, id",
            uuid.UUID(tenant_id),
        )
    finally:
        await conn.close()
    return [(r["event"], json.loads(r["payload"])) for r in rows]


def names(events: list[tuple[str, dict[str, Any]]]) -> Counter[str]:
    return Counter(name for name, _ in events)


async def test_tenant_member_invitation_and_api_key_events(settings: Settings, database_url: str) -> None:
    async with open_client(settings) as client:
        a, b = await new_tenant(client, "ev-a"), await new_tenant(client, "ev-b")
        created = await outbox(database_url, a["id"])
        assert names(created) == Counter({"kernel.tenant.created": 1, "kernel.member.added": 1})
        payloads = dict(created)
        assert payloads["kernel.tenant.created"] | {"actor": None} == {
            "actor": None, "tenant_id": a["id"], "name": a["name"], "slug": a["slug"], "plan": "free",
        }
        assert payloads["kernel.member.added"] == {
            "actor": f"user:{a['user_id']}", "user_id": a["user_id"], "role": "owner", "via": "tenant_creation",
        }

        headers = {"X-Tenant-ID": a["slug"]}
        email, password = f"m-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
        invitation = await client.post("/api/tenant/invitations", json={"email": email, "role": "member"},
                                       headers=headers)
        assert invitation.status_code == 201, invitation.text
        joined = await client.post(
            "/api/auth/register",
            json={"email": email, "password": password, "invitation_token": invitation.json()["token"]},
            headers=headers,
        )
        assert joined.status_code == 201, joined.text
        key = await client.post("/api/api-keys", json={"name": "ci", "role": "viewer"}, headers=headers)
        assert key.status_code == 201, key.text
        assert (await client.delete(f"/api/api-keys/{key.json()['id']}", headers=headers)).status_code == 204
        # Revoking twice changes nothing: no second event.
        assert (await client.delete(f"/api/api-keys/{key.json()['id']}", headers=headers)).status_code == 204

    events = (await outbox(database_url, a["id"]))[len(created):]
    assert names(events) == Counter({
        "kernel.invitation.created": 1, "kernel.invitation.accepted": 1, "kernel.member.added": 1,
        "kernel.api_key.created": 1, "kernel.api_key.revoked": 1,
    })
    got = dict(events)
    owner = f"user:{a['user_id']}"
    invitation_id = invitation.json()["id"]
    assert got["kernel.invitation.created"] == {
        "actor": owner, "invitation_id": invitation_id, "email": email, "role": "member",
        "expires_at": got["kernel.invitation.created"]["expires_at"],
    }
    member = got["kernel.member.added"]["user_id"]
    assert got["kernel.invitation.accepted"] == {
        "actor": f"user:{member}", "invitation_id": invitation_id, "user_id": member, "role": "member",
    }
    assert got["kernel.member.added"] == {
        "actor": f"user:{member}", "user_id": member, "role": "member", "via": "invitation",
    }
    assert got["kernel.api_key.created"] == {
        "actor": owner, "api_key_id": key.json()["id"], "name": "ci", "prefix": key.json()["prefix"],
        "role": "viewer", "scopes": None, "expires_at": None,
    }
    assert got["kernel.api_key.revoked"] == {
        "actor": owner, "api_key_id": key.json()["id"], "name": "ci", "prefix": key.json()["prefix"],
    }
    # Never a secret: not the invitation token, the key, a password, nor any token of the owner.
    text = json.dumps(events)
    for secret in (invitation.json()["token"], key.json()["key"], password, a["password"], a["access_token"]):
        assert secret not in text
    # The other tenant saw only its own creation.
    assert names(await outbox(database_url, b["id"])) == Counter(
        {"kernel.tenant.created": 1, "kernel.member.added": 1}
    )


def _modules(base: str, extra: str) -> tuple[FakePlugin, FakePlugin]:
    return (
        FakePlugin(name=base, source=plugin_source(base)),
        FakePlugin(name=extra, source=plugin_source(extra, depends_on=[base])),
    )


async def test_module_enable_disable_purge_events(settings: Settings, database_url: str, tmp_path: Path) -> None:
    base, extra = unique("evb"), unique("eve")
    with installed(tmp_path, *_modules(base, extra)):
        scoped = msgspec.structs.replace(settings, plugins_allowlist=frozenset({base, extra}))
        async with open_client(scoped, load_app_plugins(scoped.plugins_allowlist)) as client:
            a, b = await new_tenant(client, "evm-a"), await new_tenant(client, "evm-b")
            before = len(await outbox(database_url, a["id"]))
            h = {"X-Tenant-ID": a["slug"]}
            assert (await client.post(f"/api/modules/{extra}/enable", headers=h)).status_code == 200
            assert (await client.post(f"/api/modules/{extra}/enable", headers=h)).status_code == 200  # no-op
            assert (await client.post(f"/api/modules/{extra}/disable", headers=h)).status_code == 200
            assert (await client.post(f"/api/modules/{extra}/disable", headers=h)).status_code == 200  # no-op
            assert (await client.delete(f"/api/modules/{extra}/data", headers=h)).status_code == 200

    events = (await outbox(database_url, a["id"]))[before:]
    actor = f"user:{a['user_id']}"
    assert sorted(events[:2], key=lambda e: e[1]["module"]) == sorted(
        [
            ("kernel.module.enabled", {"actor": actor, "module": base, "requested": extra}),
            ("kernel.module.enabled", {"actor": actor, "module": extra, "requested": extra}),
        ],
        key=lambda e: e[1]["module"],
    )
    assert events[2:] == [
        ("kernel.module.disabled", {"actor": actor, "module": extra}),
        ("kernel.module.purged", {"actor": actor, "module": extra, "deleted": {}}),
    ]
    assert names(await outbox(database_url, b["id"])) == Counter(
        {"kernel.tenant.created": 1, "kernel.member.added": 1}
    )


async def test_suspend_and_activate_from_the_cli(
    settings: Settings, database_url: str, servers: tuple[str, str], tmp_path: Path
) -> None:
    async with open_client(settings) as client:
        a, b = await new_tenant(client, "evs-a"), await new_tenant(client, "evs-b")
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": servers[1], "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_PLUGINS": "", "BUSINESSOS_DATA_DIR": str(tmp_path / "data"),
    }
    for command in ("suspend", "suspend", "activate"):  # the second suspend changes nothing
        result = run_cli("tenants", command, a["slug"], env=env)
        assert result.returncode == 0, result.stderr
    events = (await outbox(database_url, a["id"]))[2:]
    assert events == [
        ("kernel.tenant.suspended", {"actor": None, "tenant_id": a["id"], "slug": a["slug"]}),
        ("kernel.tenant.activated", {"actor": None, "tenant_id": a["id"], "slug": a["slug"]}),
    ]
    assert len(await outbox(database_url, b["id"])) == 2


async def test_event_types_list_the_kernel_and_plugins_with_schemas(settings: Settings, tmp_path: Path) -> None:
    name = unique("evt")
    body = f"""
    class Thing(msgspec.Struct):
        thing_id: int
        label: str

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.thing.made", "A thing", payload=Thing), sdk.EventType("{name}.thing.lost")]
    """
    with installed(tmp_path, FakePlugin(name=name, source=plugin_source(name, body))):
        scoped = msgspec.structs.replace(settings, plugins_allowlist=frozenset({name}))
        async with open_client(scoped, load_app_plugins(scoped.plugins_allowlist)) as client:
            t = await new_tenant(client, "evt")
            anonymous = await client.get("/api/events/types")
            assert anonymous.status_code == 401, anonymous.text
            response = await client.get("/api/events/types", headers={"X-Tenant-ID": t["slug"]})
    assert response.status_code == 200, response.text
    types = {e["name"]: e for e in response.json()["event_types"]}
    kernel = {n for n, e in types.items() if e["source"] == "kernel"}
    assert kernel == {
        "kernel.tenant.created", "kernel.tenant.suspended", "kernel.tenant.activated",
        "kernel.module.enabled", "kernel.module.disabled", "kernel.module.purged",
        "kernel.member.added", "kernel.member.removed", "kernel.member.role_changed",
        "kernel.api_key.created", "kernel.api_key.revoked",
        "kernel.invitation.created", "kernel.invitation.accepted", "kernel.connection.broken",
    }
    schema = types["kernel.api_key.created"]["payload_schema"]
    assert set(schema["$defs"]["ApiKeyCreated"]["properties"]) >= {"api_key_id", "name", "prefix"}
    made = types[f"{name}.thing.made"]
    assert made["source"] == name and made["description"] == "A thing"
    assert made["payload_schema"]["$defs"]["Thing"]["required"] == ["thing_id", "label"]
    assert types[f"{name}.thing.lost"]["payload_schema"] is None


async def test_member_role_change_and_removal(settings: Settings, database_url: str) -> None:
    async with open_client(settings) as client:
        a, b = await new_tenant(client, "evr-a"), await new_tenant(client, "evr-b")
        h = {"X-Tenant-ID": a["slug"]}
        email, password = f"m-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
        invitation = await client.post("/api/tenant/invitations", json={"email": email, "role": "member"}, headers=h)
        joined = await client.post(
            "/api/auth/register",
            json={"email": email, "password": password, "invitation_token": invitation.json()["token"]},
            headers=h,
        )
        assert joined.status_code == 201, joined.text
        member_token = joined.json()["access_token"]
        me = await client.get("/api/auth/me", headers={**h, "Authorization": f"Bearer {member_token}"})
        member = me.json()["id"]
        before = len(await outbox(database_url, a["id"]))

        # Another tenant's owner cannot reach the member; nobody changes the owner.
        hb = {"X-Tenant-ID": b["slug"]}
        moved = await client.put(f"/api/tenant/members/{member}", json={"role": "viewer"}, headers=hb)
        assert moved.status_code == 404, moved.text
        assert (await client.delete(f"/api/tenant/members/{member}", headers=hb)).status_code == 404
        owner_change = await client.put(f"/api/tenant/members/{a['user_id']}", json={"role": "admin"}, headers=h)
        assert owner_change.status_code == 409, owner_change.text
        bad = await client.put(f"/api/tenant/members/{member}", json={"role": "owner"}, headers=h)
        assert bad.status_code == 422, bad.text

        changed = await client.put(f"/api/tenant/members/{member}", json={"role": "viewer"}, headers=h)
        assert changed.status_code == 200 and changed.json() == {"user_id": member, "role": "viewer"}
        again = await client.put(f"/api/tenant/members/{member}", json={"role": "viewer"}, headers=h)
        assert again.status_code == 200  # no change, no event
        assert (await client.delete(f"/api/tenant/members/{member}", headers=h)).status_code == 204
        assert (await client.delete(f"/api/tenant/members/{member}", headers=h)).status_code == 404
        gone = await client.get("/api/tenants/current", headers={**h, "Authorization": f"Bearer {member_token}"})
        assert gone.status_code in (401, 403), gone.text

    actor = f"user:{a['user_id']}"
    assert (await outbox(database_url, a["id"]))[before:] == [
        (
            "kernel.member.role_changed",
            {"actor": actor, "user_id": member, "role": "viewer", "previous_role": "member"},
        ),
        ("kernel.member.removed", {"actor": actor, "user_id": member, "role": "viewer"}),
    ]
    assert len(await outbox(database_url, b["id"])) == 2
