"""The ``http`` connector: call any HTTP API from a workflow (``http.request``), authenticated by a
connection (bearer token, basic, API key, OAuth 2.0). Registered through the ``businessos.plugins``
entry point ``http = "connectors.http"`` like any third-party connector; see README.md."""

from __future__ import annotations

from collections.abc import Sequence

from kernel import sdk

from .credentials import TYPES
from .nodes import NODES

manifest = sdk.Manifest(
    name="http",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="HTTP",
    description="HTTP requests from workflows, with connections for bearer, basic, API-key and OAuth 2.0 auth",
)


@sdk.hookimpl
def businessos_workflow_nodes() -> Sequence[sdk.NodeSpec]:
    return NODES


@sdk.hookimpl
def businessos_credentials() -> Sequence[sdk.CredentialType]:
    return TYPES
