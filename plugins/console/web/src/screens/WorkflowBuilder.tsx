// The workflow builder: a palette from the node catalogue, a canvas (@xyflow/react), a config
// form per node generated from its JSON Schema, save, publish and run.
import "@xyflow/react/dist/style.css";
import {
  Background,
  Controls,
  ReactFlow,
  addEdge,
  useEdgesState,
  useNodesState,
  type Connection,
  type Edge,
  type Node,
} from "@xyflow/react";
import { useMutation, useQuery } from "@tanstack/react-query";
import { useEffect, useState, type DragEvent } from "react";
import { useNavigate, useParams } from "react-router";
import { api, type NodeCatalogueEntry, type WorkflowGraph } from "../api";
import { SchemaForm } from "../SchemaForm";
import { ErrorNote, Field, Loading, Section } from "../ui";

type NodeData = { key: string; title: string; config: Record<string, unknown>; label: string };
type Workflow = { id: string; name: string; graph: WorkflowGraph; version?: number };

function toFlow(graph: WorkflowGraph, catalogue: NodeCatalogueEntry[]): { nodes: Node<NodeData>[]; edges: Edge[] } {
  return {
    nodes: graph.nodes.map((n) => {
      const entry = catalogue.find((c) => c.key === n.node);
      return {
        id: n.id,
        position: n.position,
        data: { key: n.node, title: entry?.title ?? n.node, config: n.config, label: entry?.title ?? n.node },
      };
    }),
    edges: graph.edges.map((e) => ({
      id: `${e.source}-${e.port ?? "main"}-${e.target}`,
      source: e.source,
      target: e.target,
      sourceHandle: e.port && e.port !== "main" ? e.port : undefined,
      label: e.port && e.port !== "main" ? e.port : undefined,
    })),
  };
}

function toGraph(nodes: Node<NodeData>[], edges: Edge[]): WorkflowGraph {
  return {
    nodes: nodes.map((n) => ({ id: n.id, node: n.data.key, config: n.data.config, position: n.position })),
    edges: edges.map((e) => ({ source: e.source, target: e.target, port: e.sourceHandle ?? "main" })),
  };
}

export default function WorkflowBuilder() {
  const { id = "new" } = useParams();
  const navigate = useNavigate();
  const catalogue = useQuery({
    queryKey: ["workflow-nodes"],
    queryFn: async () => (await api<{ nodes: NodeCatalogueEntry[] }>("/api/workflows/nodes")).nodes,
  });
  const workflow = useQuery({
    queryKey: ["workflow", id],
    enabled: id !== "new",
    queryFn: () => api<Workflow>(`/api/workflows/${id}`),
  });
  const [name, setName] = useState("New workflow");
  const [nodes, setNodes, onNodesChange] = useNodesState<Node<NodeData>>([]);
  const [edges, setEdges, onEdgesChange] = useEdgesState<Edge>([]);
  const [selected, setSelected] = useState<string | null>(null);
  useEffect(() => {
    if (workflow.data && catalogue.data) {
      const flow = toFlow(workflow.data.graph, catalogue.data);
      setNodes(flow.nodes);
      setEdges(flow.edges);
      setName(workflow.data.name);
    }
  }, [workflow.data, catalogue.data, setNodes, setEdges]);
  const save = useMutation({
    mutationFn: () =>
      id === "new"
        ? api<Workflow>("/api/workflows", { method: "POST", body: { name, graph: toGraph(nodes, edges) } })
        : api<Workflow>(`/api/workflows/${id}`, { method: "PUT", body: { name, graph: toGraph(nodes, edges) } }),
    onSuccess: (w) => {
      if (id === "new") navigate(`/workflows/${w.id}`, { replace: true });
    },
  });
  const publish = useMutation({ mutationFn: () => api(`/api/workflows/${id}/publish`, { method: "POST" }) });
  const run = useMutation({
    mutationFn: () => api<{ id: string }>(`/api/workflows/${id}/run`, { method: "POST", body: { payload: {} } }),
  });
  if (catalogue.isPending) return <Loading label="Loading the node catalogue" />;
  if (catalogue.error) return <ErrorNote error={catalogue.error} />;
  const add = (entry: NodeCatalogueEntry, position = { x: 80 + nodes.length * 40, y: 80 + nodes.length * 90 }) => {
    const base = entry.key.split(".").pop()?.replace(/[^A-Za-z0-9_]/g, "_") ?? "node";
    let n = 1;
    while (nodes.some((x) => x.id === `${base}_${n}`)) n++;
    const node: Node<NodeData> = {
      id: `${base}_${n}`,
      position,
      data: { key: entry.key, title: entry.title, config: {}, label: entry.title },
    };
    setNodes((current) => [...current, node]);
    setSelected(node.id);
  };
  const onDrop = (event: DragEvent) => {
    event.preventDefault();
    const key = event.dataTransfer.getData("application/x-businessos-node");
    const entry = catalogue.data.find((c) => c.key === key);
    const bounds = (event.currentTarget as HTMLElement).getBoundingClientRect();
    if (entry) add(entry, { x: event.clientX - bounds.left, y: event.clientY - bounds.top });
  };
  const chosen = nodes.find((n) => n.id === selected);
  const chosenEntry = catalogue.data.find((c) => c.key === chosen?.data.key);
  return (
    <Section title={name}>
      <div className="row">
        <Field label="Workflow name" name="name" value={name} onChange={(e) => setName(e.target.value)} error={save.error} />
        <button type="button" onClick={() => save.mutate()}>
          Save
        </button>
        <button type="button" onClick={() => publish.mutate()} disabled={id === "new"}>
          Publish
        </button>
        <button type="button" onClick={() => run.mutate()} disabled={id === "new"}>
          Run
        </button>
      </div>
      <ErrorNote error={save.error ?? publish.error ?? run.error} />
      {run.data ? <p role="status">Run started: {run.data.id}</p> : null}
      <div className="builder">
        <aside aria-label="Node palette" className="palette">
          <h3>Nodes</h3>
          <ul className="plain">
            {catalogue.data.map((entry) => (
              <li key={entry.key}>
                <button
                  type="button"
                  draggable
                  title={entry.description}
                  data-node-key={entry.key}
                  onDragStart={(e) => e.dataTransfer.setData("application/x-businessos-node", entry.key)}
                  onClick={() => add(entry)}
                >
                  {entry.title}
                </button>
              </li>
            ))}
          </ul>
        </aside>
        <div className="canvas" onDrop={onDrop} onDragOver={(e) => e.preventDefault()}>
          <ReactFlow
            nodes={nodes}
            edges={edges}
            onNodesChange={onNodesChange}
            onEdgesChange={onEdgesChange}
            onConnect={(c: Connection) => setEdges((current) => addEdge(c, current))}
            onNodeClick={(_, node) => setSelected(node.id)}
            fitView
          >
            <Background />
            <Controls />
          </ReactFlow>
        </div>
        {chosen && chosenEntry ? (
          <aside aria-label="Node configuration" className="inspector">
            <h3>
              {chosen.data.title} <code>{chosen.id}</code>
            </h3>
            <SchemaForm
              key={chosen.id}
              schema={chosenEntry.config}
              value={chosen.data.config}
              submitLabel="Apply"
              onSubmit={(config) =>
                setNodes((current) => current.map((n) => (n.id === chosen.id ? { ...n, data: { ...n.data, config } } : n)))
              }
            />
          </aside>
        ) : null}
      </div>
    </Section>
  );
}
