"""Conversations from outside: stored histories continued by id, totals, streaming, failures, and
who may see a conversation."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from litestar.testing import AsyncTestClient

from tests import test_ai
from tests.fake_openai import PROMPT_TOKENS, REPLY, FakeOpenAI
from tests.test_ai import (
    EXPECTED_COST,
    MODEL,
    _headers,
    _owner_rows,
    _problem,
    _tenant_with_key,
)

ANSWER = "".join(REPLY)

# The AI suite's fixtures: the local provider, settings allowing its loopback address, a client.
provider, ai_settings, api = test_ai.provider, test_ai.ai_settings, test_ai.api


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


async def _member_key(api: AsyncTestClient[Any], tenant: dict[str, str]) -> dict[str, str]:
    created = await api.post("/api/api-keys", json={"name": "member", "role": "member"}, headers=_headers(tenant))
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


async def test_a_saved_chat_is_continued_with_its_history_and_totals(
    api: AsyncTestClient[Any], provider: FakeOpenAI, ai_settings: Any
) -> None:
    tenant = await _tenant_with_key(api, provider)
    headers = _headers(tenant)
    first = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [_user("What is 2+2?")], "save": True}, headers=headers
    )
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    assert conversation_id

    second = await api.post(
        "/api/ai/chat", json={"messages": [_user("And 3+3?")], "conversation_id": conversation_id}, headers=headers
    )
    assert second.status_code == 200, second.text
    assert second.json()["conversation_id"] == conversation_id and second.json()["model"] == MODEL
    # The stored history went first (the model came from the conversation).
    assert provider.requests[-1]["messages"] == [
        _user("What is 2+2?"), {"role": "assistant", "content": ANSWER}, _user("And 3+3?"),
    ]

    detail = (await api.get(f"/api/ai/conversations/{conversation_id}", headers=headers)).json()
    conversation = detail["conversation"]
    assert conversation["title"] == "What is 2+2?" and conversation["model"] == MODEL
    assert conversation["message_count"] == 4
    assert conversation["prompt_tokens"] == 2 * PROMPT_TOKENS
    assert conversation["completion_tokens"] == 2 * len(REPLY)
    assert Decimal(conversation["cost"]) == 2 * EXPECTED_COST
    assert [(m["position"], m["role"], m["content"]) for m in detail["messages"]] == [
        (1, "user", "What is 2+2?"), (2, "assistant", ANSWER), (3, "user", "And 3+3?"), (4, "assistant", ANSWER),
    ]
    assert detail["messages"][1]["completion_tokens"] == len(REPLY) and detail["messages"][1]["model"] == MODEL
    page = (await api.get(f"/api/ai/conversations/{conversation_id}?limit=3&page=2", headers=headers)).json()
    assert [m["position"] for m in page["messages"]] == [4]
    assert page["pagination"] == {"page": 2, "limit": 3, "total": 4, "pages": 2}

    rows = await _owner_rows(
        ai_settings, tenant["id"], "select conversation_id::text as c from ai_usage order by created_at"
    )
    assert [r["c"] for r in rows] == [conversation_id, conversation_id]

    # Rename, list, delete.
    renamed = await api.patch(f"/api/ai/conversations/{conversation_id}", json={"title": "Sums"}, headers=headers)
    assert renamed.status_code == 200 and renamed.json()["title"] == "Sums"
    listed = (await api.get("/api/ai/conversations", headers=headers)).json()
    assert [c["id"] for c in listed["conversations"]] == [conversation_id]
    assert listed["pagination"]["total"] == 1
    audit = {e["action"] for e in (await api.get("/api/audit/logs?limit=50", headers=headers)).json()["items"]}
    assert "ai.conversation.renamed" in audit
    assert (await api.delete(f"/api/ai/conversations/{conversation_id}", headers=headers)).status_code == 204
    _problem(await api.get(f"/api/ai/conversations/{conversation_id}", headers=headers), 404)
    _problem(
        await api.post(
            "/api/ai/chat", json={"messages": [_user("x")], "conversation_id": conversation_id}, headers=headers
        ),
        404,
    )


async def test_a_streamed_call_stores_its_answer_when_the_stream_completes(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant_with_key(api, provider)
    headers = _headers(tenant)
    created = await api.post("/api/ai/conversations", json={"title": "Streamed", "model": MODEL}, headers=headers)
    assert created.status_code == 201, created.text
    conversation_id = created.json()["id"]
    async with api.stream(
        "POST", "/api/ai/chat",
        json={"messages": [_user("Stream please")], "conversation_id": conversation_id, "stream": True},
        headers=headers,
    ) as response:
        body = (await response.aread()).decode()
    assert "event: done" in body and conversation_id in body
    detail = (await api.get(f"/api/ai/conversations/{conversation_id}", headers=headers)).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "Stream please"), ("assistant", ANSWER),
    ]
    assert detail["conversation"]["completion_tokens"] == len(REPLY)


async def test_a_failed_call_stores_nothing_and_keeps_the_conversation(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant_with_key(api, provider)
    headers = _headers(tenant)
    first = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [_user("Keep me")], "save": True}, headers=headers
    )
    conversation_id = first.json()["conversation_id"]
    before = (await api.get(f"/api/ai/conversations/{conversation_id}", headers=headers)).json()
    failed = await api.post(
        "/api/ai/chat",
        json={"model": "openai/broken", "messages": [_user("Lose me")], "conversation_id": conversation_id},
        headers=headers,
    )
    _problem(failed, 502)
    async with api.stream(
        "POST", "/api/ai/chat",
        json={"model": "openai/broken", "messages": [_user("Lose me too")], "conversation_id": conversation_id,
              "stream": True},
        headers=headers,
    ) as response:
        assert response.status_code == 502
    after = (await api.get(f"/api/ai/conversations/{conversation_id}", headers=headers)).json()
    assert after == before
    # A failed call with save: true creates no conversation.
    _problem(
        await api.post(
            "/api/ai/chat", json={"model": "openai/broken", "messages": [_user("x")], "save": True}, headers=headers
        ),
        502,
    )
    listed = (await api.get("/api/ai/conversations", headers=headers)).json()
    assert [c["id"] for c in listed["conversations"]] == [conversation_id]


async def test_a_conversation_is_seen_only_by_whoever_started_it(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    a = await _tenant_with_key(api, provider)
    b = await _tenant_with_key(api, provider)
    started = await api.post(
        "/api/ai/chat", json={"model": MODEL, "messages": [_user("Mine")], "save": True}, headers=_headers(a)
    )
    conversation_id = started.json()["conversation_id"]
    calls = len(provider.requests)

    # Another tenant: its owner gets 404 everywhere, and nothing is called.
    for method, url, body in (
        ("GET", f"/api/ai/conversations/{conversation_id}", None),
        ("PATCH", f"/api/ai/conversations/{conversation_id}", {"title": "x"}),
        ("DELETE", f"/api/ai/conversations/{conversation_id}", None),
        ("POST", "/api/ai/chat", {"model": MODEL, "messages": [_user("x")], "conversation_id": conversation_id}),
    ):
        _problem(await api.request(method, url, json=body, headers=_headers(b)), 404)
    assert (await api.get("/api/ai/conversations", headers=_headers(b))).json()["conversations"] == []

    # Another principal of the same tenant (a member's API key): 404 too, and its own list.
    member = await _member_key(api, a)
    _problem(await api.get(f"/api/ai/conversations/{conversation_id}", headers=member), 404)
    _problem(
        await api.post(
            "/api/ai/chat", json={"model": MODEL, "messages": [_user("x")], "conversation_id": conversation_id},
            headers=member,
        ),
        404,
    )
    own = await api.post("/api/ai/conversations", json={"title": "member's"}, headers=member)
    assert [c["id"] for c in (await api.get("/api/ai/conversations", headers=member)).json()["conversations"]] == [
        own.json()["id"]
    ]
    assert len(provider.requests) == calls
    _problem(await api.get(f"/api/ai/conversations/{uuid.uuid4()}", headers=_headers(a)), 404)
    # The owner's conversation is intact.
    detail = (await api.get(f"/api/ai/conversations/{conversation_id}", headers=_headers(a))).json()
    assert detail["conversation"]["message_count"] == 2
