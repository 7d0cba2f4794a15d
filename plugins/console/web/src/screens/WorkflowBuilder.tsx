// The workflow builder: a palette from the node catalogue, nodes dragged onto a canvas
// (@xyflow/react) and connected port to port, a config form per node generated from its JSON
// Schema with expression suggestions from earlier steps, validation errors pinned to their node,
// save, publish and run.
import "@xyflow/react/dist/style.css";
import {
  Background,
  Controls,
  Handle,
  Position,
  ReactFlow,
  ReactFlowProvider,
  addEdge,
  useEdgesState,
  useNodesState,
  useReactFlow,
  type Connection,
  type Edge,
  type Node,
  type NodeProps,
} from "@xyflow/react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useMemo, useState, type DragEvent } from "react";
import { useNavigate, useParams } from "react-router";
import { ApiError, workflowsApi, type JsonSchema, type NodeCatalogueEntry, type WorkflowGraph } from "../api";
import { SchemaForm } from "../SchemaForm";
import { ErrorNote, Field, Loading, Section } from "../ui";

type StepData = {
  key: string;
  title: string;
  kind: string;
  ports: string[];
  config: Record<string, unknown>;
  problems: string[];
};
type StepNode = Node<StepData, "step">;

function StepNodeView({ id, data, selected }: NodeProps<StepNode>) {
  const ports = data.ports.length ? data.ports : ["main"];
  return (
    <div className={`wf-node${selected ? " selected" : ""}${data.problems.length ? " invalid" : ""}`} data-node-id={id}>
      {data.kind !== "trigger" ? <Handle type="target" position={Position.Left} /> : null}
      <strong>{data.title}</strong>
      <code>{id}</code>
      {data.problems.length ? (
        <span className="node-problems" role="img" aria-label={`${data.problems.length} problems`}>
          ⚠ {data.problems.length}
        </span>
      ) : null}
      {ports.map((port, i) => (
        <Handle
          key={port}
          id={port}
          type="source"
          position={Position.Right}
          style={{ top: `${((i + 1) * 100) / (ports.length + 1)}%` }}
          data-port={port}
        >
          {ports.length > 1 ? <span className="port-label">{port}</span> : null}
        </Handle>
      ))}
    </div>
  );
}

const NODE_TYPES = { step: StepNodeView };

function toFlow(graph: WorkflowGraph, catalogue: NodeCatalogueEntry[]): { nodes: StepNode[]; edges: Edge[] } {
  return {
    nodes: graph.nodes.map((n) => {
      const entry = catalogue.find((c) => c.key === n.node);
      return {
        id: n.id,
        type: "step",
        position: n.position,
        data: {
          key: n.node,
          title: entry?.title ?? n.node,
          kind: entry?.kind ?? "action",
          ports: entry?.ports ?? ["main"],
          config: n.config,
          problems: [],
        },
      };
    }),
    edges: graph.edges.map((e) => ({
      id: `${e.source}:${e.port ?? "main"}->${e.target}`,
      source: e.source,
      target: e.target,
      sourceHandle: e.port ?? "main",
      label: e.port && e.port !== "main" ? e.port : undefined,
    })),
  };
}

function toGraph(nodes: StepNode[], edges: Edge[]): WorkflowGraph {
  return {
    nodes: nodes.map((n) => ({ id: n.id, node: n.data.key, config: n.data.config, position: n.position })),
    edges: edges.map((e) => ({ source: e.source, target: e.target, port: e.sourceHandle ?? "main" })),
  };
}

/** Problems of the answer that name a node (`nodes.<id>...`), by node id; the others under "". */
function problemsByNode(error: unknown): Map<string, string[]> {
  const found = new Map<string, string[]>();
  if (!(error instanceof ApiError)) return found;
  for (const e of error.problem.errors ?? []) {
    const match = /^nodes\.([A-Za-z_][A-Za-z0-9_]*)(?:\.(.*))?$/.exec(e.field);
    const key = match ? match[1] : "";
    const text = match && match[2] ? `${match[2]}: ${e.message}` : match ? e.message : `${e.field}: ${e.message}`;
    found.set(key, [...(found.get(key) ?? []), text]);
  }
  return found;
}

