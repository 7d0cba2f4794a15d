"""Retrieval from outside: documents chunked, embedded through the local OpenAI-compatible server
(real litellm, real HTTP) and stored in pgvector under row-level security; search, and chat that
cites the sources it was given."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel.ai.retrieval.service import _search_sql
from kernel.db import migrate
from kernel.settings import Settings
from kernel.testing import create_database, drop_database
from tests.conftest import _dsn, new_tenant, open_client, settings_for
from tests.fake_openai import FakeOpenAI, fake_openai

KEY = f"sk-proj-RETRIEVAL{uuid.uuid4().hex}Kq2w"
BOW = "openai/bow-64"
NO_PGVECTOR = "retrieval needs the PostgreSQL extension pgvector"

PARIS = "Paris is the capital of France. The Eiffel tower stands in Paris near the Seine river."
BERLIN = "Berlin is the capital of Germany. The Brandenburg gate stands in Berlin on Pariser Platz."
COOKING = "To bake bread you need flour, water, salt and yeast. Knead the dough and let it rise."


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with fake_openai({KEY}) as server:
        yield server


@pytest.fixture(scope="module")
async def ai_settings(
    settings: Settings, database_url: str, servers: tuple[str, str], tmp_path_factory: Any
) -> Settings:
    """The suite's database, loopback provider bases allowed."""
    return settings_for(
        database_url, servers[1], tmp_path_factory.mktemp("retrieval"), BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1"
    )


@pytest.fixture(scope="module")
async def has_pgvector(ai_settings: Settings) -> bool:
    """Whether migrating the suite's database made the retrieval tables (it has pgvector)."""
    assert ai_settings.database_url
    conn = await asyncpg.connect(_dsn(ai_settings.database_url))
    try:
        return bool(await conn.fetchval("select to_regclass('ai_chunks') is not null"))
    finally:
        await conn.close()


@pytest.fixture
async def api(ai_settings: Settings, has_pgvector: bool) -> AsyncIterator[AsyncTestClient[Any]]:
    if not has_pgvector:
        pytest.skip(NO_PGVECTOR)
    async with open_client(ai_settings) as client:
        yield client


async def _tenant(api: AsyncTestClient[Any], provider: FakeOpenAI) -> dict[str, Any]:
    tenant = await new_tenant(api, "rag")
    headers = {"X-Tenant-ID": tenant["slug"]}
    response = await api.put("/api/ai/keys/openai", json={"api_key": KEY, "api_base": provider.base}, headers=headers)
    assert response.status_code == 200, response.text
    return {**tenant, "headers": headers}


