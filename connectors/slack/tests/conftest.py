"""Fixtures shared by the Slack connector's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.slack.credentials import API_URL_VARIABLE
from connectors.slack.tests.fake_slack import FakeSlack, running_slack


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSlack]:
    """The fake Web API, set as the operator's Slack API URL for this module."""
    with running_slack() as slack, pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_URL_VARIABLE, slack.url)
        yield slack
