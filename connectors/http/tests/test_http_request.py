"""``http.request`` against the local API: bodies, auth from each credential type, the idempotency
key, retries with Retry-After, the size cap, paging, and connections that stay with their tenant."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from kernel import sdk
from kernel.testing import TestTenant, node_context

from ..nodes import Paging, RequestConfig, retry_after, send_request
from .conftest import connect
from .local_api import LocalApi


class Waits:
    """Stands in for asyncio.sleep: records what the node would wait, waits for nothing."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def _run(services: sdk.Services, tenant: TestTenant, config: RequestConfig, **kw: Any) -> Any:
    return await send_request(node_context(services, tenant.id), config, **kw)


async def test_a_json_request_carries_headers_query_and_the_step_idempotency_key(
    services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi
) -> None:
    ctx = node_context(services, businessos_tenant.id, step_id="notify")
    out = await send_request(ctx, RequestConfig(
        url=f"{api.url}/api/echo", method="POST", headers={"X-Trace": "t1"}, query={"a": "1"}, json={"n": [1, 2]},
    ))
    assert out.status == 200 and out.truncated is False and out.attempts == 1
    seen = out.body
    assert seen["method"] == "POST" and seen["query"] == {"a": "1"}
    assert msgspec.json.decode(seen["body"]) == {"n": [1, 2]}
    assert seen["headers"]["x-trace"] == "t1" and seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["idempotency-key"] == ctx.idempotency_key == f"{ctx.execution_id}:notify:0"
    assert out.headers["content-type"].startswith("application/json")
    # A retry of the same step sends the same key.
    again = await send_request(node_context(services, businessos_tenant.id, step_id="notify", attempt=2,
                                            execution_id=ctx.execution_id), RequestConfig(url=f"{api.url}/api/echo"))
    assert again.body["headers"]["idempotency-key"] == ctx.idempotency_key


async def test_form_and_raw_bodies(services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi) -> None:
    form = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/echo", method="PUT", form={"a": "1", "b": "x y"},
    ))
    assert form.body["body"] == "a=1&b=x+y"
    assert form.body["headers"]["content-type"] == "application/x-www-form-urlencoded"
    raw = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/echo", method="PATCH", body="<x/>", content_type="application/xml",
    ))
    assert raw.body["body"] == "<x/>" and raw.body["headers"]["content-type"] == "application/xml"
    with pytest.raises(sdk.Unprocessable) as both:
        await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/echo", json={}, body="x"))
    assert both.value.errors[0].field == "json"


async def test_each_credential_type_authenticates(
    businessos_client: AsyncTestClient[Any], services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi
) -> None:
    token, password, key, access = "bearer-" + "b" * 20, "pw-" + "p" * 20, "key-" + "k" * 20, "acc-" + "a" * 20
    api.bearer_tokens.add(token)
    api.basic_users["ann"] = password
    api.api_keys.add(key)
    api.access_tokens.add(access)
    client, tenant = businessos_client, businessos_tenant
    ids = {
        "bearer": await connect(client, tenant, "http.bearer", {"token": token}),
        "basic": await connect(client, tenant, "http.basic", {"username": "ann", "password": password}),
        "header key": await connect(client, tenant, "http.api_key", {"name": "X-API-Key", "value": key}),
        "query key": await connect(
            client, tenant, "http.api_key", {"name": "api_key", "value": key, "location": "query"}, name="q"
        ),
        "oauth2": await connect(client, tenant, "http.oauth2", {"client_id": "c", "access_token": access}),
    }
    for label, connection in ids.items():
        out = await _run(services, tenant, RequestConfig(url=f"{api.url}/api/echo", connection=uuid.UUID(connection)))
        assert out.body["authorized"] is True, label
    basic = (await _run(services, tenant, RequestConfig(url=f"{api.url}/api/echo", connection=uuid.UUID(ids["basic"]))))
    assert basic.body["headers"]["authorization"] == "Basic " + base64.b64encode(f"ann:{password}".encode()).decode()


async def test_a_connection_of_another_tenant_is_not_found(
    businessos_client: AsyncTestClient[Any], services: sdk.Services, two_tenants: tuple[TestTenant, TestTenant],
    api: LocalApi,
) -> None:
    one, two = two_tenants
    mine = await connect(businessos_client, one, "http.bearer", {"token": "t" * 20})
    with pytest.raises(sdk.NotFound):
        await _run(services, two, RequestConfig(url=f"{api.url}/api/echo", connection=uuid.UUID(mine)))
    assert not [r for r in api.requests if r["headers"].get("authorization") == "Bearer " + "t" * 20]


