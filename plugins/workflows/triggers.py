"""Triggers: schedule ticks, domain events (and event waits), inbound webhooks.

- ``workflows.schedule``: :func:`next_tick` computes ticks with ``cronsim`` in the trigger's IANA
  zone (a tick in a skipped hour runs at its end, a repeated hour runs once); the next tick is a
  durable ``workflows_schedules`` row the engine claims with a compare-and-set (see
  :meth:`Engine.fire_schedules`).
- ``workflows.event`` and other plugins' event triggers (``NodeSpec.event``/``filter``): one
  ``sdk.EventHandler(event="*")``, :func:`on_event`, starts the published versions listening to
  the event (the run's id derives from the event's id, so a redelivered event starts nothing
  new) and resumes runs parked in ``workflows.wait_event`` whose correlation key matches.
- ``workflows.webhook``: ``POST /api/workflows/{id}/webhook`` gives a workflow an unguessable
  ``/hooks/workflows/<token>`` URL (the kernel's inbound routes); :func:`on_webhook` verifies the
  optional signature, starts a run and answers 202 with its id, or (``respond="result"``) waits
  up to ``timeout_seconds`` for its output.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from cronsim import CronSim
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import sdk
from plugins.workflows import nodes as control
from plugins.workflows.engine import TERMINAL, Engine, StaleTrigger, _key_text
from plugins.workflows.expressions import ExpressionError, render

__all__ = ["EVENT_HANDLER", "WEBHOOK_ROUTE", "next_tick", "on_event", "on_events", "on_webhook"]

log = logging.getLogger("businessos.workflows")

_HIDDEN_HEADERS = frozenset({
    "authorization", "cookie", "x-api-key", "webhook-signature", "webhook-id", "webhook-timestamp",
})


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after``, in UTC."""
    zone = ZoneInfo(timezone)
    return next(iter(CronSim(cron, after.astimezone(zone)))).astimezone(UTC)


def _dig(payload: Any, path: str) -> Any:
    value = payload
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


async def on_event(ctx: sdk.EventContext) -> None:
    """Resume the runs waiting for this event and start the workflows it triggers."""
    await on_events([ctx])


async def on_events(batch: Sequence[sdk.EventContext]) -> None:
    """:func:`on_event` for several events of one tenant, in one transaction: one round trip finds
    the runs waiting for any of them and the published versions any of them starts. Most events
    (a run's own ``workflows.execution.*``, say) match nothing and cost only that statement."""
    if not batch:
        return
    first = batch[0]
    engine = Engine(first.services)
    woke = False
    async with first.services.data.tenant(first.tenant_id) as session:
        found = (
            await session.execute(
                text("select true as waiting, wait_event as event, id, wait_path, wait_key, null::uuid as workflow_id, "
                     "null::integer as number, null::uuid as version_id, null::text as trigger_key, "
                     "null::jsonb as graph, null::jsonb as settings from workflows_executions "
                     "where status = 'waiting' and wait_event = any(:e) "
                     "union all select false, v.trigger_event, null, null, null, v.workflow_id, v.number, v.id, "
                     "v.trigger_key, v.graph, v.settings from workflows_versions v "
                     "join workflows_definitions d on d.tenant_id = v.tenant_id and d.id = v.workflow_id "
                     "and d.published_version = v.number where d.active and v.trigger_event = any(:e)"),
                {"e": sorted({ctx.event for ctx in batch})},
            )
        ).all()
        if not found:
            return
        specs: dict[str, sdk.NodeSpec] = {}
        if any(not r.waiting and r.trigger_key not in control.TRIGGER_KEYS for r in found):
            specs = {node.key: node.spec for node in await first.services.nodes.catalogue(first.tenant_id)}
        resumed: set[uuid.UUID] = set()
        for ctx in batch:
            rows = [r for r in found if r.event == ctx.event]
            woke = await _resume_waiting(session, engine, ctx, [r for r in rows if r.waiting], resumed) or woke
            woke = await _start_listeners(session, engine, ctx, [r for r in rows if not r.waiting], specs) or woke
    if woke:
        await engine.wake()


async def _resume_waiting(
    session: AsyncSession, engine: Engine, ctx: sdk.EventContext, waiting: Sequence[Any], resumed: set[uuid.UUID]
) -> bool:
    """Resume the runs parked in ``workflows.wait_event`` whose correlation key this event carries."""
    now = engine.clock()
    woke = False
    for row in waiting:
        if row.id in resumed or _key_text(_dig(ctx.payload, row.wait_path or "id")) != row.wait_key:
            continue
        await session.execute(
            text("update workflows_steps set status = 'succeeded', output = cast(:o as jsonb), ports = :p, "
                 "finished_at = :now where execution_id = :id and node_key = 'workflows.wait_event' "
                 "and iteration = '0' and status = 'waiting'"),
            {"o": msgspec.json.encode({"event": ctx.event, "payload": ctx.payload}).decode(), "p": ["main"],
             "now": now, "id": row.id},
        )
        await session.execute(
            text("update workflows_executions set status = 'queued', due_at = :now, wait_event = null "
                 "where id = :id and status = 'waiting'"),
            {"now": now, "id": row.id},
        )
        resumed.add(row.id)
        woke = True
    return woke


