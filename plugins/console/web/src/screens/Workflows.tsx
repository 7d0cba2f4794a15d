// Workflows: the list, the builder (its canvas, @xyflow/react, loads only when opened), runs with
// each step's input, output and error (retry from the failed step), and the approvals inbox.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useState } from "react";
import { Link, NavLink, Route, Routes, useNavigate, useParams } from "react-router";
import { workflowsApi, type Step } from "../api";
import { ErrorNote, Loading, Pager, Section } from "../ui";

const Builder = lazy(() => import("./WorkflowBuilder"));
const FINISHED = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

function WorkflowList() {
  const [page, setPage] = useState(1);
  const list = useQuery({
    queryKey: ["workflows", page],
    queryFn: () => workflowsApi.list(page),
    placeholderData: keepPreviousData,
  });
  return (
    <Section title="Workflows" actions={<Link to="/workflows/new">New workflow</Link>}>
      <ErrorNote error={list.error} />
      {list.isPending ? <Loading /> : null}
      {list.data?.workflows.length === 0 ? <p className="muted">No workflow yet.</p> : null}
      <ul className="plain">
        {list.data?.workflows.map((w) => (
          <li key={w.id}>
            <Link to={`/workflows/${w.id}`}>{w.name}</Link>{" "}
            <span className="muted">
              {w.published_version ? `published v${w.published_version}` : "draft"}
              {w.active ? "" : ", inactive"}
            </span>
          </li>
        ))}
      </ul>
      <Pager pagination={list.data?.pagination} onPage={setPage} />
    </Section>
  );
}

function Json({ value }: { value: unknown }) {
  if (value === null || value === undefined) return <span className="muted">—</span>;
  return <pre className="json">{JSON.stringify(value, null, 2)}</pre>;
}

function StepRow({ step }: { step: Step }) {
  return (
    <tr data-step={step.node_id} data-status={step.status}>
      <td>
        <code>{step.node_id}</code>
        {step.iteration && step.iteration !== "0" ? <span className="muted"> [{step.iteration}]</span> : null}
        <div className="muted">{step.node_key}</div>
      </td>
      <td>
        <span className={`badge status-${step.status}`}>{step.status}</span>
        {step.attempts > 1 ? <div className="muted">{step.attempts} attempts</div> : null}
      </td>
      <td>
        <Json value={step.input} />
      </td>
      <td>
        <Json value={step.output} />
      </td>
      <td>
        <Json value={step.error} />
      </td>
    </tr>
  );
}

export function ExecutionView() {
  const { executionId = "" } = useParams();
  const navigate = useNavigate();
  const run = useQuery({
    queryKey: ["execution", executionId],
    queryFn: () => workflowsApi.execution(executionId),
    // Live: poll until the run has finished.
    refetchInterval: (query) => (query.state.data && FINISHED.has(query.state.data.execution.status) ? false : 1000),
  });
  const retry = useMutation({
    mutationFn: () => workflowsApi.retry(executionId),
    onSuccess: (answer) => navigate(`/workflows/runs/${answer.execution_id}`),
  });
  if (run.isPending) return <Loading />;
  if (run.error) return <ErrorNote error={run.error} />;
  const { execution, steps, steps_total } = run.data;
  return (
    <Section
      title={`Run ${execution.id.slice(0, 8)}`}
      actions={<Link to={`/workflows/${execution.workflow_id}`}>Open the workflow</Link>}
    >
      <p>
        Status: <strong data-run-status={execution.status}>{execution.status}</strong> (version {execution.version},{" "}
        {execution.trigger_kind})
      </p>
      {execution.status === "failed" ? (
        <>
          <Json value={execution.error} />
          <button type="button" onClick={() => retry.mutate()} disabled={retry.isPending}>
            Retry from the failed step
          </button>
        </>
      ) : null}
      <ErrorNote error={retry.error} />
      <div className="table-wrap">
        <table>
          <caption>
            Steps ({steps.length} of {steps_total})
          </caption>
          <thead>
            <tr>
              <th scope="col">Step</th>
              <th scope="col">Status</th>
              <th scope="col">Input</th>
              <th scope="col">Output</th>
              <th scope="col">Error</th>
            </tr>
          </thead>
          <tbody>
            {steps.map((s) => (
              <StepRow key={`${s.node_id}-${s.iteration}`} step={s} />
            ))}
          </tbody>
        </table>
      </div>
    </Section>
  );
}

function Runs() {
  const [page, setPage] = useState(1);
  const runs = useQuery({
    queryKey: ["executions", page],
    queryFn: () => workflowsApi.executions(undefined, page),
    placeholderData: keepPreviousData,
  });
  return (
    <Section title="Runs">
      <ErrorNote error={runs.error} />
      <div className="table-wrap">
        <table>
          <caption className="sr-only">Runs, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Run</th>
              <th scope="col">Status</th>
              <th scope="col">Started</th>
            </tr>
          </thead>
          <tbody>
            {runs.data?.executions.map((e) => (
              <tr key={e.id}>
                <td>
                  <Link to={`/workflows/runs/${e.id}`}>{e.id.slice(0, 8)}</Link>
                </td>
                <td>{e.status}</td>
                <td>{new Date(e.created_at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <Pager pagination={runs.data?.pagination} onPage={setPage} />
    </Section>
  );
}

function Approvals() {
  const client = useQueryClient();
  const [page, setPage] = useState(1);
  const approvals = useQuery({ queryKey: ["approvals", page], queryFn: () => workflowsApi.approvals(page) });
  const decide = useMutation({
    mutationFn: ({ id, decision }: { id: string; decision: "approve" | "reject" }) => workflowsApi.decide(id, decision),
    onSuccess: () => client.invalidateQueries({ queryKey: ["approvals"] }),
  });
  return (
    <Section title="Approvals waiting for a decision">
      <ErrorNote error={approvals.error ?? decide.error} />
      {approvals.data?.approvals.length === 0 ? <p className="muted">Nothing to decide.</p> : null}
      <ul className="plain">
        {approvals.data?.approvals.map((a) => (
          <li key={a.id} className="card">
            <strong>{a.title}</strong> <Link to={`/workflows/runs/${a.execution_id}`}>run</Link>
            <Json value={a.details} />
            <button type="button" onClick={() => decide.mutate({ id: a.id, decision: "approve" })}>
              Approve {a.title}
            </button>{" "}
            <button type="button" className="danger" onClick={() => decide.mutate({ id: a.id, decision: "reject" })}>
              Reject {a.title}
            </button>
          </li>
        ))}
      </ul>
      <Pager pagination={approvals.data?.pagination} onPage={setPage} />
    </Section>
  );
}

export default function Workflows() {
  return (
    <>
      <h1>Workflows</h1>
      <nav aria-label="Workflows" className="tabs">
        <NavLink to="/workflows" end>
          Workflows
        </NavLink>
        <NavLink to="/workflows/runs">Runs</NavLink>
        <NavLink to="/workflows/approvals">Approvals</NavLink>
      </nav>
      <Routes>
        <Route index element={<WorkflowList />} />
        <Route path="runs" element={<Runs />} />
        <Route path="runs/:executionId" element={<ExecutionView />} />
        <Route path="approvals" element={<Approvals />} />
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
