"""Subscriptions over HTTP: creation with a secret shown once, validation, tenants kept apart."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from connectors.webhooks.tests.conftest import Receiver, make_tenant

BASE = "/api/webhooks/subscriptions"


async def test_create_shows_the_secret_once_and_lists_the_subscription(
    client: AsyncTestClient[Any], receiver: Receiver
) -> None:
    a = await make_tenant(client)
    made = await client.post(
        BASE, json={"url": receiver.url("/a"), "event_types": ["webhooks.*"], "description": "ops"}, headers=a
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 30
    assert body["enabled"] is True and body["event_types"] == ["webhooks.*"]
    one = await client.get(f"{BASE}/{body['id']}", headers=a)
    assert one.status_code == 200 and "secret" not in one.json()
    assert one.headers["etag"] == '"1"'
    listed = await client.get(BASE, headers=a)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()["subscriptions"]] == [body["id"]]
    assert listed.json()["pagination"] == {"page": 1, "limit": 20, "total": 1, "pages": 1}


async def test_event_types_are_checked_against_the_catalogue(client: AsyncTestClient[Any], receiver: Receiver) -> None:
    a = await make_tenant(client)
    for bad in (["no.such.event"], ["nosuch.*"], ["*"], []):
        response = await client.post(BASE, json={"url": receiver.url("/x"), "event_types": bad}, headers=a)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["errors"][0]["field"].startswith("event_types"), response.json()
    for good in (["kernel.member.added"], ["kernel.*"], ["kernel.api_key.*", "webhooks.subscription.created"]):
        response = await client.post(BASE, json={"url": receiver.url("/x"), "event_types": good}, headers=a)
        assert response.status_code == 201, (good, response.text)


async def test_private_urls_are_refused_naming_url(client: AsyncTestClient[Any], receiver: Receiver) -> None:
    a = await make_tenant(client)
    for url in (
        f"http://127.0.0.1:{receiver.port}/", "http://10.0.0.5/hook", "http://169.254.169.254/latest",
        "http://[::1]/", "http://2130706433/", "ftp://example.com/", "http://nowhere.test/",
    ):
        response = await client.post(BASE, json={"url": url, "event_types": ["kernel.*"]}, headers=a)
        assert response.status_code == 422, (url, response.text)
        assert [e["field"] for e in response.json()["errors"]] == ["url"], response.json()
    assert receiver.forbidden_connections == 0


async def test_update_checks_the_version_and_the_url(client: AsyncTestClient[Any], receiver: Receiver) -> None:
    a = await make_tenant(client)
    made = (await client.post(BASE, json={"url": receiver.url("/u"), "event_types": ["kernel.*"]}, headers=a)).json()
    path = f"{BASE}/{made['id']}"
    changed = await client.patch(path, json={"description": "new", "filter": {"role": "admin"}}, headers=a)
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2 and changed.json()["filter"] == {"role": "admin"}
    stale = await client.patch(path, json={"description": "x"}, headers={**a, "If-Match": '"1"'})
    assert stale.status_code == 412
    refused = await client.patch(path, json={"url": "http://192.168.1.1/"}, headers=a)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url"
    off = await client.patch(path, json={"enabled": False}, headers=a)
    assert off.json()["enabled"] is False and off.json()["disabled_reason"] == "disabled by a user"


async def test_another_tenants_subscriptions_answer_404(client: AsyncTestClient[Any], receiver: Receiver) -> None:
    a, b = await make_tenant(client, "wh-a"), await make_tenant(client, "wh-b")
    made = (await client.post(BASE, json={"url": receiver.url("/t"), "event_types": ["kernel.*"]}, headers=a)).json()
    path = f"{BASE}/{made['id']}"
    assert (await client.get(path, headers=b)).status_code == 404
    assert (await client.patch(path, json={"description": "x"}, headers=b)).status_code == 404
    assert (await client.post(f"{path}/rotate-secret", headers=b)).status_code == 404
    assert (await client.post(f"{path}/enable", headers=b)).status_code == 404
    assert (await client.get(f"{path}/deliveries", headers=b)).status_code == 404
    assert (await client.get(f"{path}/attempts", headers=b)).status_code == 404
    replay = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}
    assert (await client.post(f"{path}/replay", json=replay, headers=b)).status_code == 404
    assert (await client.delete(path, headers=b)).status_code == 404
    assert (await client.get(BASE, headers=b)).json()["subscriptions"] == []
    assert (await client.delete(path, headers=a)).status_code == 204
    assert (await client.get(path, headers=a)).status_code == 404


async def test_bad_list_input_names_the_field(client: AsyncTestClient[Any], receiver: Receiver) -> None:
    a = await make_tenant(client)
    made = (await client.post(BASE, json={"url": receiver.url("/l"), "event_types": ["kernel.*"]}, headers=a)).json()
    bad = await client.get(BASE, params={"limit": 500}, headers=a)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "limit"
    bad = await client.get(f"{BASE}/{made['id']}/deliveries", params={"status": "lost"}, headers=a)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
    bad = await client.post(f"{BASE}/{made['id']}/replay", json={"from": "2026-01-02T00:00:00Z",
                                                                  "to": "2026-01-01T00:00:00Z"}, headers=a)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "to"


def test_filters_compare_as_json_and_patterns_match_namespaces() -> None:
    from connectors.webhooks.service import matches, passes_filter

    payload = {"deal": {"stage": "won", "amount": 10}, "flag": True, "tags": ["a", "b"]}
    assert passes_filter(None, payload) and passes_filter({}, payload)
    assert passes_filter({"deal.stage": "won", "deal.amount": 10.0, "flag": True, "tags": ["a", "b"]}, payload)
    assert not passes_filter({"deal.amount": "10"}, payload)
    assert not passes_filter({"flag": 1}, payload)
    assert not passes_filter({"deal.missing": None}, payload)
    assert not passes_filter({"tags": ["b", "a"]}, payload)
    assert matches(["crm.*"], "crm.deal.won") and matches(["crm.deal.*"], "crm.deal.won")
    assert not matches(["crm.*"], "crmx.deal.won") and not matches(["crm.deal.won"], "crm.deal.lost")


async def test_viewers_read_and_only_admins_write(client: AsyncTestClient[Any], receiver: Receiver) -> None:
    a = await make_tenant(client)
    made = (await client.post(BASE, json={"url": receiver.url("/p"), "event_types": ["kernel.*"]}, headers=a)).json()
    keys = {}
    for role in ("viewer", "member", "admin"):
        response = await client.post("/api/api-keys", json={"name": role, "role": role}, headers=a)
        assert response.status_code == 201, response.text
        keys[role] = {"X-Tenant-ID": a["X-Tenant-ID"], "X-API-Key": response.json()["key"]}
    for role in ("viewer", "member", "admin"):
        assert (await client.get(f"{BASE}/{made['id']}", headers=keys[role])).status_code == 200, role
    for role in ("viewer", "member"):
        refused = await client.post(f"{BASE}/{made['id']}/rotate-secret", headers=keys[role])
        assert refused.status_code == 403, (role, refused.text)
    assert (await client.post(f"{BASE}/{made['id']}/rotate-secret", headers=keys["admin"])).status_code == 200
