"""Fixtures shared by the e-mail connector's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.email.tests.smtp_servers import SmtpServers, running_smtp


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServers]:
    """The local SMTP servers, with their CA trusted the way an operator adds one (``SSL_CERT_FILE``)."""
    with running_smtp(tmp_path_factory.mktemp("smtp")) as servers, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(servers.ca))
        yield servers