async def _start_listeners(
    session: AsyncSession, engine: Engine, ctx: sdk.EventContext, listeners: Sequence[Any],
    specs: dict[str, sdk.NodeSpec],
) -> bool:
    """Start a run of each published version this event triggers (its filter passing); the run's
    id derives from the event's, so a redelivery starts nothing new."""
    woke = False
    for row in listeners:
        trigger = next((n for n in row.graph.get("nodes", []) if n.get("node") == row.trigger_key), None)
        if trigger is None or not _matches(row.trigger_key, trigger.get("config") or {}, ctx.payload, specs):
            continue
        event_id = ctx.event_id or uuid.uuid5(uuid.NAMESPACE_URL, msgspec.json.encode(ctx.payload).decode())
        try:
            started = await engine.start(
                session, tenant_id=ctx.tenant_id, workflow_id=row.workflow_id, trigger_kind="event",
                payload=ctx.payload, started_by=f"event:{ctx.event}", version_number=row.number,
                execution_id=uuid.uuid5(event_id, str(row.workflow_id)),
                version=(row.version_id, row.number, row.settings),
            )
        except sdk.PaymentRequired as exc:
            log.warning("workflow %s not started by %s: %s", row.workflow_id, ctx.event, exc)
            continue
        woke = woke or started is not None
    return woke


def _matches(key: str, config: dict[str, Any], payload: dict[str, Any], specs: dict[str, sdk.NodeSpec]) -> bool:
    if key == "workflows.event":
        expression = config.get("filter")
        if not expression:
            return True
        try:
            return control.truthy(render(expression, {"trigger": payload}))
        except ExpressionError as exc:
            log.warning("event trigger filter failed: %s", exc)
            return False
    spec = specs.get(key)
    if spec is None or spec.filter is None:
        return spec is not None
    try:
        typed = msgspec.convert(config, spec.config) if spec.config is not None else config
        return bool(spec.filter(typed, payload))
    except Exception:
        log.warning("trigger filter of %s failed", key, exc_info=True)
        return False


_HOOK_CONFIGS: dict[uuid.UUID, control.WebhookTriggerConfig] = {}
"""Webhook trigger configs by version id (versions never change); bounded like the engine's plans."""
_HOOK_SQL = text(
    "select d.id, d.active, v.id as version_id, v.number, v.settings, "
    "case when v.id = any(:known) then null else v.graph end as graph from workflows_definitions d "
    "left join workflows_versions v on v.tenant_id = d.tenant_id and v.workflow_id = d.id "
    "and v.number = d.published_version where d.webhook_endpoint_id = :ep"
)


@dataclass(frozen=True)
class _Hook:
    """The workflow that answered at an endpoint: its published version and trigger config."""

    workflow_id: uuid.UUID
    version: tuple[uuid.UUID, int, Any]
    """(id, number, settings) of the version."""
    config: control.WebhookTriggerConfig


_HOOKS: dict[uuid.UUID, _Hook] = {}
"""What answered at each endpoint lately (by endpoint id), so a delivery need not read it first:
the run's insert checks that it still holds (:meth:`Engine.start`'s ``endpoint``) and a delivery
that finds it changed forgets it and reads it again. Bounded like the engine's plans."""


async def _hooked(session: AsyncSession, endpoint_id: uuid.UUID) -> _Hook:
    """The workflow answering at ``endpoint_id`` (its published version) and its trigger's config;
    the version's graph is read only when its config is not cached yet."""
    row = (await session.execute(_HOOK_SQL, {"ep": endpoint_id, "known": list(_HOOK_CONFIGS)})).first()
    if row is None or row.number is None or not row.active:
        _HOOKS.pop(endpoint_id, None)
        raise sdk.NotFound("no active workflow answers at this URL")
    config = _HOOK_CONFIGS.get(row.version_id)
    if config is None:
        graph = row.graph
        if graph is None:  # the cache was cleared since the statement was sent
            graph = (
                await session.execute(text("select graph from workflows_versions where id = :v"),
                                      {"v": row.version_id})
            ).scalar_one()
        trigger = next((n for n in graph.get("nodes", []) if n.get("node") == "workflows.webhook"), None)
        if trigger is None:
            raise sdk.Conflict("the workflow's published version has no webhook trigger")
        config = msgspec.convert(trigger.get("config") or {}, control.WebhookTriggerConfig)
        if len(_HOOK_CONFIGS) > 1000:
            _HOOK_CONFIGS.clear()
        _HOOK_CONFIGS[row.version_id] = config
    found = _Hook(row.id, (row.version_id, row.number, row.settings), config)
    if len(_HOOKS) > 1000:
        _HOOKS.clear()
    _HOOKS[endpoint_id] = found
    return found


