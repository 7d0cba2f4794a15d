// Connections (/api/connections, kernel/connections): a tenant's credentials for outside services.
// The create form is generated from the credential type's JSON Schema (the module-settings form);
// secrets are typed as passwords and only ever come back masked.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { ConfirmButton } from "../Confirm";
import { useState } from "react";
import { useSearchParams } from "react-router";
import { ApiError, api, type JsonSchema, type Pagination } from "../api";
import { SchemaForm } from "../SchemaForm";
import { ErrorNote, Field, Loading, Pager, Section } from "../ui";

type CredentialType = {
  key: string;
  plugin: string;
  title: string;
  description: string;
  schema: JsonSchema;
  secret_fields: string[];
  oauth: boolean;
  checkable: boolean;
};
type Connection = {
  id: string;
  type: string;
  plugin: string;
  name: string;
  status: string;
  fields: Record<string, unknown>;
  secrets: Record<string, string>;
  oauth: boolean;
  expires_at: string | null;
  broken_reason: string | null;
  last_check: { ok: boolean; at: string; error: string | null } | null;
  created_at: string;
};
type CheckResult = {
  ok: boolean;
  checked_at: string;
  error: { status: number; title: string; detail: string; errors: { field: string; message: string }[] } | null;
};

// The kernel fills these in after the OAuth 2.0 exchange: the form does not ask for them.
const OAUTH_TOKENS = ["access_token", "refresh_token", "token_type", "expires_at"];

function useTypes() {
  return useQuery({
    queryKey: ["connection-types"],
    queryFn: async () => (await api<{ types: CredentialType[] }>("/api/connections/types")).types,
  });
}

function NewConnection({ onDone }: { onDone: () => void }) {
  const client = useQueryClient();
  const types = useTypes();
  const [key, setKey] = useState("");
  const [name, setName] = useState("");
  const kind = types.data?.find((t) => t.key === key) ?? types.data?.[0];
  const create = useMutation({
    mutationFn: async (credentials: Record<string, unknown>) => {
      if (!kind) return;
      if (kind.oauth) {
        // The provider sends the browser back here with ?connection_id=... or ?error=...
        const started = await api<{ authorize_url: string }>("/api/connections/oauth/start", {
          method: "POST",
          body: { type: kind.key, name, credentials, redirect: `${window.location.origin}/console/connections` },
        });
        window.location.assign(started.authorize_url);
        return;
      }
      await api("/api/connections", { method: "POST", body: { type: kind.key, name, credentials } });
      await client.invalidateQueries({ queryKey: ["connections"] });
      onDone();
    },
  });
  if (types.isPending) return <Loading label="Loading connection types" />;
  if (types.error) return <ErrorNote error={types.error} />;
  if (!kind) return <p className="muted">No module you enabled offers connections (the HTTP connector does).</p>;
  return (
    <Section title="New connection">
      <div className="field">
        <label htmlFor="connection-type">Connection type</label>
        <select id="connection-type" value={kind.key} onChange={(e) => setKey(e.target.value)}>
          {types.data.map((t) => (
            <option key={t.key} value={t.key}>
              {t.title} ({t.key})
            </option>
          ))}
        </select>
        <small className="hint">{kind.description}</small>
      </div>
      <Field label="Connection name" name="name" error={create.error} value={name} onChange={(e) => setName(e.target.value)} required />
      <SchemaForm
        key={kind.key}
        schema={kind.schema}
        value={{}}
        error={create.error}
        busy={create.isPending}
        hidden={kind.oauth ? OAUTH_TOKENS : undefined}
        submitLabel={kind.oauth ? "Authorize with the provider" : "Create connection"}
        onSubmit={(v) => create.mutate(v)}
      />
      <ErrorNote error={create.error} />
    </Section>
  );
}

