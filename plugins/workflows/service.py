"""The workflows plugin's business rules: definitions, publishing, runs, approvals.

Functions take a tenant session (``services.data.tenant``) and, for changes, the
``sdk.ChangeLog`` of who acts; route handlers stay thin. Starting runs is the engine's
(:class:`plugins.workflows.engine.Engine`); this module decides *whether* and with which version.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
from cronsim import CronSimError
from sqlalchemy import and_, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.workflows import schemas as s
from plugins.workflows.engine import TERMINAL, Engine, PlanError, plan_of, resume_parent
from plugins.workflows.graph import Graph, WorkflowSettings
from plugins.workflows.models import Approval, Definition, Execution, ScheduleRow, Step, Version
from plugins.workflows.triggers import next_tick
from plugins.workflows.validation import validate

__all__ = [
    "catalogue",
    "check_graph",
    "create_workflow",
    "decide",
    "delete_workflow",
    "execution_detail",
    "export_workflow",
    "get_workflow",
    "list_approvals",
    "list_executions",
    "list_versions",
    "list_workflows",
    "publish",
    "retry",
    "update_workflow",
]

DEFAULT_LIMIT = 25
WORKFLOW_SORTS: dict[str, tuple[Any, ...]] = {
    "-created_at": (Definition.created_at.desc(), Definition.id.desc()),
    "created_at": (Definition.created_at.asc(), Definition.id.asc()),
    "name": (Definition.name.asc(), Definition.id.asc()),
    "-updated_at": (Definition.updated_at.desc(), Definition.id.desc()),
}
EXECUTION_SORTS: dict[str, tuple[Any, ...]] = {
    "-created_at": (Execution.created_at.desc(), Execution.id.desc()),
    "created_at": (Execution.created_at.asc(), Execution.id.asc()),
}
STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")


async def catalogue(services: sdk.Services, tenant_id: uuid.UUID) -> dict[str, sdk.CatalogueNode]:
    """The nodes the tenant may use (those of the plugins it enabled), by key."""
    return {node.key: node for node in await services.nodes.catalogue(tenant_id)}


async def check_graph(
    services: sdk.Services, tenant_id: uuid.UUID, graph: Graph, settings: WorkflowSettings, *, full: bool
) -> sdk.CatalogueNode | None:
    """422 naming each bad node and field (``validation.validate``); for a publish (``full``) also
    the run order and a schedule's cron. Returns the trigger's catalogue entry (``full``)."""
    nodes = await catalogue(services, tenant_id)
    errors = list(validate(graph, settings, nodes))
    errors += await connection_errors(services, tenant_id, graph, nodes)
    if full and not errors:
        try:
            plan = plan_of(graph, settings, {key for key, node in nodes.items() if node.kind == "trigger"})
        except PlanError as exc:
            errors.append(sdk.FieldError("graph", str(exc)))
        else:
            trigger = plan.trigger
            if trigger.node == "workflows.schedule":
                config = trigger.config
                try:
                    next_tick(str(config.get("cron", "")), str(config.get("timezone", "UTC")), sdk.utcnow())
                except (CronSimError, ValueError, KeyError, StopIteration) as exc:
                    errors.append(sdk.FieldError(f"nodes.{trigger.id}.config.cron", str(exc) or "invalid cron"))
            if not errors:
                return nodes[trigger.node]
    if errors:
        raise sdk.Unprocessable("the workflow is invalid", errors=errors)
    return None


async def connection_errors(
    services: sdk.Services, tenant_id: uuid.UUID, graph: Graph, nodes: Mapping[str, sdk.CatalogueNode]
) -> list[sdk.FieldError]:
    """A node config's literal ``connection`` (the connectors' convention) must be a connection of
    this tenant, of the node's own plugin. Another tenant's id reads as unknown. The step checks it
    again when it runs (``services.connections.open``); this only makes the mistake visible at save."""
    named: dict[str, tuple[uuid.UUID, str]] = {}
    for node in graph.nodes:
        value = node.config.get("connection")
        if isinstance(value, str) and node.node in nodes:
            with contextlib.suppress(ValueError):
                named[node.id] = (uuid.UUID(value), nodes[node.node].plugin)
    owners = await services.connections.plugins_of(tenant_id, {found for found, _ in named.values()})
    errors = []
    for node_id, (connection, plugin) in named.items():
        owner = owners.get(connection)
        if owner is None:
            errors.append(sdk.FieldError(f"nodes.{node_id}.config.connection", f"no connection {connection}"))
        elif owner != plugin:
            errors.append(sdk.FieldError(
                f"nodes.{node_id}.config.connection", f"connection {connection} is a {owner} connection, not {plugin}"
            ))
    return errors


def _out(row: Definition) -> s.WorkflowOut:
    return s.WorkflowOut(
        id=row.id, name=row.name, description=row.description, graph=msgspec.convert(row.graph, Graph),
        settings=msgspec.convert(row.settings, WorkflowSettings), version=row.version,
        published_version=row.published_version, active=row.active, webhook_endpoint_id=row.webhook_endpoint_id,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _summary(row: Definition) -> s.WorkflowSummary:
    return s.WorkflowSummary(
        id=row.id, name=row.name, description=row.description, version=row.version,
        published_version=row.published_version, active=row.active, created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _definition(session: AsyncSession, workflow_id: uuid.UUID, *, lock: bool = False) -> Definition:
    stmt = select(Definition).where(Definition.id == workflow_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.scalars(stmt)).first()
    if row is None:
        raise sdk.NotFound(f"workflow {workflow_id} not found")
    return row


async def list_workflows(
    session: AsyncSession, *, page: int, limit: int, sort: str, q: str | None, active: bool | None
) -> tuple[list[s.WorkflowSummary], int]:
    sdk.check_list(page, limit, sort, WORKFLOW_SORTS)
    stmt = select(Definition)
    if q:
        stmt = stmt.where(Definition.name.ilike(f"%{q.replace('%', '').replace('_', '')}%"))
    if active is not None:
        stmt = stmt.where(Definition.active.is_(active))
    rows, total = await sdk.list_and_count(session, stmt, WORKFLOW_SORTS[sort], page, limit)
    return [_summary(r) for r in rows], total


async def create_workflow(
    services: sdk.Services, session: AsyncSession, log: sdk.ChangeLog, data: s.WorkflowIn
) -> s.WorkflowOut:
    if data.graph.nodes:
        await check_graph(services, log.tenant_id, data.graph, data.settings, full=False)
    now = sdk.utcnow()
    row = Definition(
        tenant_id=log.tenant_id, id=sdk.uuid7(), name=data.name, description=data.description,
        graph=msgspec.to_builtins(data.graph), settings=msgspec.to_builtins(data.settings), version=1,
        active=data.active, created_at=now, updated_at=now,
    )
    session.add(row)
    await session.flush()
    out = _out(row)
    await log.record(session, "workflows.definition.created", row.id, after=_summary(row))
    return out


async def get_workflow(session: AsyncSession, workflow_id: uuid.UUID) -> s.WorkflowOut:
    return _out(await _definition(session, workflow_id))


async def update_workflow(
    services: sdk.Services, session: AsyncSession, log: sdk.ChangeLog, workflow_id: uuid.UUID,
    data: s.WorkflowPatch, if_match: int | None,
) -> s.WorkflowOut:
    row = await _definition(session, workflow_id, lock=True)
    sdk.check_version(row.version, if_match, data.version)
    before = _summary(row)
    graph = data.graph if data.graph is not None else msgspec.convert(row.graph, Graph)
    settings = data.settings if data.settings is not None else msgspec.convert(row.settings, WorkflowSettings)
    if (data.graph is not None or data.settings is not None) and graph.nodes:
        await check_graph(services, log.tenant_id, graph, settings, full=False)
    if data.name is not None:
        row.name = data.name
    if data.description is not None:
        row.description = data.description
    row.graph, row.settings = msgspec.to_builtins(graph), msgspec.to_builtins(settings)
    if data.active is not None and data.active != row.active:
        row.active = data.active
        if not data.active:
            await session.execute(delete(ScheduleRow).where(ScheduleRow.id == row.id))
        elif row.published_version is not None:
            await _schedule(session, log.tenant_id, row.id, row.published_version)
    row.version += 1
    row.updated_at = sdk.utcnow()
    await session.flush()
    await log.record(session, "workflows.definition.updated", row.id, before=before, after=_summary(row))
    return _out(row)


async def delete_workflow(session: AsyncSession, log: sdk.ChangeLog, workflow_id: uuid.UUID) -> uuid.UUID | None:
    """Delete a workflow with its versions and history; the webhook endpoint id to revoke."""
    row = await _definition(session, workflow_id, lock=True)
    before = _summary(row)
    endpoint = row.webhook_endpoint_id
    await session.delete(row)
    await log.record(session, "workflows.definition.deleted", workflow_id, before=before)
    return endpoint


async def _run_as(
    services: sdk.Services, tenant_id: uuid.UUID, principal: sdk.Principal | None, settings: WorkflowSettings
) -> dict[str, Any]:
    """Who the version's runs act as: its publisher, or the chosen API key (``settings.run_as``)
    with only the permissions both the key and the publisher hold, so that choosing a key never
    lets a workflow do more than the member who published it may."""
    if principal is None:
        raise sdk.Forbidden("publishing needs an authenticated member or API key")
    run_as: dict[str, Any] = {
        "kind": principal.kind, "id": str(principal.id), "role": principal.role,
        "permissions": sorted(principal.permissions),
    }
    if settings.run_as is not None:
        key = await services.members.api_key(tenant_id, settings.run_as)
        if key is None:
            raise sdk.Unprocessable(
                "settings.run_as is not an active API key of this tenant",
                errors=[sdk.FieldError("settings.run_as", "no such active API key")],
            )
        run_as.update(kind="api_key", id=str(key.id), role=key.role, publisher=str(principal.id),
                      permissions=sorted(principal.permissions & key.permissions))
    return run_as


async def _schedule(session: AsyncSession, tenant_id: uuid.UUID, workflow_id: uuid.UUID, number: int) -> None:
    version = (
        await session.scalars(select(Version).where(Version.workflow_id == workflow_id, Version.number == number))
    ).one()
    await session.execute(delete(ScheduleRow).where(ScheduleRow.id == workflow_id))
    if version.trigger_key != "workflows.schedule":
        return
    graph = msgspec.convert(version.graph, Graph)
    trigger = next(n for n in graph.nodes if n.node == "workflows.schedule")
    cron, zone = str(trigger.config["cron"]), str(trigger.config.get("timezone", "UTC"))
    session.add(ScheduleRow(
        tenant_id=tenant_id, id=workflow_id, cron=cron, timezone=zone,
        next_run_at=next_tick(cron, zone, sdk.utcnow()),
    ))


async def publish(
    services: sdk.Services, session: AsyncSession, log: sdk.ChangeLog, workflow_id: uuid.UUID
) -> s.VersionOut:
    """Freeze the draft as the next numbered version and make it the one triggers start."""
    row = await _definition(session, workflow_id, lock=True)
    graph, settings = msgspec.convert(row.graph, Graph), msgspec.convert(row.settings, WorkflowSettings)
    spec = await check_graph(services, log.tenant_id, graph, settings, full=True)
    assert spec is not None
    trigger = next(n for n in graph.nodes if n.node == spec.key)
    event = spec.event
    if spec.key == "workflows.event":
        event = str(trigger.config.get("event"))
    number = int(
        (await session.scalar(select(func.coalesce(func.max(Version.number), 0)).where(Version.workflow_id == row.id)))
        or 0
    ) + 1
    version = Version(
        tenant_id=log.tenant_id, id=sdk.uuid7(), workflow_id=row.id, number=number, graph=row.graph,
        settings=row.settings, trigger_key=spec.key, trigger_event=event,
        run_as=await _run_as(services, log.tenant_id, log.actor.principal, settings), published_by=log.name,
        created_at=sdk.utcnow(),
    )
    session.add(version)
    row.published_version = number
    await session.flush()
    if row.active:
        await _schedule(session, log.tenant_id, row.id, number)
    out = _version_out(version)
    await log.record(session, "workflows.definition.published", row.id, after={"id": str(row.id), "version": number})
    return out


def _version_out(v: Version) -> s.VersionOut:
    return s.VersionOut(
        workflow_id=v.workflow_id, number=v.number, graph=msgspec.convert(v.graph, Graph),
        settings=msgspec.convert(v.settings, WorkflowSettings), trigger_key=v.trigger_key,
        published_by=v.published_by, created_at=v.created_at,
    )


async def list_versions(
    session: AsyncSession, workflow_id: uuid.UUID, *, page: int, limit: int
) -> tuple[list[s.VersionOut], int]:
    sdk.check_list(page, limit, "-number", ("-number",))
    await _definition(session, workflow_id)
    rows, total = await sdk.list_and_count(
        session, select(Version).where(Version.workflow_id == workflow_id), [Version.number.desc()], page, limit
    )
    return [_version_out(v) for v in rows], total


async def get_version(session: AsyncSession, workflow_id: uuid.UUID, number: int) -> s.VersionOut:
    stmt = select(Version).where(Version.workflow_id == workflow_id, Version.number == number)
    v = (await session.scalars(stmt)).first()
    if v is None:
        raise sdk.NotFound(f"workflow {workflow_id} has no version {number}")
    return _version_out(v)


async def export_workflow(session: AsyncSession, workflow_id: uuid.UUID) -> s.ExportDoc:
    row = await _definition(session, workflow_id)
    return s.ExportDoc(
        name=row.name, description=row.description, graph=msgspec.convert(row.graph, Graph),
        settings=msgspec.convert(row.settings, WorkflowSettings),
    )


# ---- executions --------------------------------------------------------------------------------


def execution_out(e: Execution) -> s.ExecutionOut:
    return s.ExecutionOut(
        id=e.id, workflow_id=e.workflow_id, version=e.version_number, status=e.status, trigger_kind=e.trigger_kind,
        trigger=e.trigger, output=e.output, error=e.error, created_at=e.created_at, started_at=e.started_at,
        finished_at=e.finished_at, due_at=e.due_at, claims=e.claims, retry_of=e.retry_of,
        parent_execution_id=e.parent_execution_id, started_by=e.started_by,
    )


async def list_executions(
    session: AsyncSession, *, page: int, limit: int, sort: str, workflow_id: uuid.UUID | None, version: int | None,
    status: str | None, trigger_kind: str | None, created_after: datetime | None, created_before: datetime | None,
) -> tuple[list[s.ExecutionOut], int]:
    sdk.check_list(page, limit, sort, EXECUTION_SORTS)
    if status is not None and status not in STATUSES:
        raise sdk.Unprocessable("invalid filter", errors=[sdk.FieldError("status", f"one of {', '.join(STATUSES)}")])
    where = []
    if workflow_id is not None:
        where.append(Execution.workflow_id == workflow_id)
    if version is not None:
        where.append(Execution.version_number == version)
    if status is not None:
        where.append(Execution.status == status)
    if trigger_kind is not None:
        where.append(Execution.trigger_kind == trigger_kind)
    if created_after is not None:
        where.append(Execution.created_at >= created_after)
    if created_before is not None:
        where.append(Execution.created_at < created_before)
    rows, total = await sdk.list_and_count(
        session, select(Execution).where(and_(True, *where)), EXECUTION_SORTS[sort], page, limit
    )
    return [execution_out(e) for e in rows], total


async def _execution(session: AsyncSession, execution_id: uuid.UUID, *, lock: bool = False) -> Execution:
    stmt = select(Execution).where(Execution.id == execution_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.scalars(stmt)).first()
    if row is None:
        raise sdk.NotFound(f"execution {execution_id} not found")
    return row


async def execution_detail(session: AsyncSession, execution_id: uuid.UUID) -> s.ExecutionDetail:
    e = await _execution(session, execution_id)
    steps = (
        await session.scalars(
            select(Step).where(Step.execution_id == execution_id).order_by(Step.started_at, Step.id).limit(1000)
        )
    ).all()
    total = int(await session.scalar(select(func.count()).where(Step.execution_id == execution_id)) or 0)
    return s.ExecutionDetail(
        execution=execution_out(e),
        steps=[
            s.StepOut(
                node_id=st.node_id, iteration=st.iteration, node_key=st.node_key, status=st.status,
                ports=list(st.ports or []), input=st.input, output=st.output, error=st.error, attempts=st.attempts,
                started_at=st.started_at, finished_at=st.finished_at, wake_at=st.wake_at,
                duration_ms=(st.finished_at - st.started_at).total_seconds() * 1000
                if st.finished_at and st.started_at else None,
            )
            for st in steps
        ],
        steps_total=total,
    )


_DESCENDANTS = text(
    "with recursive kids as (select id from workflows_executions where parent_execution_id = :id "
    "union select e.id from workflows_executions e join kids k on e.parent_execution_id = k.id) "
    "select e.id from workflows_executions e join kids k on k.id = e.id "
    "where e.status not in ('succeeded', 'failed', 'cancelled') for update of e"
)


async def cancel(engine: Engine, session: AsyncSession, log: sdk.ChangeLog, execution_id: uuid.UUID) -> s.ExecutionOut:
    """Cancel a run in any unfinished state (a running step's task is cancelled by its worker's
    heartbeat), and with it every unfinished sub-workflow run it waits for, at any depth; a
    finished run answers 409. A sub-workflow run cancelled on its own fails its parent's step."""
    e = await _execution(session, execution_id, lock=True)
    if e.status in TERMINAL:
        raise sdk.Conflict(f"execution {execution_id} already {e.status}")
    now = sdk.utcnow()
    children = list((await session.scalars(_DESCENDANTS, {"id": execution_id})).all())
    runs = [e, *(await session.scalars(select(Execution).where(Execution.id.in_(children)))).all()]
    for run in runs:
        run.status, run.finished_at, run.due_at, run.lease_owner, run.lease_until = "cancelled", now, None, None, None
        run.error = ({"message": f"cancelled by {log.name}", "type": "cancelled"} if run is e else
                     {"message": f"cancelled with its parent run {execution_id}", "type": "cancelled"})
    ids = [run.id for run in runs]
    await session.execute(
        update(Step).where(Step.execution_id.in_(ids), Step.status.in_(("running", "waiting", "retrying")))
        .values(status="cancelled", finished_at=now)
    )
    await session.execute(
        update(Approval).where(Approval.execution_id.in_(ids), Approval.status == "pending")
        .values(status="cancelled")
    )
    if e.parent_execution_id is not None and e.parent_node is not None:
        await resume_parent(session, (e.parent_execution_id, e.parent_node), "cancelled", None, e.error, now)
    await session.flush()
    await log.audit(session, action="workflows.execution.cancel", resource_type="workflows.execution",
                    resource_id=execution_id, details={"cascaded": [str(i) for i in children]} if children else None)
    for run in runs:
        await engine.services.changes.emit(
            session, tenant_id=log.tenant_id, event="workflows.execution.cancelled",
            payload={"id": str(run.id), "workflow_id": str(run.workflow_id), "version": run.version_number,
                     "trigger_kind": run.trigger_kind, "error": run.error},
        )
    return execution_out(e)


