"""The tenant's AI settings from outside: default model, fallbacks and retries (each attempt
metered), prompt logging, and the sweeper that frees reservations of calls whose process died."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

from litestar.testing import AsyncTestClient

from kernel.jobs.worker import sweep_ai_reservations
from kernel.settings import Settings
from tests import test_ai
from tests.conftest import new_tenant, other_process
from tests.fake_openai import REPLY, FakeOpenAI
from tests.test_ai import (
    BAD_KEY,
    GOOD_KEY,
    MODEL,
    _headers,
    _owner_rows,
    _problem,
    _tenant_with_key,
)

# The AI suite's fixtures: the local provider, settings allowing its loopback address, a client.
provider, ai_settings, api = test_ai.provider, test_ai.ai_settings, test_ai.api


def _chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


async def _put(api: AsyncTestClient[Any], tenant: dict[str, str], **body: Any) -> Any:
    return await api.put("/api/ai/settings", json=body, headers=_headers(tenant))


async def test_settings_are_validated_audited_and_give_the_default_model(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    tenant = await _tenant_with_key(api, provider)
    defaults = (await api.get("/api/ai/settings", headers=_headers(tenant))).json()
    assert defaults["default_model"] is None and defaults["fallback_models"] == [] and defaults["retries"] == 0
    assert defaults["log_prompts"] is False and defaults["effective_timeout_seconds"] == ai_settings.ai_timeout_seconds

    # Without a default, a chat without a model is refused naming it.
    body = _problem(await api.post("/api/ai/chat", json=_chat(), headers=_headers(tenant)), 422)
    assert "model" in body["detail"] and body["errors"][0]["field"] == "model"

    for bad, field in (
        ({"retries": 6}, "retries"),
        ({"retries": -1}, "retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 601}, "timeout_seconds"),
        ({"default_model": "nowhere/model-x"}, "default_model"),
        ({"fallback_models": [MODEL, "nowhere/x"]}, "fallback_models[1]"),
        ({"fallback_models": [MODEL, MODEL]}, "fallback_models"),
        ({"log_prompts": "yes"}, "log_prompts"),
        ({"surprise": 1}, "surprise"),
    ):
        problem = _problem(await _put(api, tenant, **bad), 422)
        assert any(field in (e["field"] or "") for e in problem.get("errors", [])) or field in problem["detail"], (
            bad, problem,
        )
    assert (await api.get("/api/ai/settings", headers=_headers(tenant))).json() == defaults

    saved = await _put(api, tenant, default_model=MODEL, default_embedding_model="openai/text-embedding-3-small",
                       timeout_seconds=30, retries=1)
    assert saved.status_code == 200, saved.text
    assert saved.json()["default_model"] == MODEL and saved.json()["effective_timeout_seconds"] == 30
    assert saved.json()["default_embedding_model"] == "openai/text-embedding-3-small"
    response = await api.post("/api/ai/chat", json=_chat(), headers=_headers(tenant))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL
    assert provider.requests[-1]["model"] == MODEL.removeprefix("openai/")
    audit = (await api.get("/api/audit/logs?action=ai.settings.updated", headers=_headers(tenant))).json()["items"]
    assert audit[0]["after"]["default_model"] == MODEL and audit[0]["before"]["default_model"] is None

    # Members may read the settings but not change them.
    key = await api.post("/api/api-keys", json={"name": "m", "role": "member"}, headers=_headers(tenant))
    member = {"Authorization": f"Bearer {key.json()['key']}"}
    assert (await api.get("/api/ai/settings", headers=member)).status_code == 200
    _problem(await api.put("/api/ai/settings", json={"retries": 0}, headers=member), 403)
    # Another tenant's settings are its own.
    other = await new_tenant(api, "settings-other")
    assert (await api.get("/api/ai/settings", headers=_headers(other))).json()["default_model"] is None


async def test_a_busy_model_falls_back_and_every_attempt_is_metered(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    tenant = await _tenant_with_key(api, provider)
    await api.put("/api/ai/keys/groq", json={"api_key": BAD_KEY, "api_base": provider.base}, headers=_headers(tenant))
    # The groq fallback has a key the provider refuses: never reached, since the first fallback answers.
    saved = await _put(api, tenant, fallback_models=["openai/broken", MODEL, "groq/llama-3.1-8b-instant"])
    assert saved.status_code == 200, saved.text
    response = await api.post("/api/ai/chat", json=_chat(model="openai/rate-limited"), headers=_headers(tenant))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL and response.json()["message"]["content"] == "".join(REPLY)
    rows = await _owner_rows(
        ai_settings, tenant["id"], "select model, status, error from ai_usage order by created_at, id"
    )
    assert [(r["model"], r["status"]) for r in rows] == [
        ("openai/rate-limited", "error"), ("openai/broken", "error"), (MODEL, "ok"),
    ]
    assert rows[0]["error"].startswith("ai-provider-rate-limited")
    audit = (await api.get("/api/audit/logs?action=ai.call", headers=_headers(tenant))).json()["items"]
    assert any(e["details"].get("fallback_for") == "openai/rate-limited" for e in audit)

    # Streaming falls back too (before the first byte); so does the OpenAI-compatible surface.
    async with api.stream(
        "POST", "/api/ai/chat", json=_chat(model="openai/rate-limited", stream=True), headers=_headers(tenant)
    ) as streamed:
        text = (await streamed.aread()).decode()
    assert streamed.status_code == 200 and f'"model":"{MODEL}"' in text
    key = (await api.post("/api/api-keys", json={"name": "sdk", "role": "member"}, headers=_headers(tenant))).json()
    completion = await api.post(
        "/v1/chat/completions", json=_chat(model="openai/rate-limited"),
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["model"] == MODEL and completion.json()["choices"][0]["message"]["content"] == "".join(
        REPLY
    )

    # A failure that is not worth retrying (400) is not retried.
    before = len(provider.requests)
    _problem(await api.post("/api/ai/chat", json=_chat(model="openai/bad-request"), headers=_headers(tenant)), 400)
    assert len(provider.requests) == before + 1
    # When every model fails the last failure is answered and the reservation is released.
    await _put(api, tenant, fallback_models=["openai/broken"])
    await api.put("/api/ai/budgets", json={"monthly_cost_limit": 10}, headers=_headers(tenant))
    _problem(await api.post("/api/ai/chat", json=_chat(model="openai/rate-limited"), headers=_headers(tenant)), 502)
    budget = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
    assert Decimal(budget["reserved_cost"]) == 0


async def test_retries_try_the_same_model_again(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    tenant = await _tenant_with_key(api, provider)
    model = f"flaky-{uuid.uuid4().hex[:6]}"
    provider.failures[model] = 2
    await _put(api, tenant, retries=2)
    response = await api.post("/api/ai/chat", json=_chat(model=f"openai/{model}"), headers=_headers(tenant))
    assert response.status_code == 200, response.text
    rows = await _owner_rows(ai_settings, tenant["id"], "select status from ai_usage order by created_at, id")
    assert [r["status"] for r in rows] == ["error", "error", "ok"]
    provider.failures[model] = 2
    await _put(api, tenant, retries=1)
    _problem(await api.post("/api/ai/chat", json=_chat(model=f"openai/{model}"), headers=_headers(tenant)), 502)


async def test_prompts_reach_the_audit_log_only_when_the_tenant_logs_them(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Settings
) -> None:
    tenant = await _tenant_with_key(api, provider)
    quiet = f"quiet-phrase-{uuid.uuid4().hex}"
    assert (await api.post("/api/ai/chat", json=_chat(quiet, model=MODEL), headers=_headers(tenant))).status_code == 200
    audit = await _owner_rows(ai_settings, tenant["id"], "select to_jsonb(a)::text as row from audit_logs a")
    assert audit and not any(quiet in r["row"] for r in audit)
    assert not any("".join(REPLY) in r["row"] for r in audit)

    await _put(api, tenant, log_prompts=True)
    loud = f"loud-phrase-{uuid.uuid4().hex}"
    assert (await api.post("/api/ai/chat", json=_chat(loud, model=MODEL), headers=_headers(tenant))).status_code == 200
    async with api.stream(
        "POST", "/api/ai/chat", json=_chat(loud + "-streamed", model=MODEL, stream=True), headers=_headers(tenant)
    ) as streamed:
        await streamed.aread()
    calls = (await api.get("/api/audit/logs?action=ai.call", headers=_headers(tenant))).json()["items"]
    logged = [e["details"] for e in calls if "prompt" in e["details"]]
    assert {d["prompt"][0]["content"] for d in logged} == {loud, loud + "-streamed"}
    assert all(d["answer"] == "".join(REPLY) for d in logged)
    # The event stays metadata only; the key appears nowhere.
    outbox = await _owner_rows(ai_settings, tenant["id"], "select payload::text as row from events_outbox")
    assert not any(loud in r["row"] for r in outbox)
    audit = await _owner_rows(ai_settings, tenant["id"], "select to_jsonb(a)::text as row from audit_logs a")
    assert any(loud in r["row"] for r in audit)
    assert not any(GOOD_KEY in r["row"] or GOOD_KEY[-12:] in r["row"] for r in [*audit, *outbox])
    await _put(api, tenant, log_prompts=False)
    later = f"later-phrase-{uuid.uuid4().hex}"
    await api.post("/api/ai/chat", json=_chat(later, model=MODEL), headers=_headers(tenant))
    audit = await _owner_rows(ai_settings, tenant["id"], "select to_jsonb(a)::text as row from audit_logs a")
    assert not any(later in r["row"] for r in audit)


async def test_the_sweeper_releases_reservations_of_calls_whose_process_died(
    api: AsyncTestClient[Any], ai_settings: Settings
) -> None:
    tenant = await new_tenant(api, "sweep")
    other = await new_tenant(api, "sweep-other")
    for t in (tenant, other):
        await api.put("/api/ai/budgets", json={"monthly_cost_limit": 5}, headers=_headers(t))
    tenant_id, other_id = uuid.UUID(tenant["id"]), uuid.UUID(other["id"])
    async with other_process(ai_settings) as kernel:
        budgets = kernel.ai.budgets
        # A call whose process dies: reserved, never settled, its expiry passes.
        dead = await budgets.reserve(tenant_id, None, Decimal("2"), 1000, ttl_seconds=0)
        # A call still running (another tenant's, and one of this tenant's): not expired.
        running = await budgets.reserve(tenant_id, None, Decimal("1"), 10, ttl_seconds=600)
        await budgets.reserve(other_id, None, Decimal("1.5"), 10, ttl_seconds=600)
        state = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
        assert Decimal(state["reserved_cost"]) == 3 and Decimal(state["remaining_cost"]) == 2
        await asyncio.sleep(0.05)

        assert await sweep_ai_reservations({"kernel": kernel}) >= 1
        state = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
        assert Decimal(state["reserved_cost"]) == 1 and state["reserved_tokens"] == 10
        assert Decimal((await api.get("/api/ai/budgets", headers=_headers(other))).json()["reserved_cost"]) == 1.5
        # Idempotent: again, nothing more is released.
        await sweep_ai_reservations({"kernel": kernel})
        state = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
        assert Decimal(state["reserved_cost"]) == 1

        # The "dead" call settling late is charged but gives back nothing it no longer holds.
        async with kernel.db.tenant(tenant_id) as session:
            await budgets.settle(session, tenant_id, None, dead, Decimal("0.25"), 100)
        state = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
        assert Decimal(state["reserved_cost"]) == 1 and Decimal(state["spent_cost"]) == Decimal("0.25")
        async with kernel.db.tenant(tenant_id) as session:
            await budgets.release(session, running)
            await budgets.release(session, running)  # a second release gives back nothing
        state = (await api.get("/api/ai/budgets", headers=_headers(tenant))).json()
        assert Decimal(state["reserved_cost"]) == 0 and state["reserved_tokens"] == 0
