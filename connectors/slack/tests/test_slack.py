"""The Slack connector against a local server speaking Slack's Web API, with signed Events API
deliveries, through HTTP and through the node context a workflow engine hands a step."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from slack_sdk.signature import SignatureVerifier

from connectors.conftest import connector_settings, make_connection, recorded_events, tenant_with
from connectors.slack.credentials import API_URL_VARIABLE
from connectors.slack.nodes import (
    NODES,
    FindUserConfig,
    PostMessageConfig,
    PostToChannelConfig,
    SlackEventConfig,
    event_matches,
)
from connectors.slack.tests.fake_slack import GOOD_TOKEN, FakeSlack
from kernel import sdk
from kernel.testing import Settings, node_context, open_client, open_services

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
RUNNERS = {spec.key: spec.run for spec in NODES}


@pytest.fixture(scope="module")
async def slack_settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return await connector_settings(
        businessos_servers, businessos_database_url, Path(tmp_path_factory.mktemp("slack")), "slack"
    )


@pytest.fixture(scope="module")
async def api(slack_settings: Settings, fake: FakeSlack) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(slack_settings) as client:
        yield client


async def _connected(
    api: AsyncTestClient[Any], prefix: str = "slk", token: str = GOOD_TOKEN
) -> tuple[dict[str, Any], uuid.UUID]:
    tenant = await tenant_with(api, "slack", prefix)
    made = await make_connection(api, tenant, "slack.bot", {"bot_token": token, "signing_secret": SIGNING_SECRET})
    return tenant, uuid.UUID(made["id"])


async def _run(settings: Settings, tenant: dict[str, Any], key: str, config: Any, ctx_of: Any = None) -> Any:
    runner = RUNNERS[key]
    assert runner is not None
    async with open_services(settings, "slack") as services:
        return await runner(ctx_of or node_context(services, tenant["uuid"]), config)


async def test_check_passes_with_the_bot_token_and_names_slacks_error_otherwise(
    api: AsyncTestClient[Any], fake: FakeSlack
) -> None:
    tenant, good = await _connected(api)
    passed = await api.post(f"/api/connections/{good}/test", headers=tenant["h"])
    assert passed.status_code == 200 and passed.json()["ok"] is True, passed.text
    assert "auth.test" in fake.calls

    bad = await make_connection(api, tenant, "slack.bot", {"bot_token": "xoxb-revoked"}, name="bad")
    failed = (await api.post(f"/api/connections/{bad['id']}/test", headers=tenant["h"])).json()
    assert failed["ok"] is False
    assert "invalid_auth" in failed["error"]["detail"] and "bot token" in failed["error"]["detail"]
    assert any(error["field"].endswith("bot_token") for error in failed["error"]["errors"])
    listed = (await api.get(f"/api/connections/{bad['id']}", headers=tenant["h"])).json()
    assert "xoxb-revoked" not in json.dumps(listed)


async def test_post_message_with_blocks_then_a_thread_reply(
    api: AsyncTestClient[Any], fake: FakeSlack, slack_settings: Settings
) -> None:
    tenant, connection = await _connected(api)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deal won*: ACME"}}]
    first = await _run(
        slack_settings,
        tenant,
        "slack.post_message",
        PostMessageConfig(connection=connection, channel="CGENERAL1", text="Deal won: ACME", blocks=blocks),
    )
    assert fake.posted[-1]["blocks"] == blocks and fake.posted[-1]["text"] == "Deal won: ACME"
    reply = await _run(
        slack_settings,
        tenant,
        "slack.post_message",
        PostMessageConfig(
            connection=connection,
            channel="CGENERAL1",
            text="details in thread",
            thread_ts=first.ts,
            reply_broadcast=True,
        ),
    )
    assert fake.posted[-1]["thread_ts"] == first.ts and fake.posted[-1]["reply_broadcast"] is True
    assert (reply.channel, reply.thread_ts) == ("CGENERAL1", first.ts) and reply.ts != first.ts

    with pytest.raises(sdk.Unprocessable) as missing:
        await _run(
            slack_settings,
            tenant,
            "slack.post_message",
            PostMessageConfig(connection=connection, channel="CNOSUCH", text="x"),
        )
    assert missing.value.errors[0].field == "channel" and "channel_not_found" in missing.value.detail


async def test_post_to_channel_by_name_pages_the_list_once_per_run(
    api: AsyncTestClient[Any], fake: FakeSlack, slack_settings: Settings
) -> None:
    tenant, connection = await _connected(api)
    config = PostToChannelConfig(connection=connection, channel_name="#general", text="hello")
    runner = RUNNERS["slack.post_to_channel"]
    assert runner is not None
    async with open_services(slack_settings, "slack") as services:
        before = fake.calls.count("conversations.list")
        ctx = node_context(services, tenant["uuid"])
        posted = await runner(ctx, config)
        assert posted.channel == "CGENERAL1"
        assert fake.calls.count("conversations.list") - before == 3  # 451 channels, 200 a page
        await runner(dataclasses.replace(ctx, step_id="step-2"), config)
        assert fake.calls.count("conversations.list") - before == 3  # same run: the name's id was kept
        await runner(node_context(services, tenant["uuid"]), config)  # another run lists again
        assert fake.calls.count("conversations.list") - before == 6
        with pytest.raises(sdk.Unprocessable) as unknown:
            await runner(ctx, PostToChannelConfig(connection=connection, channel_name="nowhere", text="x"))
        assert unknown.value.errors[0].field == "channel_name"


async def test_find_user_by_email(api: AsyncTestClient[Any], fake: FakeSlack, slack_settings: Settings) -> None:
    tenant, connection = await _connected(api)
    found = await _run(
        slack_settings, tenant, "slack.find_user", FindUserConfig(connection=connection, email="ada@example.com")
    )
    assert (found.found, found.id, found.real_name, found.email) == (True, "U0ADA", "Ada Lovelace", "ada@example.com")
    missing = await _run(
        slack_settings, tenant, "slack.find_user", FindUserConfig(connection=connection, email="bob@example.com")
    )
    assert missing.found is False and missing.id is None


async def test_another_tenants_connection_cannot_be_used(
    api: AsyncTestClient[Any], fake: FakeSlack, slack_settings: Settings
) -> None:
    _, theirs = await _connected(api, "slk-a")
    other = await tenant_with(api, "slack", "slk-b")
    posted = len(fake.posted)
    with pytest.raises(sdk.NotFound):
        await _run(
            slack_settings,
            other,
            "slack.post_message",
            PostMessageConfig(connection=theirs, channel="CGENERAL1", text="x"),
        )
    assert len(fake.posted) == posted
    assert (await api.get(f"/api/connections/{theirs}", headers=other["h"])).status_code == 404
    refused = await api.post("/api/slack/events-url", json={"connection": str(theirs)}, headers=other["h"])
    assert refused.status_code == 404, refused.text


async def test_slack_behind_a_private_address_is_refused_without_the_operators_allowlist(
    api: AsyncTestClient[Any], fake: FakeSlack, slack_settings: Settings
) -> None:
    tenant, connection = await _connected(api)
    async with open_services(slack_settings, "slack") as services:
        services.http = sdk.EgressClient()  # the default policy: loopback is not public
        ctx = node_context(services, tenant["uuid"])
        posted = len(fake.posted)
        with pytest.raises(sdk.EgressRefused) as refused:
            await RUNNERS["slack.post_message"](
                ctx, PostMessageConfig(connection=connection, channel="CGENERAL1", text="x")
            )  # type: ignore[misc]
        assert refused.value.errors[0].field == API_URL_VARIABLE and len(fake.posted) == posted


def _signed(body: bytes, secret: str = SIGNING_SECRET, at: int | None = None) -> dict[str, str]:
    """Headers Slack sends with a delivery, signed by slack_sdk's own implementation."""
    timestamp = str(at if at is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature, "Content-Type": "application/json"}


