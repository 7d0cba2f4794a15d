"""The SMTP connection: a relay, how to secure the session, the login, and the sender.

:func:`smtp_session` is the one way this connector reaches a relay: the host is judged by the
egress policy first (``services.http.check_host``: a name resolving to a private, loopback or
metadata address is refused unless the operator allowed that network), the socket is connected to
the judged address, and the TLS certificate is still checked for the host *name*.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import aiosmtplib
import msgspec
from msgspec import Meta

from kernel import sdk

__all__ = ["CREDENTIALS", "SmtpCredentials", "check", "smtp_session"]

EMAIL = r"^[^@\s<>,;\"\r\n]+@[^@\s<>,;\"\r\n]+$"
TIMEOUT = 30.0


class SmtpCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An SMTP relay account."""

    host: Annotated[str, Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.\-:\[\]]+$")]
    port: Annotated[int, Meta(ge=1, le=65535)] = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    """``starttls`` (port 587: upgrade required), ``tls`` (port 465: TLS from the start) or
    ``none`` (plain text; only for relays on a network the operator trusts)."""
    username: Annotated[str, Meta(max_length=320)] = ""
    """Empty: the relay takes mail without a login."""
    password: sdk.Secret = ""
    from_address: Annotated[str, Meta(max_length=254, pattern=EMAIL)]
    from_name: Annotated[str, Meta(max_length=200, pattern=r"^[^\r\n]*$")] = ""


def _failed(field: str, message: str) -> sdk.Unprocessable:
    return sdk.Unprocessable(f"SMTP: {message}", errors=[sdk.FieldError(field=field, message=message)])


@asynccontextmanager
async def smtp_session(services: sdk.Services, creds: SmtpCredentials) -> AsyncIterator[aiosmtplib.SMTP]:
    """A connected, secured and logged-in SMTP session; a problem naming the field at fault when
    the relay cannot be reached (``host``, 502: transient for a workflow step), TLS fails
    (``security``) or the login is refused (``password``)."""
    address = await services.http.check_host(creds.host, creds.port, field="host")
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, creds.port)), TIMEOUT)
    except (OSError, TimeoutError) as error:
        sock.close()
        message = f"cannot connect to {creds.host}:{creds.port} ({type(error).__name__})"
        # 502, not 422: a relay that is down looks the same as a wrong address from here, so a
        # step failing so is transient (its retry policy applies); the test still names ``host``.
        raise sdk.EgressFailed(f"SMTP: {message}", errors=[sdk.FieldError(field="host", message=message)]) from None
    client = aiosmtplib.SMTP(
        hostname=creds.host.strip("[]"),
        sock=sock,
        timeout=TIMEOUT,
        use_tls=creds.security == "tls",
        start_tls=creds.security == "starttls",
        tls_context=ssl.create_default_context(),
    )
    try:
        try:
            await client.connect()
        except aiosmtplib.SMTPException as error:
            field = "security" if creds.security != "none" else "host"
            raise _failed(field, f"the session with {creds.host} could not be set up: {_reason(error)}") from None
        except (ssl.SSLError, OSError) as error:
            raise _failed("security", f"TLS with {creds.host} failed: {_reason(error)}") from None
        if creds.username:
            try:
                await client.login(creds.username, creds.password)
            except aiosmtplib.SMTPAuthenticationError as error:
                raise _failed("password", f"the relay refused the username or password ({error.code})") from None
            except aiosmtplib.SMTPException as error:
                raise _failed("username", f"login failed: {_reason(error)}") from None
        yield client
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            if client.is_connected:
                await client.quit()
        client.close()


def _reason(error: BaseException) -> str:
    # aiosmtplib's messages carry the server's reply, never our credentials.
    return str(error).strip()[:200] or type(error).__name__


async def check(services: sdk.Services, creds: Any) -> None:
    """Connect, EHLO, secure the session as configured and log in; a 422 naming the field at
    fault otherwise."""
    assert isinstance(creds, SmtpCredentials)
    async with smtp_session(services, creds):
        pass


CREDENTIALS = sdk.CredentialType(
    key="email.smtp",
    title="SMTP relay",
    schema=SmtpCredentials,
    check=check,
    description="An SMTP server that relays the workflow's mail (STARTTLS, TLS or plain; optional login).",
)
