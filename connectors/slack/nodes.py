"""Slack's workflow nodes: post a message (by channel id or name, blocks, thread replies), find a
user by e-mail, and the Events API trigger."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from connectors.slack.credentials import SlackCredentials, slack_call
from kernel import sdk

__all__ = [
    "NODES",
    "FindUserConfig",
    "PostMessageConfig",
    "PostToChannelConfig",
    "PostedMessage",
    "SlackEventConfig",
    "SlackEventReceived",
    "SlackUser",
    "credentials_of",
    "find_user",
    "post_message",
    "post_to_channel",
]

Blocks = Annotated[list[dict[str, Any]], Meta(max_length=50)]
"""Block Kit blocks, passed to Slack as they are (Slack allows 50 per message)."""


async def credentials_of(ctx: sdk.NodeContext, connection: uuid.UUID) -> SlackCredentials:
    """The run's tenant's Slack connection (another tenant's id is simply not found)."""
    creds: SlackCredentials = await ctx.services.connections.open(ctx.tenant_id, connection, SlackCredentials)
    return creds


class PostMessageConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID
    channel: Annotated[str, Meta(min_length=1, max_length=80, pattern=r"^[A-Z0-9]+$")]
    """A conversation id (``C...``, ``G...``, ``D...``)."""
    text: Annotated[str, Meta(max_length=40000)] = ""
    """The message, or the notification fallback when ``blocks`` are given."""
    blocks: Blocks | None = None
    thread_ts: Annotated[str, Meta(pattern=r"^\d+\.\d+$")] | None = None
    """Reply in the thread of this message."""
    reply_broadcast: bool = False
    """With ``thread_ts``: show the reply in the channel as well."""


class PostToChannelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID
    channel_name: Annotated[str, Meta(min_length=1, max_length=80, pattern=r"^#?[a-z0-9_\-]+$")]
    """``general`` or ``#general``: resolved with ``conversations.list``."""
    text: Annotated[str, Meta(max_length=40000)] = ""
    blocks: Blocks | None = None
    thread_ts: Annotated[str, Meta(pattern=r"^\d+\.\d+$")] | None = None
    reply_broadcast: bool = False


class PostedMessage(msgspec.Struct, kw_only=True):
    channel: str
    ts: str
    """The message's timestamp: its id, and the ``thread_ts`` of replies to it."""
    thread_ts: str | None = None


class FindUserConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID
    email: Annotated[str, Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]


class SlackUser(msgspec.Struct, kw_only=True):
    found: bool
    """``False`` when the workspace has no user with the e-mail (the step does not fail)."""
    id: str | None = None
    name: str | None = None
    real_name: str | None = None
    email: str | None = None


class SlackEventConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID | None = None
    """Only events that arrived for this connection; ``None``: any of the tenant's."""
    event_types: list[str] = msgspec.field(default_factory=list)
    """Only these event types (``message``, ``app_mention``, ...); empty: every type."""
    channel: str | None = None
    """Only events in this channel id."""


class SlackEventReceived(msgspec.Struct, kw_only=True):
    """The payload of ``slack.event.received``: one Events API ``event_callback``."""

    connection: str
    event_id: str
    team_id: str | None
    type: str
    channel: str | None
    user: str | None
    text: str | None
    ts: str | None
    thread_ts: str | None
    event: dict[str, Any]
    """The event object exactly as Slack sent it."""


# Channel names resolved during one run: (execution, connection, name) -> id. A run posting many
# messages lists the workspace's channels once; bounded so a long-lived worker keeps little.
_CHANNELS: OrderedDict[tuple[uuid.UUID, uuid.UUID, str], str] = OrderedDict()
_CHANNELS_KEPT = 512


async def channel_id(client: AsyncWebClient, name: str) -> str:
    """The id of the channel called ``name``, paging through ``conversations.list``."""
    cursor: str | None = None
    while True:
        page = await client.conversations_list(
            cursor=cursor, limit=200, exclude_archived=True, types="public_channel,private_channel"
        )
        for channel in page.get("channels") or []:
            if channel.get("name") == name:
                return str(channel["id"])
        cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            break
    raise sdk.Unprocessable(
        f"Slack: no channel #{name} the bot can see",
        errors=[sdk.FieldError(field="channel_name", message=f"no channel #{name} the bot can see")],
    )


async def _post(client: AsyncWebClient, channel: str, config: PostMessageConfig | PostToChannelConfig) -> PostedMessage:
    if not config.text and not config.blocks:
        raise sdk.Unprocessable(
            "a message needs text or blocks", errors=[sdk.FieldError(field="text", message="text or blocks required")]
        )
    args: dict[str, Any] = {"channel": channel, "text": config.text}
    if config.blocks:
        args["blocks"] = config.blocks
    if config.thread_ts:
        args["thread_ts"] = config.thread_ts
        args["reply_broadcast"] = config.reply_broadcast
    answer = await client.chat_postMessage(**args)
    message = answer.get("message") or {}
    return PostedMessage(channel=str(answer["channel"]), ts=str(answer["ts"]), thread_ts=message.get("thread_ts"))


async def send_message(services: sdk.Services, creds: SlackCredentials, config: PostMessageConfig) -> PostedMessage:
    """``chat.postMessage`` to a channel id (the runner's logic, given the credentials)."""
    async with slack_call(services, creds, "channel") as client:
        return await _post(client, config.channel, config)


async def send_to_channel(
    services: sdk.Services, creds: SlackCredentials, config: PostToChannelConfig, run: uuid.UUID
) -> PostedMessage:
    """``chat.postMessage`` to a channel named in ``config``; the name's id is kept for ``run``."""
    name = config.channel_name.removeprefix("#")
    key = (run, config.connection, name)
    async with slack_call(services, creds, "channel_name") as client:
        found = _CHANNELS.get(key)
        if found is None:
            found = await channel_id(client, name)
            _CHANNELS[key] = found
            while len(_CHANNELS) > _CHANNELS_KEPT:
                _CHANNELS.popitem(last=False)
        return await _post(client, found, config)


async def lookup_user(services: sdk.Services, creds: SlackCredentials, config: FindUserConfig) -> SlackUser:
    """``users.lookupByEmail``; ``found=False`` when Slack answers ``users_not_found``."""
    async with slack_call(services, creds) as client:
        try:
            answer = await client.users_lookupByEmail(email=config.email)
        except SlackApiError as error:
            if error.response.get("error") != "users_not_found":
                raise
            return SlackUser(found=False)
    user = answer.get("user") or {}
    profile = user.get("profile") or {}
    return SlackUser(
        found=True,
        id=user.get("id"),
        name=user.get("name"),
        real_name=user.get("real_name") or profile.get("real_name"),
        email=profile.get("email"),
    )


async def post_message(ctx: sdk.NodeContext, config: Any) -> PostedMessage:
    """Runner of ``slack.post_message``."""
    return await send_message(ctx.services, await credentials_of(ctx, config.connection), config)


async def post_to_channel(ctx: sdk.NodeContext, config: Any) -> PostedMessage:
    """Runner of ``slack.post_to_channel``."""
    return await send_to_channel(ctx.services, await credentials_of(ctx, config.connection), config, ctx.execution_id)


async def find_user(ctx: sdk.NodeContext, config: Any) -> SlackUser:
    """Runner of ``slack.find_user``."""
    return await lookup_user(ctx.services, await credentials_of(ctx, config.connection), config)


def event_matches(config: Any, payload: Any) -> bool:
    """Whether an arrived event starts a workflow whose trigger is configured as ``config``."""
    if config.connection is not None and payload.get("connection") != str(config.connection):
        return False
    if config.event_types and payload.get("type") not in config.event_types:
        return False
    return config.channel is None or payload.get("channel") == config.channel


NODES = (
    sdk.NodeSpec(
        key="slack.post_message",
        kind="action",
        title="Post a Slack message",
        config=PostMessageConfig,
        output=PostedMessage,
        run=post_message,
    ),
    sdk.NodeSpec(
        key="slack.post_to_channel",
        kind="action",
        title="Post to a Slack channel by name",
        config=PostToChannelConfig,
        output=PostedMessage,
        run=post_to_channel,
    ),
    sdk.NodeSpec(
        key="slack.find_user",
        kind="action",
        title="Find a Slack user by e-mail",
        config=FindUserConfig,
        output=SlackUser,
        run=find_user,
    ),
    sdk.NodeSpec(
        key="slack.event_received",
        kind="trigger",
        title="Slack event received",
        config=SlackEventConfig,
        output=SlackEventReceived,
        event="slack.event.received",
        filter=event_matches,
    ),
)
