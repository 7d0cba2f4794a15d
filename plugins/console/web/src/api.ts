// The console's only door to BusinessOS: the public HTTP API, typed thinly in this one file.
// Tokens live in memory only (never localStorage): a reload signs the user out, by design.

export type FieldError = { field: string; message: string };
export type ProblemDoc = {
  type?: string;
  title?: string;
  status: number;
  detail?: string;
  errors?: FieldError[];
  [extra: string]: unknown;
};

export class ApiError extends Error {
  readonly status: number;
  readonly problem: ProblemDoc;
  constructor(problem: ProblemDoc) {
    super(problem.detail ?? problem.title ?? `HTTP ${problem.status}`);
    this.status = problem.status;
    this.problem = problem;
  }
  /** The message for one field (problem+json `errors[].field`), if the problem names it. */
  fieldError(field: string): string | undefined {
    return this.problem.errors?.find((e) => e.field === field || e.field.endsWith(`.${field}`))?.message;
  }
}

export type TokenPair = { access_token: string; refresh_token: string; expires_in: number };
export type MfaChallenge = { mfa_token: string; mfa_required: true };

type Session = { access: string; refresh: string; tenant: string };
let session: Session | null = null;
let refreshing: Promise<boolean> | null = null;
const listeners = new Set<() => void>();

export function onSessionChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}
export function signedIn(): boolean {
  return session !== null;
}
export function currentTenant(): string | null {
  return session?.tenant ?? null;
}
export function setSession(tokens: TokenPair, tenant: string): void {
  session = { access: tokens.access_token, refresh: tokens.refresh_token, tenant };
  listeners.forEach((l) => l());
}
export function clearSession(): void {
  session = null;
  listeners.forEach((l) => l());
}

async function problemOf(response: Response): Promise<ApiError> {
  let problem: ProblemDoc = { status: response.status, title: response.statusText };
  try {
    problem = { ...problem, ...((await response.json()) as ProblemDoc) };
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(problem);
}

/** Rotate the refresh token once, shared by every request that found the access token expired. */
async function refresh(): Promise<boolean> {
  if (!session) return false;
  refreshing ??= (async () => {
    const current = session;
    if (!current) return false;
    const response = await fetch("/api/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Tenant-ID": current.tenant },
      body: JSON.stringify({ refresh_token: current.refresh }),
    });
    if (!response.ok) {
      clearSession();
      return false;
    }
    setSession((await response.json()) as TokenPair, current.tenant);
    return true;
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

export type RequestOptions = {
  method?: string;
  body?: unknown;
  raw?: BodyInit;
  headers?: Record<string, string>;
  query?: Record<string, string | number | boolean | undefined | null>;
  tenant?: string;
};

function url(path: string, query?: RequestOptions["query"]): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/** A request to the API; the Response itself (for headers such as ETag), errors thrown as ApiError. */
export async function send(path: string, options: RequestOptions = {}, retried = false): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json", ...options.headers };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const tenant = options.tenant ?? session?.tenant;
  if (tenant) headers["X-Tenant-ID"] = tenant;
  if (session) headers.Authorization = `Bearer ${session.access}`;
  const response = await fetch(url(path, options.query), {
    method: options.method ?? "GET",
    headers,
    body: options.raw ?? (options.body !== undefined ? JSON.stringify(options.body) : undefined),
  });
  if (response.status === 401 && session && !retried && !path.startsWith("/api/auth/")) {
    if (await refresh()) return send(path, options, true);
  }
  if (!response.ok) throw await problemOf(response);
  return response;
}

export async function api<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const response = await send(path, options);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** A streamed answer (server-sent events or chunked text), chunk by chunk. */
export async function* stream(path: string, options: RequestOptions = {}): AsyncGenerator<string> {
  const response = await send(path, options);
  const reader = response.body?.getReader();
  if (!reader) return;
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    yield decoder.decode(value, { stream: true });
  }
}

// -- shapes ----------------------------------------------------------------------------------

export type Pagination = { page: number; limit: number; total: number; pages: number };
export type Membership = { tenant_id: string; slug?: string; name?: string; role: string | null };
export type Me = {
  id: string;
  email: string;
  name: string;
  mfa_enabled: boolean;
  tenant_id: string;
  role: string | null;
  permissions: string[];
  memberships: Membership[];
};
export type Module = {
  name: string;
  version: string;
  status: "active" | "disabled";
  enabled: boolean;
  reason?: string | null;
  title?: string;
  description?: string;
  depends_on?: string[];
  settings_schema?: JsonSchema | null;
};
export type JsonSchema = {
  type?: string | string[];
  title?: string;
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  enum?: unknown[];
  default?: unknown;
  items?: JsonSchema;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  format?: string;
  anyOf?: JsonSchema[];
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
};

