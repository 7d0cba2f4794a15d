"""Plugin nodes as steps of real runs (the engine driven in-process): a step whose node needs a
permission the workflow's principal lacks fails, and the agent's model answers and tool calls are
checkpointed in its step's journal, so a second attempt replays them instead of acting again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from kernel import sdk
from kernel.context import Kernel
from kernel.settings import Settings
from tests.conftest import open_client, other_process
from tests.fake_openai import FakeOpenAI
from tests.test_access import at, new_key
from tests.test_workflow_ai_nodes import MODEL, ai_tenant, provider, tool_call
from tests.test_workflow_nodes import tenant_with, wf_settings
from tests.test_workflows import detail, edge, engine, node, run, steps_of

__all__ = ["provider", "wf_settings"]  # the fixtures, shared with the modules they come from


@pytest.fixture(scope="module")
async def api(wf_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(wf_settings) as client:
        yield client


@pytest.fixture(scope="module")
async def kernel(wf_settings: Settings) -> AsyncIterator[Kernel]:
    async with other_process(wf_settings) as k:
        yield k


async def publish_as(api: AsyncTestClient[Any], headers: dict[str, str], nodes: list[Any], edges: list[Any]) -> str:
    body = {"name": f"wf-{uuid.uuid4().hex[:6]}", "graph": {"nodes": nodes, "edges": edges}}
    made = await api.post("/api/workflows", json=body, headers=headers)
    assert made.status_code == 201, made.text
    wid: str = made.json()["id"]
    published = await api.post(f"/api/workflows/{wid}/publish", headers=headers)
    assert published.status_code == 201, published.text
    return wid


CONTACT = (
    [node("start", "workflows.manual"), node("contact", "crm.create_contact", first_name="{{ trigger.name }}")],
    [edge("start", "contact")],
)


async def test_a_step_fails_when_the_workflows_principal_lacks_the_nodes_permission(
    api: AsyncTestClient[Any], kernel: Kernel
) -> None:
    t = await tenant_with(api, "crm", "workflows")
    other = await tenant_with(api, "crm", "workflows")
    owner = {**t["h"], "Authorization": f"Bearer {t['access_token']}"}
    scopes = ["workflows.definitions.read", "workflows.definitions.write", "workflows.executions.write"]
    builder = await new_key(api, owner, scopes=scopes)
    limited = await publish_as(api, at(t, key=builder["key"]), *CONTACT)
    full = await publish_as(api, t["h"], *CONTACT)
    refused = await run(api, t, limited, {"name": "Nope"})
    allowed = await run(api, t, full, {"name": "Yes"})
    await engine(kernel).work()

    body = await detail(api, t, refused)
    assert body["execution"]["status"] == "failed", body
    step = steps_of(body)[("contact", "0")]
    assert step["status"] == "failed" and "crm.contacts.write" in str(step["error"])
    done = await detail(api, t, allowed)
    assert done["execution"]["status"] == "succeeded", done
    made = steps_of(done)[("contact", "0")]["output"]
    assert made["first_name"] == "Yes"
    names = [c["first_name"] for c in (await api.get("/api/crm/contacts", headers=t["h"])).json()["contacts"]]
    assert names == ["Yes"]
    assert (await api.get(f"/api/workflows/executions/{allowed}", headers=other["h"])).status_code == 404
    assert (await api.get(f"/api/crm/contacts/{made['id']}", headers=other["h"])).status_code == 404


async def test_the_agents_model_answers_and_tool_calls_are_checkpointed_in_its_step(
    api: AsyncTestClient[Any], kernel: Kernel, provider: FakeOpenAI
) -> None:
    t = await ai_tenant(api, provider, "crm")
    provider.script.clear()
    provider.script.extend([
        {"content": None, "tool_calls": [tool_call("call_1", "crm__create_contact", {"first_name": "Lin"})]},
        {"content": "Added Lin."},
    ])
    agent = node("agent", "workflows.agent", model=MODEL, prompt="Add {{ trigger.who }}", tools=["crm.create_contact"])
    wid = await publish_as(api, t["h"], [node("start", "workflows.manual"), agent], [edge("start", "agent")])
    eid = await run(api, t, wid, {"who": "Lin"})
    await engine(kernel).work()
    body = await detail(api, t, eid)
    assert body["execution"]["status"] == "succeeded", body
    out = steps_of(body)[("agent", "0")]["output"]
    assert out["text"] == "Added Lin." and out["tool_calls"][0]["output"]["first_name"] == "Lin"
    assert out["tool_calls"][0]["step_id"] == "agent.tool1"

    tenant_id = uuid.UUID(t["id"])
    async with kernel.db.tenant(tenant_id) as session:
        journal = (
            await session.execute(
                text("select journal from workflows_steps where execution_id = :e and node_id = 'agent'"),
                {"e": uuid.UUID(eid)},
            )
        ).scalar_one()
    assert set(journal) == {"model1", "tool1", "model2"}
    assert journal["tool1"]["output"]["first_name"] == "Lin"
    calls = len(provider.requests)

    # A second attempt of the same step (a worker died after the step's last checkpoint inside it)
    # replays the journal: no model call, no second contact.
    class Replay:
        """The step's stored journal, as the engine hands it to a later attempt."""

        async def step(self, name: str, work: Any) -> Any:
            return journal[name]

    principal = sdk.Principal(kind="user", id=uuid.UUID(t["user_id"]), tenant_id=tenant_id, role="owner",
                              permissions=frozenset({"crm.contacts.write"}))
    again = await kernel.services("workflows").nodes.run(
        "workflows.agent", tenant_id=tenant_id, execution_id=uuid.UUID(eid), step_id="agent", attempt=2,
        actor=sdk.Actor.system("workflow", principal=principal), config=agent["config"] | {"prompt": "Add Lin"},
        journal=Replay(),
    )
    assert again.text == "Added Lin." and again.tool_calls[0].output["first_name"] == "Lin"
    assert len(provider.requests) == calls
    contacts = (await api.get("/api/crm/contacts", headers=t["h"])).json()
    assert [c["first_name"] for c in contacts["contacts"]] == ["Lin"]