async def _ingest(api: AsyncTestClient[Any], tenant: dict[str, Any], text: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/ai/documents", json={"text": text, "model": BOW, **extra}, headers=tenant["headers"]
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _search(api: AsyncTestClient[Any], tenant: dict[str, Any], query: str, **extra: Any) -> dict[str, Any]:
    response = await api.post("/api/ai/search", json={"query": query, **extra}, headers=tenant["headers"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _as_tenant(settings: Settings, tenant_id: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Rows read through the runtime group's privileges and the tenant's row-level security."""
    assert settings.database_url
    conn = await asyncpg.connect(_dsn(settings.database_url))
    try:
        async with conn.transaction():
            await conn.execute("set local role businessos_runtime")
            await conn.execute("select set_config('app.tenant_id', $1, true)", tenant_id)
            return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def test_a_document_is_chunked_with_overlap_embedded_and_listed(
    api: AsyncTestClient[Any], ai_settings: Settings, provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    text = " ".join(f"Sentence number {i} talks about topic {i % 5}." for i in range(60))
    document = await _ingest(
        api, tenant, text, title="Topics", source="kb://topics", metadata={"team": "support"},
        chunk_size=300, chunk_overlap=60,
    )
    assert document["title"] == "Topics" and document["model"] == BOW and document["dimensions"] == 64
    assert document["chunk_count"] >= len(text) // 300 and document["characters"] == len(text)
    assert document["created_by"] == f"user:{tenant['user_id']}"

    detail = (await api.get(f"/api/ai/documents/{document['id']}", headers=tenant["headers"])).json()
    chunks = detail["chunks"]
    assert [c["ordinal"] for c in chunks] == list(range(document["chunk_count"]))
    assert all(len(c["text"]) <= 300 for c in chunks)
    # Chunks end at sentence ends and the next one repeats the end of the one before.
    assert all(c["text"].endswith(".") for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after["text"].split(" ", 1)[0] in before["text"]
    assert "embedding" not in detail["chunks"][0]

    listed = (await api.get("/api/ai/documents", headers=tenant["headers"])).json()
    assert [d["id"] for d in listed["documents"]] == [document["id"]] and listed["next_cursor"] is None

    # Metered like any call: a ledger row for the embeddings, plus the audit row and the event.
    usage = await _as_tenant(ai_settings, tenant["id"], "select model, status from ai_usage")
    assert [(r["model"], r["status"]) for r in usage] == [(BOW, "ok")]
    audit = await _as_tenant(
        ai_settings, tenant["id"], "select resource_id from audit_logs where action = 'ai.document.ingested'"
    )
    assert [r["resource_id"] for r in audit] == [document["id"]]
    events = await _as_tenant(
        ai_settings, tenant["id"], "select payload from events_outbox where event = 'ai.document.ingested'"
    )
    payload = msgspec.json.decode(events[0]["payload"])
    assert payload["document_id"] == document["id"] and payload["chunk_count"] == document["chunk_count"]


async def test_documents_page_newest_first_with_a_cursor(api: AsyncTestClient[Any], provider: FakeOpenAI) -> None:
    tenant = await _tenant(api, provider)
    ids = [(await _ingest(api, tenant, f"Document {i} text."))["id"] for i in range(3)]
    first = (await api.get("/api/ai/documents?limit=2", headers=tenant["headers"])).json()
    assert [d["id"] for d in first["documents"]] == ids[::-1][:2] and first["next_cursor"]
    rest = (
        await api.get(f"/api/ai/documents?limit=2&cursor={first['next_cursor']}", headers=tenant["headers"])
    ).json()
    assert [d["id"] for d in rest["documents"]] == [ids[0]] and rest["next_cursor"] is None
    body = _problem(await api.get("/api/ai/documents?cursor=%%%", headers=tenant["headers"]), 422)
    assert body["errors"][0]["field"] == "cursor"
    body = _problem(await api.get("/api/ai/documents?limit=0", headers=tenant["headers"]), 422)
    assert body["errors"][0]["field"] == "limit"


async def test_search_ranks_by_similarity_and_never_returns_another_tenants_chunks(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    a, b = await _tenant(api, provider), await _tenant(api, provider)
    mine = {(await _ingest(api, a, text, title=title))["id"] for title, text in (("P", PARIS), ("C", COOKING))}
    # The other tenant stores the very same texts, and more of them.
    for _ in range(3):
        for text in (PARIS, COOKING, BERLIN):
            await _ingest(api, b, text)

    found = await _search(api, a, "What is the capital of France?", k=10)
    assert found["model"] == BOW and found["hits"]
    assert {hit["document_id"] for hit in found["hits"]} <= mine
    assert len(found["hits"]) == 2  # all of a's chunks, none of b's
    assert found["hits"][0]["title"] == "P" and "Eiffel" in found["hits"][0]["text"]
    scores = [hit["score"] for hit in found["hits"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1

    theirs = await _search(api, b, "What is the capital of France?", k=3)
    assert len(theirs["hits"]) == 3 and not {hit["document_id"] for hit in theirs["hits"]} & mine
    assert all("Paris is the capital" in hit["text"] for hit in theirs["hits"])


async def test_search_filters_by_metadata_and_by_document(api: AsyncTestClient[Any], provider: FakeOpenAI) -> None:
    tenant = await _tenant(api, provider)
    paris = await _ingest(api, tenant, PARIS, metadata={"lang": "en", "kind": "city"})
    berlin = await _ingest(api, tenant, BERLIN, metadata={"lang": "en", "kind": "city", "country": "de"})
    await _ingest(api, tenant, COOKING, metadata={"lang": "en", "kind": "recipe"})

    found = await _search(api, tenant, "capital", k=5, filters={"metadata": {"country": "de"}})
    assert [hit["document_id"] for hit in found["hits"]] == [berlin["id"]]
    assert found["hits"][0]["metadata"] == {"lang": "en", "kind": "city", "country": "de"}
    found = await _search(api, tenant, "capital", k=5, filters={"metadata": {"kind": "city"}})
    assert {hit["document_id"] for hit in found["hits"]} == {paris["id"], berlin["id"]}
    found = await _search(api, tenant, "bread", k=5, filters={"document_ids": [paris["id"]]})
    assert [hit["document_id"] for hit in found["hits"]] == [paris["id"]]
    found = await _search(api, tenant, "capital", k=5, filters={"metadata": {"kind": "none"}})
    assert found["hits"] == []


async def test_a_tenant_without_documents_finds_nothing_and_pays_nothing(
    api: AsyncTestClient[Any], ai_settings: Settings, provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    assert (await _search(api, tenant, "anything"))["hits"] == []
    assert await _as_tenant(ai_settings, tenant["id"], "select 1 from ai_usage") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   \n  "}, "text"),
        ({"text": "a\x00b"}, "text"),
        ({"text": "x", "chunk_size": 50}, "chunk_size"),
        ({"text": "x", "chunk_size": 200, "chunk_overlap": 200}, "chunk_overlap"),
        ({"text": "x", "chunk_overlap": -1}, "chunk_overlap"),
        ({"text": "x", "metadata": {"k": "v" * 20_000}}, "metadata"),
        ({"text": "x", "model": "nobody/model"}, "model"),
        ({"text": "x", "title": ""}, "title"),
        ({"text": "x", "surprise": 1}, "surprise"),
    ],
)
async def test_bad_documents_answer_422_naming_the_field_and_store_nothing(
    api: AsyncTestClient[Any], provider: FakeOpenAI, body: dict[str, Any], field: str
) -> None:
    tenant = await _tenant(api, provider)
    kept = await _ingest(api, tenant, PARIS)
    problem = _problem(await api.post("/api/ai/documents", json={"model": BOW, **body}, headers=tenant["headers"]), 422)
    assert field in {e["field"] for e in problem["errors"]}, problem
    listed = (await api.get("/api/ai/documents", headers=tenant["headers"])).json()
    assert [d["id"] for d in listed["documents"]] == [kept["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "q", "k": 0}, "k"),
        ({"query": "q", "k": 51}, "k"),
        ({"query": "q", "filters": {"metadata": {"a": {"nested": 1}}}}, "filters.metadata"),
        ({"query": "q", "filters": {"document_ids": ["not-a-uuid"]}}, "filters.document_ids[0]"),
        ({"query": "q", "filters": {"document_ids": []}}, "filters.document_ids"),
    ],
)
async def test_bad_searches_answer_422_naming_the_field(
    api: AsyncTestClient[Any], provider: FakeOpenAI, body: dict[str, Any], field: str
) -> None:
    tenant = await _tenant(api, provider)
    problem = _problem(await api.post("/api/ai/search", json=body, headers=tenant["headers"]), 422)
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem


async def test_a_refused_budget_or_a_provider_error_stores_nothing(
    api: AsyncTestClient[Any], ai_settings: Settings, provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    broken = await api.post(
        "/api/ai/documents", json={"text": PARIS, "model": "openai/broken"}, headers=tenant["headers"]
    )
    assert _problem(broken, 502)["type"].endswith("/ai-provider-error")
    # Enough budget for the first batch of embeddings, not for the second: still nothing stored.
    await api.put("/api/ai/budgets", json={"monthly_token_limit": 9000}, headers=tenant["headers"])
    # The local model bills a token per byte: 64 chunks of at most 100 characters fit, 128 do not.
    text = " ".join(f"Fact {i} is a short sentence." for i in range(400))
    refused = await api.post(
        "/api/ai/documents", json={"text": text, "model": BOW, "chunk_size": 100, "chunk_overlap": 0},
        headers=tenant["headers"],
    )
    assert _problem(refused, 402)["type"].endswith("/ai-budget-exceeded")
    assert (await api.get("/api/ai/documents", headers=tenant["headers"])).json()["documents"] == []
    assert await _as_tenant(ai_settings, tenant["id"], "select 1 from ai_chunks") == []
    calls = await _as_tenant(ai_settings, tenant["id"], "select status from ai_usage order by created_at")
    assert [r["status"] for r in calls] == ["error", "ok"]  # the batch that was embedded is billed


async def test_deleting_a_document_deletes_its_chunks(
    api: AsyncTestClient[Any], ai_settings: Settings, provider: FakeOpenAI
) -> None:
    tenant, other = await _tenant(api, provider), await _tenant(api, provider)
    document = await _ingest(api, tenant, PARIS + "\n\n" + BERLIN, chunk_size=100, chunk_overlap=10)
    assert document["chunk_count"] >= 2
    # Another tenant cannot see or delete it.
    assert (await api.get(f"/api/ai/documents/{document['id']}", headers=other["headers"])).status_code == 404
    assert (await api.delete(f"/api/ai/documents/{document['id']}", headers=other["headers"])).status_code == 404
    assert (await api.delete(f"/api/ai/documents/{document['id']}", headers=tenant["headers"])).status_code == 204
    assert (await api.get(f"/api/ai/documents/{document['id']}", headers=tenant["headers"])).status_code == 404
    assert await _as_tenant(ai_settings, tenant["id"], "select 1 from ai_chunks") == []
    events = await _as_tenant(
        ai_settings, tenant["id"], "select event from events_outbox where event like 'ai.document.%' order by id"
    )
    assert [r["event"] for r in events] == ["ai.document.ingested", "ai.document.deleted"]


async def test_chat_with_retrieval_gives_the_model_numbered_sources_and_returns_them(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    paris = await _ingest(api, tenant, PARIS, title="France")
    await _ingest(api, tenant, COOKING, title="Bread")
    question = {"role": "user", "content": "Where does the Eiffel tower stand?"}
    response = await api.post(
        "/api/ai/chat",
        json={"model": "openai/gpt-4o-mini", "messages": [question], "retrieval": True, "retrieval_k": 1},
        headers=tenant["headers"],
    )
    assert response.status_code == 200, response.text
    sources = response.json()["sources"]
    assert len(sources) == 1 and sources[0]["document_id"] == paris["id"] and sources[0]["number"] == 1
    assert sources[0]["title"] == "France" and sources[0]["score"] > 0
    sent = provider.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "[1] France" in sent[0]["content"] and "Eiffel" in sent[0]["content"]
    assert sent[1:] == [question]

    # Streamed: the sources arrive in the done event.
    async with api.stream(
        "POST", "/api/ai/chat",
        json={"model": "openai/gpt-4o-mini", "messages": [question], "retrieval": True, "stream": True},
        headers=tenant["headers"],
    ) as stream:
        body = (await stream.aread()).decode()
    done = body.split("event: done\ndata: ", 1)[1].split("\n", 1)[0]
    assert next(s["document_id"] for s in msgspec.json.decode(done)["sources"]) == paris["id"]

    # Without retrieval the answer has no sources and the messages go as they are.
    plain = await api.post(
        "/api/ai/chat", json={"model": "openai/gpt-4o-mini", "messages": [question]}, headers=tenant["headers"]
    )
    assert "sources" not in plain.json() and provider.requests[-1]["messages"] == [question]


async def test_retrieval_searches_with_the_rendered_template_and_goes_before_the_history(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    paris = await _ingest(api, tenant, PARIS, title="France")
    await _ingest(api, tenant, COOKING, title="Bread")
    made = await api.post(
        "/api/ai/prompts", json={"name": "ask", "template": "Where does the {{ thing }} stand?"},
        headers=tenant["headers"],
    )
    assert made.status_code == 201, made.text
    body = {
        "model": "openai/gpt-4o-mini", "template": "ask", "variables": {"thing": "Eiffel tower"},
        "retrieval": True, "retrieval_k": 1, "save": True,
    }
    first = await api.post("/api/ai/chat", json=body, headers=tenant["headers"])
    assert first.status_code == 200, first.text
    assert first.json()["sources"][0]["document_id"] == paris["id"]
    sent = provider.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "Eiffel" in sent[0]["content"]
    assert sent[1] == {"role": "user", "content": "Where does the Eiffel tower stand?"}

    # Continuing the conversation: the sources come first, then the stored turns (which do not
    # include the sources), then the new message.
    conversation_id = first.json()["conversation_id"]
    follow_up = {"role": "user", "content": "And the Eiffel tower's height?"}
    second = await api.post(
        "/api/ai/chat",
        json={"model": "openai/gpt-4o-mini", "messages": [follow_up], "conversation_id": conversation_id,
              "retrieval": True, "retrieval_k": 1},
        headers=tenant["headers"],
    )
    assert second.status_code == 200, second.text
    sent = provider.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "[1] France" in sent[0]["content"]
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user"] and sent[-1] == follow_up


async def test_chat_retrieval_needs_the_documents_read_permission(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    await _ingest(api, tenant, PARIS)
    key = await api.post(
        "/api/api-keys", json={"name": "chat only", "scopes": ["kernel.ai.use"]}, headers=tenant["headers"]
    )
    assert key.status_code == 201, key.text
    headers = {"X-Tenant-ID": tenant["slug"], "X-API-Key": key.json()["key"]}
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Paris?"}]}
    assert (await api.post("/api/ai/chat", json=body, headers=headers)).status_code == 200
    refused = _problem(await api.post("/api/ai/chat", json={**body, "retrieval": True}, headers=headers), 403)
    assert "kernel.ai.documents.read" in refused["detail"]
    assert (await api.post("/api/ai/search", json={"query": "Paris"}, headers=headers)).status_code == 403


async def test_the_search_query_can_use_the_partial_hnsw_index(
    api: AsyncTestClient[Any], ai_settings: Settings, provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    await _ingest(api, tenant, PARIS, model="openai/bow-384")
    found = await _search(api, tenant, "Eiffel tower", k=3)
    assert found["model"] == "openai/bow-384" and found["hits"]
    query = str(_search_sql(384, None).compile(compile_kwargs={})).replace(":query", "$1").replace(":model", "$2")
    query = query.replace(":k", "$3")
    vector = "[" + ",".join(["0.05"] * 384) + "]"
    # On a small tenant the planner rightly prefers reading the tenant's rows by its tenant_id index
    # and sorting them; with those paths priced out, the partial HNSW index must be usable (same
    # expression, same predicate). bench/vector_search.py shows it chosen on its own at scale.
    assert ai_settings.database_url
    conn = await asyncpg.connect(_dsn(ai_settings.database_url))
    try:
        async with conn.transaction():
            await conn.execute("set local role businessos_runtime")
            for path in ("seqscan", "bitmapscan", "sort"):
                await conn.execute(f"set local enable_{path} = off")
            await conn.execute("select set_config('app.tenant_id', $1, true)", tenant["id"])
            plan = "\n".join(
                r[0] for r in await conn.fetch(f"explain {query}", vector, "openai/bow-384", 3)
            )
    finally:
        await conn.close()
    assert "ix_ai_chunks_embedding_384" in plan, plan


async def test_large_embeddings_are_searched_through_the_halfvec_index(
    api: AsyncTestClient[Any], provider: FakeOpenAI
) -> None:
    tenant = await _tenant(api, provider)
    paris = await _ingest(api, tenant, PARIS, model="openai/bow-3072")
    await _ingest(api, tenant, COOKING, model="openai/bow-3072")
    assert paris["dimensions"] == 3072
    found = await _search(api, tenant, "Eiffel tower in Paris", k=1)
    assert found["model"] == "openai/bow-3072" and [h["document_id"] for h in found["hits"]] == [paris["id"]]
    assert "halfvec(3072)" in str(_search_sql(3072, None))


@asynccontextmanager
async def _database_without_retrieval_tables(servers: tuple[str, str], tmp_path: Path) -> AsyncIterator[str]:
    """A new migrated database on the suite's server with the retrieval tables dropped, as if
    the server had had no pgvector when it was migrated; its URL. Dropped afterwards."""
    base = servers[0]
    url = await create_database(base)
    try:
        await migrate.upgrade(settings_for(url, servers[1], tmp_path), url, {})
        conn = await asyncpg.connect(_dsn(url))
        try:
            await conn.execute("drop table ai_chunks; drop table ai_documents")
        finally:
            await conn.close()
        yield url
    finally:
        await drop_database(base, url)


async def test_migrate_creates_the_retrieval_tables_once_pgvector_is_there(
    has_pgvector: bool, servers: tuple[str, str], tmp_path: Path
) -> None:
    """A database migrated while it had no retrieval tables gets them on the next migrate."""
    if not has_pgvector:
        pytest.skip(NO_PGVECTOR)
    async with _database_without_retrieval_tables(servers, tmp_path) as url:
        await migrate.upgrade(settings_for(url, servers[1], tmp_path), url, {})
        conn = await asyncpg.connect(_dsn(url))
        try:
            assert await conn.fetchval("select to_regclass('ai_chunks') is not null")
            indexes = await conn.fetchval(
                "select count(*) from pg_indexes where indexname like 'ix_ai_chunks_embedding_%'"
            )
            assert indexes == 6
        finally:
            await conn.close()


async def test_without_pgvector_retrieval_answers_503_and_nothing_else_breaks(
    ai_settings: Settings, has_pgvector: bool, provider: FakeOpenAI, servers: tuple[str, str], tmp_path: Path
) -> None:
    """Where the server has no pgvector (e.g. DATABASE_URL naming a plain PostgreSQL), migrating
    skipped the retrieval tables: what needs them answers 503 naming pgvector; listing shows no
    documents; chat without retrieval works. On a server with pgvector, a scratch database with
    the tables dropped stands in."""
    async with contextlib.AsyncExitStack() as stack:
        settings = ai_settings
        if has_pgvector:
            url = await stack.enter_async_context(_database_without_retrieval_tables(servers, tmp_path))
            settings = settings_for(url, servers[1], tmp_path, BUSINESSOS_AI_ALLOW_PRIVATE_BASES="1")
        api = await stack.enter_async_context(open_client(settings))
        tenant = await _tenant(api, provider)
        for path, body in (
            ("/api/ai/documents", {"text": PARIS, "model": BOW}),
            ("/api/ai/search", {"query": "Paris"}),
            ("/api/ai/chat", {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Paris?"}],
                              "retrieval": True}),
        ):
            problem = _problem(await api.post(path, json=body, headers=tenant["headers"]), 503)
            assert problem["type"].endswith("/ai-retrieval-unavailable") and "pgvector" in problem["detail"], path
        listed = await api.get("/api/ai/documents", headers=tenant["headers"])
        assert listed.status_code == 200 and listed.json()["documents"] == []
        missing = await api.get(f"/api/ai/documents/{uuid.uuid4()}", headers=tenant["headers"])
        assert missing.status_code == 404
        chat = await api.post(
            "/api/ai/chat", json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
            headers=tenant["headers"],
        )
        assert chat.status_code == 200, chat.text
