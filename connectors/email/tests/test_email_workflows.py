"""E-mail end to end: a published workflow, run by the platform's real job worker, sends through
the local aiosmtpd servers (STARTTLS with a login, and TLS from the first byte) a message whose
subject, bodies and attachment come from the workflow's expressions; what the server received is
parsed and checked. A wrong password fails the connection test and the step, naming the cause; a
tenant cannot send through another tenant's connection."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from connectors.conftest import (
    finished_run,
    make_connection,
    publish_workflow,
    refused_workflow,
    start_run,
    step,
    steps_of,
    tenant_with,
    workflow_settings,
)
from connectors.email.tests.smtp_servers import PASSWORD, USER, Arrival, SmtpServers
from kernel.testing import Settings, TestWorker, open_client, running_worker


@pytest.fixture(scope="module")
async def settings(
    businessos_servers: tuple[str, str], businessos_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return await workflow_settings(
        businessos_servers, businessos_database_url, Path(tmp_path_factory.mktemp("email-wf")), "email"
    )


@pytest.fixture(scope="module")
async def api(settings: Settings, smtp: SmtpServers) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(settings) as client:
        yield client


@pytest.fixture(scope="module")
async def worker(settings: Settings, smtp: SmtpServers) -> AsyncIterator[TestWorker]:
    async with running_worker(settings) as running:
        yield running


def _creds(smtp: SmtpServers, **changes: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": smtp.starttls,
        "security": "starttls",
        "username": USER,
        "password": PASSWORD,
        "from_address": "billing@example.com",
        "from_name": "Acme Billing",
        **changes,
    }


async def _tenant(
    api: AsyncTestClient[Any], smtp: SmtpServers, prefix: str, **changes: Any
) -> tuple[dict[str, Any], str]:
    tenant = await tenant_with(api, "email", prefix, "workflows")
    made = await make_connection(api, tenant, "email.smtp", _creds(smtp, **changes))
    return tenant, str(made["id"])


def _arrival(smtp: SmtpServers, message_id: str) -> tuple[Arrival, EmailMessage]:
    """The one message the servers received with this ``Message-ID``, parsed."""
    found = []
    for arrival in smtp.inbox.arrivals:
        assert isinstance(arrival.envelope.content, bytes)
        message = email.message_from_bytes(arrival.envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if message["Message-ID"] == message_id:
            found.append((arrival, message))
    assert len(found) == 1, found
    return found[0]


async def test_a_published_workflow_sends_over_starttls_and_tls_with_expressions_html_text_and_attachment(
    api: AsyncTestClient[Any], smtp: SmtpServers, worker: TestWorker
) -> None:
    tenant, starttls = await _tenant(api, smtp, "mail-wf")
    made = await make_connection(api, tenant, "email.smtp", _creds(smtp, port=smtp.tls, security="tls"), name="tls")
    tls = str(made["id"])
    invoice = b"Invoice 2026-117\nTotal: 1,250.00 EUR\n\x00binary tail"
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"),
        step(
            "invoice", "email.send", connection=starttls, to=["{{ trigger.email }}"], cc=["accounts@example.com"],
            subject="Invoice {{ trigger.number }} for {{ trigger.name }}",
            text="Dear {{ trigger.name }},\nyour invoice {{ trigger.number }} is attached.",
            html="<p>Dear <b>{{ trigger.name }}</b>, invoice {{ trigger.number }} is attached.</p>",
            attachments=[{
                "filename": "invoice-{{ trigger.number }}.txt", "content_type": "text/plain",
                "content_base64": "{{ trigger.attachment }}",
            }],
        ),
        step(
            "copy", "email.send", connection=tls, to=["archive@example.com"],
            subject="Sent {{ steps.invoice.output.message_id }}", html="<p>{{ steps.invoice.output.accepted }}</p>",
        ),
    ])
    payload = {"email": "ada@example.com", "name": "Ada Lovelace", "number": 117,
               "attachment": base64.b64encode(invoice).decode()}
    detail = await finished_run(api, tenant, await start_run(api, tenant, workflow, payload))
    assert detail["execution"]["status"] == "succeeded", detail
    steps = steps_of(detail)

    sent = steps["invoice"]["output"]
    assert sent["accepted"] == ["ada@example.com", "accounts@example.com"] and sent["refused"] == {}
    arrival, message = _arrival(smtp, sent["message_id"])
    assert (arrival.port, arrival.encrypted, arrival.authenticated) == (smtp.starttls, True, True)
    assert arrival.envelope.mail_from == "billing@example.com"
    assert arrival.envelope.rcpt_tos == ["ada@example.com", "accounts@example.com"]
    assert message["From"] == "Acme Billing <billing@example.com>" and message["To"] == "ada@example.com"
    assert message["Subject"] == "Invoice 117 for Ada Lovelace"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == "Dear Ada Lovelace,\nyour invoice 117 is attached.\n"
    assert html is not None and "<p>Dear <b>Ada Lovelace</b>, invoice 117 is attached.</p>" in html.get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "invoice-117.txt" and attachment.get_content_type() == "text/plain"
    assert attachment.get_payload(decode=True) == invoice

    copy = steps["copy"]["output"]
    arrival, message = _arrival(smtp, copy["message_id"])
    assert (arrival.port, arrival.encrypted, arrival.authenticated) == (smtp.tls, True, True)
    assert message["Subject"] == f"Sent {sent['message_id']}" and message.get_content_type() == "text/html"
    assert copy["message_id"] != sent["message_id"]  # one Message-ID per step


async def test_a_line_break_from_the_trigger_cannot_inject_headers(
    api: AsyncTestClient[Any], smtp: SmtpServers, worker: TestWorker
) -> None:
    tenant, connection = await _tenant(api, smtp, "mail-inj")
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"),
        step("send", "email.send", connection=connection, to=["ada@example.com"],
             subject="Re: {{ trigger.topic }}", text="t"),
    ])
    received = len(smtp.inbox.arrivals)
    topic = "hello\r\nBcc: victim@example.com"
    detail = await finished_run(api, tenant, await start_run(api, tenant, workflow, {"topic": topic}))
    assert detail["execution"]["status"] == "failed"
    error = steps_of(detail)["send"]["error"]
    assert error["status"] == 422 and "subject" in error["message"], error
    assert len(smtp.inbox.arrivals) == received


async def test_a_wrong_password_fails_the_connection_test_and_the_step_naming_it(
    api: AsyncTestClient[Any], smtp: SmtpServers, worker: TestWorker
) -> None:
    tenant, wrong = await _tenant(api, smtp, "mail-pw", password="not the password")
    tested = await api.post(f"/api/connections/{wrong}/test", headers=tenant["h"])
    assert tested.status_code == 200, tested.text
    result = tested.json()
    assert result["ok"] is False
    assert result["error"]["detail"] == "SMTP: the relay refused the username or password (535)"
    assert [e["field"].rsplit(".", 1)[-1] for e in result["error"]["errors"]] == ["password"]
    assert "not the password" not in tested.text

    received = len(smtp.inbox.arrivals)
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"),
        step("send", "email.send", connection=wrong, to=["ada@example.com"], subject="s", text="t"),
    ])
    detail = await finished_run(api, tenant, await start_run(api, tenant, workflow))
    assert detail["execution"]["status"] == "failed"
    error = steps_of(detail)["send"]["error"]
    assert error["status"] == 422 and error["transient"] is False
    assert error["message"] == "SMTP: the relay refused the username or password (535)"
    assert len(smtp.inbox.arrivals) == received


async def test_an_unreachable_relay_fails_the_test_naming_host_and_the_step_transiently(
    api: AsyncTestClient[Any], smtp: SmtpServers, worker: TestWorker
) -> None:
    tenant, closed = await _tenant(api, smtp, "mail-down", port=1)
    result = (await api.post(f"/api/connections/{closed}/test", headers=tenant["h"])).json()
    assert result["ok"] is False and result["error"]["status"] == 502
    assert result["error"]["detail"].startswith("SMTP: cannot connect to 127.0.0.1:1")
    assert [e["field"].rsplit(".", 1)[-1] for e in result["error"]["errors"]] == ["host"]

    sending = step("send", "email.send", connection=closed, to=["ada@example.com"], subject="s", text="t")
    workflow = await publish_workflow(api, tenant, [
        step("start", "workflows.manual"), {**sending, "retry": {"attempts": 2, "backoff_seconds": 0}},
    ])
    detail = await finished_run(api, tenant, await start_run(api, tenant, workflow))
    assert detail["execution"]["status"] == "failed"
    sent = steps_of(detail)["send"]
    assert sent["attempts"] == 2 and sent["error"]["status"] == 502 and sent["error"]["transient"] is True, sent


async def test_another_tenants_connection_cannot_be_read_tested_or_used(
    api: AsyncTestClient[Any], smtp: SmtpServers, worker: TestWorker
) -> None:
    owner, connection = await _tenant(api, smtp, "mail-a")
    intruder, _ = await _tenant(api, smtp, "mail-b")
    assert (await api.get(f"/api/connections/{connection}", headers=intruder["h"])).status_code == 404
    assert (await api.post(f"/api/connections/{connection}/test", headers=intruder["h"])).status_code == 404
    received = len(smtp.inbox.arrivals)
    # Saving a workflow that names another tenant's connection is refused, naming the field.
    assert await refused_workflow(api, intruder, [
        step("start", "workflows.manual"),
        step("send", "email.send", connection=connection, to=["ada@example.com"], subject="s", text="t"),
    ]) == ["nodes.send.config.connection"]
    assert len(smtp.inbox.arrivals) == received
    assert (await api.post(f"/api/connections/{connection}/test", headers=owner["h"])).json()["ok"] is True
