"""The plugin contract 1.1 from outside: only ``kernel.sdk`` is importable from plugin folders
(``ruff check`` says so), and the facade's changes and AI parts work through a real plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel import sdk
from kernel.app import load_app_plugins
from kernel.settings import Settings
from tests.conftest import eventually, new_tenant, open_client, settings_for
from tests.fake_openai import REPLY, FakeOpenAI, fake_openai
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique
from tests.test_ai import _owner_rows

ROOT = Path(__file__).resolve().parents[1]
KEY = f"sk-proj-SDKKEY{uuid.uuid4().hex}Qx7z"
MODEL = "openai/gpt-4o-mini"
TEXT = "".join(REPLY)


def _ruff(source: str, filename: str) -> subprocess.CompletedProcess[str]:
    """``ruff check`` of ``source`` as if it were the file ``filename`` of this repository."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "--select", "TID251",
         "--stdin-filename", filename, "-"],
        input=source, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("folder", ["plugins/evil", "connectors/evil", "examples/evil/evil"])
def test_ruff_refuses_a_kernel_internal_in_plugin_folders(folder: str) -> None:
    for source in ("import kernel.db\n", "from kernel.db.models import uuid7\n", "from kernel import context\n"):
        result = _ruff(source, f"{folder}/__init__.py")
        assert result.returncode == 1 and "TID251" in result.stdout, (source, result.stdout, result.stderr)
    allowed = _ruff("from kernel import KERNEL_API_VERSION, sdk\n", f"{folder}/__init__.py")
    assert allowed.returncode == 0, allowed.stdout


def test_the_kernel_itself_may_import_its_modules() -> None:
    assert _ruff("import kernel.db\n", "kernel/anything.py").returncode == 0


