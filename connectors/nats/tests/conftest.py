"""Fixtures shared by the NATS connector's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.nats.consumers import REFRESH_VARIABLE
from connectors.nats.tests.nats_server import NatsServer, running_nats


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real ``nats-server -js`` from the wheel, for this module."""
    with running_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="module")
def quick_refresh() -> Iterator[None]:
    """Consumers follow settings changes within moments (the default is every 30 s)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(REFRESH_VARIABLE, "0.1")
        yield
