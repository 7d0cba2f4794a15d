"""Validation of a workflow's graph against a tenant's node catalogue: every error names its node
(``nodes.<id>...``) or edge (``edges[<i>]...``) and the field."""

from __future__ import annotations

from typing import Any

import msgspec

from kernel import sdk
from plugins.crm.nodes import NODES as CRM_NODES
from plugins.workflows.ai_nodes import AI_NODES
from plugins.workflows.graph import Graph, WorkflowSettings
from plugins.workflows.validation import validate


class ManualConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schema: dict[str, Any] | None = None


class SetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    values: dict[str, Any]


class IfConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    condition: bool


class SwitchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: str
    cases: list[str]


async def _nothing(ctx: sdk.NodeContext, config: Any) -> None:
    return None


# Stand-ins for the engine's built-ins: what matters here is their kind, config and ports.
BUILT_INS = [
    sdk.NodeSpec(key="workflows.manual", kind="trigger", title="Manual", config=ManualConfig),
    sdk.NodeSpec(key="workflows.set", kind="action", title="Set", config=SetConfig, run=_nothing),
    sdk.NodeSpec(key="workflows.if", kind="action", title="If", config=IfConfig, run=_nothing, ports=("true", "false")),
    sdk.NodeSpec(
        key="workflows.switch", kind="action", title="Switch", config=SwitchConfig, run=_nothing, ports=("*",)
    ),
]
CATALOGUE = {
    n.key: n
    for n in [
        *(sdk.CatalogueNode.of("workflows", s) for s in [*BUILT_INS, *AI_NODES]),
        *(sdk.CatalogueNode.of("crm", s) for s in CRM_NODES),
    ]
}
SETTINGS = WorkflowSettings(variables={"temperature": 0.3})


def graph(nodes: list[dict[str, Any]], edges: list[tuple[str, str] | tuple[str, str, str]]) -> Graph:
    return msgspec.convert(
        {
            "nodes": nodes,
            "edges": [{"source": e[0], "target": e[1], "port": e[2] if len(e) > 2 else "main"} for e in edges],
        },
        Graph,
    )


def fields(errors: list[sdk.FieldError]) -> dict[str, str]:
    return {e.field: e.message for e in errors}


START = {"id": "start", "node": "workflows.manual"}


def test_a_sound_graph_with_expressions_in_typed_fields_passes() -> None:
    g = graph(
        [
            START,
            {"id": "check", "node": "workflows.if", "config": {"condition": "{{ trigger.amount > 100 }}"}},
            {
                "id": "contact",
                "node": "crm.create_contact",
                "config": {
                    "first_name": "{{ trigger.name }}",
                    "email": "{{ trigger.email }}",
                    "company_id": "{{ trigger.company }}",
                    "tags": "{{ trigger.tags }}",
                },
            },
            {
                "id": "route",
                "node": "workflows.switch",
                "config": {"value": "{{ steps.check.output }}", "cases": ["a"]},
            },
            {"id": "a", "node": "workflows.set", "config": {"values": {"n": "{{ steps.contact.output.id }}"}}},
            {
                "id": "ask",
                "node": "workflows.ai",
                "config": {
                    "messages": [{"role": "user", "content": "Hi {{ trigger.name }}"}],
                    "temperature": "{{ env.temperature }}",
                },
            },
        ],
        [
            ("start", "check"),
            ("check", "contact", "true"),
            ("check", "route", "false"),
            ("route", "a", "a"),
            ("contact", "ask"),
        ],
    )
    assert validate(g, SETTINGS, CATALOGUE) == []


