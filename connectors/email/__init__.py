"""E-mail connector: send mail through a tenant's SMTP relay.

A plugin of its own (entry point ``email``), built only on ``kernel.sdk``; see README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.email.credentials import CREDENTIALS
from connectors.email.nodes import NODES
from kernel import sdk

manifest = sdk.Manifest(
    name="email",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="E-mail (SMTP)",
    description="Send e-mail from workflows through an SMTP relay (STARTTLS or TLS, login, HTML, attachments).",
)


@sdk.hookimpl
def businessos_credentials() -> Sequence[sdk.CredentialType]:
    return [CREDENTIALS]


@sdk.hookimpl
def businessos_workflow_nodes() -> Sequence[sdk.NodeSpec]:
    return NODES