async def retry(
    engine: Engine, session: AsyncSession, log: sdk.ChangeLog, execution_id: uuid.UUID, version: str
) -> s.RunOut:
    """A new run of a failed (or cancelled) one that starts from the failed step: the old run's
    succeeded steps are copied as checkpoints (on the current version, only those whose node id
    and key are unchanged)."""
    old = await _execution(session, execution_id)
    if old.status not in ("failed", "cancelled"):
        raise sdk.Conflict(f"execution {execution_id} is {old.status}; only failed or cancelled runs are retried")
    number = old.version_number if version == "pinned" else None
    new_id = await engine.start(
        session, tenant_id=log.tenant_id, workflow_id=old.workflow_id, trigger_kind=old.trigger_kind,
        payload=old.trigger, started_by=log.name, version_number=number, retry_of=old.id,
    )
    assert new_id is not None
    await session.execute(
        text(
            "insert into workflows_steps (tenant_id, id, created_at, execution_id, node_id, iteration, node_key, "
            "status, "
            "ports, input, output, error, attempts, started_at, finished_at, wake_at) "
            "select s.tenant_id, gen_random_uuid(), s.created_at, :new, s.node_id, s.iteration, s.node_key, s.status, "
            "s.ports, s.input, s.output, s.error, s.attempts, s.started_at, s.finished_at, null "
            "from workflows_steps s where s.execution_id = :old and s.status = 'succeeded' "
            "and s.node_key not in ('workflows.for_each') and exists (select 1 from workflows_executions n "
            "join workflows_versions v on v.tenant_id = n.tenant_id and v.id = n.version_id "
            "cross join lateral jsonb_array_elements(v.graph -> 'nodes') node "
            "where n.id = :new and node ->> 'id' = s.node_id and node ->> 'node' = s.node_key)"
        ),
        {"new": new_id, "old": old.id},
    )
    await log.audit(session, action="workflows.execution.retry", resource_type="workflows.execution",
                    resource_id=new_id, details={"retry_of": str(old.id), "version": version})
    return s.RunOut(execution_id=new_id, status="queued")


