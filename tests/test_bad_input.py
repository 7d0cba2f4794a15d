"""Bad input gets a 4xx naming what is wrong, never a 500: one regression test per group the
malformed-request run found (issue 10), over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from kernel.http.request import MAX_JSON_DEPTH, json_too_deep
from tests.conftest import new_tenant
from tests.test_crm import api, crm_settings, crm_tenant, make, problem
from tests.test_crm_deals import sales_pipeline

__all__ = ["api", "crm_settings"]  # the fixtures, shared with tests/test_crm.py

BIG = 2**63


def test_the_depth_scan_counts_brackets_outside_strings_only() -> None:
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert json_too_deep(deep)
    assert not json_too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert not json_too_deep(b'{"a": "' + b"[{" * 1000 + b'\\" [[["}')
    assert json_too_deep(b"[" * 100_000)  # unterminated: refused before the decoder sees it


async def test_json_nested_too_deep_answers_400_naming_the_limit(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    nested = "[" * 5000 + "]" * 5000
    for path, body in (
        ("/api/crm/contacts", '{"first_name": ' + nested + "}"),
        ("/api/crm/contacts", "[" * 100_000),
        ("/api/auth/login", nested),
        ("/api/ai/prompts", '{"name": "p", "template": ' + nested + "}"),
    ):
        response = await api.post(path, content=body, headers={**t["h"], "Content-Type": "application/json"})
        body_json = problem(response, 400)
        assert str(MAX_JSON_DEPTH) in body_json["detail"] and body_json["max_depth"] == MAX_JSON_DEPTH
    # Nesting within the limit is decoded as before (and answered by the schema).
    within = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # the object is a level too
    response = await api.post("/api/crm/contacts", content='{"first_name": ' + within + "}",
                              headers={**t["h"], "Content-Type": "application/json"})
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["first_name"]


async def test_switch_tenant_with_an_invalid_tenant_answers_4xx(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    for value in ("nope", 5, "", "x" * 500, str(uuid.uuid4()), None):
        response = await api.post("/api/auth/switch-tenant", json={"tenant": value}, headers=t["h"])
        assert 400 <= response.status_code < 500, (value, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    # The field is still called ``tenant`` and still works.
    other = await new_tenant(api)
    response = await api.post("/api/auth/switch-tenant", json={"tenant": other["slug"]}, headers=t["h"])
    assert response.status_code == 403, response.text  # not a member


async def test_page_out_of_range_on_ai_lists_answers_4xx(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    for path in ("/api/ai/prompts", "/api/ai/conversations"):
        for page in (BIG, BIG * 4, 2**62, 2**31):
            response = await api.get(path, params={"page": page}, headers=t["h"])
            assert 400 <= response.status_code < 500 or response.status_code == 200, (path, page, response.text)
            if response.status_code != 200:
                assert response.headers["content-type"].startswith("application/problem+json")


async def test_page_out_of_range_on_the_raw_read_path_answers_4xx(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    for page in (BIG, 2**62, 2**40):
        response = await api.get("/api/crm/contacts", params={"page": page, "limit": 100}, headers=t["h"])
        assert 400 <= response.status_code < 500 or response.status_code == 200, (page, response.text)
        if response.status_code != 200:
            assert response.headers["content-type"].startswith("application/problem+json")


async def test_prompt_render_version_out_of_range_answers_4xx(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    response = await api.post("/api/ai/prompts", json={"name": "greet", "template": "Hi {{ name }}"}, headers=t["h"])
    assert response.status_code in (200, 201), response.text
    prompt = response.json()["id"]
    for version in (2**31, BIG, 2**70):
        response = await api.post(
            f"/api/ai/prompts/{prompt}/render", json={"variables": {"name": "A"}, "version": version}, headers=t["h"]
        )
        assert 400 <= response.status_code < 500, (version, response.text)
        response = await api.get(f"/api/ai/prompts/{prompt}/versions/{version}", headers=t["h"])
        assert 400 <= response.status_code < 500, (version, response.text)


async def test_deal_amount_filter_overflow_answers_422(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    pipeline = await sales_pipeline(api, t)
    await make(api, t, "deals", title="Big", amount="10", pipeline_id=pipeline["id"])
    for name in ("amount_min", "amount_max"):
        for value in ("1e30", "1e400", str(BIG * 10**10)):
            response = await api.get("/api/crm/deals", params={name: value}, headers=t["h"])
            assert response.status_code == 422, (name, value, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")


async def test_nul_characters_answer_422_naming_the_field(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    response = await api.post("/api/ai/prompts", json={"name": "nul", "template": "a\u0000b"}, headers=t["h"])
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["template"], response.text
    response = await api.post("/api/crm/contacts", json={"first_name": "A", "tags": ["x\u0000"]}, headers=t["h"])
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["tags[0]"]
    # Query parameters, the raw asyncpg read path (contact search) included.
    for path in ("/api/crm/contacts", "/api/crm/companies", "/api/crm/deals"):
        response = await api.get(path, params={"q": "a\x00b"}, headers=t["h"])
        assert [e["field"] for e in problem(response, 422)["errors"]] == ["q"], path
    # A NUL escaped as \\u0000 in text is just text.
    response = await api.post("/api/crm/contacts", json={"first_name": "A\\u0000"}, headers=t["h"])
    assert response.status_code == 201, response.text


async def test_a_ratio_the_database_refuses_answers_422(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    response = await api.put("/api/ai/budgets", json={"monthly_cost_limit": 10, "soft_limit_ratio": 1e-320},
                             headers=t["h"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_purging_the_crm_with_deals_deletes_everything_and_counts_it(api: AsyncTestClient[Any]) -> None:
    t = await crm_tenant(api)
    keep = await crm_tenant(api)
    company = await make(api, t, "companies", name="Acme")
    contact = await make(api, t, "contacts", first_name="Ada", company_id=company["id"])
    pipeline = await sales_pipeline(api, t)
    await make(api, t, "deals", title="Deal", amount="5", company_id=company["id"], contact_id=contact["id"],
               pipeline_id=pipeline["id"])
    await make(api, keep, "deals", title="Theirs", amount="1", pipeline_id=(await sales_pipeline(api, keep))["id"])
    stages = pipeline["stages"]
    assert (await api.post("/api/modules/crm/disable", headers=t["h"])).status_code == 200
    response = await api.delete("/api/modules/crm/data", headers=t["h"])
    assert response.status_code == 200, response.text
    deleted = response.json()["deleted"]
    assert deleted["crm_deals"] == 1 and deleted["crm_contacts"] == 1 and deleted["crm_companies"] == 1
    assert deleted["crm_pipelines"] == 1 and deleted["crm_pipeline_stages"] == len(stages) > 0
    assert deleted["crm_deal_stage_history"] >= 1
    # The other tenant keeps its deal.
    assert len((await api.get("/api/crm/deals", headers=keep["h"])).json()["deals"]) == 1