def test_every_kernel_module_but_the_sdk_and_the_test_kit_is_banned() -> None:
    # kernel.testing is the plugin authors' pytest kit: public, like kernel.sdk.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    banned = set(config["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"])
    found = [p for p in (ROOT / "kernel").iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")]
    modules = {f"kernel.{p.stem}" for p in found if p.name not in ("__init__.py", "sdk.py", "testing.py")}
    assert modules == banned


def test_the_sdk_no_longer_hands_out_the_kernel() -> None:
    assert sdk.KERNEL_API_VERSION == "1.2"
    for gone in ("Kernel", "get_kernel", "open_kernel", "audit", "audit_record", "emit", "request_actor"):
        assert not hasattr(sdk, gone), gone
    assert len(sdk.__all__) == len(set(sdk.__all__)), "a name is exported twice"
    assert all(hasattr(sdk, name) for name in sdk.__all__)


async def test_changes_keep_to_the_plugins_namespace() -> None:
    changes = sdk.Changes("notes")
    session: Any = None  # refused before the session is touched
    with pytest.raises(ValueError, match="notes"):
        await changes.record(session, sdk.Actor.system("test"), tenant_id=uuid.uuid4(), event="crm.contact.created",
                             resource_id=uuid.uuid4())
    with pytest.raises(ValueError, match="notes"):
        await changes.emit(session, tenant_id=uuid.uuid4(), event="notes.created", payload={})
    with pytest.raises(ValueError, match=r"crm\.contact\.created"):
        await changes.emit_many(session, tenant_id=uuid.uuid4(), events=[
            ("notes.note.created", {}), ("crm.contact.created", {}),
        ])


# --- a plugin using changes and AI through the facade -------------------------------------------


def _ai_plugin(name: str) -> FakePlugin:
    body = f'''
    from litestar import Request

    MODEL = {MODEL!r}

    @post("/api/{name}/things/{{thing_id:uuid}}/summary", opt={{"permission": sdk.AUTHENTICATED}})
    async def summarize(thing_id: Any, tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        actor = sdk.Actor.of_request(request)
        answer = await services.ai.chat(
            tenant.id, actor, [{{"role": "user", "content": "summarize"}}], model=MODEL,
            object_type="{name}.thing", object_id=thing_id,
        )
        async with services.data.tenant(tenant.id) as session:
            await services.changes.record(
                session, actor, tenant_id=tenant.id, event="{name}.summary.created", resource_id=thing_id,
                after={{"text": answer.content}},
            )
        return {{"text": answer.content, "tokens": answer.completion_tokens}}

    @post("/api/{name}/stream", opt={{"permission": sdk.AUTHENTICATED}})
    async def stream(tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        pieces = await services.ai.stream(
            tenant.id, sdk.Actor.of_request(request), [{{"role": "user", "content": "hi"}}], model=MODEL,
            object_type="{name}.thing", object_id="streamed",
        )
        return {{"text": "".join([p async for p in pieces])}}

    @post("/api/{name}/embed", opt={{"permission": sdk.AUTHENTICATED}})
    async def embed(tenant: sdk.Tenant, services: sdk.Services, request: Request) -> dict:
        vectors = await services.ai.embed(
            tenant.id, sdk.Actor.of_request(request), ["one text", "another"], model="openai/text-embedding-3-small",
            object_type="{name}.thing", object_id="embedded",
        )
        return {{"vectors": len(vectors)}}

    @sdk.hookimpl
    def businessos_routes():
        return [summarize, stream, embed]

    @sdk.hookimpl
    def businessos_event_types():
        return [sdk.EventType("{name}.summary.created")]
    '''
    return FakePlugin(name=name, source=plugin_source(name, body))


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with fake_openai({KEY}) as server:
        yield server


async def test_a_plugin_calls_ai_as_itself_and_records_its_change(
    settings: Settings,  # the suite's database, migrated
    database_url: str, servers: tuple[str, str], tmp_path: Path, provider: FakeOpenAI
) -> None:
    # Loopback provider bases allowed: the provider is the local fake.
    settings = settings_for(database_url, servers[1], tmp_path / "data", BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1")
    del database_url
    name = unique("sdkai")
    with installed(tmp_path, _ai_plugin(name)):
        plugins = load_app_plugins(frozenset({name}))
        async with open_client(settings, plugins) as client:
            a, b = await new_tenant(client, "sdk-a"), await new_tenant(client, "sdk-b")
            ha, hb = {"X-Tenant-ID": a["slug"]}, {"X-Tenant-ID": b["slug"]}
            for h in (ha, hb):
                assert (await client.post(f"/api/modules/{name}/enable", headers=h)).status_code == 200
            key = {"api_key": KEY, "api_base": provider.base}
            assert (await client.put("/api/ai/keys/openai", json=key, headers=ha)).status_code == 200

            thing = uuid.uuid4()
            done = await client.post(f"/api/{name}/things/{thing}/summary", headers=ha)
            assert done.status_code == 201, done.text
            assert done.json() == {"text": TEXT, "tokens": len(REPLY)}
            streamed = await client.post(f"/api/{name}/stream", headers=ha)
            assert streamed.status_code == 201 and streamed.json()["text"] == TEXT
            embedded = await client.post(f"/api/{name}/embed", headers=ha)
            assert embedded.status_code == 201 and embedded.json() == {"vectors": 2}

            # One audit row for the change (no generic http.post beside it), resource type
            # <plugin>.<entity>, actor the caller; and the event in the outbox.
            logs = (await client.get("/api/audit/logs", params={"action": f"{name}.*"}, headers=ha)).json()["items"]
            assert [(r["action"], r["resource_type"], r["resource_id"], r["actor"]) for r in logs] == [
                (f"{name}.summary.created", f"{name}.summary", str(thing), f"user:{a['user_id']}")
            ]
            http_posts = (await client.get("/api/audit/logs", params={"action": "http.post"}, headers=ha)).json()
            assert [r["resource_id"] for r in http_posts["items"]].count(f"/api/{name}/things/{thing}/summary") == 0

            # Tenant B has no key: a problem, not a 500; and it sees none of A's rows.
            refused = await client.post(f"/api/{name}/things/{thing}/summary", headers=hb)
            assert 400 <= refused.status_code < 500, refused.text
            assert (await client.get("/api/audit/logs", params={"action": f"{name}.*"}, headers=hb)).json()[
                "items"
            ] == []

            # A spent budget stops the plugin's call before the provider is asked.
            assert (
                await client.put("/api/ai/budgets", json={"monthly_token_limit": 10}, headers=ha)
            ).status_code == 200
            asked = len(provider.requests)
            spent = await client.post(f"/api/{name}/things/{thing}/summary", headers=ha)
            assert spent.status_code == 402, spent.text
            assert len(provider.requests) == asked

    query = "select surface, object_type, object_id, status, principal_kind, principal_id from ai_usage"

    async def ledger_complete() -> bool:
        return len(await _owner_rows(settings, a["id"], query)) == 3

    await eventually(ledger_complete)
    rows = await _owner_rows(settings, a["id"], query)
    assert sorted((r["surface"], r["object_type"], r["object_id"], r["status"]) for r in rows) == sorted(
        [
            (f"plugin:{name}", f"{name}.thing", str(thing), "ok"),
            (f"plugin:{name}", f"{name}.thing", "streamed", "ok"),
            (f"plugin:{name}", f"{name}.thing", "embedded", "ok"),
        ]
    )
    assert {(r["principal_kind"], str(r["principal_id"])) for r in rows} == {("user", a["user_id"])}
    assert await _owner_rows(settings, b["id"], query) == []
    outbox = f"select payload from events_outbox where event = '{name}.summary.created'"
    events = await _owner_rows(settings, a["id"], outbox)
    assert [json.loads(e["payload"]) for e in events] == [{"text": TEXT}]
