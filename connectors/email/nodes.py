"""The e-mail action: send one message through the connection's SMTP relay."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Annotated, Any

import aiosmtplib
import msgspec
from msgspec import Meta

from connectors.email.credentials import EMAIL, SmtpCredentials, smtp_session
from kernel import sdk

__all__ = [
    "MAX_ATTACHMENT_BYTES",
    "NODES",
    "Attachment",
    "SendEmailConfig",
    "SentEmail",
    "build_message",
    "credentials_of",
    "deliver",
    "send_email",
]

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
"""The decoded size all attachments of one message may add up to (most relays cap at 10-25 MB)."""

Mailbox = Annotated[str, Meta(max_length=254, pattern=EMAIL)]
OneLine = Annotated[str, Meta(max_length=998, pattern=r"^[^\r\n]*$")]


async def credentials_of(ctx: sdk.NodeContext, connection: uuid.UUID) -> SmtpCredentials:
    """The run's tenant's SMTP connection (another tenant's id is simply not found)."""
    creds: SmtpCredentials = await ctx.services.connections.open(ctx.tenant_id, connection, SmtpCredentials)
    return creds


class Attachment(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    filename: Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[^\r\n/\\]+$")]
    content_base64: str
    """The file's bytes, base64-encoded."""
    content_type: Annotated[str, Meta(pattern=r"^[a-z0-9.+\-]+/[a-z0-9.+\-]+$")] = "application/octet-stream"


class SendEmailConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    connection: uuid.UUID
    to: Annotated[list[Mailbox], Meta(min_length=1, max_length=100)]
    cc: Annotated[list[Mailbox], Meta(max_length=100)] = msgspec.field(default_factory=list)
    bcc: Annotated[list[Mailbox], Meta(max_length=100)] = msgspec.field(default_factory=list)
    subject: OneLine
    text: str | None = None
    """The plain-text body; with ``html`` as well, the message carries both (multipart/alternative)."""
    html: str | None = None
    reply_to: Mailbox | None = None
    attachments: Annotated[list[Attachment], Meta(max_length=20)] = msgspec.field(default_factory=list)


class SentEmail(msgspec.Struct, kw_only=True):
    message_id: str
    """The ``Message-ID`` header: the same on every attempt of one step."""
    accepted: list[str]
    """Recipients the relay accepted."""
    refused: dict[str, str]
    """Recipients the relay refused, with its reply."""


def _bad(field: str, message: str) -> sdk.Unprocessable:
    return sdk.Unprocessable(message, errors=[sdk.FieldError(field=field, message=message)])


def build_message(creds: SmtpCredentials, config: SendEmailConfig, message_id: str) -> EmailMessage:
    """The MIME message (bcc is left out of the headers: it is only an envelope recipient)."""
    if config.text is None and config.html is None:
        raise _bad("text", "a message needs text or html")
    message = EmailMessage()
    sender = Address(addr_spec=creds.from_address)
    message["From"] = formataddr((creds.from_name, sender.addr_spec)) if creds.from_name else sender.addr_spec
    message["To"] = ", ".join(config.to)
    if config.cc:
        message["Cc"] = ", ".join(config.cc)
    if config.reply_to:
        message["Reply-To"] = config.reply_to
    message["Subject"] = config.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    if config.text is not None:
        message.set_content(config.text)
        if config.html is not None:
            message.add_alternative(config.html, subtype="html")
    else:
        message.set_content(config.html or "", subtype="html")
    total = 0
    for index, attachment in enumerate(config.attachments):
        try:
            data = base64.b64decode(attachment.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"attachments[{index}].content_base64", "not valid base64") from None
        total += len(data)
        if total > MAX_ATTACHMENT_BYTES:
            raise _bad(f"attachments[{index}]", f"attachments exceed {MAX_ATTACHMENT_BYTES} bytes in all")
        main, sub = attachment.content_type.split("/", 1)
        message.add_attachment(data, maintype=main, subtype=sub, filename=attachment.filename)
    return message


def message_id_for(idempotency_key: str, creds: SmtpCredentials) -> str:
    """A ``Message-ID`` derived from the step: a retried step sends the same id, so receivers
    and mail clients can recognise a repeat."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    domain = creds.from_address.rsplit("@", 1)[1]
    return f"<{digest}@{domain}>"


async def deliver(
    services: sdk.Services, creds: SmtpCredentials, config: SendEmailConfig, message_id: str
) -> SentEmail:
    """Send ``config`` through the relay of ``creds`` (the runner's logic, given credentials)."""
    message = build_message(creds, config, message_id)
    recipients = [*config.to, *config.cc, *config.bcc]
    async with smtp_session(services, creds) as client:
        try:
            refused, _reply = await client.send_message(message, sender=creds.from_address, recipients=recipients)
        except aiosmtplib.SMTPRecipientsRefused as error:
            raise _bad(
                "to",
                "the relay refused every recipient: "
                + "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients),
            ) from None
        except aiosmtplib.SMTPSenderRefused as error:
            raise _bad("from_address", f"the relay refused the sender ({error.code} {error.message})") from None
        except aiosmtplib.SMTPResponseException as error:
            raise sdk.EgressFailed(f"SMTP: the relay refused the message ({error.code} {error.message})") from None
        except aiosmtplib.SMTPException as error:  # disconnected, timed out
            raise sdk.EgressFailed(f"SMTP: sending failed ({type(error).__name__})") from None
    return SentEmail(
        message_id=message_id,
        accepted=[r for r in recipients if r not in refused],
        refused={r: f"{code} {text}" for r, (code, text) in refused.items()},
    )


async def send_email(ctx: sdk.NodeContext, config: Any) -> SentEmail:
    """Runner of ``email.send``."""
    creds = await credentials_of(ctx, config.connection)
    return await deliver(ctx.services, creds, config, message_id_for(ctx.idempotency_key, creds))


NODES = (
    sdk.NodeSpec(
        key="email.send",
        kind="action",
        title="Send an e-mail",
        config=SendEmailConfig,
        output=SentEmail,
        run=send_email,
        description="Through an SMTP connection: to/cc/bcc, text and/or HTML, attachments, reply-to.",
    ),
)
