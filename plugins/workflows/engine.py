"""The durable engine: starting runs, claiming them fairly, running and checkpointing their steps.

PostgreSQL is the truth; Redis only wakes workers.

- **Start.** :meth:`Engine.start` inserts the execution in status ``queued`` (due now) in the
  caller's transaction: the row *is* the start job (outbox style). After the commit,
  :meth:`Engine.wake` enqueues a ``workflows.work`` job; if Redis lost it (or was down), the
  ``workflows.sweep`` schedule finds the due row and enqueues one again. One job per process
  claims (:func:`work_job`): other wake-ups join it, and it lingers polling PostgreSQL a moment
  after the last due run, so wake-ups of one process within :data:`WAKE_WINDOW_SECONDS` share a job.
- **Claim.** :meth:`Engine.claim` takes one due execution (queued, a parked run whose wake-up
  time came, or a running one whose lease expired) with ``FOR UPDATE SKIP LOCKED``, fairly across
  tenants: tenants are tried least recently served first, skipping a tenant at its concurrency
  limit (``workflows_tenants.concurrency``) and a workflow at its own (``settings.concurrency``).
  The tenant's row is locked with the claim, so two workers never both take a tenant's last slot.
- **Run.** The claimer holds a lease it renews (a heartbeat, and every checkpoint); every write
  is fenced by ``lease_owner`` so a worker that lost its lease can no longer change the run. Each
  step leaves a ``workflows_steps`` row per (execution, node, iteration): an action's row is
  committed as ``running`` before it is called and its output is committed before the next
  action starts; pure control nodes (set, if, switch, merge) are checkpointed with the next
  write. On resume, steps that succeeded are not run again: their checkpointed output is reused.
- **Park.** Delays, waits for an event, approvals, sub-workflows and retries with a backoff of a
  second or more end the claim: the run goes to ``waiting`` with ``due_at`` (or none, until an
  event or a decision resumes it), holding no worker.
- **Cancel.** :meth:`Engine.cancel` works in every state: a running run's heartbeat sees that
  its lease is gone and cancels the step's task.

Idempotency: each step's ``NodeContext`` has ``step_id`` = node id and ``iteration`` (``"0"``,
or the item's index in a for-each body), so ``ctx.idempotency_key`` is
``execution:node:iteration``, the same on every attempt.

For-each: the body (the nodes behind the ``each`` port) runs per item, ``concurrency`` items at
once, in pages of :attr:`EngineConfig.page_size`; after each page the for-each step checkpoints
its progress (items done, counts, the last ``keep`` results), so memory does not grow with the
list and a resumed loop starts at the first unfinished page. Its output is
``{"count", "succeeded", "failed", "last"}``; each item's steps stay in the history. Nodes that
park (delay, wait, approval, sub-workflow) are refused inside a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.workflows import nodes as control
from plugins.workflows.expressions import ExpressionError, render
from plugins.workflows.graph import MAIN, Graph, Node, WorkflowSettings

__all__ = [
    "TERMINAL",
    "Engine",
    "EngineConfig",
    "Plan",
    "StaleTrigger",
    "StepError",
    "plan_of",
]

log = logging.getLogger("businessos.workflows")

WORK_JOB = "workflows.work"
TERMINAL = ("succeeded", "failed", "cancelled")
ENGINE_SETTING = "select set_config('app.workflows_engine', 'on', true)"
TOP = "0"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class EngineConfig:
    """Tunables of one engine (a worker process uses one)."""

    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    output_cap_bytes: int = 1_048_576
    """A step output larger than this (as JSON) fails the step."""
    default_concurrency: int = 10
    """Runs of one tenant at once when the plan names no ``workflows.concurrency``."""
    page_size: int = 200
    """For-each items per page (one checkpoint of the loop's progress per page)."""
    inline_retry_seconds: float = 1.0
    """A retry backoff shorter than this waits in the worker; a longer one parks the run."""
    retention_days: int = 30


class StepError(Exception):
    """A step failed; ``transient`` errors are retried under ``retry_on="transient"``."""

    def __init__(self, message: str, *, transient: bool = False, kind: str = "error", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.kind = kind
        self.status = status

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "type": self.kind, "transient": self.transient}
        if self.status is not None:
            out["status"] = self.status
        return out


def classify(exc: BaseException) -> StepError:
    """A node's exception as a :class:`StepError` (timeouts, outages, 429/5xx are transient)."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, TimeoutError):
        return StepError("the step timed out", transient=True, kind="timeout")
    if isinstance(exc, sdk.Problem):
        status = exc.status
        detail = getattr(exc, "detail", None) or str(exc)
        return StepError(str(detail), transient=status == 429 or status >= 500, kind="problem", status=status)
    if isinstance(exc, sdk.EgressFailed | OSError | ConnectionError):
        return StepError(str(exc) or type(exc).__name__, transient=True, kind="network")
    return StepError(f"{type(exc).__name__}: {exc}", kind="exception")


class StaleTrigger(Exception):
    """What a caller of :meth:`Engine.start` remembered of a workflow no longer holds (see ``endpoint``)."""


class _Park(Exception):
    """Unwinds a run that must wait: its claim ends, the row waits for ``due``."""

    def __init__(
        self,
        due: datetime | None,
        *,
        wait: tuple[str, str, str] | None = None,
        prepare: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__("parked")
        self.due = due
        self.wait = wait
        self.prepare = prepare


class _Fail(Exception):
    """Unwinds a run that failed."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "failed"))
        self.error = error


class _LeaseLost(Exception):
    """Another worker claimed the run, or it was cancelled: stop without writing."""


# ---- plans: a version's graph, analysed once -------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A published version's graph in run order."""

    graph: Graph
    settings: WorkflowSettings
    nodes: dict[str, Node]
    incoming: dict[str, list[tuple[str, str]]]
    """node id -> (source, port) of its edges."""
    trigger: Node
    top: list[Node]
    """Outside every loop, in topological order (the trigger excluded)."""
    bodies: dict[str, list[Node]]
    """for-each node id -> its body's own nodes, in topological order."""
    entries: dict[str, set[str]]
    """for-each node id -> the body nodes its ``each`` port reaches directly."""


class PlanError(ValueError):
    pass


def plan_of(graph: Graph, settings: WorkflowSettings, trigger_keys: set[str]) -> Plan:
    """Order ``graph`` for running; ``trigger_keys``: the node keys that are triggers."""
    nodes = {n.id: n for n in graph.nodes}
    triggers = [n for n in graph.nodes if n.node in trigger_keys]
    if len(triggers) != 1:
        raise PlanError("a workflow needs exactly one trigger node")
    incoming: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
    outgoing: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
    for e in graph.edges:
        if e.source not in nodes or e.target not in nodes:
            raise PlanError(f"edge {e.source}->{e.target} names an unknown node")
        incoming[e.target].append((e.source, e.port))
        outgoing[e.source].append((e.target, e.port))
    # Kahn's algorithm, stable by the order nodes are listed in.
    indegree = {n: len(incoming[n]) for n in nodes}
    ready = [n.id for n in graph.nodes if indegree[n.id] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for target, _ in outgoing[current]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    if len(order) != len(nodes):
        raise PlanError("the graph has a cycle")
    rank = {n: i for i, n in enumerate(order)}

    def reach(starts: set[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(starts)
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(t for t, _ in outgoing[cur])
        return seen

    loops = [n.id for n in graph.nodes if n.node == "workflows.for_each"]
    entries = {f: {t for t, p in outgoing[f] if p == control.EACH} for f in loops}
    full = {f: reach(entries[f]) for f in loops}
    bodies: dict[str, list[Node]] = {}
    for f in loops:
        own = set(full[f])
        for g in loops:
            if g != f and g in full[f]:
                own -= full[g]
        bodies[f] = [nodes[n] for n in sorted(own, key=rank.__getitem__)]
    in_loops = set().union(*full.values()) if full else set()
    top = [nodes[n] for n in order if n not in in_loops and n != triggers[0].id]
    return Plan(graph, settings, nodes, incoming, triggers[0], top, bodies, entries)


# ---- records ---------------------------------------------------------------------------------


@dataclass
class _Rec:
    status: str
    output: Any = None
    ports: list[str] = field(default_factory=lambda: [MAIN])
    attempts: int = 0
    wake_at: datetime | None = None
    error: Any = None


@dataclass
class _Run:
    tenant_id: uuid.UUID
    execution_id: uuid.UUID
    workflow_id: uuid.UUID
    version_number: int
    plan: Plan
    trigger: Any
    actor: sdk.Actor
    deadline: datetime | None
    created_at: datetime
    trigger_kind: str
    parent: tuple[uuid.UUID, str] | None
    records: dict[str, _Rec]
    writes: list[dict[str, Any]] = field(default_factory=list)
    last: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_UPSERT_STEP = text(
    "insert into workflows_steps (tenant_id, id, execution_id, node_id, iteration, node_key, status, ports, "
    "input, output, error, attempts, started_at, finished_at, wake_at) values (:tenant_id, :id, :execution_id, "
    ":node_id, :iteration, :node_key, :status, :ports, cast(:input as jsonb), cast(:output as jsonb), "
    "cast(:error as jsonb), :attempts, :started_at, :finished_at, :wake_at) "
    "on conflict (tenant_id, execution_id, node_id, iteration) do update set status = excluded.status, "
    "ports = excluded.ports, input = coalesce(excluded.input, workflows_steps.input), output = excluded.output, "
    "error = excluded.error, attempts = excluded.attempts, "
    "started_at = coalesce(workflows_steps.started_at, excluded.started_at), finished_at = excluded.finished_at, "
    "wake_at = excluded.wake_at"
)
_MOVE_TICK = text("update workflows_schedules set next_run_at = :next where id = :id and next_run_at = :tick")
_CLAIM = text(
    "with picked as (select e.id, e.workflow_id, e.concurrency, e.due_at, case when e.concurrency is null then 0 "
    "else (select count(*) from workflows_executions r where r.tenant_id = e.tenant_id "
    "and r.workflow_id = e.workflow_id and r.status = 'running' and r.lease_until > :now) end as wf_running "
    "from workflows_executions e where e.tenant_id = :t and e.due_at <= :now "
    "order by e.due_at limit :k for update of e skip locked), "
    "ranked as (select id, concurrency, wf_running, row_number() over (partition by workflow_id "
    "order by due_at, id) as n from picked), "
    "claimed as (update workflows_executions x set status = 'running', lease_owner = :me, lease_until = :lease, "
    "due_at = :lease, claims = x.claims + 1, started_at = coalesce(x.started_at, :now) from ranked "
    "where x.tenant_id = :t and x.id = ranked.id "
    "and (ranked.concurrency is null or ranked.wf_running + ranked.n <= ranked.concurrency) returning x.*), "
    "served as (update workflows_tenants set last_served_at = :now where tenant_id = :t "
    "and exists (select 1 from claimed)) "
    "select c.*, case when v.id = any(:known) then null else v.graph end as graph, v.settings, v.run_as, "
    "(select jsonb_agg(jsonb_build_object('node_id', s.node_id, 'status', s.status, 'output', s.output, "
    "'ports', s.ports, 'attempts', s.attempts, 'wake_at', s.wake_at, 'error', s.error)) from workflows_steps s "
    "where s.tenant_id = c.tenant_id and s.execution_id = c.id and s.iteration = :top) as checkpoints "
    "from claimed c join workflows_versions v on v.tenant_id = c.tenant_id and v.id = c.version_id "
    "order by c.created_at, c.id"
)
"""A tenant's claim (see :meth:`Engine.claim_many`)."""
_FENCE = text(
    "update workflows_executions set lease_until = :lease, due_at = :lease where tenant_id = :t and id = :id "
    "and status = 'running' and lease_owner = :me"
)


_TENANT_ROW = (
    "with tenant as (insert into workflows_tenants (tenant_id, id, concurrency, retention_days) "
    "values (:t, :t, :c, :r) on conflict (tenant_id, id) do nothing), "
    "moved as (update workflows_tenants set concurrency = :c, retention_days = :r "
    "where tenant_id = :t and id = :t and (concurrency <> :c or retention_days is distinct from :r)) "
    "insert into workflows_executions (tenant_id, id, created_at, workflow_id, version_id, version_number, "
    "status, trigger_kind, trigger, due_at, deadline_at, concurrency, parent_execution_id, parent_node, "
    "retry_of, started_by) "
)
_START = text(
    _TENANT_ROW + "values (:t, :id, :now, :w, :v, :n, 'queued', :kind, cast(:trigger as jsonb), "
    ":now, :deadline, :conc, :parent, :parent_node, :retry_of, :by) on conflict do nothing returning id"
)
"""A run and the tenant's row the claim walks (see :meth:`Engine.start`)."""
_ANSWERS = (
    "select 1 from workflows_definitions d where d.id = cast(:w as uuid) and d.active "
    "and d.published_version = cast(:n as integer) and d.webhook_endpoint_id = cast(:ep as uuid)"
)
_START_AT_ENDPOINT = text(
    # A select rather than values, to carry the condition: its values are cast, as nothing else types them.
    _TENANT_ROW + "select cast(:t as uuid), cast(:id as uuid), cast(:now as timestamptz), cast(:w as uuid), "
    "cast(:v as uuid), cast(:n as integer), 'queued', cast(:kind as text), cast(:trigger as jsonb), "
    "cast(:now as timestamptz), cast(:deadline as timestamptz), cast(:conc as integer), cast(:parent as uuid), "
    "cast(:parent_node as text), cast(:retry_of as uuid), cast(:by as text) "
    f"where exists ({_ANSWERS}) on conflict do nothing returning id"
)
""":data:`_START` only while the workflow runs that version at that webhook endpoint."""
_ANSWERS_AT = text(_ANSWERS)


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value, enc_hook=str).decode()


def _jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=str)


@dataclass(frozen=True)
class _Checkpoint:
    """A top-level step row read as JSON (the batched claim's shape of a ``workflows_steps`` row)."""

    node_id: str
    status: str
    output: Any
    ports: list[str] | None
    attempts: int
    wake_at: datetime | None
    error: Any

    @classmethod
    def of(cls, raw: dict[str, Any]) -> _Checkpoint:
        wake = raw.get("wake_at")
        return cls(raw["node_id"], raw["status"], raw.get("output"), raw.get("ports"), int(raw.get("attempts") or 0),
                   datetime.fromisoformat(wake) if wake else None, raw.get("error"))


# ---- the engine ------------------------------------------------------------------------------


WAKE_WINDOW_SECONDS = 0.1
"""Immediate wake-ups one process asks for within this window share one job (see :meth:`Engine.wake`)."""
_PROCESS = uuid.uuid4().hex[:12]
_WOKEN: weakref.WeakKeyDictionary[sdk.Services, int] = weakref.WeakKeyDictionary()
"""The last window each plugin facade (one per kernel) enqueued its wake-up job in."""
REFILL = 4
"""A work job claims again once this many of its slots are free (or half of them, if fewer)."""

_PLANS: dict[uuid.UUID, Plan] = {}
"""Plans by version id (versions never change); bounded, see :func:`_cache_plan`."""
_LIMITS: dict[uuid.UUID, tuple[float, int, int]] = {}
"""tenant -> (fetched at, concurrency, retention days)."""


def _cache_plan(version_id: uuid.UUID, plan: Plan) -> None:
    if len(_PLANS) > 1000:
        _PLANS.clear()
    _PLANS[version_id] = plan


class Engine:
    """The engine bound to the workflows plugin's facade.

    ``clock`` gives "now" (tests move it forward instead of sleeping); ``observer`` is called with
    ``(execution_id, node_id, iteration)`` before each step runs (metrics, tests).
    """

    def __init__(
        self,
        services: sdk.Services,
        *,
        config: EngineConfig | None = None,
        clock: Callable[[], datetime] = _now,
        worker_id: str | None = None,
        observer: Callable[[uuid.UUID, str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.services = services
        self.config = config or EngineConfig()
        self.clock = clock
        self.worker_id = worker_id or f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.observer = observer
        self._prefetched: dict[uuid.UUID, Any] = {}
        """What :meth:`claim` read of a run in its own transaction, for :meth:`run`."""

    # -- starting ----------------------------------------------------------------------------

    async def limits(self, tenant_id: uuid.UUID) -> tuple[int, int]:
        """(concurrency, retention days) of the tenant: the plan's ``workflows.concurrency``
        entitlement (``remaining`` is read as the limit) or the plugin settings' default."""
        cached = _LIMITS.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1], cached[2]
        concurrency, retention = self.config.default_concurrency, self.config.retention_days
        try:
            settings = await self.services.settings(tenant_id)
            concurrency = int(getattr(settings, "concurrency", concurrency))
            retention = int(getattr(settings, "retention_days", retention))
        except sdk.Problem:
            pass
        planned = await self.services.entitlements.remaining(tenant_id, "workflows.concurrency")
        if planned is not None:
            concurrency = max(1, planned)
        _LIMITS[tenant_id] = (time.monotonic(), concurrency, retention)
        return concurrency, retention

    async def start(
        self,
        session: AsyncSession,
        *,
        tenant_id: uuid.UUID,
        workflow_id: uuid.UUID,
        trigger_kind: str,
        payload: Any,
        started_by: str | None,
        version_number: int | None = None,
        execution_id: uuid.UUID | None = None,
        parent: tuple[uuid.UUID, str] | None = None,
        retry_of: uuid.UUID | None = None,
        metered: bool = True,
        version: tuple[uuid.UUID, int, Any] | None = None,
        endpoint: uuid.UUID | None = None,
    ) -> uuid.UUID | None:
        """Create a run of ``workflow_id`` (its published version, or ``version_number``) in the
        caller's transaction, queued and due now; call :meth:`wake` after the commit.

        404 for an unknown workflow, 409 when it has no published version, 402 (the
        ``workflows.executions`` entitlement) when the plan's monthly runs are spent; a refused
        start leaves nothing in the transaction. With ``execution_id`` (an event's or a schedule
        tick's deterministic id), a second start of the same id does nothing and answers ``None``,
        without asking the plan.

        ``version``: ``(id, number, settings)`` of the version to run, when the caller read it in
        this transaction already, saving a round trip. With ``endpoint`` as well (the webhook
        trigger, from what it remembers), the run is inserted only while the workflow is active,
        publishes that version and answers at that webhook endpoint, checked in the same statement;
        otherwise :class:`StaleTrigger` is raised and nothing is written."""
        if version is None:
            # One round trip: the workflow, and the version asked for (or the published one).
            row = (
                await session.execute(
                    text(
                        "select d.published_version, v.id, v.number, v.settings from workflows_definitions d "
                        "left join workflows_versions v on v.tenant_id = d.tenant_id and v.workflow_id = d.id "
                        "and v.number = coalesce(cast(:n as integer), d.published_version) where d.id = :w"
                    ),
                    {"w": workflow_id, "n": version_number},
                )
            ).first()
            if row is None:
                raise sdk.NotFound(f"workflow {workflow_id} not found")
            if version_number is None and row.published_version is None:
                raise sdk.Conflict(f"workflow {workflow_id} has no published version")
            if row.id is None:
                raise sdk.NotFound(f"workflow {workflow_id} has no version {version_number}")
            version = (row.id, row.number, row.settings)
        version_id, number, raw_settings = version
        settings = msgspec.convert(raw_settings, WorkflowSettings)
        concurrency, retention = await self.limits(tenant_id)
        now = self.clock()
        new_id = execution_id or sdk.uuid7()
        # One statement: the run, and the tenant's row the claim walks (kept in step with its limits).
        # The row is created or changed only when it is missing or its limits moved, so that a
        # start locks it in no other case: a claim skips a tenant whose row is locked, and a burst
        # of starts would otherwise keep the tenant's runs from being claimed until it ended.
        inserted = await session.execute(
            _START if endpoint is None else _START_AT_ENDPOINT,
            {
                "t": tenant_id, "id": new_id, "now": now, "w": workflow_id, "v": version_id, "n": number,
                "kind": trigger_kind, "trigger": _json(payload if payload is not None else {}),
                "deadline": now + timedelta(seconds=settings.timeout_seconds), "conc": settings.concurrency,
                "parent": parent[0] if parent else None, "parent_node": parent[1] if parent else None,
                "retry_of": retry_of, "by": started_by, "c": concurrency, "r": retention, "ep": endpoint,
            },
        )
        if inserted.first() is None:
            if endpoint is not None and (await session.execute(_ANSWERS_AT, {"w": workflow_id, "n": number,
                                                                             "ep": endpoint})).first() is None:
                raise StaleTrigger(f"workflow {workflow_id} no longer runs version {number} at endpoint {endpoint}")
            return None
        if metered:
            # Asked only once the run is new: a second start of the same id (a redelivered webhook
            # or event) answers ``None`` even when the month's runs are spent, and is not counted
            # again. A refusal takes the row back out, so the caller's transaction may go on.
            try:
                await self.services.entitlements.check(tenant_id, "workflows.executions")
            except sdk.Problem:
                await session.execute(text("delete from workflows_executions where tenant_id = :t and id = :id"),
                                      {"t": tenant_id, "id": new_id})
                raise
        await self.services.changes.emit(
            session, tenant_id=tenant_id, event="workflows.execution.started",
            payload={"id": str(new_id), "workflow_id": str(workflow_id), "version": number,
                     "trigger_kind": trigger_kind},
        )
        return new_id

    async def wake(self, at: datetime | None = None, *, coalesce: bool = True) -> None:
        """Ask a worker to claim work now (or ``at``). Losing this is harmless: the sweeper finds
        due runs in PostgreSQL.

        An immediate wake-up is coalesced with the others this process asks for in the same
        :data:`WAKE_WINDOW_SECONDS`: the queue refuses a second job of the same window. That is
        safe because the window's job runs after this run was committed, or started less than a
        window before, and :func:`work_job` then claims, or lingers polling PostgreSQL for longer
        than a window. ``coalesce=False``: always a fresh job (a work job handing on)."""
        dedup = window = None
        if at is None and coalesce:
            window = int(time.time() / WAKE_WINDOW_SECONDS)
            if _WOKEN.get(self.services) == window:
                return  # this window's job is queued already: no need to ask Redis again
            dedup = f"{_PROCESS}:{window}"
        try:
            await self.services.jobs.enqueue(WORK_JOB, at=at, dedup_key=dedup)
            if window is not None:
                _WOKEN[self.services] = window
        except Exception:  # Redis down: the sweeper will find the row
            log.warning("could not enqueue a wake-up; the sweeper will find the run", exc_info=True)

    # -- claiming ----------------------------------------------------------------------------

    async def claim(self) -> tuple[uuid.UUID, uuid.UUID] | None:
        """Take one due run fairly across tenants, or ``None`` when nothing may run now."""
        claimed = await self.claim_many(1)
        return claimed[0] if claimed else None

    async def claim_many(self, wanted: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Take up to ``wanted`` due runs in one transaction: ``(tenant, execution)`` pairs.

        Tenants are tried least recently served first, each given an equal share of ``wanted``
        within its free concurrency; a workflow's own ``settings.concurrency`` is kept too. The
        tenants' rows are locked with the claim (``SKIP LOCKED``), so the running counts cannot
        change under it."""
        now = self.clock()
        lease = now + timedelta(seconds=self.config.lease_seconds)
        claimed: list[tuple[uuid.UUID, uuid.UUID]] = []
        async with self.services.data.untenanted() as session:
            await session.execute(text(ENGINE_SETTING))
            tenants = (
                await session.execute(
                    text(
                        "select t.tenant_id, t.concurrency, (select count(*) from workflows_executions r "
                        "where r.tenant_id = t.tenant_id and r.status = 'running' and r.lease_until > :now) running "
                        "from workflows_tenants t where exists (select 1 from workflows_executions e "
                        "where e.tenant_id = t.tenant_id and e.due_at <= :now) "
                        "order by t.last_served_at nulls first, t.tenant_id limit 8 for update of t skip locked"
                    ),
                    {"now": now},
                )
            ).all()
            share = max(1, wanted // max(len(tenants), 1))
            for tenant in tenants:
                slots = min(share, wanted - len(claimed), tenant.concurrency - tenant.running)
                if slots <= 0:
                    continue
                # One statement per tenant: pick its due rows (locked), keep a workflow's own
                # limit (a row past it stays due), take them, mark the tenant served, and read each
                # taken run with its version and top-level checkpoints.
                runs = (
                    await session.execute(
                        _CLAIM,
                        {"t": tenant.tenant_id, "now": now, "k": slots, "me": self.worker_id, "lease": lease,
                         "known": list(_PLANS), "top": TOP},
                    )
                ).all()
                for e in runs:
                    self._prefetched[e.id] = (e, [_Checkpoint.of(c) for c in e.checkpoints or ()])
                    claimed.append((tenant.tenant_id, e.id))
        return claimed

    async def work(
        self, *, limit: int | None = None, parallel: int = 1, nudge: asyncio.Event | None = None,
        on_limit: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Claim and run due runs until none is left (or ``limit`` ran); ``parallel`` at once.
        Returns how many claims ran.

        ``nudge``: set when new runs may be due; while runs are in flight and the last claim found
        nothing, it makes the loop claim again without waiting for a run to end (it is cleared
        when taken). ``on_limit``: called once ``limit`` claims were made, before waiting for the
        runs still in flight."""
        running: set[asyncio.Task[str | None]] = set()
        try:
            return await self._work(running, limit, parallel, nudge, on_limit)
        except BaseException:
            # The worker is going away (a job timeout, shutdown): its runs stop where they are and
            # their leases expire, so another worker resumes them from their checkpoints.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _work(
        self, running: set[asyncio.Task[str | None]], limit: int | None, parallel: int,
        nudge: asyncio.Event | None, on_limit: Callable[[], Awaitable[None]] | None,
    ) -> int:
        done = 0
        while limit is None or done < limit:
            # Refill once a few slots are free: one claim transaction then serves several runs
            # instead of one claim per finished run.
            while running and len(running) > parallel - min(REFILL, max(1, parallel // 2)):
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running.difference_update(finished)
                for task in finished:
                    task.result()
            free = parallel - len(running)
            if limit is not None:
                free = min(free, limit - done)
            if nudge is not None:
                nudge.clear()  # this claim covers every run committed before it
            batch = await self.claim_many(free)
            if not batch:
                if not running:
                    break
                waiting: set[asyncio.Future[Any]] = set(running)
                waiter: asyncio.Future[Any] | None = None
                if nudge is not None:
                    waiter = asyncio.ensure_future(nudge.wait())
                    waiting.add(waiter)
                try:
                    ended, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if waiter is not None:
                        waiter.cancel()
                for future in ended:
                    if future is not waiter:
                        running.discard(future)  # type: ignore[arg-type]
                        future.result()
                continue
            done += len(batch)
            running.update(asyncio.create_task(self.run(*claimed)) for claimed in batch)
        if on_limit is not None and limit is not None and done >= limit:
            await on_limit()
        while running:
            finished, running_left = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running.clear()
            running.update(running_left)
            for task in finished:
                task.result()
        return done

    # -- running -----------------------------------------------------------------------------

    async def _fetch(self, session: AsyncSession, tenant_id: uuid.UUID, execution_id: uuid.UUID) -> Any:
        e = (
            await session.execute(
                text(
                    "select e.*, v.graph, v.settings, v.run_as from workflows_executions e "
                    "join workflows_versions v on v.tenant_id = e.tenant_id and v.id = e.version_id "
                    "where e.tenant_id = :t and e.id = :id and e.lease_owner = :me and e.status = 'running'"
                ),
                {"t": tenant_id, "id": execution_id, "me": self.worker_id},
            )
        ).first()
        if e is None:
            return None
        steps = (
            await session.execute(
                text(
                    "select node_id, status, output, ports, attempts, wake_at, error from workflows_steps "
                    "where tenant_id = :t and execution_id = :id and iteration = :top"
                ),
                {"t": tenant_id, "id": execution_id, "top": TOP},
            )
        ).all()
        return e, steps

    async def _load(self, tenant_id: uuid.UUID, execution_id: uuid.UUID) -> _Run | None:
        fetched = self._prefetched.pop(execution_id, None)
        if fetched is None:
            async with self.services.data.tenant(tenant_id) as session:
                fetched = await self._fetch(session, tenant_id, execution_id)
            if fetched is None:
                return None
        e, steps = fetched
        plan = _PLANS.get(e.version_id)
        if plan is None and e.graph is None:  # the cache was cleared since the batch was read
            async with self.services.data.tenant(tenant_id) as session:
                fetched = await self._fetch(session, tenant_id, execution_id)
            if fetched is None:
                return None
            e, steps = fetched
        if plan is None:
            plan = plan_of(
                msgspec.convert(e.graph, Graph), msgspec.convert(e.settings, WorkflowSettings),
                await self._trigger_keys(tenant_id),
            )
            _cache_plan(e.version_id, plan)
        run_as = e.run_as or {}
        principal = sdk.Principal(
            kind=run_as.get("kind", "user"), id=uuid.UUID(run_as["id"]) if run_as.get("id") else uuid.UUID(int=0),
            tenant_id=tenant_id, role=run_as.get("role"), permissions=frozenset(run_as.get("permissions", ())),
        )
        # Body steps of a for-each share iteration numbers with top-level ones ("0"): keep only the
        # nodes outside every loop.
        outside = {n.id for n in plan.top} | {plan.trigger.id}
        records = {
            s.node_id: _Rec(s.status, s.output, list(s.ports or [MAIN]), s.attempts, s.wake_at, s.error)
            for s in steps if s.node_id in outside
        }
        return _Run(
            tenant_id=tenant_id, execution_id=execution_id, workflow_id=e.workflow_id, version_number=e.version_number,
            plan=plan, trigger=e.trigger, actor=sdk.Actor(name=principal.actor, principal=principal),
            deadline=e.deadline_at, created_at=e.created_at, trigger_kind=e.trigger_kind,
            parent=(e.parent_execution_id, e.parent_node) if e.parent_execution_id else None, records=records,
        )

    async def _trigger_keys(self, tenant_id: uuid.UUID) -> set[str]:
        keys = set(control.TRIGGER_KEYS)
        keys |= {node.key for node in await self.services.nodes.catalogue(tenant_id) if node.kind == "trigger"}
        return keys

    async def run(self, tenant_id: uuid.UUID, execution_id: uuid.UUID) -> str | None:
        """Run a claimed execution until it ends or parks; its new status (``None``: lost)."""
        run = await self._load(tenant_id, execution_id)
        if run is None:
            return None
        task = asyncio.current_task()
        assert task is not None
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(run, task, lost))
        try:
            return await self._drive(run)
        except asyncio.CancelledError:
            if lost.is_set():
                return None  # cancelled through the API, or another worker took it
            raise
        except _LeaseLost:
            return None
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat

    async def _heartbeat(self, run: _Run, task: asyncio.Task[Any], lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            try:
                async with self.services.data.tenant(run.tenant_id) as session:
                    result = await session.execute(_FENCE, self._fence(run))
            except Exception:
                log.warning("lease renewal of %s failed; retrying", run.execution_id, exc_info=True)
                continue
            if result.rowcount == 0:  # type: ignore[attr-defined]
                lost.set()
                task.cancel()
                return

    def _fence(self, run: _Run) -> dict[str, Any]:
        return {
            "lease": self.clock() + timedelta(seconds=self.config.lease_seconds), "t": run.tenant_id,
            "id": run.execution_id, "me": self.worker_id,
        }

    async def _flush(
        self, run: _Run, rows: list[dict[str, Any]], prepare: Callable[[AsyncSession], Awaitable[None]] | None = None,
        *, fenced_by_prepare: bool = False,
    ) -> None:
        """Write checkpoints (and ``prepare``'s changes) in one transaction fenced by the lease.

        ``fenced_by_prepare``: ``prepare`` runs first and its first statement updates the run's row
        under the fence's conditions, raising :class:`_LeaseLost` when it matched nothing (one
        statement fewer). Either way the run's row is locked before its steps, the order cancel
        takes them in."""
        async with run.lock, self.services.data.tenant(run.tenant_id) as session:
            if fenced_by_prepare:
                assert prepare is not None
                await prepare(session)
            else:
                fenced = await session.execute(_FENCE, self._fence(run))
                if fenced.rowcount == 0:  # type: ignore[attr-defined]
                    raise _LeaseLost
            if rows:
                await session.execute(_UPSERT_STEP, rows)
            if prepare is not None and not fenced_by_prepare:
                await prepare(session)
        rows.clear()

    def _row(
        self, run: _Run, node: Node, iteration: str, status: str, *, output: Any = None, ports: Sequence[str] = (),
        error: Any = None, attempts: int = 1, input: Any = None, started: datetime | None = None,
        wake_at: datetime | None = None,
    ) -> dict[str, Any]:
        now = self.clock()
        return {
            "tenant_id": run.tenant_id, "id": sdk.uuid7(), "execution_id": run.execution_id, "node_id": node.id,
            "iteration": iteration, "node_key": node.node, "status": status, "ports": list(ports),
            "input": _json(input), "output": _json(output), "error": _json(error), "attempts": attempts,
            "started_at": started or now, "finished_at": now if status in ("succeeded", "failed") else None,
            "wake_at": wake_at,
        }

    async def _drive(self, run: _Run) -> str:
        now = self.clock()
        plan = run.plan
        try:
            if run.deadline is not None and now >= run.deadline:
                raise _Fail({"message": f"the run exceeded its timeout of {plan.settings.timeout_seconds:g} s",
                             "type": "timeout"})
            trigger = plan.trigger
            if trigger.id not in run.records:
                run.records[trigger.id] = _Rec("succeeded", run.trigger, [MAIN], 1)
                run.writes.append(self._row(run, trigger, TOP, "succeeded", output=run.trigger, ports=[MAIN]))
            await self._walk(run, plan.top, TOP, run.records, self._scope(run, run.records), entries=set())
        except _Park as park:
            return await self._park(run, park)
        except _Fail as failed:
            return await self._finish(run, "failed", error=failed.error)
        output = run.records[run.last].output if run.last else run.trigger
        return await self._finish(run, "succeeded", output=output)

    def _scope(self, run: _Run, records: Mapping[str, _Rec], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        scope: dict[str, Any] = {
            "trigger": run.trigger,
            "steps": {k: {"output": r.output, "status": r.status} for k, r in records.items()},
            "execution": {
                "id": str(run.execution_id), "workflow_id": str(run.workflow_id), "version": run.version_number,
                "started_at": run.created_at.isoformat(),
            },
            "env": run.plan.settings.variables,
        }
        if extra:
            scope.update(extra)
        return scope

    def _active(self, run: _Run, node: Node, records: Mapping[str, _Rec], entries: set[str]) -> bool:
        if node.id in entries:
            return True
        for source, port in run.plan.incoming[node.id]:
            rec = records.get(source)
            if rec is not None and rec.status in ("succeeded", "failed") and port in rec.ports:
                return True
        return False

    async def _walk(
        self, run: _Run, region: list[Node], iteration: str, records: dict[str, _Rec], scope: dict[str, Any],
        *, entries: set[str], writes: list[dict[str, Any]] | None = None, in_body: bool = False,
    ) -> str | None:
        """Run ``region``'s active nodes in order; the id of the last one that ran."""
        last: str | None = None
        for node in region:
            if not self._active(run, node, records, entries):
                continue
            rec = await self._step(run, node, iteration, records, scope, writes, in_body)
            records[node.id] = rec
            scope["steps"][node.id] = {"output": rec.output, "status": rec.status}
            last = node.id
            if not in_body:
                run.last = node.id
        return last

    async def _step(
        self, run: _Run, node: Node, iteration: str, records: dict[str, _Rec], scope: dict[str, Any],
        writes: list[dict[str, Any]] | None, in_body: bool,
    ) -> _Rec:
        rows = run.writes if writes is None else writes
        existing = records.get(node.id)
        if existing is not None:
            if existing.status == "succeeded":
                return existing
            if existing.status == "failed":
                return self._handled(node, existing.error, existing.attempts)
            if existing.status == "waiting":
                return await self._resume(run, node, existing, rows)
            if existing.status == "retrying" and existing.wake_at is not None and existing.wake_at > self.clock():
                raise _Park(existing.wake_at)
        attempt = (existing.attempts if existing is not None else 0) + 1
        while True:
            try:
                return await self._attempt(run, node, iteration, attempt, records, scope, rows, in_body)
            except _Retry as retry:
                attempt += 1
                await asyncio.sleep(retry.delay)

    async def _attempt(
        self, run: _Run, node: Node, iteration: str, attempt: int, records: dict[str, _Rec], scope: dict[str, Any],
        rows: list[dict[str, Any]], in_body: bool,
    ) -> _Rec:
        now = self.clock()
        if run.deadline is not None and now >= run.deadline:
            raise _Fail({"message": f"the run exceeded its timeout of {run.plan.settings.timeout_seconds:g} s",
                         "type": "timeout", "node": node.id})
        if self.observer is not None:
            await self.observer(run.execution_id, node.id, iteration)
        key = node.node
        try:
            config = render(node.config, scope)
        except ExpressionError as exc:
            return await self._failed(run, node, iteration, attempt, StepError(str(exc), kind="expression"), rows,
                                      None, in_body)
        if key in control.PARKING_KEYS or key == "workflows.for_each":
            if in_body and key in control.PARKING_KEYS:
                return await self._failed(
                    run, node, iteration, attempt,
                    StepError(f"{key} cannot run inside a for-each body", kind="config"), rows, config, in_body,
                )
            try:
                if key == "workflows.for_each":
                    return await self._for_each(run, node, iteration, attempt, config, records, scope, rows)
                return await self._park_node(run, node, attempt, config, rows)
            except StepError as exc:
                return await self._failed(run, node, iteration, attempt, exc, rows, config, in_body)
            except (msgspec.ValidationError, ValueError, TypeError) as exc:
                return await self._failed(run, node, iteration, attempt, StepError(str(exc), kind="config"), rows,
                                          config, in_body)
        if key in control.PURE_KEYS:
            try:
                output, ports = self._pure(node, config, records, run)
                self._check_size(output)
            except StepError as exc:
                return await self._failed(run, node, iteration, attempt, exc, rows, config, in_body)
            rows.append(self._row(run, node, iteration, "succeeded", output=output, ports=ports, input=config,
                                  attempts=attempt))
            return _Rec("succeeded", output, ports, attempt)
        # An action: its start is committed before it acts (with every checkpoint still pending).
        started = self.clock()
        rows.append(self._row(run, node, iteration, "running", input=config, attempts=attempt, started=started))
        await self._flush(run, rows)
        timeout, run_bound = node.timeout_seconds, False
        if run.deadline is not None:
            left = (run.deadline - self.clock()).total_seconds()
            run_bound = timeout is None or left < timeout
            timeout = left if run_bound else timeout
        limit = asyncio.timeout(max(timeout, 0.001) if timeout is not None else None)
        try:
            async with limit:
                output = await self._act(run, node, iteration, attempt, config)
            output = _jsonable(output)
            self._check_size(output)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = classify(exc)
            if isinstance(exc, TimeoutError) and limit.expired():
                if run_bound:  # the run's own deadline came first: the run ends, no retry
                    detail = {"message": f"the run exceeded its timeout of {run.plan.settings.timeout_seconds:g} s"
                              f" (in step {node.id!r})", "type": "timeout"}
                    rows.append(self._row(run, node, iteration, "failed", error=detail, input=config,
                                          attempts=attempt, started=started))
                    raise _Fail({**detail, "node": node.id}) from None
                error = StepError(f"step {node.id!r} exceeded its timeout of {node.timeout_seconds:g} s",
                                  transient=True, kind="timeout")
            return await self._failed(run, node, iteration, attempt, error, rows, config, in_body, started)
        rows.append(self._row(run, node, iteration, "succeeded", output=output, ports=[MAIN], input=config,
                              attempts=attempt, started=started))
        return _Rec("succeeded", output, [MAIN], attempt)

    def _check_size(self, output: Any) -> None:
        size = len(_json(output) or "")
        if size > self.config.output_cap_bytes:
            raise StepError(
                f"the step's output is {size} bytes, over the cap of {self.config.output_cap_bytes} bytes",
                kind="output_too_large",
            )

    async def _act(self, run: _Run, node: Node, iteration: str, attempt: int, config: Any) -> Any:
        """Run another plugin's action through ``services.nodes`` (its permission checked
        against the run's principal), with a journal for checkpoints inside the step."""
        actor = await self._actor_now(run)
        journal = _Journal(self, run, node, iteration)
        await journal.load()
        return await self.services.nodes.run(
            node.node, tenant_id=run.tenant_id, execution_id=run.execution_id, step_id=node.id, attempt=attempt,
            actor=actor, config=config, journal=journal, iteration=iteration,
        )

    async def _actor_now(self, run: _Run) -> sdk.Actor:
        """Who an action step acts as: never more than its principal holds now. A run acting as an
        API key revoked, expired or deleted since the publish, or as a publisher who is no longer
        a member, fails the step; a narrowed key or a lesser role narrows the run."""
        principal = run.actor.principal
        if principal is None or not principal.permissions:
            return run.actor  # nothing to narrow: it may run only nodes that need no permission
        if principal.kind == "api_key":
            now = await self.services.members.api_key(run.tenant_id, principal.id)
            gone = f"the workflow runs as API key {principal.id}, which is revoked, expired or deleted"
        else:
            now = await self.services.members.member(run.tenant_id, principal.id)
            gone = f"the workflow runs as its publisher user:{principal.id}, who is no longer a member"
        if now is None:
            raise StepError(gone, kind="permission", status=403)
        if principal.permissions <= now.permissions:
            return run.actor
        narrowed = replace(principal, permissions=principal.permissions & now.permissions)
        return replace(run.actor, principal=narrowed)

    def _pure(self, node: Node, config: Any, records: Mapping[str, _Rec], run: _Run) -> tuple[Any, list[str]]:
        key = node.node
        try:
            if key == "workflows.set":
                values = msgspec.convert(config, control.SetConfig).values
                return _jsonable(values), [MAIN]
            if key == "workflows.if":
                result = control.truthy(msgspec.convert(config, control.IfConfig).condition)
                return {"result": result}, ["true" if result else "false"]
            if key == "workflows.switch":
                sw = msgspec.convert(config, control.SwitchConfig)
                case = control.switch_case(sw)
                return {"value": _jsonable(sw.value), "case": case}, [case]
            if key == "workflows.merge":
                merged = {}
                for source, port in run.plan.incoming[node.id]:
                    rec = records.get(source)
                    if rec is not None and port in rec.ports:
                        merged[source] = rec.output
                return merged, [MAIN]
            fail = msgspec.convert(config, control.FailConfig)
            raise StepError(fail.message, kind="fail")
        except msgspec.ValidationError as exc:
            raise StepError(str(exc), kind="config") from None

    def _handled(self, node: Node, error: Any, attempts: int) -> _Rec:
        if node.on_error == "continue":
            return _Rec("failed", {"error": error}, [MAIN], attempts, error=error)
        if node.on_error == "port":
            return _Rec("failed", {"error": error}, ["error"], attempts, error=error)
        raise _Fail({**(error or {}), "node": node.id})

    async def _failed(
        self, run: _Run, node: Node, iteration: str, attempt: int, error: StepError, rows: list[dict[str, Any]],
        config: Any, in_body: bool, started: datetime | None = None,
    ) -> _Rec:
        policy = node.retry
        if attempt < policy.attempts and (policy.retry_on == "any" or error.transient):
            cap = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (attempt - 1))
            delay = random.uniform(0, cap)  # full jitter
            if in_body or delay < self.config.inline_retry_seconds:
                rows.append(self._row(run, node, iteration, "retrying", error=error.as_dict(), input=config,
                                      attempts=attempt, started=started))
                raise _Retry(delay)
            wake = self.clock() + timedelta(seconds=delay)
            rows.append(self._row(run, node, iteration, "retrying", error=error.as_dict(), input=config,
                                  attempts=attempt, started=started, wake_at=wake))
            raise _Park(wake)
        detail = error.as_dict()
        rec = self._handled_rec(node, detail, attempt)
        rows.append(self._row(run, node, iteration, "failed", error=detail, input=config, attempts=attempt,
                              ports=rec.ports if rec else [], output=rec.output if rec else None, started=started))
        if rec is None:
            raise _Fail({**detail, "node": node.id, "iteration": iteration})
        return rec

    def _handled_rec(self, node: Node, error: dict[str, Any], attempts: int) -> _Rec | None:
        if node.on_error == "fail":
            return None
        return self._handled(node, error, attempts)

    # -- parking nodes -----------------------------------------------------------------------

    async def _park_node(self, run: _Run, node: Node, attempt: int, config: Any, rows: list[dict[str, Any]]) -> _Rec:
        now = self.clock()
        key = node.node
        if key == "workflows.delay":
            delay = msgspec.convert(config, control.DelayConfig, strict=False)
            if delay.until is not None:
                if delay.until.tzinfo is None:
                    raise ValueError("until must carry a time zone")
                wake = delay.until
            else:
                wake = now + timedelta(seconds=delay.seconds or 0)
            if wake <= now:
                out = {"waited_until": wake.isoformat()}
                rows.append(self._row(run, node, TOP, "succeeded", output=out, ports=[MAIN], input=config))
                return _Rec("succeeded", out, [MAIN], attempt)
            rows.append(self._row(run, node, TOP, "waiting", input=config, attempts=attempt, wake_at=wake))
            raise _Park(wake)
        if key == "workflows.wait_event":
            wait = msgspec.convert(config, control.WaitEventConfig, strict=False)
            if wait.event.startswith(control.RUN_EVENTS):
                raise StepError(f"a run cannot wait for {wait.event!r} (the engine's own events resume nothing)",
                                kind="config")
            timeout = now + timedelta(seconds=wait.timeout_seconds) if wait.timeout_seconds else None
            rows.append(self._row(run, node, TOP, "waiting", input=config, attempts=attempt, wake_at=timeout))
            raise _Park(timeout, wait=(wait.event, wait.path, _key_text(wait.key)))
        if key == "workflows.approval":
            approval = msgspec.convert(config, control.ApprovalConfig, strict=False)
            expires = now + timedelta(seconds=approval.timeout_seconds) if approval.timeout_seconds else None
            rows.append(self._row(run, node, TOP, "waiting", input=config, attempts=attempt, wake_at=expires))

            async def ask(session: AsyncSession) -> None:
                await session.execute(
                    text(
                        "insert into workflows_approvals (tenant_id, id, execution_id, workflow_id, node_id, status, "
                        "title, details, expires_at) values (:t, :id, :e, :w, :n, 'pending', :title, "
                        "cast(:details as jsonb), :exp) on conflict (tenant_id, execution_id, node_id) do update "
                        "set status = 'pending', expires_at = excluded.expires_at, decided_by = null, decided_at = null"
                    ),
                    {"t": run.tenant_id, "id": sdk.uuid7(), "e": run.execution_id, "w": run.workflow_id, "n": node.id,
                     "title": approval.title, "details": _json(approval.details), "exp": expires},
                )

            raise _Park(expires, prepare=ask)
        # workflows.sub_workflow
        sub = msgspec.convert(config, control.SubWorkflowConfig, strict=False)
        if "workflows.executions.write" not in (run.actor.principal.permissions if run.actor.principal else ()):
            raise StepError("the workflow's principal lacks workflows.executions.write", kind="permission")
        child_id = uuid.uuid5(run.execution_id, f"{node.id}:{attempt}")

        async def spawn(session: AsyncSession) -> None:
            try:
                await self.start(
                    session, tenant_id=run.tenant_id, workflow_id=sub.workflow_id, trigger_kind="sub_workflow",
                    payload=_jsonable(sub.input), started_by=f"workflow:{run.execution_id}", execution_id=child_id,
                    parent=(run.execution_id, node.id) if sub.wait else None,
                )
            except sdk.Problem as exc:  # refused before writing: unknown, unpublished, plan spent
                error = StepError(f"the sub-workflow could not start: {classify(exc).message}", kind="sub_workflow",
                                  status=exc.status)
                if not sub.wait:
                    raise error from None
                # The step fails in this same write (its pending checkpoint, or its row when it is
                # already written) and the run is due again at once, to go on along the step's
                # error handling.
                now = self.clock()
                waiting.update(status="failed", output=None, error=_json(error.as_dict()), finished_at=now)
                await session.execute(
                    text("update workflows_steps set status = 'failed', output = null, error = cast(:e as jsonb), "
                         "finished_at = :now where execution_id = :id and node_id = :n and iteration = '0' "
                         "and status = 'waiting'"),
                    {"e": waiting["error"], "now": now, "id": run.execution_id, "n": node.id},
                )
                parking.due = now

        out = {"execution_id": str(child_id)}
        if not sub.wait:
            rows.append(self._row(run, node, TOP, "succeeded", input=config, output=out, ports=[MAIN],
                                  attempts=attempt))
            try:
                await self._flush(run, rows, spawn)
            except StepError:
                rows.pop()  # rolled back with the refused start
                raise
            await self.wake()
            return _Rec("succeeded", out, [MAIN], attempt)
        waiting = self._row(run, node, TOP, "waiting", input=config, output=out, attempts=attempt)
        rows.append(waiting)
        parking = _Park(None, prepare=spawn)
        raise parking

    async def _resume(self, run: _Run, node: Node, rec: _Rec, rows: list[dict[str, Any]]) -> _Rec:
        """A parked step still waiting when its run was claimed again."""
        now = self.clock()
        due = rec.wake_at is not None and now >= rec.wake_at
        key = node.node
        if key == "workflows.delay":
            if due:
                out = {"waited_until": rec.wake_at.isoformat() if rec.wake_at else None}
                rows.append(self._row(run, node, TOP, "succeeded", output=out, ports=[MAIN], attempts=rec.attempts))
                return _Rec("succeeded", out, [MAIN], rec.attempts)
            raise _Park(rec.wake_at)
        if key == "workflows.wait_event":
            if due:
                return await self._failed(run, node, TOP, node.retry.attempts,
                                          StepError("timed out waiting for the event", kind="timeout"), rows, None,
                                          False)
            raise _Park(rec.wake_at, wait=await self._wait_of(run))
        if key == "workflows.approval":
            if due:
                config = msgspec.convert(render(node.config, self._scope(run, run.records)), control.ApprovalConfig,
                                         strict=False)

                async def expire(session: AsyncSession) -> None:
                    await session.execute(
                        text("update workflows_approvals set status = 'expired' where execution_id = :e "
                             "and node_id = :n "
                             "and status = 'pending'"),
                        {"e": run.execution_id, "n": node.id},
                    )

                await self._flush(run, rows, expire)
                if config.on_timeout == "reject":
                    out = {"decision": "expired"}
                    rows.append(self._row(run, node, TOP, "succeeded", output=out, ports=["rejected"],
                                          attempts=rec.attempts))
                    return _Rec("succeeded", out, ["rejected"], rec.attempts)
                return await self._failed(run, node, TOP, node.retry.attempts,
                                          StepError("the approval timed out", kind="timeout"), rows, None, False)
            raise _Park(rec.wake_at)
        raise _Park(None)  # a sub-workflow: its end resumes the run

    async def _wait_of(self, run: _Run) -> tuple[str, str, str] | None:
        async with self.services.data.tenant(run.tenant_id) as session:
            row = (
                await session.execute(
                    text("select wait_event, wait_path, wait_key from workflows_executions where id = :id"),
                    {"id": run.execution_id},
                )
            ).first()
        if row is None or row.wait_event is None:
            return None
        return row.wait_event, row.wait_path, row.wait_key

    # -- for-each ----------------------------------------------------------------------------

    async def _for_each(
        self, run: _Run, node: Node, iteration: str, attempt: int, config: Any, records: dict[str, _Rec],
        scope: dict[str, Any], rows: list[dict[str, Any]],
    ) -> _Rec:
        loop = msgspec.convert(config, control.ForEachConfig, strict=False)
        if not isinstance(loop.items, list):
            raise StepError("items must be a list", kind="config")
        items: list[Any] = loop.items
        existing = records.get(node.id)
        progress = existing.output if existing is not None and isinstance(existing.output, dict) else {}
        resuming = existing is not None
        done = int(progress.get("done", 0))
        succeeded = int(progress.get("succeeded", 0))
        failed = int(progress.get("failed", 0))
        last: deque[Any] = deque(progress.get("last", []), maxlen=loop.keep)
        started = self.clock()
        short = {"items": f"<{len(items)} items>", "concurrency": loop.concurrency, "keep": loop.keep}

        def checkpoint(status: str) -> dict[str, Any]:
            state = {"done": done, "succeeded": succeeded, "failed": failed, "last": list(last)}
            return self._row(run, node, iteration, status, output=state, input=short, attempts=attempt,
                             started=started)

        rows.append(checkpoint("running"))
        await self._flush(run, rows)
        body = run.plan.bodies.get(node.id, [])
        entries = run.plan.entries.get(node.id, set())
        gate = asyncio.Semaphore(loop.concurrency)
        loop_error = loop.on_item_error
        base_steps = scope["steps"]

        async def one(index: int, item: Any, known: dict[str, _Rec]) -> tuple[bool, Any]:
            it = str(index) if iteration == TOP else f"{iteration}.{index}"
            async with gate:
                item_records = dict(known)
                local = {**scope, "steps": dict(base_steps), "item": item, "index": index}
                own_rows: list[dict[str, Any]] = []
                all_records = {**records, **item_records}
                try:
                    last_id = await self._walk(run, body, it, all_records, local, entries=entries, writes=own_rows,
                                               in_body=True)
                except _Fail as exc:
                    await self._flush(run, own_rows)
                    if loop_error == "continue":
                        return False, {"error": exc.error}
                    raise
                await self._flush(run, own_rows)
                return True, all_records[last_id].output if last_id else None

        try:
            for start in range(done, len(items), self.config.page_size):
                page = items[start:start + self.config.page_size]
                known = await self._known(run, body, iteration, start, len(page)) if resuming else {}
                results = await asyncio.gather(
                    *(one(start + i, item, known.get(start + i, {})) for i, item in enumerate(page))
                )
                for ok, result in results:
                    if ok:
                        succeeded += 1
                    else:
                        failed += 1
                    last.append(result)
                done = start + len(page)
                rows.append(checkpoint("running"))
                await self._flush(run, rows)
        except _Fail as exc:
            error = StepError(f"item failed: {exc.error.get('message')}", kind="item")
            return await self._failed(run, node, iteration, node.retry.attempts, error, rows, short, False, started)
        output = {"count": len(items), "succeeded": succeeded, "failed": failed, "last": list(last)}
        rows.append(self._row(run, node, iteration, "succeeded", output=output, ports=[MAIN], input=short,
                              attempts=attempt, started=started))
        return _Rec("succeeded", output, [MAIN], attempt)

    async def _known(
        self, run: _Run, body: list[Node], iteration: str, start: int, count: int
    ) -> dict[int, dict[str, _Rec]]:
        """Checkpoints of a page of a for-each's items (only when a loop resumes)."""
        its = [str(i) if iteration == TOP else f"{iteration}.{i}" for i in range(start, start + count)]
        async with self.services.data.tenant(run.tenant_id) as session:
            found = (
                await session.execute(
                    text(
                        "select node_id, iteration, status, output, ports, attempts, wake_at, error "
                        "from workflows_steps "
                        "where execution_id = :e and node_id = any(:nodes) and iteration = any(:its)"
                    ),
                    {"e": run.execution_id, "nodes": [n.id for n in body], "its": its},
                )
            ).all()
        out: dict[int, dict[str, _Rec]] = {}
        for s in found:
            index = int(s.iteration.rsplit(".", 1)[-1])
            out.setdefault(index, {})[s.node_id] = _Rec(
                s.status, s.output, list(s.ports or [MAIN]), s.attempts, s.wake_at, s.error
            )
        return out

    # -- ending a claim ----------------------------------------------------------------------

    async def _park(self, run: _Run, park: _Park) -> str:
        due = park.due
        if run.deadline is not None and (due is None or due > run.deadline):
            due = run.deadline
        wait = park.wait

        async def parked(session: AsyncSession) -> None:
            nonlocal due
            moved = await session.execute(
                text(
                    "update workflows_executions set status = 'waiting', due_at = :due, lease_owner = null, "
                    "lease_until = null, wait_event = :we, wait_path = :wp, wait_key = :wk where tenant_id = :t "
                    "and id = :id and status = 'running' and lease_owner = :me"
                ),
                {"due": due, "we": wait[0] if wait else None, "wp": wait[1] if wait else None,
                 "wk": wait[2] if wait else None, "t": run.tenant_id, "id": run.execution_id, "me": self.worker_id},
            )
            if moved.rowcount == 0:  # type: ignore[attr-defined]
                raise _LeaseLost
            if park.prepare is not None:
                await park.prepare(session)
                if park.due is not None and (due is None or park.due < due):
                    # A refused sub-workflow failed its step: the run is due again at once.
                    due = park.due
                    await session.execute(
                        text("update workflows_executions set due_at = :due where tenant_id = :t and id = :id"),
                        {"due": due, "t": run.tenant_id, "id": run.execution_id},
                    )

        await self._flush(run, run.writes, parked, fenced_by_prepare=True)
        if park.prepare is not None:
            await self.wake()  # a child run may be due
        if due is not None:
            await self.wake(at=due)
        return "waiting"

    async def _finish(self, run: _Run, status: str, *, output: Any = None, error: Any = None) -> str:
        if run.parent is None and not (
            status == "failed" and run.plan.settings.error_workflow and run.trigger_kind != "error"
        ):
            # The common end (nothing else to start or resume): committed with the other runs
            # ending at the same moment, in one transaction per tenant.
            async with run.lock:
                ending = _Ending(run, status, _json(output), _json(error), error, self.worker_id, self.clock())
                if not await _finisher(self.services).end(ending):
                    raise _LeaseLost
            run.writes.clear()
            return status
        wake_parent = False

        async def finished(session: AsyncSession) -> None:
            nonlocal wake_parent
            now = self.clock()
            ended = await session.execute(
                text(
                    "update workflows_executions set status = :s, output = cast(:o as jsonb), "
                    "error = cast(:e as jsonb), "
                    "finished_at = :now, due_at = null, lease_owner = null, lease_until = null, wait_event = null "
                    "where tenant_id = :t and id = :id and status = 'running' and lease_owner = :me"
                ),
                {"s": status, "o": _json(output), "e": _json(error), "now": now, "t": run.tenant_id,
                 "id": run.execution_id, "me": self.worker_id},
            )
            if ended.rowcount == 0:  # type: ignore[attr-defined]
                raise _LeaseLost
            await self.services.changes.emit(
                session, tenant_id=run.tenant_id, event=f"workflows.execution.{status}",
                payload={"id": str(run.execution_id), "workflow_id": str(run.workflow_id),
                         "version": run.version_number, "trigger_kind": run.trigger_kind, "error": error},
            )
            if run.parent is not None:
                wake_parent = await resume_parent(session, run.parent, status, output, error, now)
            if status == "failed" and run.plan.settings.error_workflow and run.trigger_kind != "error":
                try:
                    await self.start(
                        session, tenant_id=run.tenant_id, workflow_id=run.plan.settings.error_workflow,
                        trigger_kind="error", started_by=f"workflow:{run.execution_id}",
                        execution_id=uuid.uuid5(run.execution_id, "error-workflow"),
                        payload={"execution_id": str(run.execution_id), "workflow_id": str(run.workflow_id),
                                 "version": run.version_number, "error": error},
                    )
                    wake_parent = True
                except sdk.Problem as exc:
                    log.warning("error workflow of %s not started: %s", run.workflow_id, exc)

        await self._flush(run, run.writes, finished, fenced_by_prepare=True)
        if wake_parent:
            await self.wake()
        return status

    # -- sweeping and scheduling ---------------------------------------------------------------

    async def due(self) -> int:
        """How many runs are due now (the sweeper enqueues wake-ups for them)."""
        async with self.services.data.untenanted() as session:
            await session.execute(text(ENGINE_SETTING))
            return int(
                (
                    await session.execute(
                        text("select count(*) from (select 1 from workflows_executions where due_at <= :now "
                             "limit 1000) d"),
                        {"now": self.clock()},
                    )
                ).scalar_one()
            )

    async def sweep(self) -> int:
        """The safety net: fire due schedule ticks, wake workers for due runs (a lost wake-up, a
        flushed Redis, an expired lease), drop runs past retention. Returns the due count."""
        await self.fire_schedules()
        count = await self.due()
        for _ in range(min(count, 4)):
            await self.wake()
        await self.cleanup()
        return count

    async def fire_schedules(self, limit: int = 100) -> int:
        """Start a run for each due schedule tick. Each tick is claimed by moving ``next_run_at`` on
        with a compare-and-set in the transaction that creates its run (whose id is derived from
        the tick), so several workers and restarts neither double nor skip a tick."""
        from plugins.workflows.triggers import next_tick

        now = self.clock()
        async with self.services.data.untenanted() as session:
            await session.execute(text(ENGINE_SETTING))
            due = (
                await session.execute(
                    text("select tenant_id, id, cron, timezone, next_run_at from workflows_schedules "
                         "where next_run_at <= :now order by next_run_at limit :n"),
                    {"now": now, "n": limit},
                )
            ).all()
        fired = 0
        for row in due:
            tick = row.next_run_at
            following = next_tick(row.cron, row.timezone, tick)
            try:
                async with self.services.data.tenant(row.tenant_id) as session:
                    moved = await session.execute(
                        _MOVE_TICK,
                        {"next": following, "id": row.id, "tick": tick},
                    )
                    if moved.rowcount == 0:  # type: ignore[attr-defined]
                        continue  # another worker took this tick
                    await self.start(
                        session, tenant_id=row.tenant_id, workflow_id=row.id, trigger_kind="schedule",
                        payload={"scheduled_for": tick.isoformat()}, started_by="schedule",
                        execution_id=uuid.uuid5(row.id, tick.isoformat()),
                    )
                fired += 1
            except sdk.Problem as exc:  # no published version, plan spent: the tick is skipped
                log.warning("schedule of workflow %s at %s not run: %s", row.id, tick, exc)
                async with self.services.data.tenant(row.tenant_id) as session:
                    await session.execute(
                        _MOVE_TICK,
                        {"next": following, "id": row.id, "tick": tick},
                    )
        if fired:
            await self.wake()
        return fired

    async def cleanup(self, limit: int = 1000) -> int:
        """Delete finished runs older than their retention: the workflow version's
        ``retention_days``, else the tenant's (plugin settings), else the engine's default. Their
        steps and approvals go with them. Returns how many."""
        now = self.clock()
        async with self.services.data.untenanted() as session:
            await session.execute(text(ENGINE_SETTING))
            result = await session.execute(
                text(
                    "delete from workflows_executions e using (select x.tenant_id, x.id from workflows_executions x "
                    "join workflows_versions v on v.tenant_id = x.tenant_id and v.id = x.version_id "
                    "left join workflows_tenants t on t.tenant_id = x.tenant_id "
                    "where x.finished_at is not null and x.finished_at < cast(:now as timestamptz) - make_interval("
                    "days => coalesce((v.settings ->> 'retention_days')::int, t.retention_days, :days)) "
                    "limit :n) old where e.tenant_id = old.tenant_id and e.id = old.id"
                ),
                {"now": now, "days": self.config.retention_days, "n": limit},
            )
        return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class _Ending:
    """A run's end waiting for :class:`_Finisher` to commit it."""

    run: _Run
    status: str
    output: str | None
    error: str | None
    error_value: Any
    owner: str
    now: datetime
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


_END_MANY = text(
    "update workflows_executions e set status = u.status, output = cast(u.output as jsonb), "
    "error = cast(u.error as jsonb), finished_at = u.now, due_at = null, lease_owner = null, lease_until = null, "
    "wait_event = null from unnest(cast(:ids as uuid[]), cast(:statuses as text[]), cast(:outputs as text[]), "
    "cast(:errors as text[]), cast(:owners as text[]), cast(:nows as timestamptz[])) "
    "as u(id, status, output, error, owner, now) "
    "where e.tenant_id = :t and e.id = u.id and e.status = 'running' and e.lease_owner = u.owner returning e.id"
)


class _Finisher:
    """Group commit of runs' ends, per process and plugin facade.

    A run that ends hands its last checkpoints and status over and waits for their commit. When no
    write is in flight it goes at once; while one is, the ends arriving meanwhile are gathered and
    written together when it is done: one transaction per tenant (the runs' rows fenced by each
    one's lease in one statement, their steps in one, their events in one). A burst of runs thus
    costs a few transactions instead of one each, and a lone run waits for nobody."""

    def __init__(self, services: sdk.Services) -> None:
        self.services = services
        self.pending: list[_Ending] = []
        self.writer: asyncio.Task[None] | None = None

    async def end(self, ending: _Ending) -> bool:
        """Commit ``ending``; ``False`` when the run's lease was lost (nothing written for it)."""
        self.pending.append(ending)
        writer = self.writer
        if writer is None or writer.done() or writer.get_loop() is not asyncio.get_running_loop():
            # (a writer of a loop that has gone away, in tests, never comes back)
            self.pending = [e for e in self.pending if e.done.get_loop() is asyncio.get_running_loop()]
            self.writer = asyncio.create_task(self._write_pending())
        return await ending.done

    async def _write_pending(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                by_tenant: dict[uuid.UUID, list[_Ending]] = {}
                for ending in batch:
                    by_tenant.setdefault(ending.run.tenant_id, []).append(ending)
                await asyncio.gather(*(self._write(tenant, endings) for tenant, endings in by_tenant.items()))
        finally:
            if self.writer is asyncio.current_task():
                self.writer = None

    async def _write(self, tenant_id: uuid.UUID, endings: list[_Ending]) -> None:
        endings.sort(key=lambda e: e.run.execution_id.bytes)  # rows locked in one order
        try:
            async with self.services.data.tenant(tenant_id) as session:
                ended = set(
                    (
                        await session.execute(
                            _END_MANY,
                            {"t": tenant_id, "ids": [e.run.execution_id for e in endings],
                             "statuses": [e.status for e in endings], "outputs": [e.output for e in endings],
                             "errors": [e.error for e in endings], "owners": [e.owner for e in endings],
                             "nows": [e.now for e in endings]},
                        )
                    ).scalars()
                )
                kept = [e for e in endings if e.run.execution_id in ended]
                steps = [row for e in kept for row in e.run.writes]
                if steps:
                    await session.execute(_UPSERT_STEP, steps)
                if kept:
                    await self.services.changes.emit_many(
                        session, tenant_id=tenant_id,
                        events=[(f"workflows.execution.{e.status}", {
                            "id": str(e.run.execution_id), "workflow_id": str(e.run.workflow_id),
                            "version": e.run.version_number, "trigger_kind": e.run.trigger_kind,
                            "error": e.error_value,
                        }) for e in kept],
                    )
        except BaseException as exc:
            for ending in endings:
                if not ending.done.done():
                    ending.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("write cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for ending in endings:
            if not ending.done.done():
                ending.done.set_result(ending.run.execution_id in ended)


_FINISHERS: weakref.WeakKeyDictionary[sdk.Services, _Finisher] = weakref.WeakKeyDictionary()


def _finisher(services: sdk.Services) -> _Finisher:
    found = _FINISHERS.get(services)
    if found is None:
        found = _FINISHERS[services] = _Finisher(services)
    return found


@dataclass
class _WorkLoop:
    """The ``workflows.work`` job claiming in this process (one per plugin facade)."""

    owner: object | None = None
    """A token of the job that claims now, ``None`` when none does."""
    more: asyncio.Event = field(default_factory=asyncio.Event)


_LOOPS: weakref.WeakKeyDictionary[sdk.Services, _WorkLoop] = weakref.WeakKeyDictionary()
LINGER_SECONDS = 0.5
"""How long a work job that ran out of due runs stays, looking for new ones, before it ends;
longer than :data:`WAKE_WINDOW_SECONDS` (coalesced wake-ups rely on it)."""
LINGER_POLL_SECONDS = 0.01
"""How soon a lingering work job asks PostgreSQL again whether a run became due (the pause
doubles while none comes, up to :data:`LINGER_POLL_MAX_SECONDS`)."""
LINGER_POLL_MAX_SECONDS = 0.08


async def work_job(services: sdk.Services, *, batch: int, parallel: int, engine: Engine | None = None) -> int:
    """The ``workflows.work`` job: claim and run due runs, at most ``batch`` claims, then hand on
    to a fresh job. Returns how many claims it ran.

    One job per process does the claiming. A wake-up job that finds one already at work only
    tells it to look again (``more``) and ends at once, so a burst of wake-ups costs one claim
    loop, not one per wake-up. When nothing is due the job lingers for :data:`LINGER_SECONDS`,
    polling PostgreSQL (the truth) from :data:`LINGER_POLL_SECONDS` on or woken by another wake-up
    job, so that a run started right after another does not wait for the queue's next poll.
    Giving the claim up has no ``await`` between the last look at ``more`` and ``owner = None``:
    a wake-up is either seen by the claiming job or makes its own job the claiming one. While
    runs are in flight a wake-up makes it claim at once (``nudge``), so a slow action does not
    hold new runs back; a job whose batch is spent hands the claiming on before it waits for its
    last runs."""
    state = _LOOPS.get(services)
    if state is None:
        state = _LOOPS[services] = _WorkLoop()
    if state.owner is not None:
        state.more.set()
        return 0
    me = state.owner = object()
    engine = engine or Engine(services)
    loop = asyncio.get_running_loop()
    done = 0

    async def hand_on() -> None:
        # The batch is spent: a fresh job claims from now on while this one waits for its runs.
        if state.owner is me:
            state.owner = None
        await engine.wake(coalesce=False)

    try:
        idle_until = loop.time() + LINGER_SECONDS
        pause = LINGER_POLL_SECONDS
        while done < batch:
            state.more.clear()
            ran = await engine.work(limit=batch - done, parallel=parallel, nudge=state.more, on_limit=hand_on)
            done += ran
            if ran or state.more.is_set():
                idle_until = loop.time() + LINGER_SECONDS
                pause = LINGER_POLL_SECONDS
                continue
            if loop.time() >= idle_until:
                break  # no await since ``more`` was last looked at
            # Linger: claim again after a pause (doubling up to LINGER_POLL_MAX_SECONDS while
            # nothing comes), or at once when a wake-up comes. A claim that finds nothing due is
            # as cheap as a probe (one statement).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.more.wait(), pause)
            pause = min(pause * 2, LINGER_POLL_MAX_SECONDS)
    finally:
        if state.owner is me:
            state.owner = None
    return done


class _Journal:
    """``ctx.journal``: checkpoints inside one step (an agent's tool calls), kept in the step
    row's ``journal`` column; a later attempt of the step gets the stored results back."""

    def __init__(self, engine: Engine, run: _Run, node: Node, iteration: str) -> None:
        self._engine, self._run, self._node, self._iteration = engine, run, node, iteration
        self._done: dict[str, Any] = {}

    async def load(self) -> None:
        async with self._engine.services.data.tenant(self._run.tenant_id) as session:
            row = (
                await session.execute(
                    text("select journal from workflows_steps where execution_id = :e and node_id = :n "
                         "and iteration = :i"),
                    {"e": self._run.execution_id, "n": self._node.id, "i": self._iteration},
                )
            ).first()
        self._done = dict(row.journal or {}) if row is not None else {}

    async def step(self, name: str, work: Callable[[], Awaitable[Any]], /) -> Any:
        if name in self._done:
            return self._done[name]
        result = _jsonable(await work())
        entry = _json({name: result})

        async def keep(session: AsyncSession) -> None:
            await session.execute(
                text("update workflows_steps set journal = coalesce(journal, '{}'::jsonb) || cast(:j as jsonb) "
                     "where execution_id = :e and node_id = :n and iteration = :i"),
                {"j": entry, "e": self._run.execution_id, "n": self._node.id, "i": self._iteration},
            )

        await self._engine._flush(self._run, [], keep)
        self._done[name] = result
        return result


class _Retry(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__("retry")
        self.delay = delay


def _key_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value, enc_hook=str).decode()


async def resume_parent(
    session: AsyncSession, parent: tuple[uuid.UUID, str], status: str, output: Any, error: Any, now: datetime
) -> bool:
    """Hand a finished child's result to the sub-workflow step waiting for it; whether the parent
    was woken."""
    parent_id, node_id = parent
    ok = status == "succeeded"
    await session.execute(
        text(
            "update workflows_steps set status = :s, output = cast(:o as jsonb), error = cast(:e as jsonb), "
            "ports = :ports, finished_at = :now where execution_id = :p and node_id = :n and iteration = '0' "
            "and status = 'waiting'"
        ),
        {"s": "succeeded" if ok else "failed", "o": _json(output if ok else None),
         "e": _json(None if ok else {"message": f"the sub-workflow {status}", "type": "sub_workflow", "child": error}),
         "ports": [MAIN] if ok else [], "now": now, "p": parent_id, "n": node_id},
    )
    woken = await session.execute(
        text("update workflows_executions set status = 'queued', due_at = :now where id = :p and status = 'waiting'"),
        {"now": now, "p": parent_id},
    )
    return bool(woken.rowcount)  # type: ignore[attr-defined]
