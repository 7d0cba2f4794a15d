"""The AI nodes: ``workflows.ai`` (one chat call) and ``workflows.agent`` (a model that calls the
tenant's action nodes as tools).

Both call the model through ``services.ai``: the tenant's own keys, its budget (a call past it
fails the step with 402) and its ledger, whose rows name the run (``workflows.execution``).

``workflows.agent`` offers the model, as tools, the action nodes its config names that the tenant
enabled and the workflow's principal may run (the others are left out and listed in the output's
``unavailable_tools``); each tool's parameters are the node's config JSON Schema. Every tool
call runs through ``services.nodes.run`` (the node's own plugin, config conversion, permission
check) as a sub-step ``<step>.tool<n>`` with its own idempotency key, and is audited as
``workflows.agent.tool_called``. When the engine hands the step a journal
(``ctx.journal``), every model answer and tool result is checkpointed there, so a resumed step
replays them instead of calling the model or the tool again. The loop ends when the model answers
without tool calls or after ``max_steps`` model calls.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

import jsonschema
import msgspec

from kernel import sdk

__all__ = [
    "AI_NODES", "AIConfig", "AIOutput", "AgentConfig", "AgentOutput", "Message", "ToolCall", "run_agent", "run_ai",
]

_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")
AGENT = "workflows.agent"


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, msgspec.Meta(max_length=200_000)]


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=200_000)]


class AIConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1, max_length=200)]
    """The conversation to send (expressions render into the contents)."""
    model: str | None = None
    """``None``: the tenant's default model."""
    provider: str | None = None
    """Prefixed to a ``model`` without one (``openai`` + ``gpt-4o-mini``)."""
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    json_schema: dict[str, Any] | None = None
    """When set, the model is asked for JSON; the answer is parsed and validated against this
    JSON Schema (a step failing with 422 when it does not fit) and handed on as ``json``."""


