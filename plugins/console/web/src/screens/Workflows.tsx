// Workflows: the list, and the builder (its canvas, @xyflow/react, is loaded only when opened).
import { lazy, Suspense } from "react";
import { Link, Route, Routes } from "react-router";
import { useQuery } from "@tanstack/react-query";
import { api } from "../api";
import { ErrorNote, Loading, Section } from "../ui";

const Builder = lazy(() => import("./WorkflowBuilder"));

type WorkflowSummary = { id: string; name: string; status?: string; published_version?: number | null };

function WorkflowList() {
  const list = useQuery({
    queryKey: ["workflows"],
    queryFn: async () => (await api<{ workflows: WorkflowSummary[] }>("/api/workflows", { query: { limit: 50 } })).workflows,
    retry: false,
  });
  return (
    <Section title="Workflows" actions={<Link to="/workflows/new">New workflow</Link>}>
      <ErrorNote error={list.error} />
      {list.isPending ? <Loading /> : null}
      <ul>
        {list.data?.map((w) => (
          <li key={w.id}>
            <Link to={`/workflows/${w.id}`}>{w.name}</Link> <span className="muted">{w.status}</span>
          </li>
        ))}
      </ul>
    </Section>
  );
}

export default function Workflows() {
  return (
    <>
      <h1>Workflows</h1>
      <Routes>
        <Route index element={<WorkflowList />} />
        <Route
          path=":id"
          element={
            <Suspense fallback={<Loading label="Loading the builder" />}>
              <Builder />
            </Suspense>
          }
        />
      </Routes>
    </>
  );
}
