"""Prompt templates from outside: versions, variables, the sandbox, and chat calls from a template."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from litestar.testing import AsyncTestClient

from tests import test_ai
from tests.conftest import new_tenant
from tests.fake_openai import REPLY, FakeOpenAI
from tests.test_ai import (
    GOOD_KEY,
    MODEL,
    _headers,
    _owner_rows,
    _problem,
    _tenant_with_key,
)

GREETING = "Write a greeting for {{ name }}.\n{% if topic %}Mention {{ topic }}.{% endif %}"

# The AI suite's fixtures: the local provider, settings allowing its loopback address, a client.
provider, ai_settings, api = test_ai.provider, test_ai.ai_settings, test_ai.api


async def _create(api: AsyncTestClient[Any], headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.post("/api/ai/prompts", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_templates_are_versioned_and_list_their_variables(api: AsyncTestClient[Any]) -> None:
    a, b = await new_tenant(api, "prompts-a"), await new_tenant(api, "prompts-b")
    created = await _create(
        api, _headers(a), name="greeting", description="Says hello", template=GREETING, model=MODEL,
        parameters={"temperature": 0.3, "max_tokens": 50},
    )
    assert created["latest_version"] == 1 and created["versions"] == [1]
    assert created["latest"]["variables"] == ["name", "topic"]
    assert created["latest"]["template"] == GREETING
    assert created["latest"]["parameters"] == {"temperature": 0.3, "max_tokens": 50}
    prompt_id = created["id"]

    # An update is a new version; the message-list form is accepted too.
    messages = [{"role": "system", "content": "You are {{ persona }}."}, {"role": "user", "content": "Hi {{ name }}"}]
    patched = await api.patch(f"/api/ai/prompts/{prompt_id}", json={"template": messages}, headers=_headers(a))
    assert patched.status_code == 200, patched.text
    assert patched.json()["latest_version"] == 2 and patched.json()["versions"] == [1, 2]
    assert patched.json()["latest"]["variables"] == ["name", "persona"]
    assert patched.json()["latest"]["model"] == MODEL  # kept from version 1
    put = await api.put(f"/api/ai/prompts/{prompt_id}", json={"description": "v3"}, headers=_headers(a))
    assert put.json()["latest_version"] == 3 and put.json()["description"] == "v3"
    assert put.json()["latest"]["template"] == messages

    first = (await api.get(f"/api/ai/prompts/{prompt_id}/versions/1", headers=_headers(a))).json()
    assert first["template"] == GREETING and first["version"] == 1
    detail = (await api.get(f"/api/ai/prompts/{prompt_id}", headers=_headers(a))).json()
    assert detail["latest"]["version"] == 3 and detail["versions"] == [1, 2, 3]
    _problem(await api.get(f"/api/ai/prompts/{prompt_id}/versions/9", headers=_headers(a)), 404)

    # Names are unique per tenant; another tenant may use the same name and never sees A's.
    duplicate = await api.post("/api/ai/prompts", json={"name": "greeting", "template": "x"}, headers=_headers(a))
    body = _problem(duplicate, 409)
    assert "greeting" in body["detail"]
    await _create(api, _headers(b), name="greeting", template="other")
    _problem(await api.get(f"/api/ai/prompts/{prompt_id}", headers=_headers(b)), 404)
    _problem(await api.patch(f"/api/ai/prompts/{prompt_id}", json={"template": "x"}, headers=_headers(b)), 404)
    _problem(await api.delete(f"/api/ai/prompts/{prompt_id}", headers=_headers(b)), 404)
    listed = (await api.get("/api/ai/prompts", headers=_headers(b))).json()
    assert [p["name"] for p in listed["prompts"]] == ["greeting"] and listed["prompts"][0]["id"] != prompt_id

    # Pagination.
    await _create(api, _headers(a), name="second", template="{{ x }}")
    page = (await api.get("/api/ai/prompts?limit=1&page=2", headers=_headers(a))).json()
    assert page["pagination"] == {"page": 2, "limit": 1, "total": 2, "pages": 2}
    assert [p["name"] for p in page["prompts"]] == ["second"]
    _problem(await api.get("/api/ai/prompts?limit=101", headers=_headers(a)), 422)

    # Audited, and deletion removes every version.
    audit = (await api.get("/api/audit/logs?limit=50", headers=_headers(a))).json()["items"]
    assert {"ai.prompt.created", "ai.prompt.versioned"} <= {e["action"] for e in audit}
    assert (await api.delete(f"/api/ai/prompts/{prompt_id}", headers=_headers(a))).status_code == 204
    _problem(await api.get(f"/api/ai/prompts/{prompt_id}/versions/1", headers=_headers(a)), 404)
    assert [p["name"] for p in (await api.get("/api/ai/prompts", headers=_headers(a))).json()["prompts"]] == ["second"]


async def test_templates_that_do_not_parse_or_escape_the_sandbox_answer_422_and_store_nothing(
    api: AsyncTestClient[Any],
) -> None:
    tenant = await new_tenant(api, "prompts-bad")
    headers = _headers(tenant)
    body = _problem(
        await api.post("/api/ai/prompts", json={"name": "broken", "template": "fine\n{{ a b }}"}, headers=headers), 422
    )
    assert "line 2" in body["detail"] and body["errors"][0]["field"] == "template"
    body = _problem(
        await api.post(
            "/api/ai/prompts",
            json={
                "name": "broken",
                "template": [{"role": "user", "content": "ok"}, {"role": "user", "content": "{% if x %}"}],
            },
            headers=headers,
        ),
        422,
    )
    assert body["errors"][0]["field"] == "template[1].content" and "line 1" in body["detail"]
    for escape in (
        "{{ ''.__class__.__mro__ }}",
        "{{ x.__init__.__globals__ }}",
        "{{ x['__class__'] }}",
        "{{ x|attr('__class__') }}",
    ):
        refused = await api.post("/api/ai/prompts", json={"name": "escape", "template": escape}, headers=headers)
        body = _problem(refused, 422)
        assert "__" in body["detail"]
    _problem(await api.post("/api/ai/prompts", json={"name": "bad name!", "template": "x"}, headers=headers), 422)
    _problem(await api.post("/api/ai/prompts", json={"name": "empty", "template": ""}, headers=headers), 422)
    assert (await api.get("/api/ai/prompts", headers=headers)).json()["pagination"]["total"] == 0

    # Escapes the static check cannot see are refused by the sandbox when rendering, never run.
    created = await _create(
        api, headers, name="dynamic",
        template="{{ (thing ~ '')|attr(attribute) }}{{ 'y' * times }}",
    )
    render = f"/api/ai/prompts/{created['id']}/render"
    body = _problem(
        await api.post(render, json={"variables": {"thing": 1, "attribute": "__class__", "times": 1}}, headers=headers),
        422,
    )
    assert "sandbox" in body["detail"] and "__class__" in body["detail"]
    body = _problem(
        await api.post(render, json={"variables": {"thing": 1, "attribute": "upper", "times": 10**8}}, headers=headers),
        422,
    )
    assert "too large" in body["detail"]
    body = _problem(await api.post(render, json={"variables": {"thing": 1, "times": 1}}, headers=headers), 422)
    assert "'attribute'" in body["detail"] and body["errors"][0]["field"] == "variables.attribute"

    # Loops nested over an input produce nothing for a very long time: stopped after a quarter second.
    spinning = await _create(
        api, headers, name="spinning",
        template="{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}done",
    )
    started = time.monotonic()
    body = _problem(
        await api.post(
            f"/api/ai/prompts/{spinning['id']}/render", json={"variables": {"s": "x" * 1000}}, headers=headers
        ),
        422,
    )
    assert "took longer" in body["detail"] and time.monotonic() - started < 5


async def test_a_template_renders_and_a_missing_variable_is_named(api: AsyncTestClient[Any]) -> None:
    tenant = await new_tenant(api, "prompts-render")
    created = await _create(api, _headers(tenant), name="greeting", template=GREETING)
    url = f"/api/ai/prompts/{created['id']}/render"
    rendered = await api.post(url, json={"variables": {"name": "Ada", "topic": "engines"}}, headers=_headers(tenant))
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["messages"] == [
        {"role": "user", "content": "Write a greeting for Ada.\nMention engines."}
    ]
    body = _problem(await api.post(url, json={"variables": {"topic": "x"}}, headers=_headers(tenant)), 422)
    assert body["detail"] == "missing variable 'name'" and body["variable"] == "name"
    await api.patch(f"/api/ai/prompts/{created['id']}", json={"template": "Bye {{ name }}"}, headers=_headers(tenant))
    old = await api.post(url, json={"variables": {"name": "Ada", "topic": ""}, "version": 1}, headers=_headers(tenant))
    assert old.json()["version"] == 1 and old.json()["messages"][0]["content"] == "Write a greeting for Ada.\n"
    new = await api.post(url, json={"variables": {"name": "Ada"}}, headers=_headers(tenant))
    assert new.json()["version"] == 2 and new.json()["messages"][0]["content"] == "Bye Ada"


async def test_chat_from_a_template_uses_its_defaults_and_records_it(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Any
) -> None:
    tenant = await _tenant_with_key(api, provider)
    headers = _headers(tenant)
    created = await _create(
        api, headers, name="greeting", template=GREETING, model=MODEL, parameters={"max_tokens": 3, "temperature": 0.7}
    )
    response = await api.post(
        "/api/ai/chat", json={"template": "greeting", "variables": {"name": "Ada", "topic": None}}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL
    assert response.json()["message"]["content"] == "".join(REPLY[:3])  # the template's max_tokens
    sent = provider.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "Write a greeting for Ada.\n"}]
    assert sent["temperature"] == 0.7 and sent["max_tokens"] == 3

    # The request's own parameters win; a version can be pinned; the id works as well as the name.
    await api.patch(f"/api/ai/prompts/{created['id']}", json={"template": "v2 {{ name }}"}, headers=headers)
    response = await api.post(
        "/api/ai/chat",
        json={"template": created["id"], "variables": {"name": "Bo", "topic": "x"}, "template_version": 1,
              "max_tokens": 5, "temperature": 0.1},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    sent = provider.requests[-1]
    assert sent["messages"][0]["content"] == "Write a greeting for Bo.\nMention x." and sent["max_tokens"] == 5
    assert sent["temperature"] == 0.1

    rows = await _owner_rows(
        ai_settings, tenant["id"], "select template_id::text as t from ai_usage order by created_at"
    )
    assert [r["t"] for r in rows] == [created["id"], created["id"]]

    # Exactly one of messages and template; a missing variable is named and nothing is called.
    calls = len(provider.requests)
    body = _problem(
        await api.post(
            "/api/ai/chat",
            json={"template": "greeting", "variables": {"name": "x"}, "messages": [{"role": "user", "content": "x"}]},
            headers=headers,
        ),
        422,
    )
    assert "exactly one" in body["detail"]
    _problem(await api.post("/api/ai/chat", json={"model": MODEL}, headers=headers), 422)
    missing = await api.post("/api/ai/chat", json={"template": "greeting", "variables": {}}, headers=headers)
    body = _problem(missing, 422)
    assert body["variable"] == "name"
    _problem(await api.post("/api/ai/chat", json={"template": "nope", "variables": {}}, headers=headers), 404)
    _problem(await api.post("/api/ai/chat", json={"template": str(uuid.uuid4())}, headers=headers), 404)
    assert len(provider.requests) == calls
    budget = (await api.get("/api/ai/budgets", headers=headers)).json()
    assert Decimal(budget["reserved_cost"]) == 0


async def test_members_read_and_use_templates_but_only_admins_write_them(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant_with_key(api, provider)
    created = await _create(api, _headers(tenant), name="greeting", template="Hi {{ name }}", model=MODEL)
    key = await api.post("/api/api-keys", json={"name": "member", "role": "member"}, headers=_headers(tenant))
    member = {"Authorization": f"Bearer {key.json()['key']}"}
    assert (await api.get("/api/ai/prompts", headers=member)).status_code == 200
    assert (await api.get(f"/api/ai/prompts/{created['id']}", headers=member)).status_code == 200
    rendered = await api.post(
        f"/api/ai/prompts/{created['id']}/render", json={"variables": {"name": "x"}}, headers=member
    )
    assert rendered.status_code == 200
    chat = await api.post("/api/ai/chat", json={"template": "greeting", "variables": {"name": "x"}}, headers=member)
    assert chat.status_code == 200, chat.text
    _problem(await api.post("/api/ai/prompts", json={"name": "mine", "template": "x"}, headers=member), 403)
    _problem(await api.patch(f"/api/ai/prompts/{created['id']}", json={"template": "x"}, headers=member), 403)
    _problem(await api.delete(f"/api/ai/prompts/{created['id']}", headers=member), 403)
    assert GOOD_KEY not in chat.text