def test_unknown_nodes_bad_configs_and_bad_expressions_name_the_node_and_field() -> None:
    g = graph(
        [
            START,
            {"id": "ghost", "node": "billing.charge"},
            {"id": "contact", "node": "crm.create_contact", "config": {"first_name": "Ada", "email": 42}},
            {
                "id": "mover",
                "node": "crm.update_deal_stage",
                "config": {"deal_id": "not-a-uuid", "stage_id": "{{ x }}"},
            },
            {"id": "s", "node": "workflows.set", "config": {"values": {"a": "{{ trigger.name "}}},
            {"id": "t", "node": "workflows.set", "config": {"values": {"a": "{{ trigger.__class__ }}"}}},
            {
                "id": "u",
                "node": "workflows.set",
                "config": {"values": {"a": "{{ stepz.a }}", "b": "{{ steps.nope.output }}"}},
            },
            {"id": "e", "node": "workflows.set", "config": {"values": {"a": "{{ env.nope }}"}}},
            {"id": "v", "node": "workflows.set", "config": {"extra": 1, "values": {}}},
            {"id": "w", "node": "workflows.set"},
        ],
        [("start", x) for x in ("ghost", "contact", "mover", "s", "t", "u", "e", "v", "w")],
    )
    errors = fields(validate(g, SETTINGS, CATALOGUE))
    assert "unknown node 'billing.charge'" in errors["nodes.ghost.node"]
    assert "Expected `str | null`, got `int`" in errors["nodes.contact.config.email"]
    assert "uuid" in errors["nodes.mover.config.deal_id"].lower()
    assert errors["nodes.s.config.values.a"].startswith("the expression does not parse: line 1")
    assert "__class__" in errors["nodes.t.config.values.a"]
    assert "unknown name 'stepz'" in errors["nodes.u.config.values.a"]
    assert "no node 'nope'" in errors["nodes.u.config.values.b"]
    assert "extra" in errors["nodes.v.config"] and "values" in errors["nodes.w.config"]
    assert "nodes.mover.config.stage_id" in errors  # `x` is not a scope name
    assert errors["nodes.e.config.values.a"] == "env.nope: no such variable in the workflow's settings"


def test_triggers_duplicates_edges_cycles_and_unreachable_nodes() -> None:
    none = fields(
        validate(graph([{"id": "a", "node": "workflows.set", "config": {"values": {}}}], []), SETTINGS, CATALOGUE)
    )
    assert none["nodes"] == "a workflow has exactly one trigger node (found: none)"
    two = fields(validate(graph([START, {"id": "again", "node": "workflows.manual"}], []), SETTINGS, CATALOGUE))
    assert "found: start, again" in two["nodes"]

    set_ = {"node": "workflows.set", "config": {"values": {}}}
    g = graph(
        [
            START,
            {"id": "a", **set_},
            {"id": "a", **set_},
            {"id": "b", **set_},
            {"id": "c", **set_},
            {"id": "lonely", **set_},
            {"id": "cond", "node": "workflows.if", "config": {"condition": True}},
        ],
        [
            ("start", "a"),
            ("a", "b"),
            ("b", "c"),
            ("c", "a"),
            ("a", "nowhere"),
            ("ghost", "b"),
            ("b", "start"),
            ("start", "cond"),
            ("cond", "b", "maybe"),
            ("b", "c", "error"),
        ],
    )
    errors = fields(validate(g, SETTINGS, CATALOGUE))
    assert errors["nodes[2].id"] == "duplicate node id 'a' (also nodes[1])"
    assert errors["edges[4].target"] == "no node 'nowhere'"
    assert errors["edges[5].source"] == "no node 'ghost'"
    assert "is the trigger" in errors["edges[6].target"]
    assert "no output port 'maybe' (ports: false, true)" in errors["edges[8].port"]
    assert "no output port 'error'" in errors["edges[9].port"]
    assert errors["nodes.lonely"] == "unreachable: no path from the trigger leads to it"
    cycle = [m for f, m in errors.items() if "cycle" in m]
    assert cycle and "a -> b -> c -> a" in cycle[0]


def test_an_error_port_exists_when_the_node_routes_its_errors() -> None:
    g = graph(
        [
            START,
            {"id": "a", "node": "workflows.set", "config": {"values": {}}, "on_error": "port"},
            {"id": "b", "node": "workflows.set", "config": {"values": {}}},
        ],
        [("start", "a"), ("a", "b", "error")],
    )
    assert validate(g, SETTINGS, CATALOGUE) == []


def test_a_long_chain_validates_without_recursion() -> None:
    nodes = [START, *({"id": f"n{i}", "node": "workflows.set", "config": {"values": {}}} for i in range(499))]
    edges = [("start", "n0"), *((f"n{i}", f"n{i + 1}") for i in range(498))]
    assert validate(graph(nodes, edges), SETTINGS, CATALOGUE) == []
