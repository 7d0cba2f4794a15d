"""Request and response bodies of ``/api/workflows`` (msgspec Structs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from kernel import sdk
from plugins.workflows.graph import Graph, WorkflowSettings

__all__ = [
    "ApprovalOut",
    "ApprovalPage",
    "BulkRetryIn",
    "BulkRetryOut",
    "DecisionIn",
    "ExecutionDetail",
    "ExecutionOut",
    "ExecutionPage",
    "ExportDoc",
    "RetryIn",
    "RunIn",
    "RunOut",
    "StepOut",
    "VersionOut",
    "VersionPage",
    "WebhookOut",
    "WorkflowIn",
    "WorkflowOut",
    "WorkflowPage",
    "WorkflowPatch",
    "WorkflowSummary",
]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=5000)]
EXPORT_FORMAT: Literal["businessos.workflow/1"] = "businessos.workflow/1"


class WorkflowIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    description: Description = ""
    graph: Graph = msgspec.field(default_factory=Graph)
    settings: WorkflowSettings = msgspec.field(default_factory=WorkflowSettings)
    active: bool = True


class WorkflowPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name | None = None
    description: Description | None = None
    graph: Graph | None = None
    settings: WorkflowSettings | None = None
    active: bool | None = None
    version: int | None = None
    """The draft's version the change was made against (or send ``If-Match``)."""


class WorkflowSummary(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    description: str
    version: int
    published_version: int | None
    active: bool
    created_at: datetime
    updated_at: datetime


class WorkflowOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    description: str
    graph: Graph
    settings: WorkflowSettings
    version: int
    published_version: int | None
    active: bool
    webhook_endpoint_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class WorkflowPage(msgspec.Struct, frozen=True):
    workflows: list[WorkflowSummary]
    pagination: sdk.Pagination


class VersionOut(msgspec.Struct, frozen=True):
    workflow_id: uuid.UUID
    number: int
    graph: Graph
    settings: WorkflowSettings
    trigger_key: str
    published_by: str | None
    created_at: datetime


class VersionPage(msgspec.Struct, frozen=True):
    versions: list[VersionOut]
    pagination: sdk.Pagination


class ExportDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A workflow as a portable JSON document (``GET .../export``, ``POST /api/workflows/import``)."""

    name: Name
    format: Literal["businessos.workflow/1"] = EXPORT_FORMAT
    description: Description = ""
    graph: Graph = msgspec.field(default_factory=Graph)
    settings: WorkflowSettings = msgspec.field(default_factory=WorkflowSettings)


class RunIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: Any = msgspec.field(default_factory=dict)
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """A published version's number; the current one when omitted."""


class RunOut(msgspec.Struct, frozen=True):
    execution_id: uuid.UUID
    status: str


class ExecutionOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    workflow_id: uuid.UUID
    version: int
    status: str
    trigger_kind: str
    trigger: Any
    output: Any
    error: Any
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    due_at: datetime | None
    claims: int
    retry_of: uuid.UUID | None
    parent_execution_id: uuid.UUID | None
    started_by: str | None


class StepOut(msgspec.Struct, frozen=True):
    node_id: str
    iteration: str
    node_key: str
    status: str
    ports: list[str]
    input: Any
    output: Any
    error: Any
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    wake_at: datetime | None
    duration_ms: float | None


class ExecutionDetail(msgspec.Struct, frozen=True):
    execution: ExecutionOut
    steps: list[StepOut]
    """In the order they started; at most 1,000 (``steps_total`` counts them all)."""
    steps_total: int


class ExecutionPage(msgspec.Struct, frozen=True):
    executions: list[ExecutionOut]
    pagination: sdk.Pagination


class RetryIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Literal["pinned", "current"] = "pinned"


class BulkRetryIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ids: Annotated[list[uuid.UUID], msgspec.Meta(max_length=500)] | None = None
    """These failed runs; or, without ``ids``, every failed run of ``workflow_id`` (at most 500)."""
    workflow_id: uuid.UUID | None = None
    version: Literal["pinned", "current"] = "pinned"


class BulkRetryOut(msgspec.Struct, frozen=True):
    retried: list[RunOut]


class ApprovalOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    execution_id: uuid.UUID
    workflow_id: uuid.UUID
    node_id: str
    status: str
    title: str
    details: Any
    expires_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    created_at: datetime


class ApprovalPage(msgspec.Struct, frozen=True):
    approvals: list[ApprovalOut]
    pagination: sdk.Pagination


class DecisionIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    decision: Literal["approve", "reject"]
    comment: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class WebhookOut(msgspec.Struct, frozen=True):
    endpoint_id: uuid.UUID
    path: str
    """``/hooks/workflows/<token>``: shown only now (``POST`` again to rotate)."""


class SecretIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    """A webhook trigger's signing key (``whsec_...`` for Standard Webhooks): stored sealed in the
    vault, never shown again."""
