"""The NATS connection: server URLs and an optional login (user/password or token).

:func:`nats_client` is the one way this connector reaches a server: every server's host is judged
by the egress policy (``services.http.check_host``) and the client connects to the judged address,
so a tenant cannot point a connection at the platform's own network unless the operator allowed it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
import nats
from msgspec import Meta
from nats.aio.client import Client
from nats.errors import Error as NatsError

from kernel import sdk

__all__ = ["CREDENTIALS", "NatsCredentials", "check", "nats_client"]

CONNECT_SECONDS = 5


class NatsCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A NATS cluster and how to log in to it."""

    servers: Annotated[str, Meta(min_length=1, max_length=2000)]
    """One or more comma-separated URLs: ``nats://host:4222`` (``tls://`` for TLS)."""
    user: Annotated[str, Meta(max_length=200)] = ""
    password: sdk.Secret = ""
    token: sdk.Secret = ""
    """An auth token, instead of user and password."""


def _failed(field: str, message: str) -> sdk.Unprocessable:
    return sdk.Unprocessable(f"NATS: {message}", errors=[sdk.FieldError(field=field, message=message)])


def _unreachable(message: str) -> sdk.EgressFailed:
    """No server answered: a 502 naming ``servers``. Not a 422, because an outage looks the same
    as a wrong address from here: a workflow step failing so is transient (its retry policy
    applies), while the connection test still says which field to look at."""
    return sdk.EgressFailed(f"NATS: {message}", errors=[sdk.FieldError(field="servers", message=message)])


async def _judged_servers(services: sdk.Services, servers: str) -> tuple[list[str], str | None]:
    """The server URLs with each host replaced by the address the egress policy accepted, and the
    TLS name to check certificates against (the first host that was a name)."""
    judged: list[str] = []
    tls_name: str | None = None
    for raw in (part.strip() for part in servers.split(",")):
        if not raw:
            continue
        url = raw if "://" in raw else f"nats://{raw}"
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise _failed("servers", f"{raw!r} is not a nats:// or tls:// URL")
        try:
            port = parts.port or 4222
        except ValueError:
            raise _failed("servers", f"{raw!r} has a bad port") from None
        address = await services.http.check_host(parts.hostname, port, field="servers")
        if parts.scheme == "tls" and tls_name is None:
            tls_name = parts.hostname
        host = f"[{address}]" if ":" in address else address
        judged.append(f"{parts.scheme}://{host}:{port}")
    if not judged:
        raise _failed("servers", "no server URL given")
    return judged, tls_name


@asynccontextmanager
async def nats_client(
    services: sdk.Services, creds: NatsCredentials, *, reconnect: bool = False, name: str = "businessos"
) -> AsyncIterator[Client]:
    """A connected client (closed on exit); a 422 naming ``servers`` (not a NATS URL, refused by
    the egress policy) or the login field (refused), a 502 naming ``servers`` when no server
    answers. ``reconnect``: keep reconnecting after a
    loss (long-lived consumers) instead of failing."""
    servers, tls_name = await _judged_servers(services, creds.servers)
    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": CONNECT_SECONDS,
        "allow_reconnect": reconnect,
        "max_reconnect_attempts": -1 if reconnect else 0,
    }
    if tls_name is not None:
        options["tls"] = ssl.create_default_context()
        options["tls_hostname"] = tls_name
    if creds.token:
        options["token"] = creds.token
    elif creds.user:
        options["user"], options["password"] = creds.user, creds.password

    seen: list[Exception] = []

    async def remember(error: Exception) -> None:  # instead of the default handler's stderr lines
        seen[:] = [error]

    options["error_cb"] = remember
    try:
        # nats-py keeps retrying a refused first connection; the check must answer in bounded time.
        client = await asyncio.wait_for(nats.connect(**options), CONNECT_SECONDS * 2)
    except (NatsError, OSError, TimeoutError) as error:
        cause = seen[-1] if isinstance(error, TimeoutError) and seen else error
        text = str(cause).lower()
        if "authoriz" in text or "authentic" in text:
            field = "token" if creds.token else "password"
            raise _failed(field, "the server refused the login (authorization violation)") from None
        raise _unreachable(f"cannot connect ({type(cause).__name__})") from None
    try:
        yield client
    finally:
        await client.close()


async def check(services: sdk.Services, creds: Any) -> None:
    """Connect, log in and round-trip a PING; otherwise a problem naming the field at fault (422
    for a refused login or URL, 502 when no server answers)."""
    assert isinstance(creds, NatsCredentials)
    async with nats_client(services, creds, name="businessos-check") as client:
        try:
            await client.flush(timeout=CONNECT_SECONDS)
        except (NatsError, TimeoutError) as error:
            raise _unreachable(f"the server did not answer ({type(error).__name__})") from None


CREDENTIALS = sdk.CredentialType(
    key="nats.server",
    title="NATS server",
    schema=NatsCredentials,
    check=check,
    description="NATS server URLs and a login (user and password, or a token).",
)
