"""Deliveries end to end: an event of the tenant reaches the receiver, signed per Standard
Webhooks and verified there with the reference library; retries follow Svix's schedule (time is
advanced by moving the rows' due times, never by sleeping); the log, redelivery, replay, rotation,
automatic disabling, SSRF at delivery time, and recovery after a killed worker and a flushed Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from connectors.webhooks.delivery import SCHEDULE
from connectors.webhooks.tests.conftest import OUTSIDE, Receiver, Zone, make_tenant
from kernel.testing import TestWorker, dsn, eventually, running_worker

BASE = "/api/webhooks/subscriptions"


# -- helpers ---------------------------------------------------------------------------------


async def subscribe(
    client: AsyncTestClient[Any], headers: dict[str, str], receiver: Receiver, path: str, **extra: Any
) -> dict[str, Any]:
    body = {"url": receiver.url(path), "event_types": ["kernel.api_key.*"], **extra}
    made = await client.post(BASE, json=body, headers=headers)
    assert made.status_code == 201, made.text
    receiver.secrets[path] = [made.json()["secret"]]
    result: dict[str, Any] = made.json()
    return result


async def new_key(client: AsyncTestClient[Any], headers: dict[str, str], name: str = "k") -> None:
    """Make an API key: the kernel emits ``kernel.api_key.created``."""
    made = await client.post("/api/api-keys", json={"name": name, "role": "viewer"}, headers=headers)
    assert made.status_code == 201, made.text


async def deliveries(client: AsyncTestClient[Any], headers: dict[str, str], sub: dict[str, Any], **params: Any) -> Any:
    response = await client.get(f"{BASE}/{sub['id']}/deliveries", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


async def settled(
    client: AsyncTestClient[Any], headers: dict[str, str], sub: dict[str, Any], count: int = 1,
    status: str | None = None, attempts: int | None = None, within: float = 45.0,
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal found
        found = await deliveries(client, headers, sub)
        return len(found) == count and all(
            (status is None or d["status"] == status) and (attempts is None or d["attempts"] == attempts)
            and d["status"] != "running"
            for d in found
        )

    await eventually(check, timeout=within)
    return found


async def sql(database_url: str, tenant: str, query: str, *args: Any) -> Any:
    """Run ``query`` as the owner in the tenant's row-level security scope (moving time along)."""
    connection = await asyncpg.connect(dsn(database_url))
    try:
        async with connection.transaction():
            tenant_id = await connection.fetchval("select id::text from tenants where slug = $1", tenant)
            await connection.execute("select set_config('app.tenant_id', $1, true)", tenant_id)
            return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def advance(database_url: str, headers: dict[str, str], worker: TestWorker) -> None:
    """Make every pending delivery of the tenant due now, then run the sweeper."""
    await sql(
        database_url, headers["X-Tenant-ID"],
        "update webhooks_deliveries set next_attempt_at = now() - interval '1 hour' where status = 'pending'",
    )
    await worker.enqueue("webhooks.sweep", payload={"grace_seconds": 0})


# -- the tests -----------------------------------------------------------------------------------


