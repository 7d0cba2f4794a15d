"""A workflow's definition as data: nodes, the edges between their ports, and its settings.

This is the shape stored in a draft, frozen into a published version, exported and imported as
JSON, and drawn by the console's canvas. Validation against the node catalogue (unknown keys,
configs, cycles, unreachable nodes, expressions) lives in ``plugins.workflows.validation``.

Expressions: any string in a node's ``config`` may hold ``{{ ... }}`` (the sandboxed expression
language of ``plugins.workflows.expressions``). A string that is exactly one ``{{ expr }}`` yields
the expression's value with its type (a list stays a list); otherwise the rendered text. Names in
scope: ``trigger`` (the payload that started the run), ``steps`` (``steps.<node id>.output`` of
every step that already ran), ``item`` and ``index`` inside a for-each body, ``execution`` (id,
workflow id, version, started_at) and ``env`` (the workflow's settings.variables).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "MAIN",
    "Edge",
    "Graph",
    "Node",
    "Position",
    "RetryPolicy",
    "WorkflowSettings",
]

MAIN = "main"
"""The output port every node has. Branching nodes add theirs: ``workflows.if`` answers on
``true``/``false``, ``workflows.switch`` on each case's name and ``default``,
``workflows.approval`` on ``approved``/``rejected``, and any node with ``on_error="port"`` on
``error``."""

NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class Position(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the canvas draws a node; the engine ignores it."""

    x: float = 0.0
    y: float = 0.0


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a failed step is tried again: ``attempts`` in all, waiting
    ``backoff_seconds * 2**(attempt-1)`` (capped by ``max_backoff_seconds``, with full jitter)."""

    attempts: Annotated[int, msgspec.Meta(ge=1, le=25)] = 1
    backoff_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    max_backoff_seconds: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0
    retry_on: Literal["any", "transient"] = "transient"
    """``transient``: only errors a node marks retryable (timeouts, 429/5xx, outages)."""


class Node(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of the graph: an instance of a catalogue node (``node`` is its key)."""

    id: NodeId
    node: Annotated[str, msgspec.Meta(min_length=3, max_length=120)]
    """The catalogue key, ``<plugin>.<node>`` (``workflows.set``, ``crm.create_contact``...)."""
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    position: Position = msgspec.field(default_factory=Position)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    on_error: Literal["fail", "continue", "port"] = "fail"
    """``fail`` ends the run; ``continue`` hands ``{"error": ...}`` to the ``main`` port;
    ``port`` follows the node's ``error`` edges instead."""


class Edge(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """From ``source``'s output ``port`` to ``target``."""

    source: NodeId
    target: NodeId
    port: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = MAIN


class Graph(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exactly one trigger node (a node whose catalogue kind is ``trigger``) starts the graph."""

    nodes: Annotated[list[Node], msgspec.Meta(max_length=500)] = msgspec.field(default_factory=list)
    edges: Annotated[list[Edge], msgspec.Meta(max_length=2000)] = msgspec.field(default_factory=list)


class WorkflowSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 3600.0
    """The whole run's limit, waits included."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    """Runs of this workflow at once (``None``: only the tenant's limit applies)."""
    error_workflow: uuid.UUID | None = None
    """A workflow started (with the failed run's summary as its trigger payload) when a run fails."""
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None
    """How long finished runs are kept (``None``: the tenant's default)."""
    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    """Constants the expressions read as ``env``."""
    run_as: uuid.UUID | None = None
    """An API key id of the tenant to run as; ``None``: the member who published the version."""
