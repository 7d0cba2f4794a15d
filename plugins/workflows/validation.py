"""Whether a graph can run, checked when a draft is saved or published (422 with every error).

Errors are ``sdk.FieldError`` whose ``field`` names the place: ``nodes.<node id>.<what>`` for
anything about one node (``nodes.fetch.config.url``, ``nodes.fetch.node``), ``nodes[<index>].id``
for a duplicate id (the id alone would be ambiguous), ``edges[<index>].<source|target|port>`` for
an edge, and ``nodes`` for the graph as a whole (no trigger, two triggers).

Configs and expressions: a config value that holds an expression cannot be typed before the run,
so each expression string is replaced by a neutral value of the type the field expects (read from
the node's config JSON Schema) and every literal value is then checked against the node's config
Struct; the expression's own value is converted and checked again when the step runs
(``services.nodes.run``). Expressions must parse here, and their root names must be in scope
(``trigger``, ``steps``, ``item``, ``index``, ``execution``, ``env``); ``steps.<id>`` must name a
node of the graph and ``env.<name>`` a variable of the workflow's settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from kernel import sdk
from plugins.workflows import expressions
from plugins.workflows.graph import Graph, WorkflowSettings
from plugins.workflows.nodes import RUN_EVENTS

__all__ = ["SCOPE_NAMES", "validate"]

SCOPE_NAMES = frozenset({"trigger", "steps", "item", "index", "execution", "env"})
"""The names an expression may start from (see ``plugins.workflows.graph``)."""

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP_REF = re.compile(r"\bsteps\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_ENV_REF = re.compile(r"\benv\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_MAX_SUBSTITUTIONS = 100


def validate(
    graph: Graph, settings: WorkflowSettings, catalogue: Mapping[str, sdk.CatalogueNode]
) -> list[sdk.FieldError]:
    """Every reason ``graph`` cannot run with ``catalogue`` (the tenant's nodes by key); an empty
    list when it can. ``settings.variables`` are the names ``env`` holds."""
    errors: list[sdk.FieldError] = []
    ids: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.id in ids:
            errors.append(sdk.FieldError(
                f"nodes[{i}].id", f"duplicate node id {node.id!r} (also nodes[{ids[node.id]}])"
            ))
        else:
            ids[node.id] = i
    triggers = []
    for node in graph.nodes:
        entry = catalogue.get(node.node)
        if entry is None:
            errors.append(sdk.FieldError(
                f"nodes.{node.id}.node", f"unknown node {node.node!r} (not in this tenant's catalogue)"
            ))
            continue
        if entry.kind == "trigger":
            triggers.append(node.id)
        errors.extend(_config_errors(node.id, node.config, entry))
        errors.extend(_expression_errors(node.id, node.config, ids, settings))
        errors.extend(_own_event_errors(node.id, node.node, node.config))
    if len(triggers) != 1:
        found = ", ".join(triggers) if triggers else "none"
        errors.append(sdk.FieldError("nodes", f"a workflow has exactly one trigger node (found: {found})"))
    errors.extend(_edge_errors(graph, catalogue, ids, set(triggers)))
    if len(triggers) == 1:
        errors.extend(_shape_errors(graph, ids, triggers[0]))
    return errors


def _own_event_errors(node_id: str, key: str, config: dict[str, Any]) -> list[sdk.FieldError]:
    event = config.get("event")
    if key not in ("workflows.event", "workflows.wait_event") or not isinstance(event, str):
        return []
    if event.startswith(RUN_EVENTS):
        return [sdk.FieldError(
            f"nodes.{node_id}.config.event",
            f"{event!r} cannot start or resume a run (a run would trigger itself): use the workflow's "
            "settings.error_workflow or a workflows.sub_workflow step",
        )]
    return []


def _edge_errors(
    graph: Graph, catalogue: Mapping[str, sdk.CatalogueNode], ids: Mapping[str, int], triggers: set[str]
) -> list[sdk.FieldError]:
    errors = []
    by_id = {node.id: node for node in graph.nodes}
    for i, edge in enumerate(graph.edges):
        if edge.source not in ids:
            errors.append(sdk.FieldError(f"edges[{i}].source", f"no node {edge.source!r}"))
        if edge.target not in ids:
            errors.append(sdk.FieldError(f"edges[{i}].target", f"no node {edge.target!r}"))
        elif edge.target in triggers:
            errors.append(sdk.FieldError(
                f"edges[{i}].target", f"{edge.target!r} is the trigger: no edge leads into it"
            ))
        source = by_id.get(edge.source)
        entry = catalogue.get(source.node) if source is not None else None
        if source is None or entry is None:
            continue
        ports = set(entry.ports) | ({"error"} if source.on_error == "port" else set())
        if edge.port not in ports and "*" not in ports:
            known = ", ".join(sorted(ports))
            errors.append(sdk.FieldError(
                f"edges[{i}].port", f"{entry.key} has no output port {edge.port!r} (ports: {known})"
            ))
    return errors


def _shape_errors(graph: Graph, ids: Mapping[str, int], trigger: str) -> list[sdk.FieldError]:
    """Cycles and nodes the trigger does not lead to."""
    following: dict[str, list[str]] = {node_id: [] for node_id in ids}
    for edge in graph.edges:
        if edge.source in following and edge.target in ids:
            following[edge.source].append(edge.target)
    errors = []
    reached = {trigger}
    todo = [trigger]
    while todo:
        for target in following[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    for node in graph.nodes:
        if node.id not in reached and ids.get(node.id) is not None:
            errors.append(sdk.FieldError(f"nodes.{node.id}", "unreachable: no path from the trigger leads to it"))
    cycle = _cycle(following)
    if cycle:
        path = " -> ".join([*cycle, cycle[0]])
        errors.append(sdk.FieldError(f"nodes.{cycle[0]}", f"part of a cycle ({path}); loops are for_each nodes"))
    return errors


def _cycle(following: Mapping[str, list[str]]) -> list[str]:
    """One cycle of the graph (its nodes in order), or ``[]``. Iterative: 500 nodes in a chain
    must not hit Python's recursion limit."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in following:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            targets = following[node]
            if i < len(targets):
                stack.append((node, i + 1))
                target = targets[i]
                if state.get(target) == 1:
                    return path[path.index(target):]
                if not state.get(target):
                    stack.append((target, 0))
            else:
                state[node] = 2
                path.pop()
    return []


def _expression_errors(
    node_id: str, config: Any, ids: Mapping[str, int], settings: WorkflowSettings
) -> list[sdk.FieldError]:
    errors = []
    for path, source in expressions.expressions_in(config):
        field = f"nodes.{node_id}.{path}"
        problem = expressions.check(source)
        if problem is not None:
            errors.append(sdk.FieldError(field, f"the expression does not parse: {problem}"))
            continue
        unknown = sorted(expressions.names_in(source) - SCOPE_NAMES)
        if unknown:
            errors.append(sdk.FieldError(
                field, f"unknown name {unknown[0]!r}: expressions read {', '.join(sorted(SCOPE_NAMES))}"
            ))
        for match in _STEP_REF.finditer(source):
            step = match.group(1) or match.group(2)
            if step not in ids:
                errors.append(sdk.FieldError(field, f"steps.{step}: no node {step!r} in this workflow"))
        for match in _ENV_REF.finditer(source):
            if match.group(1) not in settings.variables:
                message = f"env.{match.group(1)}: no such variable in the workflow's settings"
                errors.append(sdk.FieldError(field, message))
    return errors


def _config_errors(node_id: str, config: dict[str, Any], entry: sdk.CatalogueNode) -> list[sdk.FieldError]:
    """The first literal value of ``config`` that does not fit the node's Struct (msgspec stops
    at the first), with expressions replaced by neutral values of their field's type."""
    if entry.config is None:
        return []
    candidate: Any = config
    for _ in range(_MAX_SUBSTITUTIONS):
        try:
            msgspec.convert(candidate, entry.config, strict=False)
            return []
        except msgspec.ValidationError as exc:
            message = str(exc)
        match = _PATH.search(message)
        steps = _steps(match.group("path")) if match else []
        value = _at(candidate, steps)
        if match is None or not expressions.is_expression(value):
            where = f"nodes.{node_id}.config" + (match.group("path") if match else "")
            return [sdk.FieldError(where, message[: match.start()] if match else message)]
        neutral = _neutral(_schema_at(entry.config_schema, steps))
        if neutral is _UNKNOWN:
            return []  # no literal stand-in fits the field: the run checks the value
        replaced = _replace(candidate, steps, neutral)
        if _at(replaced, steps) == value:
            return []
        candidate = replaced
    return []


_UNKNOWN = object()


def _steps(path: str) -> list[str | int]:
    """``.a[0].b`` -> ``["a", 0, "b"]``."""
    return [int(index) if index else key for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path)]


