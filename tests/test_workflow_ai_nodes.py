"""``workflows.ai`` and ``workflows.agent`` against the suite's local OpenAI-compatible server
(scripted to answer JSON and to call tools), run through ``POST /api/workflows/nodes/{key}/test``
on the tenant's own key, budget and ledger."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.settings import Settings
from tests.conftest import eventually, open_client
from tests.fake_openai import REPLY, FakeOpenAI, fake_openai
from tests.test_access import at, new_key
from tests.test_workflow_nodes import tenant_with, wf_settings

__all__ = ["wf_settings"]  # the fixture, shared with tests/test_workflow_nodes.py

KEY = f"sk-proj-WFKEY{uuid.uuid4().hex}Qx7z"
MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with fake_openai({KEY}) as server:
        yield server


@pytest.fixture(scope="module")
async def api(wf_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(wf_settings) as client:
        yield client


@pytest.fixture(autouse=True)
def fresh_script(provider: FakeOpenAI) -> None:
    provider.script.clear()


async def ai_tenant(api: AsyncTestClient[Any], provider: FakeOpenAI, *modules: str) -> dict[str, Any]:
    tenant = await tenant_with(api, *modules, "workflows")
    response = await api.put(
        "/api/ai/keys/openai", json={"api_key": KEY, "api_base": provider.base}, headers=tenant["h"]
    )
    assert response.status_code == 200, response.text
    return tenant


async def run(
    api: AsyncTestClient[Any],
    tenant: dict[str, Any],
    key: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await api.post(f"/api/workflows/nodes/{key}/test", json=body, headers=headers or tenant["h"])
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def tool_call(call_id: str, name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


async def test_the_ai_node_calls_the_model_on_the_tenants_key_and_meters_it(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await ai_tenant(api, provider)
    body = {
        "config": {
            "model": "gpt-4o-mini",
            "provider": "openai",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Greet {{ trigger.name }}"},
            ],
        },
        "input": {"trigger": {"name": "Ada"}},
    }
    result = await run(api, tenant, "workflows.ai", body)
    assert result["ok"] is True, result
    out = result["output"]
    assert out["text"] == "".join(REPLY) and out["json"] is None and out["model"] == MODEL
    assert out["prompt_tokens"] > 0 and float(out["cost"]) > 0
    sent = provider.requests[-1]
    assert sent["messages"][-1] == {"role": "user", "content": "Greet Ada"} and sent["temperature"] == 0.2

    async def metered() -> bool:
        rows = (await api.get("/api/ai/usage", headers=tenant["h"])).json()["rows"]
        return [(r["model"], r["calls"], r["principal"]) for r in rows] == [(MODEL, 1, f"user:{tenant['user_id']}")]

    await eventually(metered)


async def test_the_ai_node_parses_json_and_checks_it_against_the_schema(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await ai_tenant(api, provider)
    schema = {
        "type": "object",
        "required": ["score", "label"],
        "properties": {"score": {"type": "integer", "minimum": 0}, "label": {"type": "string"}},
    }
    config = {"model": MODEL, "messages": [{"role": "user", "content": "Rate the lead"}], "json_schema": schema}
    provider.script.append({"content": '```json\n{"score": 7, "label": "hot"}\n```'})
    good = await run(api, tenant, "workflows.ai", {"config": config})
    assert good["ok"] is True and good["output"]["json"] == {"score": 7, "label": "hot"}
    sent = provider.requests[-1]
    assert sent["response_format"] == {"type": "json_object"} and "JSON Schema" in sent["messages"][0]["content"]

    provider.script.append({"content": '{"score": "high", "label": "hot"}'})
    wrong = await run(api, tenant, "workflows.ai", {"config": config})
    assert wrong["ok"] is False and wrong["error"]["status"] == 422 and "json.score" in wrong["error"]["detail"]
    provider.script.append({"content": "I think it is hot"})
    prose = await run(api, tenant, "workflows.ai", {"config": config})
    assert prose["ok"] is False and "not JSON" in prose["error"]["detail"]

    bad_schema = {**config, "json_schema": {"type": "no-such-type"}}
    refused = await run(api, tenant, "workflows.ai", {"config": bad_schema})
    assert refused["ok"] is False and refused["error"]["status"] == 422


async def test_the_agent_calls_enabled_allowed_nodes_as_audited_tool_steps(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await ai_tenant(api, provider, "crm")
    other = await ai_tenant(api, provider, "crm")
    provider.script.extend(
        [
            {
                "content": None,
                "tool_calls": [
                    tool_call("call_1", "crm__create_contact", {"first_name": "Grace", "email": "grace@example.com"}),
                    tool_call("call_2", "crm__create_contact", {"first_name": "Bad", "email": "not-an-email"}),
                ],
            },
            {"content": None, "tool_calls": [tool_call("call_3", "projects__create_task", {"title": "x"})]},
            {"content": "Created Grace."},
        ]
    )
    config = {
        "model": MODEL,
        "instructions": "You run a CRM.",
        "prompt": "Add {{ trigger.who }}",
        "tools": ["crm.create_contact", "projects.create_task", "crm.deal_stage_changed", "workflows.agent"],
        "max_steps": 5,
    }
    result = await run(api, tenant, "workflows.agent", {"config": config, "input": {"trigger": {"who": "Grace"}}})
    assert result["ok"] is True, result
    out = result["output"]
    assert (out["text"], out["stop_reason"], out["steps"]) == ("Created Grace.", "answered", 3)
    # Projects is not enabled, a trigger is no tool, an agent is not its own tool: none is offered.
    assert out["unavailable_tools"] == ["projects.create_task", "crm.deal_stage_changed", "workflows.agent"]
    first, second, third = out["tool_calls"]
    assert first["output"]["first_name"] == "Grace" and first["error"] is None and first["step_id"] == "test.tool1"
    assert second["error"]["status"] == 422 and second["error"]["errors"][0]["field"] == "config.email"
    assert third["error"]["status"] == 404 and third["node"] == "projects__create_task"

    asked = provider.requests[-3:]
    tools = asked[0]["tools"]
    assert [t["function"]["name"] for t in tools] == ["crm__create_contact"]
    assert tools[0]["function"]["parameters"]["required"] == ["first_name"]
    assert asked[0]["messages"][1] == {"role": "user", "content": "Add Grace"}
    replies = [m for m in asked[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in replies] == ["call_1", "call_2"]
    assert json.loads(replies[0]["content"])["output"]["email"] == "grace@example.com"
    assert "error" in json.loads(replies[1]["content"])

    contacts = (await api.get("/api/crm/contacts", headers=tenant["h"])).json()
    assert [c["first_name"] for c in contacts["contacts"]] == ["Grace"]
    assert (await api.get("/api/crm/contacts", headers=other["h"])).json()["pagination"]["total"] == 0
    logs = (
        await api.get("/api/audit/logs", params={"action": "workflows.agent.tool_called"}, headers=tenant["h"])
    ).json()
    assert sorted((r["details"]["node"], r["result"]) for r in logs["items"]) == [
        ("crm.create_contact", "failure"),
        ("crm.create_contact", "success"),
    ]
    assert (
        await api.get("/api/audit/logs", params={"action": "workflows.agent.tool_called"}, headers=other["h"])
    ).json()["items"] == []


async def test_the_agent_stops_after_max_steps_and_offers_only_what_the_principal_may_run(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await ai_tenant(api, provider, "crm")
    owner = {**tenant["h"], "Authorization": f"Bearer {tenant['access_token']}"}
    key = await new_key(api, owner, scopes=["workflows.nodes.test", "workflows.definitions.read"])
    provider.script.extend(
        [
            {"content": None, "tool_calls": [tool_call(f"call_{i}", "crm__create_contact", {"first_name": f"P{i}"})]}
            for i in range(3)
        ]
    )
    config = {"model": MODEL, "prompt": "Go", "tools": ["crm.create_contact"], "max_steps": 2}
    result = await run(api, tenant, "workflows.agent", {"config": config}, headers=at(tenant, key=key["key"]))
    out = result["output"]
    assert result["ok"] is True and (out["stop_reason"], out["steps"]) == ("max_steps", 2)
    assert out["unavailable_tools"] == ["crm.create_contact"] and "tools" not in provider.requests[-1]
    assert [c["error"]["status"] for c in out["tool_calls"]] == [404, 404]
    assert (await api.get("/api/crm/contacts", headers=tenant["h"])).json()["pagination"]["total"] == 0


async def test_the_agent_is_bounded_by_the_ai_budget(api: AsyncTestClient[Any], provider: FakeOpenAI) -> None:
    tenant = await ai_tenant(api, provider, "crm")
    assert (await api.put("/api/ai/budgets", json={"monthly_token_limit": 50}, headers=tenant["h"])).status_code == 200
    config = {"model": MODEL, "prompt": "Go", "tools": ["crm.create_contact"]}
    result = await run(api, tenant, "workflows.agent", {"config": config})
    assert result["ok"] is False and result["error"]["status"] == 402