def _payload(hook: sdk.InboundWebhook, config: control.WebhookTriggerConfig) -> dict[str, Any]:
    try:
        body: Any = msgspec.json.decode(hook.body) if hook.body else None
    except msgspec.DecodeError:
        body = hook.body.decode("utf-8", errors="replace")
    return {
        "body": body, "method": hook.method, "query": dict(hook.query),
        "headers": {k: v for k, v in hook.headers.items()
                    if k not in _HIDDEN_HEADERS and k != config.hmac_header.lower()},
    }


async def on_webhook(hook: sdk.InboundWebhook) -> sdk.WebhookReply:
    """A delivery to a workflow's webhook URL.

    When this process remembers what answers at the endpoint, an unsigned hook takes one
    transaction with one statement for the run (which checks that the workflow still runs that
    version there), and a signed one is verified first and then takes that transaction. Otherwise
    the workflow is read first: for an unsigned hook in the run's transaction, for a signed one in
    a transaction of its own before the verification (no transaction stays open while the vault
    is read)."""
    known = _HOOKS.get(hook.endpoint_id)
    if known is not None:
        try:
            return await _deliver(hook, known)
        except (StaleTrigger, sdk.InvalidSignature):
            # Republished, deactivated or moved since, or signed for what answers there now (a new
            # version may verify otherwise): read it again.
            _HOOKS.pop(hook.endpoint_id, None)
    try:
        return await _deliver(hook, None)
    except StaleTrigger:  # changed between the read and the run's transaction of a signed hook
        raise sdk.Conflict("the workflow changed while this delivery was verified; send it again") from None


async def _deliver(hook: sdk.InboundWebhook, known: _Hook | None) -> sdk.WebhookReply:
    services = hook.services
    engine = Engine(services)
    started: uuid.UUID | None = None
    execution_id: uuid.UUID | None = None
    found = known
    if found is None or found.config.verify == "none":
        async with services.data.tenant(hook.tenant_id) as session:
            if found is None:
                found = await _hooked(session, hook.endpoint_id)
            if found.config.verify == "none":
                started = await engine.start(
                    session, tenant_id=hook.tenant_id, workflow_id=found.workflow_id, trigger_kind="webhook",
                    payload=_payload(hook, found.config), started_by="webhook", version_number=found.version[1],
                    version=found.version, endpoint=hook.endpoint_id if known is not None else None,
                )
    config = found.config
    if config.verify != "none":
        if config.secret is None:
            raise sdk.InvalidSignature("webhook signature cannot be verified")
        if config.verify == "standard":
            await hook.verify_standard(config.secret)
        else:
            await hook.verify_hmac(config.secret, sdk.HmacScheme(
                header=config.hmac_header, algorithm=config.hmac_algorithm, prefix=config.hmac_prefix,
                encoding=config.hmac_encoding, timestamp_header=config.hmac_timestamp_header,
                template=config.hmac_template,
            ))
        # A verified Standard Webhooks message id names its run: a redelivery (the sender retrying
        # within the signature's tolerance) starts nothing new and is answered with the first run.
        message_id = hook.headers.get("webhook-id") if config.verify == "standard" else None
        execution_id = uuid.uuid5(hook.endpoint_id, f"webhook-id:{message_id}") if message_id else None
        async with services.data.tenant(hook.tenant_id) as session:
            started = await engine.start(
                session, tenant_id=hook.tenant_id, workflow_id=found.workflow_id, trigger_kind="webhook",
                payload=_payload(hook, config), started_by="webhook", version_number=found.version[1],
                execution_id=execution_id, version=found.version, endpoint=hook.endpoint_id,
            )
    if started is not None:
        execution_id = started
        await engine.wake()
    assert execution_id is not None
    if config.respond == "id":
        return sdk.WebhookReply(status=202, content={"execution_id": str(execution_id), "status": "queued"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout_seconds
    pause = 0.005
    while True:
        async with services.data.tenant(hook.tenant_id) as session:
            done = (
                await session.execute(
                    text("select status, output, error from workflows_executions where id = :id"), {"id": execution_id}
                )
            ).first()
        if done is not None and done.status in TERMINAL:
            return sdk.WebhookReply(status=200, content={
                "execution_id": str(execution_id), "status": done.status, "output": done.output, "error": done.error,
            })
        if loop.time() >= deadline:
            status = done.status if done is not None else "queued"
            return sdk.WebhookReply(status=202, content={"execution_id": str(execution_id), "status": status})
        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
        pause = min(pause * 2, 0.2)


def _may_trigger(event: str) -> bool:
    return not event.startswith(control.RUN_EVENTS)


EVENT_HANDLER = sdk.EventHandler(
    event="*", handler=on_event, name="triggers", batch=on_events, accepts=_may_trigger
)
"""Every event but the engine's own (``nodes.RUN_EVENTS``), which no trigger or wait may name."""
WEBHOOK_ROUTE = sdk.WebhookRoute(name="trigger", handler=on_webhook, description="Starts a workflow run")