def _at(value: Any, steps: list[str | int]) -> Any:
    for step in steps:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _replace(value: Any, steps: list[str | int], new: Any) -> Any:
    if not steps:
        return new
    head, rest = steps[0], steps[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value.get(head), rest, new)}  # type: ignore[index]
    if isinstance(value, list) and isinstance(head, int) and head < len(value):
        return [*value[:head], _replace(value[head], rest, new), *value[head + 1:]]
    return value


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    while isinstance(ref, str) and ref.startswith("#/$defs/"):
        schema = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
        ref = schema.get("$ref")
    return schema


def _schema_at(root: Mapping[str, Any], steps: list[str | int]) -> Mapping[str, Any]:
    schema = _resolve(root, root)
    for step in steps:
        schema = _pick(schema, root)
        if isinstance(step, int):
            schema = _resolve(schema.get("items", {}), root)
        else:
            schema = _resolve(schema.get("properties", {}).get(step, {}), root)
    return _pick(schema, root)


def _pick(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first non-null alternative of an ``anyOf``."""
    for option in schema.get("anyOf", ()):
        option = _resolve(option, root)
        if option.get("type") != "null":
            return option
    return schema


_FORMATS = {
    "uuid": "00000000-0000-0000-0000-000000000000",
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "duration": "P1D",
}


def _neutral(schema: Mapping[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "string":
        if "format" in schema:
            return _FORMATS.get(schema["format"], _UNKNOWN)
        if "pattern" in schema:
            return _UNKNOWN
        return "x" * max(1, int(schema.get("minLength", 1)))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return low + (1 if "exclusiveMinimum" in schema else 0) if low > 0 else max(0, low)
    if kind == "boolean":
        return False
    if kind == "array":
        return [] if not schema.get("minItems") else _UNKNOWN
    if kind == "object":
        return {}
    return _UNKNOWN
