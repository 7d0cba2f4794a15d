// The console's only door to BusinessOS: the public HTTP API, typed thinly in this one file.
// The access token lives in memory only; the refresh token lives in an HttpOnly cookie the API
// sets when asked (X-Refresh-Cookie: 1), so no script ever holds it and a reload stays signed in.
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

/** `unknown` while the page asks the API whether its refresh cookie still signs someone in. */
export type SessionState = "unknown" | "in" | "out";
type Session = { access: string; tenant: string | null };
let session: Session | null = null;
let state: SessionState = "unknown";
let refreshing: Promise<boolean> | null = null;
const listeners = new Set<() => void>();
const COOKIE = { "X-Refresh-Cookie": "1" };

export function onSessionChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}
export function sessionState(): SessionState {
  return state;
}
function settle(next: Session | null): void {
  session = next;
  state = next ? "in" : "out";
  listeners.forEach((l) => l());
}
export function clearSession(): void {
  settle(null);
}

/**
 * Ask the API for a new access token, the refresh token travelling in its cookie (or, right after
 * signing in, in the body, to be traded for the cookie). Tabs of one browser share the cookie and
 * rotation refuses a token presented twice, so refreshes are serialized across tabs with a lock.
 */
async function rotate(tenant: string | null, token?: string): Promise<TokenPair | null> {
  const run = async (): Promise<TokenPair | null> => {
    const response = await fetch("/api/auth/refresh", {
      method: "POST",
      headers: { ...COOKIE, ...(tenant ? { "X-Tenant-ID": tenant } : {}), ...(token ? { "Content-Type": "application/json" } : {}) },
      body: token ? JSON.stringify({ refresh_token: token }) : undefined,
      credentials: "same-origin",
    });
    if (response.ok) return (await response.json()) as TokenPair;
    await response.text(); // read to the end, so the request is finished (idle network, reused connection)
    return null;
  };
  return navigator.locks ? navigator.locks.request("businessos-refresh", run) : run();
}

/** Signed in (sign-up, log-in, MFA, invitation): keep the access token, trade the refresh token for the cookie. */
export async function setSession(tokens: TokenPair, tenant: string): Promise<void> {
  const traded = tokens.refresh_token ? await rotate(tenant, tokens.refresh_token) : null;
  settle({ access: traded?.access_token ?? tokens.access_token, tenant });
}

/** On page load: the refresh cookie, if the browser has a live one, signs the user in again. */
export async function resumeSession(): Promise<void> {
  try {
    const pair = await rotate(null);
    if (!pair) return settle(null);
    const me = await fetch("/api/auth/me", { headers: { Authorization: `Bearer ${pair.access_token}` } });
    settle(me.ok ? { access: pair.access_token, tenant: ((await me.json()) as { tenant_id: string }).tenant_id } : null);
  } catch {
    settle(null);
  }
}

/** Sign out: the API ends this session and clears its cookie. */
export async function endSession(): Promise<void> {
  try {
    await send("/api/auth/logout", { method: "POST", headers: COOKIE });
  } finally {
    settle(null);
  }
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

/** A new access token, once, shared by every request that found the current one expired. */
async function refresh(): Promise<boolean> {
  if (!session) return false;
  refreshing ??= (async () => {
    const current = session;
    if (!current) return false;
    const pair = await rotate(current.tenant);
    settle(pair ? { access: pair.access_token, tenant: current.tenant } : null);
    return pair !== null;
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
  /** A secret (connection credentials): typed as a password, never shown back. */
  writeOnly?: boolean;
  "x-secret"?: boolean;
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