class AIOutput(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    json: Any = None
    """The parsed answer when the config asked for JSON."""
    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: str


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    instructions: Annotated[str, msgspec.Meta(max_length=100_000)] = ""
    """The system message."""
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
    """The task, as the user message."""
    tools: Annotated[list[str], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    """Catalogue keys of the action nodes the model may call (``crm.create_contact``)."""
    model: str | None = None
    provider: str | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] = 8
    """Model calls at most; the agent stops (``stop_reason: max_steps``) after that many."""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    """The model's id of the call."""
    node: str
    step_id: str
    """``<agent step>.tool<n>``: its idempotency key is ``<execution>:<step_id>:<iteration>``."""
    arguments: Any
    output: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0


class AgentOutput(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    stop_reason: Literal["answered", "max_steps"]
    steps: int
    """Model calls made."""
    tool_calls: list[ToolCall]
    unavailable_tools: list[str]
    """Named in the config but not offered: not enabled, not an action, or beyond the principal."""
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: str


def _model(model: str | None, provider: str | None) -> str | None:
    if model is not None and provider and "/" not in model:
        return f"{provider}/{model}"
    return model


async def _checkpointed(ctx: sdk.NodeContext, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
    """``work()``, or the result an earlier attempt of this step checkpointed under ``name``
    (with the engine's journal; without one it simply runs)."""
    if ctx.journal is None:
        return await work()
    return await ctx.journal.step(name, work)


def _answer_data(answer: sdk.AIAnswer) -> dict[str, Any]:
    return {
        "content": answer.content, "model": answer.model, "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
        "cost": str(answer.cost), "tool_calls": answer.tool_calls,
    }


async def run_ai(ctx: sdk.NodeContext, config: AIConfig) -> AIOutput:
    """One chat completion; with ``json_schema`` the answer must be JSON fitting it (422)."""
    if config.json_schema is not None:
        try:
            jsonschema.validators.validator_for(config.json_schema).check_schema(config.json_schema)
        except jsonschema.SchemaError as exc:
            raise sdk.Unprocessable(
                f"json_schema is not a JSON Schema: {exc.message}",
                errors=[sdk.FieldError("config.json_schema", exc.message)],
            ) from None
    messages = [msgspec.structs.asdict(m) for m in config.messages]
    if config.json_schema is not None:
        schema = json.dumps(config.json_schema, separators=(",", ":"))
        instruction = f"Answer with JSON only, fitting this JSON Schema: {schema}"
        messages = [{"role": "system", "content": instruction}, *messages]

    async def call() -> dict[str, Any]:
        answer = await ctx.services.ai.chat(
            ctx.tenant_id, ctx.actor, messages, model=_model(config.model, config.provider),
            temperature=config.temperature, max_tokens=config.max_tokens, object_type="workflows.execution",
            object_id=ctx.execution_id,
            response_format={"type": "json_object"} if config.json_schema is not None else None,
        )
        return _answer_data(answer)

    done = await _checkpointed(ctx, "model", call)
    parsed: Any = None
    if config.json_schema is not None:
        parsed = _parse_json(done["content"], config.json_schema)
    return AIOutput(
        text=done["content"], json=parsed, model=done["model"], finish_reason=done["finish_reason"],
        prompt_tokens=done["prompt_tokens"], completion_tokens=done["completion_tokens"], cost=done["cost"],
    )


def _parse_json(text: str, schema: dict[str, Any]) -> Any:
    body = text.strip()
    if body.startswith("```"):  # models like to fence JSON even when told not to
        body = body.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise sdk.Unprocessable(
            f"the model's answer is not JSON: {exc}", errors=[sdk.FieldError("output.text", "not JSON")]
        ) from None
    error = jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
    first = next(iter(sorted(error, key=lambda e: list(e.absolute_path))), None)
    if first is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.absolute_path)
        raise sdk.Unprocessable(
            f"the model's JSON does not fit the schema at json{where}: {first.message}",
            errors=[sdk.FieldError(f"output.json{where}", first.message)],
        )
    return value


def _tool_name(key: str) -> str:
    return _TOOL_NAME.sub("_", key.replace(".", "__"))[:64]


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A node's config schema as a function's parameters: the root object inlined (providers
    refuse a bare ``$ref`` at the top), its ``$defs`` kept beside it for nested references."""
    ref = schema.get("$ref")
    defs = schema.get("$defs", {})
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        root = dict(defs.get(ref.removeprefix("#/$defs/"), {}))
        others = {k: v for k, v in defs.items()}
        return {**root, "$defs": others} if others else root
    return schema


async def _tools(ctx: sdk.NodeContext, keys: list[str]) -> tuple[dict[str, sdk.CatalogueNode], list[str]]:
    offered: dict[str, sdk.CatalogueNode] = {}
    unavailable = []
    catalogue = {n.key: n for n in await ctx.services.nodes.catalogue(ctx.tenant_id)}
    for key in dict.fromkeys(keys):
        node = catalogue.get(key)
        # An agent as its own tool would recurse on the tenant's budget.
        runnable = node is not None and node.kind == "action" and node.spec.run is not None and key != AGENT
        if node is None or not runnable or not ctx.services.nodes.allowed(node, ctx.actor):
            unavailable.append(key)
        else:
            offered[_tool_name(key)] = node
    return offered, unavailable


async def _run_tool(
    ctx: sdk.NodeContext, node: sdk.CatalogueNode, call_id: str, step_id: str, raw: str
) -> dict[str, Any]:
    started = time.perf_counter()
    arguments: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    try:
        arguments = json.loads(raw or "{}")
        output = msgspec.to_builtins(
            await ctx.services.nodes.run(
                node.key, tenant_id=ctx.tenant_id, execution_id=ctx.execution_id, step_id=step_id,
                attempt=ctx.attempt, actor=ctx.actor, config=arguments, iteration=ctx.iteration,
            ),
            enc_hook=str,
        )
    except ValueError as exc:
        error = {"status": 422, "title": "Arguments are not JSON", "detail": str(exc)[:300]}
    except sdk.Problem as exc:
        error = {"status": exc.status, "title": exc.title, "detail": exc.detail,
                 "errors": [msgspec.to_builtins(e) for e in exc.errors]}
    duration = round((time.perf_counter() - started) * 1000, 3)
    async with ctx.services.data.tenant(ctx.tenant_id) as session:
        await ctx.services.changes.audit(
            session, ctx.actor, tenant_id=ctx.tenant_id, action="workflows.agent.tool_called",
            resource_type="workflows.execution", resource_id=ctx.execution_id,
            result="success" if error is None else "failure",
            details={
                "node": node.key, "step_id": step_id, "tool_call_id": call_id, **({"error": error} if error else {}),
            },
        )
    return {"id": call_id, "node": node.key, "step_id": step_id, "arguments": arguments, "output": output,
            "error": error, "duration_ms": duration}


async def _ask(
    ctx: sdk.NodeContext, config: AgentConfig, tools: list[dict[str, Any]], history: list[dict[str, Any]]
) -> dict[str, Any]:
    answer = await ctx.services.ai.chat(
        ctx.tenant_id, ctx.actor, history, model=_model(config.model, config.provider),
        temperature=config.temperature, max_tokens=config.max_tokens, object_type="workflows.execution",
        object_id=ctx.execution_id, tools=tools or None,
    )
    return _answer_data(answer)


async def _tool_call(
    ctx: sdk.NodeContext, offered: dict[str, sdk.CatalogueNode], requested: dict[str, Any], n: int
) -> dict[str, Any]:
    """Run (or replay) the model's ``n``-th tool call of this step."""
    step_id = f"{ctx.step_id}.tool{n}"
    function = requested.get("function") or {}
    call_id = str(requested.get("id", ""))
    node = offered.get(str(function.get("name")))
    if node is None:
        return {
            "id": call_id, "node": str(function.get("name")), "step_id": step_id,
            "arguments": function.get("arguments"),
            "output": None, "duration_ms": 0.0,
            "error": {"status": 404, "title": "Unknown tool", "detail": "no tool of that name was offered"},
        }
    raw = str(function.get("arguments") or "")
    return await _checkpointed(ctx, f"tool{n}", lambda: _run_tool(ctx, node, call_id, step_id, raw))  # type: ignore[no-any-return]


async def run_agent(ctx: sdk.NodeContext, config: AgentConfig) -> AgentOutput:
    """The agent loop: call the model with the offered tools, run the calls it asks for, hand it
    their results, until it answers without calls or ``max_steps`` model calls were made."""
    offered, unavailable = await _tools(ctx, config.tools)
    tools = [
        {"type": "function", "function": {
            "name": name, "description": (node.title + ". " + node.description).strip()[:1000],
            "parameters": _parameters(node.config_schema),
        }}
        for name, node in offered.items()
    ]
    messages: list[dict[str, Any]] = []
    if config.instructions:
        messages.append({"role": "system", "content": config.instructions})
    messages.append({"role": "user", "content": config.prompt})
    calls: list[ToolCall] = []
    prompt_tokens = completion_tokens = steps = 0
    spent = Decimal(0)
    text, model = "", config.model or ""
    stop: Literal["answered", "max_steps"] = "max_steps"
    for turn in range(1, config.max_steps + 1):
        steps = turn
        history = list(messages)
        done = await _checkpointed(ctx, f"model{turn}", lambda history=history: _ask(ctx, config, tools, history))  # type: ignore[misc]
        prompt_tokens += done["prompt_tokens"]
        completion_tokens += done["completion_tokens"]
        spent += Decimal(done["cost"])
        text, model = done["content"] or "", done["model"]
        requested = done["tool_calls"] or []
        if not requested:
            stop = "answered"
            break
        messages.append({"role": "assistant", "content": done["content"] or None, "tool_calls": requested})
        for requested_call in requested:
            record = await _tool_call(ctx, offered, requested_call, len(calls) + 1)
            calls.append(msgspec.convert(record, ToolCall))
            result = {"output": record["output"]} if record["error"] is None else {"error": record["error"]}
            messages.append({
                "role": "tool", "tool_call_id": record["id"], "content": json.dumps(result, default=str)[:50_000],
            })
    return AgentOutput(
        text=text, stop_reason=stop, steps=steps, tool_calls=calls, unavailable_tools=unavailable, model=model,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=str(spent),
    )


AI_NODES = [
    sdk.NodeSpec(
        key="workflows.ai",
        kind="action",
        title="Ask an AI model",
        description="One chat call on the tenant's keys and budget; optionally JSON checked against a schema.",
        config=AIConfig,
        output=AIOutput,
        run=run_ai,
    ),
    sdk.NodeSpec(
        key=AGENT,
        kind="action",
        title="AI agent with tools",
        description="A model that calls the named action nodes as tools, each call an audited sub-step.",
        config=AgentConfig,
        output=AgentOutput,
        run=run_agent,
    ),
]
"""For the plugin's ``businessos_workflow_nodes`` hook."""