async def test_429_and_5xx_are_retried_honouring_retry_after(
    services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi
) -> None:
    api.failures[:] = [(503, {}), (429, {"Retry-After": "2"}), (502, {})]
    waits = Waits()
    out = await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/flaky", retries=3), sleep=waits)
    assert out.status == 200 and out.attempts == 4 and waits.seconds == [0.5, 2.0, 2.0]
    # Retries spent: the last answer fails the step, or is handed on with fail_on_error off.
    api.failures[:] = [(503, {}), (503, {})]
    with pytest.raises(sdk.Problem) as failed:
        await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/flaky", retries=1), sleep=Waits())
    assert failed.value.extra["status"] == 503
    api.failures[:] = [(503, {})]
    kept = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/flaky", retries=0, fail_on_error=False,
    ), sleep=Waits())
    assert kept.status == 503 and kept.body == {"error": 503}
    # Asked to wait longer than max_retry_wait: no waiting, the step fails saying when to retry.
    api.failures[:] = [(429, {"Retry-After": "3600"})]
    waits = Waits()
    with pytest.raises(sdk.Problem) as later:
        await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/flaky"), sleep=waits)
    assert later.value.extra["retry_after"] == 3600 and waits.seconds == []
    api.failures.clear()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    assert retry_after("120", now) == 120
    assert retry_after("Mon, 30 Nov 2026 12:00:30 GMT", now) == 30
    assert retry_after("Mon, 30 Nov 2026 11:00:00 GMT", now) == 0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


async def test_a_body_past_the_cap_is_cut_and_flagged(
    services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi
) -> None:
    out = await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/big?size=5000", max_bytes=1000))
    assert out.truncated is True and out.body == "x" * 1000
    whole = await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/big?size=500", max_bytes=1000))
    assert whole.truncated is False and len(whole.body) == 500
    with pytest.raises(sdk.Unprocessable) as too_big:
        await _run(services, businessos_tenant, RequestConfig(url=f"{api.url}/api/big", max_bytes=100 * 1024 * 1024))
    assert too_big.value.errors[0].field == "max_bytes"


async def test_pages_follow_the_link_header_or_a_cursor(
    services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi
) -> None:
    linked = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/link-pages", paging=Paging(mode="link", items_path="items"),
    ))
    assert linked.pages == 3 and linked.items == ["l1a", "l1b", "l2a", "l2b", "l3a", "l3b"]
    capped = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/link-pages", paging=Paging(mode="link", items_path="items", max_pages=2),
    ))
    assert capped.pages == 2 and len(capped.body) == 2
    cursor = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/cursor-pages",
        paging=Paging(mode="cursor", cursor_path="meta.next", cursor_param="cursor", items_path="data"),
    ))
    assert cursor.pages == 3 and cursor.items == ["item-c1", "item-c2", "item-c3"]


async def test_a_refused_url_names_the_field_and_a_header_key_follows_no_redirect(
    businessos_client: AsyncTestClient[Any], services: sdk.Services, businessos_tenant: TestTenant, api: LocalApi
) -> None:
    with pytest.raises(sdk.EgressRefused) as refused:
        await _run(services, businessos_tenant, RequestConfig(url="http://169.254.169.254/latest/meta-data/"))
    assert refused.value.errors[0].field == "url"
    key = "hdr-" + "h" * 20
    keyed = await connect(businessos_client, businessos_tenant, "http.api_key", {"name": "X-API-Key", "value": key})
    out = await _run(services, businessos_tenant, RequestConfig(
        url=f"{api.url}/api/redirect?to={api.url}/api/echo", connection=uuid.UUID(keyed), fail_on_error=False,
    ))
    assert out.status == 302 and key not in msgspec.json.encode(out.body).decode()


async def test_the_node_is_declared_with_its_credential_types(
    businessos_client: AsyncTestClient[Any], businessos_tenant: TestTenant
) -> None:
    types = await businessos_client.get("/api/connections/types", headers=businessos_tenant.headers)
    assert {t["key"] for t in types.json()["types"]} == {"http.bearer", "http.basic", "http.api_key", "http.oauth2"}
