// AI: provider keys, usage by day and model (a chart), budgets, prompt templates with versions,
// and a chat that streams the answer (server-sent events from POST /api/ai/chat).
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { ConfirmButton } from "../Confirm";
import { useState, type FormEvent } from "react";
import { NavLink, Route, Routes } from "react-router";
import { api, stream, type Pagination } from "../api";
import { ErrorNote, Field, Loading, Pager, Section, formValues } from "../ui";

type Provider = { id: string; name: string; models: string[]; configured: boolean; requiresApiBase: boolean };
type KeyInfo = { provider: string; last_four: string; api_base: string | null; updated_at: string };
type UsageRow = { day: string; model: string; calls: number; prompt_tokens: number; completion_tokens: number; cost: string };
type Budget = {
  scope: string;
  monthly_cost_limit: string | null;
  monthly_token_limit: number | null;
  soft_limit_ratio: string;
  spent_cost: string;
  spent_tokens: number;
  remaining_cost: string | null;
};
type Prompt = { id: string; name: string; description: string | null; latest_version: number };
type PromptVersion = { version: number; template: unknown; variables: string[]; model: string | null; created_at: string };
type PromptDetail = Prompt & { latest: PromptVersion; versions: number[] };

function Keys() {
  const client = useQueryClient();
  const providers = useQuery({
    queryKey: ["ai-providers"],
    queryFn: async () => (await api<{ providers: Provider[] }>("/api/ai/providers")).providers,
  });
  const keys = useQuery({
    queryKey: ["ai-keys"],
    queryFn: async () => (await api<{ keys: KeyInfo[] }>("/api/ai/keys")).keys,
  });
  const put = useMutation({
    mutationFn: ({ provider, ...body }: { provider: string; api_key: string; api_base: string | null }) =>
      api(`/api/ai/keys/${encodeURIComponent(provider)}`, { method: "PUT", body }),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: ["ai-keys"] });
      void client.invalidateQueries({ queryKey: ["ai-providers"] });
    },
  });
  const remove = useMutation({
    mutationFn: (provider: string) => api(`/api/ai/keys/${encodeURIComponent(provider)}`, { method: "DELETE" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["ai-keys"] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    put.mutate({ provider: v.provider, api_key: v.api_key, api_base: v.api_base || null });
    event.currentTarget.reset();
  };
  return (
    <Section title="Provider keys">
      <form className="row" onSubmit={submit} aria-label="Store a provider key">
        <Field label="Provider" name="provider" error={put.error}>
          {(p) => (
            <select {...p}>
              {providers.data?.map((x) => (
                <option key={x.id} value={x.id}>
                  {x.name}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="API key" name="api_key" type="password" required autoComplete="off" error={put.error} />
        <Field label="API base (optional)" name="api_base" type="url" error={put.error} />
        <button type="submit">Store key</button>
      </form>
      <ErrorNote error={put.error ?? remove.error ?? keys.error} />
      <ul className="plain">
        {keys.data?.map((k) => (
          <li key={k.provider}>
            <strong>{k.provider}</strong> ····{k.last_four} {k.api_base ? <span className="muted">{k.api_base}</span> : null}{" "}
            <ConfirmButton
              label={`Delete ${k.provider} key`}
              title={`Delete the ${k.provider} key?`}
              confirm="Delete"
              onConfirm={() => remove.mutate(k.provider)}
            >
              <p>Calls to {k.provider} fail until another key is stored.</p>
            </ConfirmButton>
          </li>
        ))}
      </ul>
      {keys.data?.length === 0 ? <p className="muted">No key stored yet.</p> : null}
    </Section>
  );
}

const COLORS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#ec4899"];

/** Tokens by day, one stacked bar per day and a colour per model. */
function UsageChart({ rows }: { rows: UsageRow[] }) {
  const days = [...new Set(rows.map((r) => r.day))].sort();
  const models = [...new Set(rows.map((r) => r.model))].sort();
  const tokens = (r: UsageRow) => r.prompt_tokens + r.completion_tokens;
  const totals = days.map((d) => rows.filter((r) => r.day === d).reduce((s, r) => s + tokens(r), 0));
  const max = Math.max(1, ...totals);
  const width = Math.max(320, days.length * 36);
  const height = 180;
  return (
    <figure>
      <svg role="img" aria-labelledby="usage-title" viewBox={`0 0 ${width} ${height + 30}`} className="chart">
        <title id="usage-title">Tokens by day and model</title>
        {days.map((day, i) => {
          let y = height;
          return (
            <g key={day}>
              {models.map((model, m) => {
                const row = rows.find((r) => r.day === day && r.model === model);
                if (!row) return null;
                const h = (tokens(row) / max) * (height - 10);
                y -= h;
                return (
                  <rect key={model} x={i * 36 + 6} y={y} width={24} height={h} fill={COLORS[m % COLORS.length]}>
                    <title>{`${day} ${model}: ${tokens(row)} tokens, ${row.cost}`}</title>
                  </rect>
                );
              })}
              <text x={i * 36 + 18} y={height + 16} textAnchor="middle" fontSize="9" fill="currentColor">
                {day.slice(5)}
              </text>
            </g>
          );
        })}
      </svg>
      <figcaption>
        {models.map((m, i) => (
          <span key={m} className="legend">
            <span className="swatch" style={{ background: COLORS[i % COLORS.length] }} aria-hidden="true" /> {m}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

function Usage() {
  const usage = useQuery({
    queryKey: ["ai-usage"],
    queryFn: () => api<{ rows: UsageRow[]; totals: Record<string, unknown> }>("/api/ai/usage"),
  });
  if (usage.isPending) return <Loading />;
  if (usage.error) return <ErrorNote error={usage.error} />;
  return (
    <Section title="Usage by day and model">
      {usage.data.rows.length ? <UsageChart rows={usage.data.rows} /> : <p className="muted">No AI call yet.</p>}
      <dl className="totals">
        {Object.entries(usage.data.totals).map(([k, v]) => (
          <div key={k}>
            <dt>{k.replace(/_/g, " ")}</dt>
            <dd>{String(v)}</dd>
          </div>
        ))}
      </dl>
    </Section>
  );
}

function Budgets() {
  const client = useQueryClient();
  const budget = useQuery({ queryKey: ["ai-budget"], queryFn: () => api<Budget>("/api/ai/budgets") });
  const save = useMutation({
    mutationFn: (body: Record<string, unknown>) => api<Budget>("/api/ai/budgets", { method: "PUT", body }),
    onSuccess: (b) => client.setQueryData(["ai-budget"], b),
  });
  if (budget.isPending) return <Loading />;
  if (budget.error) return <ErrorNote error={budget.error} />;
  const b = budget.data;
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    save.mutate({
      monthly_cost_limit: v.monthly_cost_limit ? Number(v.monthly_cost_limit) : null,
      monthly_token_limit: v.monthly_token_limit ? Number(v.monthly_token_limit) : null,
      soft_limit_ratio: Number(v.soft_limit_ratio || 0.8),
    });
  };
  return (
    <Section title="Monthly budget">
      <p>
        Spent this month: {b.spent_cost} ({b.spent_tokens} tokens){b.remaining_cost ? `, ${b.remaining_cost} left` : ""}.
      </p>
      <form className="row" onSubmit={submit} aria-label="Budget">
        <Field label="Cost limit" name="monthly_cost_limit" type="number" step="any" min={0} defaultValue={b.monthly_cost_limit ?? ""} error={save.error} />
        <Field label="Token limit" name="monthly_token_limit" type="number" min={0} defaultValue={b.monthly_token_limit ?? ""} error={save.error} />
        <Field label="Warn at (ratio)" name="soft_limit_ratio" type="number" step="0.01" min={0.01} max={1} defaultValue={b.soft_limit_ratio} error={save.error} />
        <button type="submit">Save budget</button>
      </form>
      <ErrorNote error={save.error} />
      {save.isSuccess ? <p role="status">Saved.</p> : null}
    </Section>
  );
}

function PromptView({ id }: { id: string }) {
  const client = useQueryClient();
  const [version, setVersion] = useState<number | null>(null);
  const prompt = useQuery({ queryKey: ["prompt", id], queryFn: () => api<PromptDetail>(`/api/ai/prompts/${id}`) });
  const old = useQuery({
    queryKey: ["prompt", id, version],
    enabled: version !== null,
    queryFn: () => api<PromptVersion>(`/api/ai/prompts/${id}/versions/${version}`),
  });
  const update = useMutation({
    mutationFn: (template: string) => api(`/api/ai/prompts/${id}`, { method: "PATCH", body: { template } }),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: ["prompt", id] });
      void client.invalidateQueries({ queryKey: ["prompts"] });
    },
  });
  if (prompt.isPending) return <Loading />;
  if (prompt.error) return <ErrorNote error={prompt.error} />;
  const shown = version !== null && old.data ? old.data : prompt.data.latest;
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    update.mutate(formValues(event.currentTarget).template);
  };
  return (
    <div className="card">
      <h3>
        {prompt.data.name} <span className="muted">v{shown.version}</span>
      </h3>
      <div className="field">
        <label htmlFor="prompt-version">Version</label>
        <select
          id="prompt-version"
          value={version ?? prompt.data.latest_version}
          onChange={(e) => setVersion(Number(e.target.value))}
        >
          {prompt.data.versions.map((v) => (
            <option key={v} value={v}>
              v{v}
            </option>
          ))}
        </select>
      </div>
      <pre className="break">{typeof shown.template === "string" ? shown.template : JSON.stringify(shown.template, null, 2)}</pre>
      <p className="muted">Variables: {shown.variables.join(", ") || "none"}</p>
      <form key={prompt.data.latest_version} onSubmit={submit}>
        <Field label="New version's template" name="template" error={update.error}>
          {(p) => (
            <textarea
              {...p}
              rows={4}
              required
              defaultValue={typeof prompt.data.latest.template === "string" ? prompt.data.latest.template : ""}
            />
          )}
        </Field>
        <ErrorNote error={update.error} />
        <button type="submit">Save as new version</button>
      </form>
    </div>
  );
}

function Prompts() {
  const client = useQueryClient();
  const [page, setPage] = useState(1);
  const [open, setOpen] = useState<string | null>(null);
  const prompts = useQuery({
    queryKey: ["prompts", page],
    queryFn: () => api<{ prompts: Prompt[]; pagination: Pagination }>("/api/ai/prompts", { query: { page, limit: 20 } }),
    placeholderData: keepPreviousData,
  });
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api<Prompt>("/api/ai/prompts", { method: "POST", body }),
    onSuccess: (p) => {
      setOpen(p.id);
      void client.invalidateQueries({ queryKey: ["prompts"] });
    },
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    create.mutate({ name: v.name, template: v.template, description: v.description || null });
  };
  return (
    <Section title="Prompt templates">
      <form onSubmit={submit} aria-label="New prompt template">
        <div className="row">
          <Field label="Name" name="name" required error={create.error} />
          <Field label="Description" name="description" error={create.error} />
        </div>
        <Field label="Template" name="template" error={create.error} hint="Jinja2: {{ variable }}">
          {(p) => <textarea {...p} rows={3} required />}
        </Field>
        <ErrorNote error={create.error} />
        <button type="submit">Create template</button>
      </form>
      <ul className="plain">
        {prompts.data?.prompts.map((p) => (
          <li key={p.id}>
            <button type="button" className="link" aria-expanded={open === p.id} onClick={() => setOpen(open === p.id ? null : p.id)}>
              {p.name}
            </button>{" "}
            <span className="muted">
              v{p.latest_version} {p.description}
            </span>
            {open === p.id ? <PromptView id={p.id} /> : null}
          </li>
        ))}
      </ul>
      <Pager pagination={prompts.data?.pagination} onPage={setPage} />
    </Section>
  );
}

type ChatLine = { role: "user" | "assistant"; content: string };

function Chat() {
  const [lines, setLines] = useState<ChatLine[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const v = formValues(form);
    const history: ChatLine[] = [...lines, { role: "user", content: v.message }];
    setLines([...history, { role: "assistant", content: "" }]);
    setError(null);
    setBusy(true);
    form.reset();
    try {
      let buffer = "";
      for await (const chunk of stream("/api/ai/chat", {
        method: "POST",
        body: { messages: history, stream: true, ...(v.model ? { model: v.model } : {}) },
      })) {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const name = /^event: (.*)$/m.exec(block)?.[1];
          const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? "null");
          if (name === "delta") {
            setLines((current) => {
              const copy = [...current];
              const last = copy[copy.length - 1];
              copy[copy.length - 1] = { ...last, content: last.content + String(data.content ?? "") };
              return copy;
            });
          } else if (name === "error") setError(new Error(data.detail ?? data.title));
        }
      }
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Section title="Chat">
      <ol className="plain chat" aria-live="polite">
        {lines.map((line, i) => (
          <li key={i} className={line.role}>
            <strong>{line.role === "user" ? "You" : "Assistant"}:</strong> {line.content}
          </li>
        ))}
      </ol>
      <form onSubmit={submit} aria-label="Send a message">
        <div className="row">
          <Field label="Model (optional)" name="model" hint="Empty: the tenant's default model" />
        </div>
        <Field label="Message" name="message">
          {(p) => <textarea {...p} rows={2} required />}
        </Field>
        <ErrorNote error={error} />
        <button type="submit" disabled={busy}>
          Send
        </button>
      </form>
    </Section>
  );
}

export default function Ai() {
  return (
    <>
      <h1>AI</h1>
      <nav aria-label="AI" className="tabs">
        <NavLink to="/ai" end>
          Chat
        </NavLink>
        <NavLink to="/ai/keys">Keys</NavLink>
        <NavLink to="/ai/usage">Usage</NavLink>
        <NavLink to="/ai/budget">Budget</NavLink>
        <NavLink to="/ai/prompts">Prompts</NavLink>
      </nav>
      <Routes>
        <Route index element={<Chat />} />
        <Route path="keys" element={<Keys />} />
        <Route path="usage" element={<Usage />} />
        <Route path="budget" element={<Budgets />} />
        <Route path="prompts" element={<Prompts />} />
      </Routes>
    </>
  );
}
