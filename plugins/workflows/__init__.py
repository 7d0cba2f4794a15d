"""workflows: definitions with published versions, a durable engine, triggers and history.

Routes under ``/api/workflows``; tables ``workflows_*``; events ``workflows.execution.*``. The
nodes of every plugin a tenant enabled are its building blocks (``GET /api/workflows/nodes``).
It imports nothing from the kernel but ``kernel.sdk``.
"""

from __future__ import annotations

from kernel import sdk

manifest = sdk.Manifest(
    name="workflows",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Workflows",
    description="Automations built from the nodes of every enabled module: triggers, steps, approvals, history.",
)