async def failed_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID] | None, workflow_id: uuid.UUID | None
) -> list[uuid.UUID]:
    """The failed runs among ``ids`` (or of ``workflow_id``), oldest first, at most 500."""
    stmt = select(Execution.id).where(Execution.status == "failed")
    if ids is not None:
        stmt = stmt.where(Execution.id.in_(ids))
    if workflow_id is not None:
        stmt = stmt.where(Execution.workflow_id == workflow_id)
    return list((await session.scalars(stmt.order_by(Execution.created_at).limit(500))).all())


# ---- approvals ---------------------------------------------------------------------------------


def approval_out(a: Approval) -> s.ApprovalOut:
    return s.ApprovalOut(
        id=a.id, execution_id=a.execution_id, workflow_id=a.workflow_id, node_id=a.node_id, status=a.status,
        title=a.title, details=a.details, expires_at=a.expires_at, decided_by=a.decided_by, decided_at=a.decided_at,
        comment=a.comment, created_at=a.created_at,
    )


async def list_approvals(
    session: AsyncSession, *, page: int, limit: int, status: str | None
) -> tuple[list[s.ApprovalOut], int]:
    sdk.check_list(page, limit, "-created_at", ("-created_at",))
    stmt = select(Approval)
    if status is not None:
        stmt = stmt.where(Approval.status == status)
    rows, total = await sdk.list_and_count(
        session, stmt, [Approval.created_at.desc(), Approval.id.desc()], page, limit
    )
    return [approval_out(a) for a in rows], total


