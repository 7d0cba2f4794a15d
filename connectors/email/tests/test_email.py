"""The e-mail connector against real aiosmtpd servers (STARTTLS with a certificate made for the
run, TLS from the start, AUTH), through HTTP and through the node context of a workflow step."""

from __future__ import annotations

import base64
import email
import email.policy
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from connectors.conftest import connector_settings, make_connection, tenant_with
from connectors.email.nodes import MAX_ATTACHMENT_BYTES, NODES, Attachment, SendEmailConfig
from connectors.email.tests.smtp_servers import PASSWORD, USER, SmtpServers
from kernel import sdk
from kernel.testing import Settings, node_context, open_client, open_services

SEND = NODES[0].run


@pytest.fixture(scope="module")
async def email_settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return await connector_settings(
        businessos_servers, businessos_database_url, Path(tmp_path_factory.mktemp("email")), "email"
    )


@pytest.fixture(scope="module")
async def api(email_settings: Settings, smtp: SmtpServers) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(email_settings) as client:
        yield client


def _creds(smtp: SmtpServers, **changes: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": smtp.starttls,
        "security": "starttls",
        "username": USER,
        "password": PASSWORD,
        "from_address": "robot@example.com",
        "from_name": "Acme Robot",
        **changes,
    }


async def _connected(
    api: AsyncTestClient[Any], smtp: SmtpServers, prefix: str = "mail", **changes: Any
) -> tuple[dict[str, Any], uuid.UUID]:
    tenant = await tenant_with(api, "email", prefix)
    made = await make_connection(api, tenant, "email.smtp", _creds(smtp, **changes))
    return tenant, uuid.UUID(made["id"])