export type Contact = {
  id: string;
  first_name: string;
  last_name: string;
  email: string | null;
  phone: string | null;
  company_id: string | null;
  company_name: string | null;
  owner_id: string | null;
  tags: string[];
  version: number;
  created_at: string;
  updated_at: string;
};
export type Company = {
  id: string;
  name: string;
  domain: string | null;
  industry: string | null;
  owner_id: string | null;
  version: number;
  created_at: string;
};
export type Stage = { id: string; name: string; position: number; kind: "open" | "won" | "lost" };
export type Pipeline = { id: string; name: string; is_default: boolean; stages: Stage[] };
export type Deal = {
  id: string;
  title: string;
  amount: string;
  currency: string;
  pipeline_id: string;
  stage_id: string;
  company_id: string | null;
  contact_id: string | null;
  version: number;
};

// -- workflows (plugins/workflows: graph.py, schemas.py, node_routes.py; keep this thin) ---------

export type WorkflowNode = {
  id: string;
  node: string;
  config: Record<string, unknown>;
  name?: string;
  position: { x: number; y: number };
};
export type WorkflowEdge = { source: string; target: string; port?: string };
export type WorkflowGraph = { nodes: WorkflowNode[]; edges: WorkflowEdge[] };
export type NodeCatalogueEntry = {
  key: string;
  kind: "action" | "trigger";
  plugin: string;
  title: string;
  description: string;
  config_schema: JsonSchema;
  output_schema: JsonSchema;
  ports: string[];
  allowed: boolean;
};
export type WorkflowSummary = {
  id: string;
  name: string;
  description: string;
  version: number;
  published_version: number | null;
  active: boolean;
  updated_at: string;
};
export type Workflow = WorkflowSummary & { graph: WorkflowGraph };
export type Execution = {
  id: string;
  workflow_id: string;
  version: number;
  status: string;
  trigger_kind: string;
  error: unknown;
  created_at: string;
  finished_at: string | null;
};
export type Step = {
  node_id: string;
  iteration: string;
  node_key: string;
  status: string;
  input: unknown;
  output: unknown;
  error: unknown;
  attempts: number;
  duration_ms: number | null;
};
export type ExecutionDetail = { execution: Execution; steps: Step[]; steps_total: number };
export type Approval = {
  id: string;
  execution_id: string;
  workflow_id: string;
  node_id: string;
  status: string;
  title: string;
  details: unknown;
  created_at: string;
};

export const workflowsApi = {
  catalogue: async () => (await api<{ nodes: NodeCatalogueEntry[] }>("/api/workflows/nodes", { query: { limit: 500 } })).nodes,
  list: (page: number) =>
    api<{ workflows: WorkflowSummary[]; pagination: Pagination }>("/api/workflows", { query: { page, limit: 25 } }),
  get: async (id: string) => {
    const response = await send(`/api/workflows/${id}`);
    return { workflow: (await response.json()) as Workflow, etag: response.headers.get("ETag") ?? "" };
  },
  create: (name: string, graph: WorkflowGraph) => api<Workflow>("/api/workflows", { method: "POST", body: { name, graph } }),
  update: (id: string, etag: string, name: string, graph: WorkflowGraph) =>
    api<Workflow>(`/api/workflows/${id}`, { method: "PATCH", body: { name, graph }, headers: etag ? { "If-Match": etag } : {} }),
  publish: (id: string) => api<unknown>(`/api/workflows/${id}/publish`, { method: "POST" }),
  run: (id: string, input: unknown) =>
    api<{ execution_id: string; status: string }>(`/api/workflows/${id}/run`, { method: "POST", body: { input } }),
  executions: (workflowId: string | undefined, page: number) =>
    api<{ executions: Execution[]; pagination: Pagination }>("/api/workflows/executions", {
      query: { workflow_id: workflowId, page, limit: 25 },
    }),
  execution: (id: string) => api<ExecutionDetail>(`/api/workflows/executions/${id}`),
  retry: (id: string) =>
    api<{ execution_id: string }>(`/api/workflows/executions/${id}/retry`, { method: "POST", body: { version: "pinned" } }),
  approvals: (page: number) =>
    api<{ approvals: Approval[]; pagination: Pagination }>("/api/workflows/approvals", {
      query: { status: "pending", page, limit: 25 },
    }),
  decide: (id: string, decision: "approve" | "reject") =>
    api<unknown>(`/api/workflows/approvals/${id}/decide`, { method: "POST", body: { decision } }),
};