/** Expressions a config field may use: the outputs of the steps before this one, and the trigger. */
function suggestions(nodeId: string, nodes: StepNode[], edges: Edge[], catalogue: NodeCatalogueEntry[]): string[] {
  const before = new Set<string>();
  const stack = [nodeId];
  while (stack.length) {
    const current = stack.pop()!;
    for (const e of edges) {
      if (e.target === current && !before.has(e.source)) {
        before.add(e.source);
        stack.push(e.source);
      }
    }
  }
  const out = ["{{ trigger }}"];
  for (const id of before) {
    const node = nodes.find((n) => n.id === id);
    const entry = catalogue.find((c) => c.key === node?.data.key);
    if (entry?.kind === "trigger") continue;
    out.push(`{{ steps.${id}.output }}`);
    const schema: JsonSchema = entry?.output_schema ?? {};
    const root = schema.$ref ? (schema.$defs?.[schema.$ref.split("/").pop() ?? ""] ?? schema) : schema;
    for (const prop of Object.keys(root.properties ?? {})) out.push(`{{ steps.${id}.output.${prop} }}`);
  }
  return out;
}

function Canvas() {
  const { id = "new" } = useParams();
  const navigate = useNavigate();
  const client = useQueryClient();
  const flow = useReactFlow();
  const catalogue = useQuery({ queryKey: ["workflow-nodes"], queryFn: workflowsApi.catalogue });
  const workflow = useQuery({
    queryKey: ["workflow", id],
    enabled: id !== "new",
    queryFn: () => workflowsApi.get(id),
  });
  const [name, setName] = useState("New workflow");
  const [nodes, setNodes, onNodesChange] = useNodesState<StepNode>([]);
  const [edges, setEdges, onEdgesChange] = useEdgesState<Edge>([]);
  const [selected, setSelected] = useState<string | null>(null);
  const [problems, setProblems] = useState<Map<string, string[]>>(new Map());
  useEffect(() => {
    if (workflow.data && catalogue.data) {
      const loaded = toFlow(workflow.data.workflow.graph, catalogue.data);
      setNodes(loaded.nodes);
      setEdges(loaded.edges);
      setName(workflow.data.workflow.name);
    }
  }, [workflow.data, catalogue.data, setNodes, setEdges]);
  // Pin the problems of the last answer to their nodes.
  useEffect(() => {
    setNodes((current) => current.map((n) => ({ ...n, data: { ...n.data, problems: problems.get(n.id) ?? [] } })));
  }, [problems, setNodes]);
  const report = (error: unknown) => setProblems(problemsByNode(error));
  const save = useMutation({
    mutationFn: async () => {
      const graph = toGraph(nodes, edges);
      if (id === "new") return workflowsApi.create(name, graph);
      return workflowsApi.update(id, workflow.data?.etag ?? "", name, graph);
    },
    onSuccess: (saved) => {
      setProblems(new Map());
      void client.invalidateQueries({ queryKey: ["workflows"] });
      if (id === "new") navigate(`/workflows/${saved.id}`, { replace: true });
      else void workflow.refetch();
    },
    onError: report,
  });
  const publish = useMutation({
    mutationFn: () => workflowsApi.publish(id),
    onSuccess: () => {
      setProblems(new Map());
      void workflow.refetch();
    },
    onError: report,
  });
  const run = useMutation({
    mutationFn: () => workflowsApi.run(id, {}),
    onSuccess: (answer) => navigate(`/workflows/runs/${answer.execution_id}`),
  });
  const entries = catalogue.data ?? [];
  const hints = useMemo(
    () => (selected ? suggestions(selected, nodes, edges, entries) : []),
    [selected, nodes, edges, entries],
  );
  if (catalogue.isPending || (id !== "new" && workflow.isPending)) return <Loading label="Loading the builder" />;
  if (catalogue.error) return <ErrorNote error={catalogue.error} />;
  const add = (entry: NodeCatalogueEntry, position?: { x: number; y: number }) => {
    const base = (entry.key.split(".").pop() ?? "step").replace(/[^A-Za-z0-9_]/g, "_");
    let n = 1;
    while (nodes.some((x) => x.id === `${base}_${n}`)) n++;
    const node: StepNode = {
      id: `${base}_${n}`,
      type: "step",
      position: position ?? { x: 40 + nodes.length * 220, y: 120 },
      data: { key: entry.key, title: entry.title, kind: entry.kind, ports: entry.ports, config: {}, problems: [] },
    };
    setNodes((current) => [...current, node]);
    setSelected(node.id);
  };
  const onDrop = (event: DragEvent) => {
    event.preventDefault();
    const key = event.dataTransfer.getData("application/x-businessos-node");
    const entry = entries.find((c) => c.key === key);
    if (entry) add(entry, flow.screenToFlowPosition({ x: event.clientX, y: event.clientY }));
  };
  const chosen = nodes.find((n) => n.id === selected);
  const chosenEntry = entries.find((c) => c.key === chosen?.data.key);
  const general = problems.get("") ?? [];
  const published = workflow.data?.workflow.published_version;
  return (
    <Section title={name}>
      <div className="row">
        <Field label="Workflow name" name="name" value={name} onChange={(e) => setName(e.target.value)} />
        <button type="button" onClick={() => save.mutate()} disabled={save.isPending}>
          Save
        </button>
        <button type="button" onClick={() => publish.mutate()} disabled={id === "new" || publish.isPending}>
          Publish
        </button>
        <button type="button" onClick={() => run.mutate()} disabled={!published || run.isPending}>
          Run
        </button>
        <span className="muted" role="status">
          {id === "new" ? "Not saved yet" : published ? `Published: version ${published}` : "Draft, not published"}
        </span>
      </div>
      <ErrorNote error={run.error ?? (problems.size ? null : (save.error ?? publish.error))} />
      {general.length ? (
        <div role="alert">
          <ul className="error">
            {general.map((p) => (
              <li key={p}>{p}</li>
            ))}
          </ul>
        </div>
      ) : null}
      <div className="builder">
        <aside aria-label="Node palette" className="palette">
          <h3>Nodes</h3>
          <p className="muted">Drag onto the canvas, or press to add.</p>
          <ul className="plain">
            {entries.map((entry) => (
              <li key={entry.key}>
                <button
                  type="button"
                  draggable
                  title={entry.description}
                  data-node-key={entry.key}
                  disabled={!entry.allowed}
                  onDragStart={(e) => e.dataTransfer.setData("application/x-businessos-node", entry.key)}
                  onClick={() => add(entry)}
                >
                  {entry.title} <span className="muted">{entry.kind === "trigger" ? "trigger" : entry.plugin}</span>
                </button>
              </li>
            ))}
          </ul>
        </aside>
        <div className="canvas" onDrop={onDrop} onDragOver={(e) => e.preventDefault()} aria-label="Canvas" role="region">
          <ReactFlow
            nodes={nodes}
            edges={edges}
            nodeTypes={NODE_TYPES}
            onNodesChange={onNodesChange}
            onEdgesChange={onEdgesChange}
            onConnect={(c: Connection) =>
              setEdges((current) =>
                addEdge({ ...c, label: c.sourceHandle && c.sourceHandle !== "main" ? c.sourceHandle : undefined }, current),
              )
            }
            onNodeClick={(_, node) => setSelected(node.id)}
            defaultViewport={{ x: 0, y: 0, zoom: 1 }}
            fitView={id !== "new"}
            fitViewOptions={{ maxZoom: 1 }}
          >
            <Background />
            <Controls />
          </ReactFlow>
        </div>
        <aside aria-label="Node configuration" className="inspector">
          {chosen && chosenEntry ? (
            <>
              <h3>
                {chosen.data.title} <code>{chosen.id}</code>
              </h3>
              <p className="muted">{chosenEntry.description}</p>
              {chosen.data.problems.length ? (
                <div role="alert">
                  <ul className="error">
                    {chosen.data.problems.map((p) => (
                      <li key={p}>{p}</li>
                    ))}
                  </ul>
                </div>
              ) : null}
              <SchemaForm
                key={chosen.id}
                schema={chosenEntry.config_schema}
                value={chosen.data.config}
                suggestions={hints}
                submitLabel="Apply"
                onChange={(config) =>
                  setNodes((current) => current.map((n) => (n.id === chosen.id ? { ...n, data: { ...n.data, config } } : n)))
                }
                onSubmit={(config) =>
                  setNodes((current) => current.map((n) => (n.id === chosen.id ? { ...n, data: { ...n.data, config } } : n)))
                }
              />
              {hints.length ? (
                <details className="hints">
                  <summary>Expressions from earlier steps</summary>
                  <ul className="plain">
                    {hints.map((h) => (
                      <li key={h}>
                        <code>{h}</code>
                      </li>
                    ))}
                  </ul>
                </details>
              ) : null}
              <button
                type="button"
                className="danger"
                onClick={() => {
                  setNodes((current) => current.filter((n) => n.id !== chosen.id));
                  setEdges((current) => current.filter((e) => e.source !== chosen.id && e.target !== chosen.id));
                  setSelected(null);
                }}
              >
                Remove {chosen.id}
              </button>
            </>
          ) : (
            <p className="muted">Select a node to configure it.</p>
          )}
        </aside>
      </div>
    </Section>
  );
}

export default function WorkflowBuilder() {
  return (
    <ReactFlowProvider>
      <Canvas />
    </ReactFlowProvider>
  );
}