async def test_events_arrive_signed_and_logged_and_stay_in_their_tenant(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver
) -> None:
    a, b = await make_tenant(client, "wh-a"), await make_tenant(client, "wh-b")
    sub = await subscribe(client, a, receiver, "/a")
    only_special = await subscribe(client, a, receiver, "/special", filter={"name": "special"})
    sub_b = await subscribe(client, b, receiver, "/b")
    await new_key(client, a, "plain")
    await new_key(client, a, "special")
    [first, second] = sorted(await settled(client, a, sub, count=2, status="succeeded"), key=lambda d: d["created_at"])
    [special] = await settled(client, a, only_special, count=1, status="succeeded")
    assert special["event_type"] == "kernel.api_key.created"

    got = receiver.at("/a")
    assert len(got) == 2 and all(r.verified_by == [0] for r in got)
    body = json.loads(got[0].body)
    assert body["type"] == "kernel.api_key.created" and set(body) == {"type", "timestamp", "data"}
    assert {json.loads(r.body)["data"]["name"] for r in got} == {"plain", "special"}
    assert [json.loads(r.body)["data"]["name"] for r in receiver.at("/special")] == ["special"]
    assert got[0].headers["webhook-id"].startswith("msg_") and len(got[0].headers["webhook-signature"].split()) == 1
    # The other tenant's subscription saw none of it, and its ids answer 404 to the first.
    assert receiver.at("/b") == [] and await deliveries(client, b, sub_b) == []

    detail = await client.get(f"/api/webhooks/deliveries/{first['id']}", headers=a)
    assert detail.status_code == 200, detail.text
    [attempt] = detail.json()["attempt_log"]
    assert attempt["succeeded"] and attempt["response_status"] == 200 and attempt["number"] == 1
    assert attempt["request_headers"]["webhook-id"] == first["message_id"]
    assert json.loads(attempt["request_body"])["type"] == "kernel.api_key.created"
    assert attempt["response_body"] == '{"ok": true}'
    assert (await client.get(f"/api/webhooks/deliveries/{first['id']}", headers=b)).status_code == 404
    assert (await client.post(f"/api/webhooks/deliveries/{second['id']}/redeliver", headers=b)).status_code == 404

    # Filters of the log.
    assert await deliveries(client, a, sub, status="failed") == []
    assert len(await deliveries(client, a, sub, event_type="kernel.api_key.created")) == 2
    assert await deliveries(client, a, sub, since="2099-01-01T00:00:00Z") == []
    attempts = await client.get(f"{BASE}/{sub['id']}/attempts", params={"succeeded": "true"}, headers=a)
    assert attempts.json()["pagination"]["total"] == 2


async def test_failures_retry_on_svix_schedule_until_failed(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver, businessos_database_url: str
) -> None:
    a = await make_tenant(client)
    receiver.status["/fail"] = 503
    sub = await subscribe(client, a, receiver, "/fail")
    await new_key(client, a)
    for attempt in range(1, len(SCHEDULE) + 1):
        [found] = await settled(client, a, sub, attempts=attempt)
        if attempt < len(SCHEDULE):
            assert found["status"] == "pending" and found["last_status"] == 503 and found["last_error"] == "HTTP 503"
            detail = (await client.get(f"/api/webhooks/deliveries/{found['id']}", headers=a)).json()
            last = detail["attempt_log"][-1]
            wait = datetime.fromisoformat(found["next_attempt_at"]) - datetime.fromisoformat(last["created_at"])
            assert wait == timedelta(seconds=SCHEDULE[attempt]), (attempt, wait)
            await advance(businessos_database_url, a, worker)
    assert found["status"] == "failed" and found["next_attempt_at"] is None
    assert len(receiver.at("/fail")) == len(SCHEDULE) == 8
    assert all(r.verified_by == [0] for r in receiver.at("/fail"))
    assert len({r.headers["webhook-id"] for r in receiver.at("/fail")}) == 1  # one message, eight attempts


async def test_receiver_down_then_up(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver, businessos_database_url: str
) -> None:
    a = await make_tenant(client)
    sub = await subscribe(client, a, receiver, "/later")
    await receiver.stop()
    await new_key(client, a)
    [found] = await settled(client, a, sub, attempts=1, status="pending")
    assert found["last_status"] is None and "ConnectError" in found["last_error"]
    failing = (await client.get(f"{BASE}/{sub['id']}", headers=a)).json()
    assert failing["failing_since"] is not None
    await receiver.start()
    await advance(businessos_database_url, a, worker)
    [found] = await settled(client, a, sub, status="succeeded", attempts=2)
    assert len(receiver.at("/later")) == 1 and receiver.at("/later")[0].verified_by == [0]
    assert (await client.get(f"{BASE}/{sub['id']}", headers=a)).json()["failing_since"] is None