async def test_events_api_challenge_signature_and_recorded_event(
    api: AsyncTestClient[Any], fake: FakeSlack, slack_settings: Settings
) -> None:
    tenant, connection = await _connected(api)
    made = await api.post("/api/slack/events-url", json={"connection": str(connection)}, headers=tenant["h"])
    assert made.status_code == 201, made.text
    path = made.json()["path"]
    assert path.startswith("/hooks/slack/whk_") and path.endswith(f"?connection={connection}")

    challenge = json.dumps(
        {
            "token": "legacy",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    ).encode()
    answered = await api.post(path, content=challenge, headers=_signed(challenge))
    assert answered.status_code == 200 and answered.json() == {
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    }

    event = {
        "type": "message",
        "channel": "CGENERAL1",
        "user": "U0ADA",
        "text": "hello bot",
        "ts": "1700000001.000200",
        "thread_ts": "1700000000.000100",
    }
    delivery = json.dumps(
        {"type": "event_callback", "team_id": "T0FAKE", "event_id": "Ev0001", "event_time": 1700000001, "event": event}
    ).encode()
    assert (
        await api.post(path, content=delivery, headers=_signed(delivery, secret="not-the-secret"))
    ).status_code == 401
    stale = _signed(delivery, at=int(time.time()) - 301)
    assert (await api.post(path, content=delivery, headers=stale)).status_code == 401
    tampered = _signed(delivery)
    assert (await api.post(path, content=delivery.replace(b"hello", b"HELLO"), headers=tampered)).status_code == 401
    wrong_connection = path.replace(str(connection), str(uuid.uuid4()))
    assert (await api.post(wrong_connection, content=delivery, headers=_signed(delivery))).status_code == 401

    accepted = await api.post(path, content=delivery, headers=_signed(delivery))
    assert accepted.status_code == 204, accepted.text
    retried = await api.post(path, content=delivery, headers={**_signed(delivery), "X-Slack-Retry-Num": "1"})
    assert retried.status_code == 204, retried.text  # acknowledged, not recorded again
    async with open_services(slack_settings, "slack") as services:
        events = await recorded_events(services, tenant["uuid"], "slack.event.received")
    assert len(events) == 1
    got = events[0]
    assert (got["type"], got["channel"], got["user"], got["text"], got["ts"], got["thread_ts"]) == (
        "message",
        "CGENERAL1",
        "U0ADA",
        "hello bot",
        "1700000001.000200",
        "1700000000.000100",
    )
    assert got["event"] == event and got["event_id"] == "Ev0001" and got["connection"] == str(connection)

    assert event_matches(SlackEventConfig(connection=connection, event_types=["message"]), got)
    assert not event_matches(SlackEventConfig(event_types=["app_mention"]), got)
    assert not event_matches(SlackEventConfig(channel="COTHER"), got)
