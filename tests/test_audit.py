"""The audit log: append-only for everyone, written in the audited change's transaction, chained
per tenant, verifiable, filterable, and never holding a secret."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel.app import load_app_plugins
from kernel.audit.log import GENESIS, Entry, RequestMeta, chain_hash, record
from kernel.audit.service import AuditService, _canonical_row
from kernel.db.urls import runtime_url
from kernel.settings import Settings
from tests.conftest import _dsn, new_tenant, open_client, other_process, settings_for
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

PLUGIN = """
from litestar import Request


class Options(msgspec.Struct, kw_only=True):
    greeting: str = "hello"
    api_key: str = ""


@sdk.hookimpl
def businessos_settings_schema() -> type[Options]:
    return Options


@post(f"/api/{NAME}/things", status_code=201, opt={"permission": "authenticated"})
async def add_thing(
    data: dict[str, Any], request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services
) -> dict[str, str]:
    async with services.data.tenant(tenant.id) as session:
        await services.changes.audit(
            session, sdk.Actor.of_request(request), tenant_id=tenant.id, action=NAME + ".thing.created",
            resource_type="thing", resource_id="thing-1", after=data,
        )
    return {"created": "thing-1"}


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return [add_thing]
"""


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
async def owner(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_dsn(database_url))
    yield conn
    await conn.close()


@pytest.fixture
async def runtime(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    url = runtime_url(settings, database_url).render_as_string(hide_password=False)
    conn = await asyncpg.connect(_dsn(url))
    yield conn
    await conn.close()


@pytest.fixture
def plugged(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, str]]:
    """Settings allowing one installed plugin (with settings and an audited route), and its name."""
    name = unique("audited")
    with installed(tmp_path, FakePlugin(name, plugin_source(name, PLUGIN))):
        assert settings.database_url and settings.redis_url
        yield settings_for(settings.database_url, settings.redis_url, tmp_path, BUSINESSOS_PLUGINS=name), name


def headers(tenant: dict[str, Any]) -> dict[str, str]:
    return {"X-Tenant-ID": tenant["slug"]}


async def logs(client: AsyncTestClient[Any], tenant: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await client.get("/api/audit/logs", params=params, headers=headers(tenant))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_logs(
    client: AsyncTestClient[Any], tenant: dict[str, Any], **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await logs(client, tenant, limit=200, **params, **({"cursor": cursor} if cursor else {}))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def verify(client: AsyncTestClient[Any], tenant: dict[str, Any]) -> dict[str, Any]:
    response = await client.get("/api/audit/verify", headers=headers(tenant))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def write_rows(settings: Settings, tenant_id: uuid.UUID, count: int, **fields: Any) -> None:
    """``count`` audit rows for the tenant, one transaction each, written by another process."""
    async with other_process(settings) as kernel:
        for i in range(count):
            async with kernel.db.tenant(tenant_id) as session:
                await record(
                    session,
                    tenant_id=tenant_id,
                    actor=fields.get("actor", "user:writer"),
                    action=fields.get("action", "test.write"),
                    resource_type=fields.get("resource_type", "thing"),
                    resource_id=fields.get("resource_id", str(i)),
                    details={"i": i},
                )


async def tamper(owner: asyncpg.Connection, tenant_id: uuid.UUID, statement: str, *args: Any) -> None:
    """Run ``statement`` as the table owner with the append-only trigger off, then back on."""
    async with owner.transaction():
        await owner.execute("alter table audit_logs disable trigger audit_logs_no_update_delete")
        await owner.execute("select set_config('app.tenant_id', $1, true)", str(tenant_id))
        await owner.execute(statement, *args)
        await owner.execute("alter table audit_logs enable always trigger audit_logs_no_update_delete")


# --- append-only ------------------------------------------------------------------------------------


async def test_the_runtime_role_cannot_update_delete_or_truncate(
    client: AsyncTestClient[Any], runtime: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client)
    async with runtime.transaction():
        await runtime.execute("select set_config('app.tenant_id', $1, true)", tenant["id"])
        assert await runtime.fetchval("select count(*) from audit_logs") >= 1
        for statement in (
            "update audit_logs set action = 'rewritten'",
            "delete from audit_logs",
            "truncate audit_logs",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with runtime.transaction():
                    await runtime.execute(statement)
        assert await runtime.fetchval("select count(*) from audit_logs where action = 'rewritten'") == 0


async def test_the_owner_is_refused_by_triggers_that_fire_always(
    client: AsyncTestClient[Any], owner: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client)
    enabled = dict(
        await owner.fetch(
            """select tgname, tgenabled from pg_trigger
                where tgrelid = 'audit_logs'::regclass and not tgisinternal"""
        )
    )
    assert enabled == {"audit_logs_no_update_delete": b"A", "audit_logs_no_truncate": b"A"}
    async with owner.transaction():
        await owner.execute("select set_config('app.tenant_id', $1, true)", tenant["id"])
        if await owner.fetchval("select rolsuper from pg_roles where rolname = current_user"):
            # Even in replica mode, which skips ordinary triggers (setting it needs a superuser).
            await owner.execute("set local session_replication_role = replica")
        for statement, op in (
            ("update audit_logs set action = 'rewritten' where tenant_id = $1", "UPDATE"),
            ("delete from audit_logs where tenant_id = $1", "DELETE"),
            ("truncate audit_logs", "TRUNCATE"),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f"append-only \\({op} refused\\)"):
                async with owner.transaction():
                    if "$1" in statement:
                        await owner.execute(statement, uuid.UUID(tenant["id"]))
                    else:
                        await owner.execute(statement)
        assert await owner.fetchval(
            "select count(*) from audit_logs where tenant_id = $1", uuid.UUID(tenant["id"])
        )


async def test_inserting_another_tenants_row_is_refused(
    client: AsyncTestClient[Any], runtime: asyncpg.Connection
) -> None:
    mine, theirs = await new_tenant(client), await new_tenant(client)
    async with runtime.transaction():
        await runtime.execute("select set_config('app.tenant_id', $1, true)", mine["id"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute(
                """insert into audit_logs (tenant_id, id, seq, occurred_at, action, result, prev_hash, hash)
                   values ($1, $2, 999, now(), 'forged', 'success', $3, $3)""",
                uuid.UUID(theirs["id"]),
                uuid.uuid4(),
                GENESIS,
            )


# --- written with the change ------------------------------------------------------------------------


async def test_enabling_a_module_writes_one_row_with_the_request_metadata(
    plugged: tuple[Settings, str],
) -> None:
    s, name = plugged
    async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
        tenant = await new_tenant(client)
        response = await client.post(
            f"/api/modules/{name}/enable",
            headers={**headers(tenant), "User-Agent": "audit-test/1.0", "X-Request-ID": "req-audit-1"},
        )
        assert response.status_code == 200, response.text
        rows = (await logs(client, tenant, action="module.enabled"))["items"]
        assert len(rows) == 1
        row = rows[0]
        assert row["actor"] == f"user:{tenant['user_id']}"
        assert (row["resource_type"], row["resource_id"], row["result"]) == ("module", name, "success")
        assert row["before"] == {"enabled": False}
        assert row["after"] == {"enabled": True, "changed": [name]}
        assert row["user_agent"] == "audit-test/1.0"
        assert row["request_id"]  # the inbound X-Request-ID, or the id the server assigned
        assert row["ip"]

        # Settings changes record before and after, with secret-looking keys redacted.
        url = f"/api/modules/{name}/settings"
        assert (
            await client.put(url, json={"greeting": "hi", "api_key": "sk-123"}, headers=headers(tenant))
        ).status_code == 200
        assert (
            await client.put(url, json={"greeting": "yo", "api_key": "sk-456"}, headers=headers(tenant))
        ).status_code == 200
        changes = (await logs(client, tenant, action="module.settings.updated"))["items"]
        assert [c["after"]["settings"]["greeting"] for c in changes] == ["yo", "hi"]
        assert changes[0]["before"] == {"settings": {"greeting": "hi", "api_key": "[redacted]"}}
        assert changes[1]["before"] == {"settings": {}}  # the row enabling made, no settings yet
        assert "sk-" not in str(changes)

        # A plugin writes its own rows through kernel.sdk, in its own transaction.
        response = await client.post(
            f"/api/{name}/things", json={"label": "x", "token": "t0k"}, headers=headers(tenant)
        )
        assert response.status_code == 201, response.text
        [thing] = (await logs(client, tenant, action=f"{name}.*"))["items"]
        assert thing["actor"] == f"user:{tenant['user_id']}"
        assert thing["after"] == {"label": "x", "token": "[redacted]"}

        assert (await client.post(f"/api/modules/{name}/disable", headers=headers(tenant))).status_code == 200
        assert [r["action"] for r in (await logs(client, tenant, action="module.*"))["items"]] == [
            "module.disabled",
            "module.settings.updated",
            "module.settings.updated",
            "module.enabled",
        ]
        assert (await verify(client, tenant))["valid"] is True


async def test_a_change_that_rolls_back_leaves_no_row(
    plugged: tuple[Settings, str], owner: asyncpg.Connection
) -> None:
    s, name = plugged
    async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
        tenant = await new_tenant(client)
    tenant_id = uuid.UUID(tenant["id"])

    async with other_process(s) as kernel:
        # A change and its audit row in one tenant transaction, which then fails: both go.
        with pytest.raises(RuntimeError, match="after its audit row"):
            async with kernel.db.tenant(tenant_id) as session:
                await session.execute(
                    text(
                        "insert into tenant_modules (tenant_id, id, plugin, enabled) "
                        "values (:t, gen_random_uuid(), :p, true)"
                    ),
                    {"t": tenant_id, "p": name},
                )
                await record(
                    session, tenant_id=tenant_id, actor="user:someone", action="module.enabled",
                    resource_type="module", resource_id=name, meta=RequestMeta(request_id="r1"),
                )
                raise RuntimeError("the change fails after its audit row was written")

        async def counts() -> tuple[int, int]:
            async with owner.transaction():
                await owner.execute("select set_config('app.tenant_id', $1, true)", str(tenant_id))
                modules = await owner.fetchval(
                    "select count(*) from tenant_modules where tenant_id = $1 and plugin = $2",
                    tenant_id,
                    name,
                )
                audits = await owner.fetchval(
                    "select count(*) from audit_logs where tenant_id = $1 and action = 'module.enabled'",
                    tenant_id,
                )
            return modules, audits

        assert await counts() == (0, 0)
        # The same call without the failure commits both.
        assert await kernel.modules.enable(tenant_id, name, actor="user:someone") == [name]
        assert await counts() == (1, 1)
        assert (await AuditService(kernel.db).verify(tenant_id)).valid


# --- the chain ----------------------------------------------------------------------------------------


async def test_concurrent_writers_leave_a_gap_free_valid_chain(
    plugged: tuple[Settings, str], owner: asyncpg.Connection
) -> None:
    s, name = plugged
    async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
        tenant = await new_tenant(client)
        tenant_id = uuid.UUID(tenant["id"])
        assert (await client.post(f"/api/modules/{name}/enable", headers=headers(tenant))).status_code == 200

        async with other_process(s) as kernel:

            async def direct(i: int) -> None:
                async with kernel.db.tenant(tenant_id) as session:
                    await record(
                        session,
                        tenant_id=tenant_id,
                        actor="api_key:k",
                        action="test.concurrent",
                        resource_id=str(i),
                        details={"i": i, "f": 0.1 * i, "big": 1e20},
                    )

            async def over_http(i: int) -> None:
                response = await client.put(
                    f"/api/modules/{name}/settings", json={"greeting": f"g{i}"}, headers=headers(tenant)
                )
                assert response.status_code == 200, response.text

            await asyncio.gather(*(direct(i) for i in range(40)), *(over_http(i) for i in range(10)))

            seqs = [
                r["seq"]
                for r in await owner.fetch(
                    "select seq from audit_logs where tenant_id = $1 order by seq", tenant_id
                )
            ]
            assert seqs == list(range(1, len(seqs) + 1))
            assert len(await all_logs(client, tenant, action="test.concurrent")) == 40
            assert len(await all_logs(client, tenant, action="module.settings.updated")) == 10

            report = await verify(client, tenant)
            assert report == {"valid": True, "rows": len(seqs), "first_broken": None}
            # Verification in small batches agrees.
            small = await AuditService(kernel.db).verify(tenant_id, batch=3)
            assert (small.valid, small.rows) == (True, len(seqs))


async def test_the_writer_commits_the_entries_waiting_together_in_one_transaction_in_order(
    plugged: tuple[Settings, str], owner: asyncpg.Connection
) -> None:
    """``kernel.audit.append`` (group commit): entries handed over while none is being written
    share one transaction, keep their order in a valid chain and are committed when it returns;
    one that cannot be encoded fails only its own caller."""
    s, _ = plugged
    async with open_client(s, load_app_plugins(s.plugins_allowlist)) as client:
        tenant = await new_tenant(client)
        tenant_id = uuid.UUID(tenant["id"])
        async with other_process(s) as kernel:
            looped: dict[str, Any] = {}
            looped["self"] = looped

            def entry(i: int, details: dict[str, Any]) -> Entry:
                return Entry(actor="webhook:w", action="test.grouped", resource_id=str(i),
                             meta=RequestMeta(request_id=f"r{i}"), details=details)

            before = kernel.audit.transactions
            outcomes = await asyncio.gather(
                *(kernel.audit.append(tenant_id, entry(i, {"i": i})) for i in range(25)),
                kernel.audit.append(tenant_id, entry(99, looped)),
                return_exceptions=True,
            )
            assert outcomes[:25] == [None] * 25 and isinstance(outcomes[25], RecursionError)
            assert kernel.audit.transactions - before == 1
            rows = await owner.fetch(
                "select resource_id, request_id, details from audit_logs where tenant_id = $1 "
                "and action = 'test.grouped' order by seq", tenant_id,
            )
            assert [(r["resource_id"], r["request_id"]) for r in rows] == [(str(i), f"r{i}") for i in range(25)]
            # Nothing else waiting: written at once, alone.
            await kernel.audit.append(tenant_id, Entry(actor="webhook:w", action="test.alone"))
            assert kernel.audit.transactions - before == 2
            report = await verify(client, tenant)
            assert report["valid"] is True and report["rows"] >= 26


async def test_an_altered_row_is_named_by_verify(
    client: AsyncTestClient[Any], settings: Settings, owner: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client)
    tenant_id = uuid.UUID(tenant["id"])
    await write_rows(settings, tenant_id, 5)
    target = await owner.fetchrow(
        "select seq, id from audit_logs where tenant_id = $1 and action = 'test.write' "
        "order by seq limit 1 offset 2",
        tenant_id,
    )
    assert target is not None
    await tamper(
        owner,
        tenant_id,
        "update audit_logs set actor = 'user:mallory' where tenant_id = $1 and seq = $2",
        tenant_id,
        target["seq"],
    )

    report = await verify(client, tenant)
    assert report["valid"] is False
    assert report["rows"] == await owner.fetchval(
        "select count(*) from audit_logs where tenant_id = $1", tenant_id
    )
    broken = report["first_broken"]
    assert (broken["seq"], broken["id"]) == (target["seq"], str(target["id"]))
    assert "altered" in broken["reason"]


async def test_a_rehashed_forgery_breaks_the_next_link(
    client: AsyncTestClient[Any], settings: Settings, owner: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client)
    tenant_id = uuid.UUID(tenant["id"])
    await write_rows(settings, tenant_id, 4)
    row = await owner.fetchrow(
        """select tenant_id, id, seq, occurred_at, actor, action, resource_type, resource_id, result,
                  request_id, ip, user_agent, before::text, after::text, details::text, prev_hash
             from audit_logs where tenant_id = $1 and action = 'test.write' order by seq limit 1 offset 1""",
        tenant_id,
    )
    assert row is not None
    forged = {**dict(row), "actor": "user:mallory"}
    new_hash = chain_hash(bytes(row["prev_hash"]), _canonical_row(SimpleNamespace(**forged)))  # type: ignore[arg-type]
    await tamper(
        owner,
        tenant_id,
        "update audit_logs set actor = 'user:mallory', hash = $3 where tenant_id = $1 and seq = $2",
        tenant_id,
        row["seq"],
        new_hash,
    )

    broken = (await verify(client, tenant))["first_broken"]
    assert broken["seq"] == row["seq"] + 1
    assert "prev_hash" in broken["reason"]


async def test_a_deleted_row_is_named_by_verify(
    client: AsyncTestClient[Any], settings: Settings, owner: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client)
    tenant_id = uuid.UUID(tenant["id"])
    await write_rows(settings, tenant_id, 6)
    victim = await owner.fetchval(
        "select seq from audit_logs where tenant_id = $1 and action = 'test.write' "
        "order by seq limit 1 offset 3",
        tenant_id,
    )
    await tamper(
        owner, tenant_id, "delete from audit_logs where tenant_id = $1 and seq = $2", tenant_id, victim
    )

    report = await verify(client, tenant)
    assert report["valid"] is False
    broken = report["first_broken"]
    assert broken["seq"] == victim + 1
    assert f"seq {victim} missing" in broken["reason"]
    # Batches that split around the gap find the same break.
    async with other_process(settings) as kernel:
        for batch in (1, 2, victim, victim + 1):
            small = await AuditService(kernel.db).verify(tenant_id, batch=batch)
            assert small.first_broken is not None and small.first_broken.seq == victim + 1


# --- reading -----------------------------------------------------------------------------------------


async def test_cursor_pages_walk_every_row_once(client: AsyncTestClient[Any], settings: Settings) -> None:
    tenant = await new_tenant(client)
    await write_rows(settings, uuid.UUID(tenant["id"]), 45, action="test.page")
    seen: list[int] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        page = await logs(
            client, tenant, action="test.page", limit=20, **({"cursor": cursor} if cursor else {})
        )
        sizes.append(len(page["items"]))
        seen.extend(item["seq"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [20, 20, 5]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 45
    assert seen == list(range(seen[0], seen[0] - 45, -1))  # written consecutively: no gaps
    # Without filters the same walk includes the tenant's other rows too, newest first.
    everything = await all_logs(client, tenant)
    assert [r["seq"] for r in everything] == list(range(len(everything), 0, -1))
    # The limit is capped, not refused.
    assert len((await logs(client, tenant, limit=1000))["items"]) == min(200, len(everything))


async def test_filters_narrow_by_actor_action_resource_and_time(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    tenant = await new_tenant(client)
    tenant_id = uuid.UUID(tenant["id"])
    await write_rows(
        settings, tenant_id, 3, actor="user:alice", action="crm.contact.create", resource_type="contact"
    )
    await write_rows(
        settings, tenant_id, 2, actor="api_key:robot", action="crm.deal.update", resource_type="deal"
    )
    await write_rows(settings, tenant_id, 2, actor="user:alice", action="crm_x.other", resource_type="deal")

    def actions(items: list[dict[str, Any]]) -> list[str]:
        return sorted(i["action"] for i in items)

    assert len(await all_logs(client, tenant, actor="user:alice")) == 5
    assert actions(await all_logs(client, tenant, actor="api_key:robot")) == ["crm.deal.update"] * 2
    assert actions(await all_logs(client, tenant, action="crm.deal.update")) == ["crm.deal.update"] * 2
    # A prefix: "_" and "%" in it are literal, so "crm_*" does not match "crm.".
    assert len(await all_logs(client, tenant, action="crm.*")) == 5
    assert actions(await all_logs(client, tenant, action="crm_*")) == ["crm_x.other"] * 2
    assert len(await all_logs(client, tenant, action="crm.contact")) == 0
    assert len(await all_logs(client, tenant, resource_type="deal")) == 4
    assert len(await all_logs(client, tenant, resource_type="deal", actor="user:alice")) == 2
    assert len(await all_logs(client, tenant, resource_type="contact", resource_id="1")) == 1

    ordered = sorted(await all_logs(client, tenant, action="crm*"), key=lambda r: r["seq"])
    since, until = ordered[2]["occurred_at"], ordered[5]["occurred_at"]
    window = await all_logs(client, tenant, action="crm*", since=since, until=until)
    assert [r["seq"] for r in window] == [r["seq"] for r in reversed(ordered[2:5])]
    # An offset whose "+" arrived as a space, and a date alone, are understood too.
    spaced = datetime.fromisoformat(since).isoformat().replace("+00:00", " 00:00")
    assert spaced.endswith(" 00:00")
    assert len(await all_logs(client, tenant, action="crm*", since=spaced)) == len(ordered) - 2
    assert len(await all_logs(client, tenant, action="crm*", until="2000-01-01")) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-45T00:00:00Z"}, "until"),
        ({"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ({"action": "crm.*.create"}, "action"),
        ({"actor": "x" * 501}, "actor"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        ({"cursor": "djE6LTU"}, "cursor"),  # "v1:-5"
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
    ],
)
async def test_bad_filter_values_answer_422_naming_the_parameter(
    client: AsyncTestClient[Any], params: dict[str, str], field: str
) -> None:
    tenant = await new_tenant(client)
    body = problem(await client.get("/api/audit/logs", params=params, headers=headers(tenant)), 422)
    assert [e["field"] for e in body["errors"]] == [field]
    assert field in body["detail"]


async def test_secrets_never_land_in_a_row(
    client: AsyncTestClient[Any], settings: Settings, owner: asyncpg.Connection
) -> None:
    tenant = await new_tenant(client)
    tenant_id = uuid.UUID(tenant["id"])
    async with other_process(settings) as kernel, kernel.db.tenant(tenant_id) as session:
        await record(
            session,
            tenant_id=tenant_id,
            actor="user:someone",
            action="test.secret",
            before={"Authorization": "Bearer abc.def", "rows": [{"refresh_token": "rt-1", "keep": 1}]},
            details={
                "password": "x-pass",
                "nested": {"api_key": "y-key", "totp_secret": "z"},
                "note": "ok\x00",
            },
        )
    [row] = (await logs(client, tenant, action="test.secret"))["items"]
    assert row["details"] == {
        "password": "[redacted]",
        "nested": {"api_key": "[redacted]", "totp_secret": "[redacted]"},
        "note": "ok",
    }
    assert row["before"] == {
        "Authorization": "[redacted]",
        "rows": [{"refresh_token": "[redacted]", "keep": 1}],
    }
    stored = await owner.fetchval(
        "select before::text || details::text from audit_logs "
        "where tenant_id = $1 and action = 'test.secret'",
        tenant_id,
    )
    for secret in ("x-pass", "y-key", "abc.def", "rt-1"):
        assert secret not in stored
    assert (await verify(client, tenant))["valid"] is True


async def test_another_tenants_rows_are_never_visible(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    mine, theirs = await new_tenant(client), await new_tenant(client)
    await write_rows(settings, uuid.UUID(mine["id"]), 3, actor="user:mine", action="test.iso")
    await write_rows(settings, uuid.UUID(theirs["id"]), 4, actor="user:theirs", action="test.iso")

    my_rows = await all_logs(client, mine)
    their_rows = await all_logs(client, theirs)
    assert not {r["id"] for r in my_rows} & {r["id"] for r in their_rows}
    assert await all_logs(client, mine, actor="user:theirs") == []
    assert len(await all_logs(client, theirs, action="test.iso")) == 4
    assert all(r["resource_id"] != mine["id"] for r in their_rows)
    # Each tenant's chain is its own: both start at 1 and verify on their own.
    assert min(r["seq"] for r in my_rows) == min(r["seq"] for r in their_rows) == 1
    assert (await verify(client, mine))["rows"] == len(my_rows)
    assert (await verify(client, theirs))["rows"] == len(their_rows)