async def test_rotation_sends_both_signatures_during_the_window(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver, businessos_database_url: str
) -> None:
    a = await make_tenant(client)
    sub = await subscribe(client, a, receiver, "/rot")
    old = receiver.secrets["/rot"][0]
    rotated = await client.post(f"{BASE}/{sub['id']}/rotate-secret", headers=a)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and new.startswith("whsec_") and rotated.json()["previous_secret_until"]
    receiver.secrets["/rot"] = [old, new]
    await new_key(client, a, "during")
    await settled(client, a, sub, status="succeeded")
    [during] = receiver.at("/rot")
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verified_by == [0, 1]  # a receiver holding either secret accepts it
    # Once the window closes, only the new secret signs.
    await sql(businessos_database_url, a["X-Tenant-ID"],
              "update webhooks_subscriptions set previous_secret_until = now() - interval '1 second'")
    await new_key(client, a, "after")
    await settled(client, a, sub, count=2, status="succeeded")
    after = next(r for r in receiver.at("/rot") if json.loads(r.body)["data"]["name"] == "after")
    assert after.verified_by == [1] and len(after.headers["webhook-signature"].split(" ")) == 1


async def test_continuous_failure_disables_and_enable_restores(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver, businessos_database_url: str
) -> None:
    a = await make_tenant(client)
    ops = await subscribe(client, a, receiver, "/ops", event_types=["webhooks.subscription.disabled"])
    receiver.status["/dead"] = 500
    sub = await subscribe(client, a, receiver, "/dead")
    await new_key(client, a)
    await settled(client, a, sub, attempts=1, status="pending")
    # Five days of failures pass (the tenant's setting, Svix's default).
    await sql(businessos_database_url, a["X-Tenant-ID"],
              "update webhooks_subscriptions set failing_since = now() - interval '5 days 1 minute' where id = $1",
              uuid.UUID(sub["id"]))
    await advance(businessos_database_url, a, worker)
    await settled(client, a, sub, attempts=2)
    shown = (await client.get(f"{BASE}/{sub['id']}", headers=a)).json()
    assert shown["enabled"] is False and "5 days" in shown["disabled_reason"]
    [note] = await settled(client, a, ops, status="succeeded")
    assert note["event_type"] == "webhooks.subscription.disabled"
    assert json.loads(receiver.at("/ops")[0].body)["data"]["id"] == sub["id"]
    # Its pending retry is closed rather than sent, and nothing new is delivered to it.
    await advance(businessos_database_url, a, worker)
    await settled(client, a, sub, status="failed")
    assert len(receiver.at("/dead")) == 2
    # Enabled again: a clean slate, and events flow.
    receiver.status["/dead"] = 200
    enabled = await client.post(f"{BASE}/{sub['id']}/enable", headers=a)
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True
    assert enabled.json()["failing_since"] is None and enabled.json()["disabled_reason"] is None
    await new_key(client, a, "again")
    await eventually(lambda: _true(len(receiver.at("/dead")) == 3), timeout=45)


async def _true(value: bool) -> bool:
    return value


async def test_redeliver_sends_the_same_message_again(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver
) -> None:
    a = await make_tenant(client)
    sub = await subscribe(client, a, receiver, "/re")
    await new_key(client, a)
    [found] = await settled(client, a, sub, status="succeeded")
    again = await client.post(f"/api/webhooks/deliveries/{found['id']}/redeliver", headers=a)
    assert again.status_code == 202, again.text
    await settled(client, a, sub, status="succeeded", attempts=2)
    [one, two] = receiver.at("/re")
    assert one.headers["webhook-id"] == two.headers["webhook-id"] and two.verified_by == [0]
    assert (await client.post(f"/api/webhooks/deliveries/{uuid.uuid4()}/redeliver", headers=a)).status_code == 404


