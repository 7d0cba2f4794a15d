"""The Slack connection: a bot token (and the app's signing secret, for the Events API trigger).

Every call to Slack goes through :func:`web_client`, which points the official ``slack_sdk``
client at the operator's API base URL and routes its HTTP through the egress rules (see
:class:`EgressResolver`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from kernel import sdk

__all__ = [
    "API_URL_VARIABLE",
    "CHANNEL_ERRORS",
    "CREDENTIALS",
    "EgressResolver",
    "SlackCredentials",
    "api_url",
    "check",
    "slack_call",
    "web_client",
]

API_URL_VARIABLE = "BUSINESSOS_SLACK_API_URL"
"""The operator's setting for Slack's Web API base (default ``https://slack.com/api/``): a proxy
or a test server. Tenants cannot change it."""


def api_url() -> str:
    """The Web API base URL every Slack call goes to (with a trailing slash)."""
    url = os.environ.get(API_URL_VARIABLE, "").strip() or "https://slack.com/api/"
    return url if url.endswith("/") else url + "/"


class SlackCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A Slack app installed in one workspace."""

    bot_token: sdk.Secret
    """The bot user OAuth token (``xoxb-...``)."""
    signing_secret: sdk.Secret = ""
    """The app's signing secret: needed only for the Events API trigger."""


class EgressResolver(AbstractResolver):
    """aiohttp name resolution through the egress policy: a host resolving to any non-public
    address (outside the operator's allowlist) is refused, and aiohttp connects to the very
    address that was judged. ``slack_sdk`` takes an ``aiohttp.ClientSession`` but not an httpx
    client, so this is how its traffic meets the same SSRF rules as ``services.http``."""

    def __init__(self, http: sdk.EgressClient) -> None:
        self._http = http

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = await self._http.check_host(host, port or 443, field=API_URL_VARIABLE)
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            ResolveResult(hostname=host, host=address, port=port, family=kind, proto=0, flags=socket.AI_NUMERICHOST)
        ]

    async def close(self) -> None:
        return None


@asynccontextmanager
async def web_client(services: sdk.Services, creds: SlackCredentials) -> AsyncIterator[AsyncWebClient]:
    """An ``AsyncWebClient`` for ``creds`` on the operator's API URL, its connections judged by
    the egress policy (aiohttp skips the resolver for IP literals, so the URL's host is judged
    here first as well)."""
    base = api_url()
    parts = urlsplit(base)
    await services.http.check_host(
        parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), field=API_URL_VARIABLE
    )
    connector = aiohttp.TCPConnector(resolver=EgressResolver(services.http), limit=10)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        yield AsyncWebClient(token=creds.bot_token, base_url=base, session=session, timeout=30)


def refusal(error: SlackApiError, field: str = "bot_token") -> sdk.Unprocessable:
    """A Slack ``{"ok": false, "error": ...}`` answer as a problem naming what failed."""
    code = str(error.response.get("error") or "unknown_error")
    hints = {
        "invalid_auth": "Slack does not accept the bot token",
        "not_authed": "no bot token was sent",
        "account_inactive": "the token's workspace or user is deactivated",
        "token_revoked": "the bot token was revoked",
        "channel_not_found": "no such channel (or the bot cannot see it)",
        "not_in_channel": "the bot is not a member of the channel",
        "users_not_found": "no user with that e-mail",
        "missing_scope": "the bot token lacks a scope this needs",
    }
    message = f"{hints.get(code, 'Slack refused the call')} ({code})"
    return sdk.Unprocessable(
        f"Slack: {message}", errors=[sdk.FieldError(field=field, message=message)], extra={"slack_error": code}
    )


CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived"})
"""Slack errors that are about the channel a node named, not about the token."""


@asynccontextmanager
async def slack_call(
    services: sdk.Services, creds: SlackCredentials, channel_field: str = "channel"
) -> AsyncIterator[AsyncWebClient]:
    """:func:`web_client` whose failures become problems: Slack's ``ok: false`` a 422 naming
    ``channel_field`` (channel errors) or ``bot_token`` (the rest), no answer a 502."""
    async with web_client(services, creds) as client:
        try:
            yield client
        except SlackApiError as error:
            code = error.response.get("error")
            raise refusal(error, channel_field if code in CHANNEL_ERRORS else "bot_token") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise sdk.EgressFailed(f"Slack could not be reached: {type(error).__name__}") from None


async def check(services: sdk.Services, creds: Any) -> None:
    """``auth.test`` with the bot token: returns when Slack accepts it, raises a 422 naming
    ``bot_token`` (with Slack's error code) otherwise."""
    assert isinstance(creds, SlackCredentials)
    if not creds.bot_token.strip():
        raise sdk.Unprocessable(
            "Slack: the bot token is empty", errors=[sdk.FieldError(field="bot_token", message="required")]
        )
    async with slack_call(services, creds) as client:
        await client.auth_test()


CREDENTIALS = sdk.CredentialType(
    key="slack.bot",
    title="Slack bot",
    schema=SlackCredentials,
    check=check,
    description="A Slack app's bot token (xoxb-...) and, for the Events API trigger, its signing secret.",
)