async def _check(api: AsyncTestClient[Any], tenant: dict[str, Any], connection: uuid.UUID) -> dict[str, Any]:
    response = await api.post(f"/api/connections/{connection}/test", headers=tenant["h"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _fields(result: dict[str, Any]) -> list[str]:
    return [error["field"].rsplit(".", 1)[-1] for error in result["error"]["errors"]]


async def test_check_logs_in_over_starttls_and_tls_and_names_what_failed(
    api: AsyncTestClient[Any], smtp: SmtpServers
) -> None:
    tenant, good = await _connected(api, smtp)
    assert (await _check(api, tenant, good))["ok"] is True
    tls = await make_connection(api, tenant, "email.smtp", _creds(smtp, port=smtp.tls, security="tls"), name="tls")
    assert (await _check(api, tenant, uuid.UUID(tls["id"])))["ok"] is True

    wrong = await make_connection(api, tenant, "email.smtp", _creds(smtp, password="wrong"), name="wrong")
    failed = await _check(api, tenant, uuid.UUID(wrong["id"]))
    assert failed["ok"] is False and _fields(failed) == ["password"]
    assert "refused the username or password" in failed["error"]["detail"] and "wrong" not in failed["error"]["detail"]

    # The STARTTLS server refuses AUTH before TLS: a plain session cannot log in there.
    plain = await make_connection(api, tenant, "email.smtp", _creds(smtp, security="none"), name="plain")
    refused = await _check(api, tenant, uuid.UUID(plain["id"]))
    assert refused["ok"] is False and _fields(refused) == ["username"]

    closed = await make_connection(api, tenant, "email.smtp", _creds(smtp, port=1), name="closed")
    unreachable = await _check(api, tenant, uuid.UUID(closed["id"]))
    assert unreachable["ok"] is False and _fields(unreachable) == ["host"]

    private = await make_connection(api, tenant, "email.smtp", _creds(smtp, host="10.1.2.3"), name="private")
    judged = await _check(api, tenant, uuid.UUID(private["id"]))
    assert judged["ok"] is False and _fields(judged) == ["host"] and "not a public address" in judged["error"]["detail"]


async def test_check_refuses_a_certificate_nobody_vouches_for(
    api: AsyncTestClient[Any], smtp: SmtpServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, connection = await _connected(api, smtp)
    monkeypatch.delenv("SSL_CERT_FILE")  # the system's CAs only
    failed = await _check(api, tenant, connection)
    assert failed["ok"] is False and _fields(failed) == ["security"]
    assert "certificate" in failed["error"]["detail"].lower()


async def test_send_with_cc_bcc_html_attachment_and_reply_to(
    api: AsyncTestClient[Any], smtp: SmtpServers, email_settings: Settings
) -> None:
    tenant, connection = await _connected(api, smtp)
    report = b"%PDF-1.4 quarterly numbers\x00\x01"
    config = SendEmailConfig(
        connection=connection,
        to=["ada@example.com"],
        cc=["grace@example.com"],
        bcc=["audit@example.com"],
        subject="Quarterly report: 12% up",
        text="Numbers attached.",
        html="<p>Numbers <b>attached</b>.</p>",
        reply_to="sales@example.com",
        attachments=[
            Attachment(
                filename="report.pdf", content_base64=base64.b64encode(report).decode(), content_type="application/pdf"
            )
        ],
    )
    assert SEND is not None
    received = len(smtp.inbox.envelopes)
    async with open_services(email_settings, "email") as services:
        ctx = node_context(services, tenant["uuid"])
        sent = await SEND(ctx, config)
        again = await SEND(ctx, config)  # a retried step: the same Message-ID
    assert sent.accepted == ["ada@example.com", "grace@example.com", "audit@example.com"] and sent.refused == {}
    assert again.message_id == sent.message_id and sent.message_id.endswith("@example.com>")

    envelope = smtp.inbox.envelopes[received]
    assert envelope.mail_from == "robot@example.com"
    assert envelope.rcpt_tos == ["ada@example.com", "grace@example.com", "audit@example.com"]
    assert isinstance(envelope.content, bytes)
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["From"] == "Acme Robot <robot@example.com>" and message["To"] == "ada@example.com"
    assert message["Cc"] == "grace@example.com" and message["Bcc"] is None
    assert message["Reply-To"] == "sales@example.com" and message["Subject"] == "Quarterly report: 12% up"
    assert message["Message-ID"] == sent.message_id
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and text.get_content().strip() == "Numbers attached."
    assert html is not None and "<b>attached</b>" in html.get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "report.pdf" and attachment.get_content_type() == "application/pdf"
    assert attachment.get_payload(decode=True) == report


async def test_send_over_tls_from_the_start(
    api: AsyncTestClient[Any], smtp: SmtpServers, email_settings: Settings
) -> None:
    tenant, connection = await _connected(api, smtp, port=smtp.tls, security="tls")
    assert SEND is not None
    async with open_services(email_settings, "email") as services:
        sent = await SEND(
            node_context(services, tenant["uuid"]),
            SendEmailConfig(connection=connection, to=["ada@example.com"], subject="html only", html="<h1>Hi</h1>"),
        )
    assert sent.accepted == ["ada@example.com"]
    message = email.message_from_bytes(smtp.inbox.envelopes[-1].content, policy=email.policy.default)  # type: ignore[arg-type]
    assert message["Message-ID"] == sent.message_id and message.get_content_type() == "text/html"


async def test_bad_attachments_and_empty_bodies_are_refused_naming_the_field(
    api: AsyncTestClient[Any], smtp: SmtpServers, email_settings: Settings
) -> None:
    tenant, connection = await _connected(api, smtp)
    assert SEND is not None
    big = base64.b64encode(b"x" * (MAX_ATTACHMENT_BYTES // 2 + 1)).decode()
    cases = {
        "attachments[1]": [
            Attachment(filename="a.bin", content_base64=big),
            Attachment(filename="b.bin", content_base64=big),
        ],
        "attachments[0].content_base64": [Attachment(filename="a.bin", content_base64="not base64!")],
    }
    received = len(smtp.inbox.envelopes)
    async with open_services(email_settings, "email") as services:
        ctx = node_context(services, tenant["uuid"])
        for field, attachments in cases.items():
            with pytest.raises(sdk.Unprocessable) as refused:
                await SEND(
                    ctx,
                    SendEmailConfig(
                        connection=connection, to=["a@example.com"], subject="s", text="t", attachments=attachments
                    ),
                )
            assert refused.value.errors[0].field == field
        with pytest.raises(sdk.Unprocessable) as empty:
            await SEND(ctx, SendEmailConfig(connection=connection, to=["a@example.com"], subject="s"))
        assert empty.value.errors[0].field == "text"
    assert len(smtp.inbox.envelopes) == received


async def test_another_tenants_connection_cannot_be_used_and_private_relays_are_refused(
    api: AsyncTestClient[Any], smtp: SmtpServers, email_settings: Settings
) -> None:
    _, theirs = await _connected(api, smtp, "mail-a")
    other = await tenant_with(api, "email", "mail-b")
    assert (await api.post(f"/api/connections/{theirs}/test", headers=other["h"])).status_code == 404
    assert SEND is not None
    config = SendEmailConfig(connection=theirs, to=["a@example.com"], subject="s", text="t")
    received = len(smtp.inbox.envelopes)
    async with open_services(email_settings, "email") as services:
        with pytest.raises(sdk.NotFound):
            await SEND(node_context(services, other["uuid"]), config)
        tenant, mine = await _connected(api, smtp, "mail-c")
        services.http = sdk.EgressClient()  # without the operator's allowlist: no 127.0.0.1
        with pytest.raises(sdk.EgressRefused) as refused:
            await SEND(
                node_context(services, tenant["uuid"]),
                SendEmailConfig(connection=mine, to=["a@example.com"], subject="s", text="t"),
            )
        assert refused.value.errors[0].field == "host"
    assert len(smtp.inbox.envelopes) == received