async def test_replay_resends_a_time_range_once_per_request(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver
) -> None:
    a = await make_tenant(client)
    watcher = await subscribe(client, a, receiver, "/watch")  # tells when the events were stored
    start = datetime.now().astimezone() - timedelta(seconds=5)
    for name in ("one", "two"):
        await new_key(client, a, name)
    await settled(client, a, watcher, count=2, status="succeeded")
    late = await subscribe(client, a, receiver, "/late")  # subscribed after the events
    end = datetime.now().astimezone() + timedelta(seconds=5)
    body = {"from": start.isoformat(), "to": end.isoformat(), "idempotency_key": "r-1"}
    first = await client.post(f"{BASE}/{late['id']}/replay", json=body, headers=a)
    assert first.status_code == 202, first.text
    assert first.json()["deliveries"] == 2
    found = await settled(client, a, late, count=2, status="succeeded")
    assert {d["origin"] for d in found} == {f"replay:{first.json()['id']}"}
    assert sorted(json.loads(r.body)["data"]["name"] for r in receiver.at("/late")) == ["one", "two"]
    assert all(r.verified_by == [0] for r in receiver.at("/late"))
    repeat = await client.post(f"{BASE}/{late['id']}/replay", json=body, headers=a)
    assert repeat.status_code == 202 and repeat.json()["id"] == first.json()["id"]
    assert len(await deliveries(client, a, late)) == 2
    empty = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
    assert (await client.post(f"{BASE}/{late['id']}/replay", json=empty, headers=a)).json()["deliveries"] == 0



async def test_the_sweeper_forgets_events_past_retention(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver, businessos_database_url: str
) -> None:
    a = await make_tenant(client)
    sub = await subscribe(client, a, receiver, "/old")
    await new_key(client, a)
    [found] = await settled(client, a, sub, status="succeeded")
    await sql(businessos_database_url, a["X-Tenant-ID"],
              "update webhooks_messages set occurred_at = now() - interval '31 days'")
    await worker.enqueue("webhooks.sweep", payload={"grace_seconds": 0})

    async def forgotten() -> bool:
        return (await client.get(f"/api/webhooks/deliveries/{found['id']}", headers=a)).status_code == 404

    await eventually(forgotten, timeout=45)


async def test_a_name_that_rebinds_to_a_private_address_is_refused_at_delivery(
    client: AsyncTestClient[Any], worker: TestWorker, receiver: Receiver, zone: Zone
) -> None:
    a = await make_tenant(client)
    zone.records["rebind.test"] = [OUTSIDE, "127.0.0.1"]
    zone.asked.pop("rebind.test", None)
    made = await client.post(
        BASE, json={"url": f"http://rebind.test:{receiver.port}/r", "event_types": ["kernel.api_key.*"]}, headers=a
    )
    assert made.status_code == 201, made.text  # judged at creation: the name was public then
    await new_key(client, a)
    [found] = await settled(client, a, made.json(), attempts=1, status="pending")
    assert found["last_error"].startswith("refused:") and "127.0.0.1" in found["last_error"]
    assert receiver.at("/r") == [] and receiver.forbidden_connections == 0
    assert zone.asked["rebind.test"] >= 2


async def test_deliveries_survive_a_killed_worker_and_a_flushed_redis(
    client: AsyncTestClient[Any], hooks_settings: Any, receiver: Receiver, businessos_database_url: str
) -> None:
    a = await make_tenant(client)
    sub = await subscribe(client, a, receiver, "/hang")
    receiver.hold = asyncio.Event()
    async with running_worker(hooks_settings):
        await new_key(client, a)
        await eventually(lambda: _true(len(receiver.at("/hang")) == 1), timeout=45)
    # The worker died mid-attempt: the delivery is still claimed, its lease running.
    [found] = await deliveries(client, a, sub)
    assert found["status"] == "running"
    flushed = aioredis.Redis.from_url(hooks_settings.redis_url)
    await flushed.flushall()
    await flushed.aclose()
    receiver.hold.set()
    async with running_worker(hooks_settings) as worker:
        await sql(businessos_database_url, a["X-Tenant-ID"],
                  "update webhooks_deliveries set lease_until = now() - interval '1 second'")
        await worker.enqueue("webhooks.sweep", payload={"grace_seconds": 0})
        [found] = await settled(client, a, sub, status="succeeded", attempts=2)
    assert len(receiver.at("/hang")) == 2 and all(r.verified_by == [0] for r in receiver.at("/hang"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/x", "http://[::ffff:127.0.0.1]:{port}/x"])
async def test_forbidden_listener_sees_no_connection(
    client: AsyncTestClient[Any], receiver: Receiver, url: str
) -> None:
    a = await make_tenant(client)
    response = await client.post(
        BASE, json={"url": url.format(port=receiver.port), "event_types": ["kernel.*"]}, headers=a
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "url"
    assert receiver.forbidden_connections == 0