function CheckNote({ result }: { result: CheckResult }) {
  if (result.ok) return <p role="status">Test passed: the service accepted these credentials.</p>;
  const error = result.error;
  return (
    <div role="alert" className="error">
      <p>
        Test failed: {error?.title} ({error?.status}): {error?.detail}
      </p>
      {error?.errors.length ? (
        <ul>
          {error.errors.map((e) => (
            <li key={e.field}>
              <code>{e.field}</code>: {e.message}
            </li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}

function Row({ connection }: { connection: Connection }) {
  const client = useQueryClient();
  const [renaming, setRenaming] = useState(false);
  const [name, setName] = useState(connection.name);
  const refresh = () => client.invalidateQueries({ queryKey: ["connections"] });
  const test = useMutation({
    mutationFn: () => api<CheckResult>(`/api/connections/${connection.id}/test`, { method: "POST" }),
    onSettled: refresh,
  });
  const rename = useMutation({
    mutationFn: () => api(`/api/connections/${connection.id}`, { method: "PATCH", body: { name } }),
    onSuccess: async () => {
      setRenaming(false);
      await refresh();
    },
  });
  const remove = useMutation({
    mutationFn: () => api(`/api/connections/${connection.id}`, { method: "DELETE" }),
    onSuccess: refresh,
  });
  const usedBy = remove.error instanceof ApiError ? (remove.error.problem.used_by as string[] | undefined) : undefined;
  const check = connection.last_check;
  return (
    <tr data-connection={connection.name}>
      <td>
        {renaming ? (
          <form
            className="row"
            onSubmit={(e) => {
              e.preventDefault();
              rename.mutate();
            }}
          >
            <Field label={`New name of ${connection.name}`} name="name" error={rename.error} value={name} onChange={(e) => setName(e.target.value)} required />
            <button type="submit" disabled={rename.isPending}>
              Save name
            </button>
            <button type="button" className="ghost" onClick={() => setRenaming(false)}>
              Cancel
            </button>
          </form>
        ) : (
          <strong>{connection.name}</strong>
        )}
        <ErrorNote error={rename.error} />
      </td>
      <td>
        {connection.type}
        {connection.oauth ? " (OAuth 2.0)" : ""}
        <br />
        <small className="muted">
          {Object.entries(connection.secrets)
            .map(([k, v]) => `${k} ${v}`)
            .join(", ")}
        </small>
      </td>
      <td>
        <span className={connection.status === "active" ? "badge on" : "badge"}>{connection.status}</span>
        {connection.broken_reason ? <small className="error"> {connection.broken_reason}</small> : null}
      </td>
      <td>
        {check ? `${check.ok ? "passed" : "failed"} ${new Date(check.at).toLocaleString()}` : "never tested"}
        {test.data ? <CheckNote result={test.data} /> : null}
        <ErrorNote error={test.error} />
      </td>
      <td>
        <span className="row">
          <button type="button" onClick={() => test.mutate()} disabled={test.isPending}>
            Test {connection.name}
          </button>
          <button type="button" className="ghost" onClick={() => setRenaming(true)} disabled={renaming}>
            Rename {connection.name}
          </button>
          <ConfirmButton
            label={`Delete ${connection.name}`}
            title={`Delete ${connection.name}?`}
            confirm="Delete"
            isDisabled={remove.isPending}
            onConfirm={() => remove.mutate()}
          >
            <p>Its secrets are erased. A published workflow that uses it keeps the deletion from going through.</p>
          </ConfirmButton>
        </span>
        {remove.error ? (
          <div role="alert" className="error">
            <p>{remove.error.message}</p>
            {usedBy?.length ? (
              <ul aria-label={`What uses ${connection.name}`}>
                {usedBy.map((u) => (
                  <li key={u}>{u}</li>
                ))}
              </ul>
            ) : null}
          </div>
        ) : null}
      </td>
    </tr>
  );
}

/** What the OAuth 2.0 callback sent the browser back with. */
function OAuthOutcome() {
  const [params, setParams] = useSearchParams();
  const id = params.get("connection_id");
  const error = params.get("error");
  if (!id && !error) return null;
  return (
    <div role={error ? "alert" : "status"} className={error ? "error" : "ok"}>
      {error ? `The authorization failed: ${error}.` : "Connection authorized."}{" "}
      <button type="button" className="ghost" onClick={() => setParams({})}>
        Dismiss
      </button>
    </div>
  );
}

export default function Connections() {
  const [page, setPage] = useState(1);
  const [adding, setAdding] = useState(false);
  const connections = useQuery({
    queryKey: ["connections", page],
    queryFn: () => api<{ connections: Connection[]; pagination: Pagination }>("/api/connections", { query: { page, limit: 25 } }),
    placeholderData: keepPreviousData,
  });
  return (
    <>
      <h1>Connections</h1>
      <OAuthOutcome />
      <p>
        Credentials for outside services, used by workflow steps. Secrets are stored sealed and never shown again.{" "}
        <button type="button" onClick={() => setAdding((a) => !a)} aria-expanded={adding}>
          New connection
        </button>
      </p>
      {adding ? <NewConnection onDone={() => setAdding(false)} /> : null}
      <Section title="Your connections">
        <ErrorNote error={connections.error} />
        {connections.isPending ? <Loading /> : null}
        {connections.data?.connections.length === 0 ? <p className="muted">No connection yet.</p> : null}
        {connections.data?.connections.length ? (
          <div className="table-wrap">
            <table>
              <caption className="sr-only">Connections</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Type</th>
                  <th scope="col">Status</th>
                  <th scope="col">Last test</th>
                  <th scope="col">
                    <span className="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {connections.data.connections.map((c) => (
                  <Row key={c.id} connection={c} />
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
        <Pager pagination={connections.data?.pagination} onPage={setPage} />
      </Section>
    </>
  );
}
