"""The BusinessOS test kit runs a platform with this plugin installed (``pip install .`` first)."""

from __future__ import annotations

import pytest

pytest_plugins = ["kernel.testing"]


@pytest.fixture(scope="session")
def businessos_plugins() -> frozenset[str]:
    """Load only this plugin, whatever else is installed."""
    return frozenset({"hello"})