async def decide(
    session: AsyncSession, log: sdk.ChangeLog, approval_id: uuid.UUID, data: s.DecisionIn
) -> s.ApprovalOut:
    """Approve or reject a pending approval: its step succeeds on port ``approved``/``rejected``
    and the run is queued again. A decided, expired or cancelled one answers 409."""
    a = (await session.scalars(select(Approval).where(Approval.id == approval_id).with_for_update())).first()
    if a is None:
        raise sdk.NotFound(f"approval {approval_id} not found")
    if a.status != "pending":
        raise sdk.Conflict(f"approval {approval_id} is already {a.status}")
    now = sdk.utcnow()
    a.status = "approved" if data.decision == "approve" else "rejected"
    a.decided_by, a.decided_at, a.comment = log.name, now, data.comment
    output = {"decision": a.status, "decided_by": log.name, "comment": data.comment, "decided_at": now.isoformat()}
    await session.execute(
        update(Step).where(Step.execution_id == a.execution_id, Step.node_id == a.node_id, Step.iteration == "0",
                           Step.status == "waiting")
        .values(status="succeeded", output=output, ports=[a.status], finished_at=now)
    )
    await session.execute(
        update(Execution).where(Execution.id == a.execution_id, Execution.status == "waiting")
        .values(status="queued", due_at=now)
    )
    await session.flush()
    out = approval_out(a)
    await log.record(session, "workflows.approval.decided", a.id, after=out)
    return out


async def attach_webhook(session: AsyncSession, workflow_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    row = await _definition(session, workflow_id, lock=True)
    if row.webhook_endpoint_id is not None:
        raise sdk.Conflict(f"workflow {workflow_id} already has a webhook URL; POST again to rotate it")
    row.webhook_endpoint_id = endpoint_id


async def connection_users(services: sdk.Services, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> list[str]:
    """The published workflows (current versions) whose nodes name ``connection_id`` in their
    config's ``connection``: what the ``businessos_connection_users`` hook answers."""
    async with services.data.tenant(tenant_id) as session:
        rows = (
            await session.execute(
                text(
                    "select d.name, v.number from workflows_definitions d join workflows_versions v "
                    "on v.tenant_id = d.tenant_id and v.workflow_id = d.id and v.number = d.published_version "
                    "where exists (select 1 from jsonb_array_elements(v.graph -> 'nodes') n "
                    "where n -> 'config' ->> 'connection' = :c) order by d.name"
                ),
                {"c": str(connection_id)},
            )
        ).all()
    return [f"workflow {r.name!r} (version {r.number})" for r in rows]
