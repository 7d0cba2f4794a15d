"""The workflows plugin's own catalogue nodes: control steps and triggers.

Control nodes are run by the engine itself (they branch, loop, park or start other runs); the
pure ones (set, if, switch, merge, fail) also have a ``run`` so that they can be tested alone.
Ports: ``workflows.if`` answers on ``true``/``false``, ``workflows.switch`` on the matching
case's name or ``default``, ``workflows.approval`` on ``approved``/``rejected``,
``workflows.for_each`` runs the nodes behind its ``each`` port once per item and then follows
``main``; every node may follow ``error`` when its ``on_error`` is ``port``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from kernel import sdk

__all__ = [
    "CONTROL_KEYS",
    "NODES",
    "PARKING_KEYS",
    "PURE_KEYS",
    "TRIGGER_KEYS",
    "ApprovalConfig",
    "DelayConfig",
    "EventTriggerConfig",
    "FailConfig",
    "ForEachConfig",
    "IfConfig",
    "ScheduleTriggerConfig",
    "SetConfig",
    "SubWorkflowConfig",
    "SwitchConfig",
    "WaitEventConfig",
    "WebhookTriggerConfig",
    "switch_case",
    "truthy",
]

EACH = "each"
"""The for-each port whose nodes form the loop's body."""


class SetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    values: dict[str, Any] = msgspec.field(default_factory=dict)
    """The output: each value rendered (expressions keep their type)."""


class IfConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    condition: Any = False
    """Usually ``{{ ... }}``; follows ``true`` when truthy, ``false`` otherwise."""


class SwitchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: Any = None
    cases: dict[str, Any] = msgspec.field(default_factory=dict)
    """Port name -> the value that selects it; the first equal one wins, else ``default``."""


class ForEachConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    items: Any = msgspec.field(default_factory=list)
    """A list (usually ``{{ steps.x.output.rows }}``)."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=50)] = 1
    keep: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10
    """How many of the last items' results the node's output keeps (see :class:`ForEachOutput`)."""
    on_item_error: Literal["fail", "continue"] = "fail"
    """``fail``: an item whose body fails fails the loop; ``continue``: it is counted in ``failed``."""


class ForEachOutput(msgspec.Struct, frozen=True):
    """What a for-each hands on: counts, and the last ``keep`` items' results (the output of the
    last body node each ran), oldest first. Every item's steps stay in the run's history."""

    count: int
    succeeded: int
    failed: int
    last: list[Any]


class DelayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=366 * 86400)] | None = None
    until: datetime | None = None
    """An aware date-time (or an ISO string an expression renders)."""


class WaitEventConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event: Annotated[str, msgspec.Meta(min_length=3, max_length=200)]
    key: Any = None
    """The correlation value: the run resumes on the first ``event`` whose payload at ``path``
    equals it (compared as text)."""
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "id"
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=366 * 86400)] | None = None


class ApprovalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=500)] = ""
    details: Any = None
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=366 * 86400)] | None = None
    on_timeout: Literal["fail", "reject"] = "fail"


class SubWorkflowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: uuid.UUID
    input: Any = msgspec.field(default_factory=dict)
    wait: bool = True
    """Wait for the child's result (its output becomes this step's), or go on with its id."""


class FailConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(max_length=2000)] = "the workflow failed"


class ManualTriggerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class WebhookTriggerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    verify: Literal["none", "standard", "hmac"] = "none"
    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """The vault secret holding the signing key (``verify`` other than ``none``)."""
    hmac_header: str = "x-signature"
    hmac_algorithm: Literal["sha256", "sha1", "sha512"] = "sha256"
    hmac_prefix: str = ""
    hmac_encoding: Literal["hex", "base64"] = "hex"
    hmac_timestamp_header: str | None = None
    """A header with the signing time (Unix seconds): required, and refused when over 5 minutes off."""
    hmac_template: Annotated[str, msgspec.Meta(min_length=6, max_length=200)] = "{body}"
    """What the sender signed: ``{body}``, and ``{timestamp}`` for the timestamp header's value."""
    respond: Literal["id", "result"] = "id"
    """``id``: answer 202 at once with the execution id; ``result``: wait for the output."""
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 10.0


class ScheduleTriggerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cron: Annotated[str, msgspec.Meta(min_length=9, max_length=200)]
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"


class EventTriggerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    event: Annotated[str, msgspec.Meta(min_length=3, max_length=200)]
    filter: str | None = None
    """An expression over ``trigger`` (the event's payload); the run starts when it is truthy."""


def truthy(value: Any) -> bool:
    """Python's truth, except that the text ``"false"``/``"0"``/``""`` is false (rendered text)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)


def switch_case(config: SwitchConfig) -> str:
    """The port ``config`` selects."""
    for name, expected in config.cases.items():
        if expected == config.value or (isinstance(expected, str) and expected == str(config.value)):
            return name
    return "default"


async def _set(ctx: sdk.NodeContext, config: SetConfig) -> Any:
    return dict(config.values)


async def _if(ctx: sdk.NodeContext, config: IfConfig) -> Any:
    return {"result": truthy(config.condition)}


async def _switch(ctx: sdk.NodeContext, config: SwitchConfig) -> Any:
    return {"value": config.value, "case": switch_case(config)}


async def _fail(ctx: sdk.NodeContext, config: FailConfig) -> Any:
    raise sdk.Unprocessable(config.message)


PURE_KEYS = frozenset({"workflows.set", "workflows.if", "workflows.switch", "workflows.merge", "workflows.fail"})
"""Nodes without side effects: the engine checkpoints them with the next write, not before."""
RUN_EVENTS = "workflows.execution."
"""The engine's own events (a run started, ended): they start and resume no run, or a workflow
listening to them would feed itself; the error workflow and the sub-workflow step are the ways to
act on another run's end."""


PARKING_KEYS = frozenset({"workflows.delay", "workflows.wait_event", "workflows.approval", "workflows.sub_workflow"})
TRIGGER_KEYS = frozenset({"workflows.manual", "workflows.webhook", "workflows.schedule", "workflows.event"})
CONTROL_KEYS = PURE_KEYS | PARKING_KEYS | {"workflows.for_each"}

NODES = [
    sdk.NodeSpec("workflows.set", "action", "Set values", "Hand on values built from expressions.",
                 config=SetConfig, run=_set),
    sdk.NodeSpec("workflows.if", "action", "If", "Follow `true` or `false`.", config=IfConfig, run=_if,
                 ports=("true", "false")),
    sdk.NodeSpec("workflows.switch", "action", "Switch", "Follow the port of the first matching case, or `default`.",
                 config=SwitchConfig, run=_switch, ports=("*",)),
    sdk.NodeSpec("workflows.for_each", "action", "For each",
                 "Run the nodes behind `each` once per item (bounded concurrency), then follow `main`.",
                 config=ForEachConfig, output=ForEachOutput, ports=("main", EACH)),
    sdk.NodeSpec("workflows.merge", "action", "Merge", "Wait for every branch that runs; output each by node id."),
    sdk.NodeSpec("workflows.delay", "action", "Delay", "Park the run for a while or until a time.",
                 config=DelayConfig),
    sdk.NodeSpec("workflows.wait_event", "action", "Wait for an event",
                 "Park the run until an event whose payload matches the correlation key, or a timeout.",
                 config=WaitEventConfig),
    sdk.NodeSpec("workflows.approval", "action", "Approval",
                 "Park the run until a holder of workflows.approvals.decide approves or rejects it.",
                 config=ApprovalConfig, ports=("approved", "rejected")),
    sdk.NodeSpec("workflows.sub_workflow", "action", "Sub-workflow", "Run another workflow's published version.",
                 config=SubWorkflowConfig, permission="workflows.executions.write"),
    sdk.NodeSpec("workflows.fail", "action", "Fail", "End the run as failed with a message.",
                 config=FailConfig, run=_fail),
    sdk.NodeSpec("workflows.manual", "trigger", "Manual", "Started through the API with an input payload.",
                 config=ManualTriggerConfig),
    sdk.NodeSpec("workflows.webhook", "trigger", "Webhook",
                 "Started by a request to the workflow's secret URL (optionally signed).",
                 config=WebhookTriggerConfig),
    sdk.NodeSpec("workflows.schedule", "trigger", "Schedule", "Started at each tick of a cron in a time zone.",
                 config=ScheduleTriggerConfig),
    sdk.NodeSpec("workflows.event", "trigger", "Event", "Started by any event of the catalogue, with a filter.",
                 config=EventTriggerConfig),
]
