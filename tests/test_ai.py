"""The AI proxy from outside: real litellm against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel.ai.schemas import BudgetUpdate, KeyUpdate
from kernel.audit.log import RequestMeta
from kernel.crypto import SecretBox
from kernel.settings import Settings
from tests.conftest import SECRET, eventually, new_tenant, open_client, other_process, settings_for
from tests.fake_openai import PROMPT_TOKENS, REPLY, FakeOpenAI, fake_openai
from tests.servers import api_servers

GOOD_KEY = f"sk-proj-GOODKEY{uuid.uuid4().hex}Zq9x"
BAD_KEY = f"sk-proj-BADKEY{uuid.uuid4().hex}Wv7y"
MODEL = "openai/gpt-4o-mini"
# gpt-4o-mini in litellm's local map: input 1.5e-7, cached input 7.5e-8, output 6e-7 per token.
EXPECTED_COST = (PROMPT_TOKENS - 3) * Decimal("1.5e-7") + 3 * Decimal("7.5e-8") + len(REPLY) * Decimal("6e-7")


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with fake_openai({GOOD_KEY}) as server:
        yield server


@pytest.fixture(scope="module")
async def ai_settings(
    settings: Settings, database_url: str, servers: tuple[str, str], tmp_path_factory: Any
) -> Settings:
    """The suite's database, with loopback provider bases allowed (the local provider)."""
    return settings_for(database_url, servers[1], tmp_path_factory.mktemp("ai"), BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1")


@pytest.fixture
async def api(ai_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(ai_settings) as client:
        yield client


async def _tenant_with_key(api: AsyncTestClient[Any], provider: FakeOpenAI, key: str = GOOD_KEY) -> dict[str, str]:
    tenant = await new_tenant(api, "ai")
    headers = {"X-Tenant-ID": tenant["slug"]}
    response = await api.put("/api/ai/keys/openai", json={"api_key": key, "api_base": provider.base}, headers=headers)
    assert response.status_code == 200, response.text
    return {**tenant, **headers}


def _headers(tenant: dict[str, str]) -> dict[str, str]:
    return {"X-Tenant-ID": tenant["slug"]}


async def _owner_rows(settings: Settings, tenant_id: str, query: str) -> list[asyncpg.Record]:
    """Rows read through the runtime group's privileges and the tenant's row-level security (the
    owner connection may be a superuser, which RLS does not bind)."""
    assert settings.database_url
    conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute("set local role businessos_runtime")
            await conn.execute("select set_config('app.tenant_id', $1, true)", tenant_id)
            return list(await conn.fetch(query))
    finally:
        await conn.close()


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def test_providers_list_models_and_whether_the_tenant_configured_a_key(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await new_tenant(api, "ai")
    body = (await api.get("/api/ai/providers", headers=_headers(tenant))).json()
    providers = {p["id"]: p for p in body["providers"]}
    assert set(providers) >= {"openai", "groq", "anthropic", "openai_compatible"}
    assert MODEL in providers["openai"]["models"]
    assert any(m.startswith("groq/") for m in providers["groq"]["models"])
    assert any(m.startswith("anthropic/claude") for m in providers["anthropic"]["models"])
    assert not any(p["configured"] for p in body["providers"])
    assert providers["openai_compatible"]["requiresApiBase"] is True
    await api.put(
        "/api/ai/keys/openai", json={"api_key": GOOD_KEY, "api_base": provider.base}, headers=_headers(tenant)
    )
    body = (await api.get("/api/ai/providers", headers=_headers(tenant))).json()
    assert {p["id"] for p in body["providers"] if p["configured"]} == {"openai"}
    assert body["tenantConfig"]["providers"]["openai"]["lastFour"] == GOOD_KEY[-4:]
    assert GOOD_KEY not in (await api.get("/api/ai/providers", headers=_headers(tenant))).text


async def test_a_provider_key_is_sealed_per_tenant_and_never_shown(
    api: AsyncTestClient[Any], ai_settings: Settings, provider: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = await new_tenant(api, "ai")
    headers = _headers(tenant)
    bodies = []
    put = await api.put("/api/ai/keys/openai", json={"api_key": GOOD_KEY, "api_base": provider.base}, headers=headers)
    assert put.status_code == 200 and put.headers["cache-control"] == "no-store"
    bodies.append(put.text)
    listed = await api.get("/api/ai/keys", headers=headers)
    bodies.append(listed.text)
    assert listed.json()["keys"] == [
        {
            "provider": "openai",
            "last_four": GOOD_KEY[-4:],
            "api_base": provider.base,
            "created_at": listed.json()["keys"][0]["created_at"],
            "updated_at": listed.json()["keys"][0]["updated_at"],
        }
    ]
    # A call, a failing call (the provider's 401 names part of the key), the usage and audit reads.
    bodies.append(
        (
            await api.post(
                "/api/ai/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, headers=headers
            )
        ).text
    )
    await api.put("/api/ai/keys/groq", json={"api_key": BAD_KEY, "api_base": provider.base}, headers=headers)
    failed = await api.post(
        "/api/ai/chat",
        json={"model": "groq/llama-3.1-8b-instant", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    bodies.append(failed.text)
    bodies.append((await api.get("/api/ai/usage", headers=headers)).text)
    bodies.append((await api.get("/api/audit/logs?limit=200", headers=headers)).text)
    bodies.append((await api.get("/api/ai/providers", headers=headers)).text)
    for body in bodies:
        for secret in (GOOD_KEY, BAD_KEY, GOOD_KEY[3:-4], BAD_KEY[3:-4]):
            assert secret not in body
    stored = await _owner_rows(ai_settings, tenant["id"], "select provider, sealed_key from ai_provider_keys")
    audit = await _owner_rows(ai_settings, tenant["id"], "select to_jsonb(a)::text as row from audit_logs a")
    usage = await _owner_rows(ai_settings, tenant["id"], "select to_jsonb(u)::text as row from ai_usage u")
    outbox = await _owner_rows(ai_settings, tenant["id"], "select to_jsonb(e)::text as row from events_outbox e")
    assert len(audit) >= 4 and len(usage) == 2
    for row in [*audit, *usage, *outbox]:
        assert GOOD_KEY not in row["row"] and BAD_KEY not in row["row"]
        assert GOOD_KEY[3:-4] not in row["row"] and BAD_KEY[3:-4] not in row["row"]
    # Nor in any log line of the app (it runs in this process), litellm's included.
    assert caplog.records and GOOD_KEY not in caplog.text and BAD_KEY not in caplog.text
    assert GOOD_KEY[3:-4] not in caplog.text and BAD_KEY[3:-4] not in caplog.text
    sealed = {r["provider"]: r["sealed_key"] for r in stored}
    assert GOOD_KEY not in sealed["openai"]
    box = SecretBox.from_secret(SECRET)
    assert box.open(sealed["openai"], f"tenant:{tenant['id']}") == GOOD_KEY
    with pytest.raises(ValueError):
        box.open(sealed["openai"], f"tenant:{uuid.uuid4()}")
    # Delete removes it; a second delete is 404.
    assert (await api.delete("/api/ai/keys/openai", headers=headers)).status_code == 204
    assert (await api.delete("/api/ai/keys/openai", headers=headers)).status_code == 404
    assert [k["provider"] for k in (await api.get("/api/ai/keys", headers=headers)).json()["keys"]] == ["groq"]


async def test_api_base_must_be_a_public_http_url(api: AsyncTestClient[Any], settings: Settings) -> None:
    tenant = await new_tenant(api, "ai")
    async with open_client(settings) as strict:  # the default: no private bases
        for base in (
            "http://127.0.0.1:8080/v1",
            "http://localhost/v1",
            "http://[::1]/v1",
            "http://10.1.2.3/v1",
            "http://169.254.169.254/latest",
            "http://192.168.0.10",
            "ftp://example.com",
            "not a url",
            "http://user:pw@example.com/v1",
        ):
            response = await strict.put(
                "/api/ai/keys/openai", json={"api_key": GOOD_KEY, "api_base": base}, headers=_headers(tenant)
            )
            body = _problem(response, 422)
            assert body["errors"][0]["field"] == "api_base", base
            assert GOOD_KEY not in response.text
    # Even where private bases are allowed (development), link-local (cloud metadata) is not.
    response = await api.put(
        "/api/ai/keys/openai",
        json={"api_key": GOOD_KEY, "api_base": "http://169.254.169.254/"},
        headers=_headers(tenant),
    )
    _problem(response, 422)
    _problem(await api.put("/api/ai/keys/openai_compatible", json={"api_key": GOOD_KEY}, headers=_headers(tenant)), 422)
    _problem(await api.put("/api/ai/keys/nope", json={"api_key": GOOD_KEY}, headers=_headers(tenant)), 404)


async def test_chat_calls_the_provider_with_the_tenants_key_and_meters_it(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    tenant = await _tenant_with_key(api, provider)
    response = await api.post(
        "/api/ai/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0.2},
        headers=_headers(tenant),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": "".join(REPLY)}
    assert body["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": len(REPLY),
        "total_tokens": PROMPT_TOKENS + len(REPLY),
        "cached_tokens": 3,
    }
    assert Decimal(body["cost"]) == EXPECTED_COST
    assert provider.received_keys[-1] == GOOD_KEY
    assert provider.requests[-1]["temperature"] == 0.2 and provider.requests[-1]["max_tokens"] > 0
    rows = await _owner_rows(
        ai_settings,
        tenant["id"],
        "select principal_kind, principal_id::text, provider, model, prompt_tokens, completion_tokens, cached_tokens,"
        " cost, price_version, status, latency_ms from ai_usage",
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row["principal_kind"], row["principal_id"]) == ("user", tenant["user_id"])
    assert (row["provider"], row["model"], row["status"]) == ("openai", MODEL, "ok")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (PROMPT_TOKENS, len(REPLY), 3)
    assert row["cost"] == EXPECTED_COST and row["price_version"].startswith("litellm:")
    audit = (await api.get("/api/audit/logs?action=ai.call", headers=_headers(tenant))).json()
    details = audit["items"][0]["details"] if "items" in audit else audit["logs"][0]["details"]
    assert details["model"] == MODEL and details["usage"]["prompt"] == PROMPT_TOKENS
    events = await _owner_rows(
        ai_settings, tenant["id"], "select event, payload::text from events_outbox where event not like 'kernel.%'"
    )
    assert [e["event"] for e in events] == ["ai.call.completed"]


async def test_a_call_without_a_tenant_key_is_refused_even_with_environment_keys(
    api: AsyncTestClient[Any], provider: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", provider.base)
    tenant = await new_tenant(api, "ai")
    before = len(provider.received_keys)
    response = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, headers=_headers(tenant)
    )
    body = _problem(response, 409)
    assert "no openai key" in body["detail"] and body["provider"] == "openai"
    assert len(provider.received_keys) == before
    _problem(
        await api.post(
            "/api/ai/chat",
            json={"model": "mystery-model", "messages": [{"role": "user", "content": "x"}]},
            headers=_headers(tenant),
        ),
        422,
    )


async def test_a_key_replaced_or_deleted_elsewhere_stops_being_used_at_once(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    """Calls keep the opened key and the budgets per process; a change made by another process
    reaches this one through the invalidation bus, not after the cache's minute."""
    tenant = await _tenant_with_key(api, provider)
    tenant_id = uuid.UUID(tenant["id"])
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 200
    async with other_process(ai_settings) as elsewhere:
        await elsewhere.ai.keys.put(
            tenant_id, "openai", KeyUpdate(api_key=BAD_KEY, api_base=provider.base), actor=None, meta=RequestMeta()
        )

        async def rejected() -> bool:
            return (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 502

        await eventually(rejected)
        assert provider.received_keys[-1] == BAD_KEY
        await elsewhere.ai.keys.delete(tenant_id, "openai", actor=None, meta=RequestMeta())

        async def missing() -> bool:
            return (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 409

        await eventually(missing)
        await elsewhere.ai.budgets.put(tenant_id, BudgetUpdate(monthly_token_limit=1), actor=None, meta=RequestMeta())
    restored = {"api_key": GOOD_KEY, "api_base": provider.base}
    await api.put("/api/ai/keys/openai", json=restored, headers=_headers(tenant))

    async def over_budget() -> bool:
        return (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 402

    await eventually(over_budget)


@pytest.mark.parametrize(
    ("model", "status", "slug"),
    [
        ("openai/rate-limited", 429, "ai-provider-rate-limited"),
        ("openai/broken", 502, "ai-provider-error"),
        ("openai/bad-request", 400, "ai-provider-bad-request"),
    ],
)
async def test_provider_failures_map_to_problems(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings, model: str, status: int, slug: str
) -> None:
    tenant = await _tenant_with_key(api, provider)
    response = await api.post(
        "/api/ai/chat", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, headers=_headers(tenant)
    )
    body = _problem(response, status)
    assert body["type"].endswith("/" + slug) and body["provider"] == "openai"
    assert GOOD_KEY not in response.text
    rows = await _owner_rows(ai_settings, tenant["id"], "select status, error, cost from ai_usage")
    assert [(r["status"], r["cost"]) for r in rows] == [("error", 0)] and slug in rows[0]["error"]


async def test_a_key_the_provider_rejects_answers_502_without_the_key(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant_with_key(api, provider, key=BAD_KEY)
    response = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, headers=_headers(tenant)
    )
    body = _problem(response, 502)
    assert body["detail"] == "openai rejected the key" and body["provider_status"] == 401
    assert BAD_KEY not in response.text and BAD_KEY[-4:] not in response.text
    assert provider.received_keys[-1] == BAD_KEY


def _events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], msgspec.json.decode(lines["data"])))
    return events


async def test_streamed_chat_sends_events_and_meters_the_usage_the_provider_reports(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    tenant = await _tenant_with_key(api, provider)
    response = await api.post(
        "/api/ai/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Stream it"}], "stream": True},
        headers=_headers(tenant),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    events = _events(response.text)
    assert "".join(data["content"] for name, data in events if name == "delta") == "".join(REPLY)
    name, done = events[-1]
    assert name == "done" and done["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert done["usage"]["completion_tokens"] == len(REPLY) and Decimal(done["cost"]) == EXPECTED_COST
    assert provider.requests[-1]["stream_options"] == {"include_usage": True}
    rows = await _owner_rows(ai_settings, tenant["id"], "select status, stream, cost, price_version from ai_usage")
    assert [(r["status"], r["stream"], r["cost"]) for r in rows] == [("ok", True, EXPECTED_COST)]
    assert not rows[0]["price_version"].endswith("+estimated")


async def test_usage_is_reported_by_day_model_and_principal(api: AsyncTestClient[Any], provider: FakeOpenAI) -> None:
    tenant = await _tenant_with_key(api, provider)
    for _ in range(3):
        await api.post(
            "/api/ai/chat",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            headers=_headers(tenant),
        )
    await api.post(
        "/api/ai/chat",
        json={"model": "openai/broken", "messages": [{"role": "user", "content": "x"}]},
        headers=_headers(tenant),
    )
    report = (await api.get("/api/ai/usage", headers=_headers(tenant))).json()
    by_model = {r["model"]: r for r in report["rows"]}
    assert by_model[MODEL]["calls"] == 3 and by_model[MODEL]["principal"] == f"user:{tenant['user_id']}"
    assert by_model[MODEL]["prompt_tokens"] == 3 * PROMPT_TOKENS
    assert report["totals"]["calls"] == 4 and report["totals"]["failed"] == 1
    assert Decimal(report["totals"]["cost"]) == 3 * EXPECTED_COST
    empty = (await api.get("/api/ai/usage?from=2000-01-01&to=2000-02-01", headers=_headers(tenant))).json()
    assert empty["rows"] == [] and empty["totals"]["calls"] == 0
    _problem(await api.get("/api/ai/usage?from=yesterday", headers=_headers(tenant)), 422)


async def test_a_call_that_does_not_fit_the_budget_answers_402_with_what_remains(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant_with_key(api, provider)
    assert (
        await api.put("/api/ai/budgets", json={"monthly_token_limit": 50}, headers=_headers(tenant))
    ).status_code == 200
    response = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, headers=_headers(tenant)
    )
    body = _problem(response, 402)
    assert body["remaining_tokens"] == 50 and body["estimated_tokens"] > 50
    budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
    assert budget["reserved_tokens"] == 0 and budget["spent_tokens"] == 0 and budget["remaining_tokens"] == 50


async def test_a_principal_budget_limits_that_principal_and_reserves_nothing_when_it_refuses(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant_with_key(api, provider)
    created = await api.post("/api/api-keys", json={"name": "capped", "role": "member"}, headers=_headers(tenant))
    key_id, key = created.json()["id"], created.json()["key"]
    scope = f"api_key:{key_id}"
    for body in ({"monthly_token_limit": 1_000_000}, {"monthly_token_limit": 50, "principal": scope}):
        response = await api.put("/api/ai/budgets", json=body, headers=_headers(tenant))
        assert response.status_code == 200, response.text
    assert response.json()["scope"] == scope and response.json()["monthly_token_limit"] == 50
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    refused = _problem(await api.post("/api/ai/chat", json=chat, headers={"Authorization": f"Bearer {key}"}), 402)
    assert refused["scope"] == scope and refused["remaining_tokens"] == 50
    tenant_budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
    assert tenant_budget["scope"] == "tenant" and tenant_budget["reserved_tokens"] == 0
    # The owner is not capped by the key's budget; the tenant's budget counts the owner's call.
    assert (await api.post("/api/ai/chat", json=chat, headers=_headers(tenant))).status_code == 200
    tenant_budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
    assert tenant_budget["spent_tokens"] == PROMPT_TOKENS + len(REPLY) and tenant_budget["reserved_tokens"] == 0
    key_budget = (await api.get(f"/api/ai/budgets?principal={scope}", headers=_headers(tenant))).json()
    assert key_budget["spent_tokens"] == 0 and key_budget["remaining_tokens"] == 50
    _problem(await api.get("/api/ai/budgets?principal=someone", headers=_headers(tenant)), 422)


async def test_members_may_call_but_not_manage_keys_or_budgets(api: AsyncTestClient[Any], provider: FakeOpenAI) -> None:
    tenant = await _tenant_with_key(api, provider)
    created = await api.post("/api/api-keys", json={"name": "member", "role": "member"}, headers=_headers(tenant))
    assert created.status_code == 201, created.text
    member = {"Authorization": f"Bearer {created.json()['key']}"}
    ok = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, headers=member
    )
    assert ok.status_code == 200, ok.text
    _problem(await api.put("/api/ai/keys/openai", json={"api_key": GOOD_KEY}, headers=member), 403)
    _problem(await api.put("/api/ai/budgets", json={"monthly_token_limit": 1}, headers=member), 403)
    _problem(await api.get("/api/ai/keys", headers=member), 403)


@pytest.fixture(scope="module")
async def real_server(ai_settings: Settings, tmp_path_factory: Any) -> AsyncIterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("ai-server")
    async with api_servers(ai_settings, data_dir, env={"BUSINESSOS_AI_ALLOW_PRIVATE_BASES": "1"}) as urls:
        yield urls[0]


async def _api_key(api: AsyncTestClient[Any], tenant: dict[str, str]) -> str:
    created = await api.post("/api/api-keys", json={"name": "sdk", "role": "member"}, headers=_headers(tenant))
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


async def test_calls_settled_together_charge_each_principal_its_own_spend(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings, real_server: str
) -> None:
    """Answers go out before their settlement, which is written in batches: calls of two
    principals landing in one batch are still charged to the tenant and to each principal."""
    tenant = await _tenant_with_key(api, provider)
    keys = [await _api_key(api, tenant), await _api_key(api, tenant)]
    key_ids = [
        k["id"] for k in (await api.get("/api/api-keys", headers=_headers(tenant))).json()["api_keys"]
    ]
    for scope in [None, *(f"api_key:{i}" for i in key_ids)]:
        response = await api.put(
            "/api/ai/budgets", json={"monthly_cost_limit": 1.0, "principal": scope}, headers=_headers(tenant)
        )
        assert response.status_code == 200, response.text
    body = {"model": MODEL, "messages": [{"role": "user", "content": "batch"}], "max_tokens": 6}
    async with httpx.AsyncClient(base_url=real_server, timeout=60) as http:
        responses = await asyncio.gather(
            *(http.post("/api/ai/chat", json=body, headers={"Authorization": f"Bearer {keys[i % 2]}"})
              for i in range(12))
        )
    assert [r.status_code for r in responses] == [200] * 12

    async def all_settled() -> bool:
        budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
        return Decimal(budget["reserved_cost"]) == 0 and Decimal(budget["spent_cost"]) > 0

    await eventually(all_settled, timeout=10)
    ledger = await _owner_rows(
        ai_settings, tenant["id"], "select principal_id::text as principal, sum(cost) as cost, count(*) as n "
        "from ai_usage group by principal_id",
    )
    assert sorted(r["n"] for r in ledger) == [6, 6]
    tenant_budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
    assert Decimal(tenant_budget["spent_cost"]) == sum(r["cost"] for r in ledger)
    for row in ledger:
        own = (
            await api.get("/api/ai/budgets", params={"principal": f"api_key:{row['principal']}"},
                          headers=_headers(tenant))
        ).json()
        assert Decimal(own["spent_cost"]) == row["cost"] and Decimal(own["reserved_cost"]) == 0
    assert (await api.get("/api/audit/verify", headers=_headers(tenant))).json()["valid"] is True


async def test_concurrent_calls_never_spend_past_the_budget(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings, real_server: str
) -> None:
    tenant = await _tenant_with_key(api, provider)
    limit = Decimal("0.00005")
    response = await api.put(
        "/api/ai/budgets", json={"monthly_cost_limit": float(limit), "soft_limit_ratio": 0.5}, headers=_headers(tenant)
    )
    assert response.status_code == 200, response.text
    key = await _api_key(api, tenant)
    provider.delay = 0.05  # calls overlap
    try:
        async with httpx.AsyncClient(base_url=real_server, timeout=60) as http:
            auth = {"Authorization": f"Bearer {key}"}
            warm = await http.post(
                "/api/ai/chat",
                json={"model": MODEL, "messages": [{"role": "user", "content": "w"}], "max_tokens": 6},
                headers=auth,
            )
            assert warm.status_code == 200, warm.text
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/api/ai/chat",
                        json={"model": MODEL, "messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 6},
                        headers=auth,
                    )
                    for i in range(20)
                )
            )
    finally:
        provider.delay = 0.0
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}, [r.text for r in responses if r.status_code not in (200, 402)]
    assert statuses.count(402) >= 1 and statuses.count(200) >= 1, statuses
    budget: dict[str, Any] = {}

    async def settled() -> bool:  # answers go out before their ledger rows are written
        budget.update((await api.get("/api/ai/budgets", headers=_headers(tenant))).json())
        return Decimal(budget["reserved_cost"]) == 0

    await eventually(settled, timeout=10)
    assert Decimal(budget["spent_cost"]) <= limit
    # Settled in batches: the audit chain is still whole, one ai.call row per call.
    chain = (await api.get("/api/audit/verify", headers=_headers(tenant))).json()
    assert chain["valid"] is True, chain
    ledger = await _owner_rows(
        ai_settings, tenant["id"], "select sum(cost) as total, count(*) as n from ai_usage where status = 'ok'"
    )
    assert ledger[0]["total"] == Decimal(budget["spent_cost"]) and ledger[0]["n"] == statuses.count(200) + 1
    events = await _owner_rows(
        ai_settings, tenant["id"], "select event from events_outbox where event = 'ai.budget.soft_limit'"
    )
    # Reservations are upper bounds, so how many calls got in (and whether the spend reached the
    # soft limit at half the budget) depends on timing; crossing it emits the event exactly once.
    assert len(events) == (1 if Decimal(budget["spent_cost"]) >= limit / 2 else 0)
    print(f"budget {limit}: {statuses.count(200)} of 20 admitted, spent {budget['spent_cost']}")


async def test_a_stream_the_client_abandons_is_recorded_and_its_reservation_released(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings, real_server: str
) -> None:
    tenant = await _tenant_with_key(api, provider)
    await api.put("/api/ai/budgets", json={"monthly_token_limit": 1_000_000}, headers=_headers(tenant))
    key = await _api_key(api, tenant)
    provider.chunk_delay = 0.5
    try:
        async with httpx.AsyncClient(base_url=real_server, timeout=30) as http:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "long"}], "stream": True}
            async with http.stream(
                "POST", "/api/ai/chat", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # the first piece arrived: hang up

        async def settled() -> bool:
            rows = await _owner_rows(ai_settings, tenant["id"], "select status from ai_usage")
            return [r["status"] for r in rows] == ["cancelled"]

        await eventually(settled, timeout=15)
    finally:
        provider.chunk_delay = 0.005
    budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
    assert budget["reserved_tokens"] == 0


async def test_a_provider_that_does_not_answer_in_time_is_a_504(
    ai_settings: Settings, provider: FakeOpenAI, tmp_path: Path
) -> None:
    assert ai_settings.database_url and ai_settings.redis_url
    quick = settings_for(
        ai_settings.database_url,
        ai_settings.redis_url,
        tmp_path,
        BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1",
        BUSINESSOS_AI_TIMEOUT_SECONDS="1",
    )
    provider.delay = 3
    try:
        async with open_client(quick) as api:
            tenant = await _tenant_with_key(api, provider)
            response = await api.post(
                "/api/ai/chat",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                headers=_headers(tenant),
            )
    finally:
        provider.delay = 0
    body = _problem(response, 504)
    assert body["type"].endswith("/ai-provider-timeout") and GOOD_KEY not in response.text


async def test_the_official_openai_sdk_works_against_the_v1_surface(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings, real_server: str
) -> None:
    import openai

    tenant = await _tenant_with_key(api, provider)
    key = await _api_key(api, tenant)
    client = openai.AsyncOpenAI(base_url=real_server + "/v1", api_key=key, max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello SDK"}]
        )
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.content == "".join(REPLY)
        assert completion.usage is not None and completion.usage.prompt_tokens == PROMPT_TOKENS
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Stream SDK"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = [], None
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(text) == "".join(REPLY)
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert usage is not None and usage.completion_tokens == len(REPLY)
        embedded = await client.embeddings.create(model="openai/text-embedding-3-small", input=["one", "three"])
        assert [len(item.embedding) for item in embedded.data] == [4, 4]
        assert embedded.data[1].embedding[0] == float(len("three") % 7)
        assert embedded.usage.prompt_tokens == 2
        models = await client.models.list()
        assert MODEL in [m.id for m in models.data]
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=real_server + "/v1", api_key="bos_wrong", max_retries=0).models.list()
        with pytest.raises(openai.APIStatusError) as failure:
            await client.chat.completions.create(
                model="openai/rate-limited", messages=[{"role": "user", "content": "x"}]
            )
        assert failure.value.status_code == 429 and failure.value.code == "ai-provider-rate-limited"
        with pytest.raises(openai.UnprocessableEntityError) as invalid:  # errors in OpenAI's shape too
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=9
            )
        assert invalid.value.param == "temperature" and invalid.value.type == "validation-error"
    finally:
        await client.close()
    rows = await _owner_rows(
        ai_settings, tenant["id"], "select principal_kind, surface, stream, status from ai_usage"
    )
    # Compared as a multiset: non-streamed calls are settled later, in batches, so created_at
    # does not promise the order in which the calls were made.
    assert sorted((r["principal_kind"], r["surface"], r["stream"], r["status"]) for r in rows) == sorted([
        ("api_key", "openai", False, "ok"),
        ("api_key", "openai", True, "ok"),
        ("api_key", "openai", False, "ok"),
        ("api_key", "openai", False, "error"),
    ])


async def test_a_price_override_reprices_the_model_and_names_its_version(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    model = f"openai/priced-{uuid.uuid4().hex[:8]}"
    assert ai_settings.database_url
    owner = await asyncpg.connect(ai_settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await owner.execute(
            "insert into ai_price_overrides (model, input_per_token, output_per_token, version) "
            "values ($1, 0.001, 0.002, '2026-11')",
            model,
        )
    finally:
        await owner.close()
    tenant = await _tenant_with_key(api, provider)
    response = await api.post(
        "/api/ai/chat", json={"model": model, "messages": [{"role": "user", "content": "x"}]}, headers=_headers(tenant)
    )
    assert response.status_code == 200, response.text
    assert Decimal(response.json()["cost"]) == PROMPT_TOKENS * Decimal("0.001") + len(REPLY) * Decimal("0.002")
    rows = await _owner_rows(ai_settings, tenant["id"], "select price_version from ai_usage")
    assert [r["price_version"] for r in rows] == ["override:2026-11"]
