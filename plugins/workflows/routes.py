"""HTTP routes under ``/api/workflows``: definitions, versions, runs, approvals.

Lists answer ``{"<things>": [...], "pagination": {...}}`` (``limit`` above 100: 422). A draft
carries an ``ETag`` (its edit version); PATCH needs ``If-Match`` or ``version``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from litestar import Request, Response, delete, get, patch, post, put

from kernel import sdk
from plugins.workflows import schemas as s
from plugins.workflows import service
from plugins.workflows.engine import Engine

__all__ = ["ROUTES"]

_TAGS = ["workflows"]


def _log(services: sdk.Services, request: Request[Any, Any, Any], tenant: sdk.Tenant) -> sdk.ChangeLog:
    return services.changes.by(sdk.Actor.of_request(request), tenant.id)


def _tagged(body: s.WorkflowOut, status: int = 200) -> Response[s.WorkflowOut]:
    return Response(content=body, status_code=status, headers={"ETag": sdk.etag(body.version)})


# ---- definitions -------------------------------------------------------------------------------


@get("/api/workflows", opt={"permission": "workflows.definitions.read"}, tags=_TAGS)
async def list_workflows(
    tenant: sdk.Tenant, services: sdk.Services, page: int = 1, limit: int = service.DEFAULT_LIMIT,
    sort: str = "-created_at", q: str | None = None, active: bool | None = None,
) -> s.WorkflowPage:
    """Workflows (drafts with their published version's number), newest first by default; ``sort``
    is ``created_at``, ``-created_at``, ``name`` or ``-updated_at``; ``q`` matches names."""
    async with services.data.tenant(tenant.id) as session:
        rows, total = await service.list_workflows(session, page=page, limit=limit, sort=sort, q=q, active=active)
    return s.WorkflowPage(workflows=rows, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/workflows", opt={"permission": "workflows.definitions.write"}, tags=_TAGS)
async def create_workflow(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.WorkflowIn
) -> Response[s.WorkflowOut]:
    """Create a draft; a graph with nodes is validated (422 naming the node and field)."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.create_workflow(services, session, _log(services, request, tenant), data)
    return _tagged(out, 201)


@post("/api/workflows/import", opt={"permission": "workflows.definitions.write"}, tags=_TAGS)
async def import_workflow(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.ExportDoc
) -> Response[s.WorkflowOut]:
    """Create a draft from an exported document (``GET /api/workflows/{id}/export``)."""
    draft = s.WorkflowIn(name=data.name, description=data.description, graph=data.graph, settings=data.settings)
    async with services.data.tenant(tenant.id) as session:
        out = await service.create_workflow(services, session, _log(services, request, tenant), draft)
    return _tagged(out, 201)


@get("/api/workflows/{workflow_id:uuid}", opt={"permission": "workflows.definitions.read"}, tags=_TAGS)
async def get_workflow(tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID) -> Response[s.WorkflowOut]:
    async with services.data.tenant(tenant.id) as session:
        return _tagged(await service.get_workflow(session, workflow_id))


@patch("/api/workflows/{workflow_id:uuid}", opt={"permission": "workflows.definitions.write"}, tags=_TAGS)
async def update_workflow(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID,
    data: s.WorkflowPatch,
) -> Response[s.WorkflowOut]:
    """Change the draft (published versions never change). Needs ``If-Match`` or ``version``."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.update_workflow(
            services, session, _log(services, request, tenant), workflow_id, data,
            sdk.parse_if_match(request.headers.get("if-match")),
        )
    return _tagged(out)


@delete("/api/workflows/{workflow_id:uuid}", opt={"permission": "workflows.definitions.write"}, tags=_TAGS)
async def delete_workflow(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID
) -> None:
    """Delete a workflow with its versions and run history; its webhook URL stops answering."""
    actor = sdk.Actor.of_request(request)
    async with services.data.tenant(tenant.id) as session:
        endpoint = await service.delete_workflow(session, services.changes.by(actor, tenant.id), workflow_id)
    if endpoint is not None:
        await services.webhooks.revoke(tenant.id, endpoint, actor=actor)


@post("/api/workflows/{workflow_id:uuid}/publish", opt={"permission": "workflows.definitions.write"}, tags=_TAGS,
      status_code=201)
async def publish_workflow(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID
) -> s.VersionOut:
    """Freeze the draft as the next version; runs started from now on use it (running ones keep
    theirs). The version runs as the publisher (or ``settings.run_as``)."""
    async with services.data.tenant(tenant.id) as session:
        return await service.publish(services, session, _log(services, request, tenant), workflow_id)


@get("/api/workflows/{workflow_id:uuid}/versions", opt={"permission": "workflows.definitions.read"}, tags=_TAGS)
async def list_versions(
    tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID, page: int = 1, limit: int = 25
) -> s.VersionPage:
    async with services.data.tenant(tenant.id) as session:
        rows, total = await service.list_versions(session, workflow_id, page=page, limit=limit)
    return s.VersionPage(versions=rows, pagination=sdk.Pagination.of(page, limit, total))


@get("/api/workflows/{workflow_id:uuid}/versions/{number:int}", opt={"permission": "workflows.definitions.read"},
     tags=_TAGS)
async def get_version(tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID, number: int) -> s.VersionOut:
    async with services.data.tenant(tenant.id) as session:
        return await service.get_version(session, workflow_id, number)


@get("/api/workflows/{workflow_id:uuid}/export", opt={"permission": "workflows.definitions.read"}, tags=_TAGS)
async def export_workflow(tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID) -> s.ExportDoc:
    """The draft as a portable JSON document."""
    async with services.data.tenant(tenant.id) as session:
        return await service.export_workflow(session, workflow_id)


@post("/api/workflows/{workflow_id:uuid}/webhook", opt={"permission": "workflows.definitions.write"}, tags=_TAGS,
      status_code=201)
async def create_webhook(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID
) -> s.WebhookOut:
    """Give the workflow a secret webhook URL (or a new one: the old stops working at once); the
    path is shown only in this answer."""
    actor = sdk.Actor.of_request(request)
    async with services.data.tenant(tenant.id) as session:
        current = (await service.get_workflow(session, workflow_id)).webhook_endpoint_id
    if current is not None:
        created = await services.webhooks.rotate(tenant.id, current, actor=actor)
    else:
        created = await services.webhooks.create(tenant.id, "trigger", actor=actor)
        try:
            async with services.data.tenant(tenant.id) as session:
                await service.attach_webhook(session, workflow_id, created.id)
        except BaseException:
            await services.webhooks.revoke(tenant.id, created.id, actor=actor)
            raise
    return s.WebhookOut(endpoint_id=created.id, path=created.path)


@put("/api/workflows/secrets/{name:str}", opt={"permission": "workflows.definitions.write"}, tags=_TAGS,
     status_code=204)
async def store_secret(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, name: str, data: s.SecretIn
) -> None:
    """Store (or replace) a signing key that webhook triggers name as ``secret``; write-only,
    audited by name."""
    await services.vault.put(tenant.id, name, data.value, actor=sdk.Actor.of_request(request))


# ---- runs --------------------------------------------------------------------------------------


@post("/api/workflows/{workflow_id:uuid}/run", opt={"permission": "workflows.executions.write"}, tags=_TAGS,
      status_code=202)
async def run_workflow(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, workflow_id: uuid.UUID,
    data: s.RunIn,
) -> s.RunOut:
    """Start a run now with ``input`` as the trigger's payload (the published version, or
    ``version``). 402 naming the limit when the plan's monthly runs are spent."""
    engine = Engine(services)
    log = _log(services, request, tenant)
    async with services.data.tenant(tenant.id) as session:
        execution_id = await engine.start(
            session, tenant_id=tenant.id, workflow_id=workflow_id, trigger_kind="manual", payload=data.input,
            started_by=log.name, version_number=data.version,
        )
        assert execution_id is not None
        await log.audit(session, action="workflows.execution.run", resource_type="workflows.execution",
                        resource_id=execution_id, details={"workflow_id": str(workflow_id)})
    await engine.wake()
    return s.RunOut(execution_id=execution_id, status="queued")


@get("/api/workflows/executions", opt={"permission": "workflows.executions.read"}, tags=_TAGS)
async def list_executions(
    tenant: sdk.Tenant, services: sdk.Services, page: int = 1, limit: int = service.DEFAULT_LIMIT,
    sort: str = "-created_at", workflow_id: uuid.UUID | None = None, version: int | None = None,
    status: str | None = None, trigger_kind: str | None = None, created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> s.ExecutionPage:
    """Runs, newest first; filters by workflow, version, status, trigger kind and creation time."""
    async with services.data.tenant(tenant.id) as session:
        rows, total = await service.list_executions(
            session, page=page, limit=limit, sort=sort, workflow_id=workflow_id, version=version, status=status,
            trigger_kind=trigger_kind, created_after=created_after, created_before=created_before,
        )
    return s.ExecutionPage(executions=rows, pagination=sdk.Pagination.of(page, limit, total))


@get("/api/workflows/executions/{execution_id:uuid}", opt={"permission": "workflows.executions.read"}, tags=_TAGS)
async def get_execution(tenant: sdk.Tenant, services: sdk.Services, execution_id: uuid.UUID) -> s.ExecutionDetail:
    """A run with every step's input, output, error, attempts and timings."""
    async with services.data.tenant(tenant.id) as session:
        return await service.execution_detail(session, execution_id)


@post("/api/workflows/executions/{execution_id:uuid}/cancel", opt={"permission": "workflows.executions.write"},
      tags=_TAGS, status_code=200)
async def cancel_execution(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, execution_id: uuid.UUID
) -> s.ExecutionOut:
    """Cancel a queued, waiting or running run (a running step is cancelled); finished: 409."""
    engine = Engine(services)
    async with services.data.tenant(tenant.id) as session:
        out = await service.cancel(engine, session, _log(services, request, tenant), execution_id)
    if out.parent_execution_id is not None:
        await engine.wake()  # its parent's step failed and the parent is queued again
    return out


@post("/api/workflows/executions/{execution_id:uuid}/retry", opt={"permission": "workflows.executions.write"},
      tags=_TAGS, status_code=202)
async def retry_execution(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, execution_id: uuid.UUID,
    data: s.RetryIn,
) -> s.RunOut:
    """Run a failed run again from its failed step, on its version (``pinned``) or the current."""
    engine = Engine(services)
    async with services.data.tenant(tenant.id) as session:
        out = await service.retry(engine, session, _log(services, request, tenant), execution_id, data.version)
    await engine.wake()
    return out


@post("/api/workflows/executions/retry", opt={"permission": "workflows.executions.write"}, tags=_TAGS,
      status_code=202)
async def bulk_retry(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, data: s.BulkRetryIn
) -> s.BulkRetryOut:
    """Retry failed runs: those of ``ids``, or every failed run of ``workflow_id`` (at most 500)."""
    if data.ids is None and data.workflow_id is None:
        raise sdk.Unprocessable("name the runs", errors=[sdk.FieldError("ids", "give ids or workflow_id")])
    engine = Engine(services)
    log = _log(services, request, tenant)
    async with services.data.tenant(tenant.id) as session:
        ids = await service.failed_ids(session, data.ids, data.workflow_id)
        retried = [await service.retry(engine, session, log, i, data.version) for i in ids]
    await engine.wake()
    return s.BulkRetryOut(retried=retried)


# ---- approvals ---------------------------------------------------------------------------------


@get("/api/workflows/approvals", opt={"permission": "workflows.executions.read"}, tags=_TAGS)
async def list_approvals(
    tenant: sdk.Tenant, services: sdk.Services, page: int = 1, limit: int = service.DEFAULT_LIMIT,
    status: str | None = None,
) -> s.ApprovalPage:
    """Approvals, newest first (``status=pending`` for those awaiting a decision)."""
    async with services.data.tenant(tenant.id) as session:
        rows, total = await service.list_approvals(session, page=page, limit=limit, status=status)
    return s.ApprovalPage(approvals=rows, pagination=sdk.Pagination.of(page, limit, total))


@post("/api/workflows/approvals/{approval_id:uuid}/decide", opt={"permission": "workflows.approvals.decide"},
      tags=_TAGS, status_code=200)
async def decide_approval(
    request: Request[Any, Any, Any], tenant: sdk.Tenant, services: sdk.Services, approval_id: uuid.UUID,
    data: s.DecisionIn,
) -> s.ApprovalOut:
    """Approve or reject; the run goes on along ``approved`` or ``rejected``."""
    async with services.data.tenant(tenant.id) as session:
        out = await service.decide(session, _log(services, request, tenant), approval_id, data)
    await Engine(services).wake()
    return out


ROUTES = [
    list_workflows, create_workflow, import_workflow, get_workflow, update_workflow, delete_workflow,
    publish_workflow, list_versions, get_version, export_workflow, create_webhook, store_secret, run_workflow,
    list_executions, get_execution, cancel_execution, retry_execution, bulk_retry, list_approvals,
    decide_approval,
]
