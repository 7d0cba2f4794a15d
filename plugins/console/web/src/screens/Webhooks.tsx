// Outgoing webhook subscriptions (connectors/webhooks, /api/webhooks): subscribe a URL to event
// types from the catalogue, see the signing secret once, enable or disable, and read the delivery
// log attempt by attempt (request and response), redelivering what finished.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { ListBox, ListBoxItem, type Selection } from "react-aria-components";
import { Link, Route, Routes, useParams } from "react-router";
import { ApiError, api, type Pagination } from "../api";
import { ErrorNote, Field, Loading, Pager, Secret, Section, formValues } from "../ui";

type Subscription = {
  id: string;
  url: string;
  event_types: string[];
  filter: Record<string, unknown> | null;
  description: string;
  enabled: boolean;
  disabled_reason: string | null;
  failing_since: string | null;
  version: number;
  created_at: string;
};
type Delivery = {
  id: string;
  event_type: string;
  message_id: string;
  origin: string;
  status: string;
  attempts: number;
  next_attempt_at: string | null;
  last_status: number | null;
  last_error: string | null;
  created_at: string;
  finished_at: string | null;
};
type Attempt = {
  id: string;
  number: number;
  url: string;
  succeeded: boolean;
  duration_ms: number;
  request_headers: Record<string, string>;
  request_body: string;
  response_status: number | null;
  response_headers: Record<string, string> | null;
  response_body: string | null;
  error: string | null;
  created_at: string;
};
type DeliveryDetail = Delivery & { attempt_log: Attempt[] };
type EventType = { name: string; source: string; description: string };

const when = (iso: string | null) => (iso ? new Date(iso).toLocaleString() : "—");
const unfinished = (status: string) => status === "pending" || status === "running";

function NewSubscription() {
  const client = useQueryClient();
  const catalogue = useQuery({
    queryKey: ["event-types"],
    queryFn: async () => (await api<{ event_types: EventType[] }>("/api/events/types")).event_types,
  });
  const [filterError, setFilterError] = useState<string | null>(null);
  const [chosen, setChosen] = useState<Selection>(new Set());
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) =>
      api<Subscription & { secret: string }>("/api/webhooks/subscriptions", { method: "POST", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["webhook-subscriptions"] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const v = formValues(form);
    const types = chosen === "all" ? (catalogue.data ?? []).map((e) => e.name) : Array.from(chosen, String);
    const patterns = (v.patterns ?? "")
      .split(/[\s,]+/)
      .map((p) => p.trim())
      .filter(Boolean);
    let filter: unknown = null;
    setFilterError(null);
    if (v.filter?.trim()) {
      try {
        filter = JSON.parse(v.filter);
      } catch {
        setFilterError("not JSON: write an object such as {\"deal.stage\": \"won\"}");
        return;
      }
    }
    create.mutate({ url: v.url, event_types: [...types, ...patterns], filter, description: v.description ?? "" });
  };
  const eventTypesError = create.error instanceof ApiError ? create.error.fieldError("event_types") : undefined;
  const filterMessage = filterError ?? (create.error instanceof ApiError ? create.error.fieldError("filter") : undefined);
  return (
    <Section title="New subscription">
      {create.data ? <Secret label={`Signing secret of ${create.data.url}`} value={create.data.secret} /> : null}
      <form onSubmit={submit}>
        <Field label="Endpoint URL" name="url" type="url" error={create.error} required placeholder="https://example.com/hooks" />
        <div className="field">
          <span id="webhook-event-types-label" className="label">
            Event types
          </span>
          {/* A multiple-selection listbox: a click or Space toggles an option, no Ctrl needed. */}
          <ListBox
            aria-labelledby="webhook-event-types-label"
            aria-describedby={eventTypesError ? "webhook-event-types-error" : "webhook-event-types-hint"}
            className="listbox"
            data-invalid={eventTypesError ? true : undefined}
            selectionMode="multiple"
            selectedKeys={chosen}
            onSelectionChange={setChosen}
            items={catalogue.data ?? []}
            renderEmptyState={() => <span className="muted">{catalogue.isPending ? "Loading…" : "No event types."}</span>}
          >
            {(e) => (
              <ListBoxItem id={e.name} textValue={e.name} className="listbox-item">
                <span title={e.description}>{e.name}</span>
              </ListBoxItem>
            )}
          </ListBox>
          <small id="webhook-event-types-hint" className="hint">
            From the event catalogue; choose one or more.
          </small>
          {eventTypesError ? (
            <small id="webhook-event-types-error" className="field-error" role="alert">
              {eventTypesError}
            </small>
          ) : null}
        </div>
        <Field label="Patterns" name="patterns" hint="Optional, comma-separated: crm.* or crm.deal.* match a whole namespace." />
        <div className="field">
          <label htmlFor="webhook-filter">Filter (JSON)</label>
          <textarea
            id="webhook-filter"
            name="filter"
            rows={2}
            aria-invalid={Boolean(filterMessage)}
            aria-describedby={filterMessage ? "webhook-filter-error" : "webhook-filter-hint"}
          />
          {filterMessage ? (
            <small id="webhook-filter-error" className="field-error" role="alert">
              {filterMessage}
            </small>
          ) : (
            <small id="webhook-filter-hint" className="hint">
              Optional: {"{\"deal.stage\": \"won\"}"} sends only events whose payload has that value at that path.
            </small>
          )}
        </div>
        <Field label="Description" name="description" error={create.error} />
        <ErrorNote error={create.error} />
        <ErrorNote error={catalogue.error} />
        <button type="submit" disabled={create.isPending}>
          Subscribe
        </button>
      </form>
    </Section>
  );
}

function Subscriptions() {
  const client = useQueryClient();
  const [page, setPage] = useState(1);
  const subscriptions = useQuery({
    queryKey: ["webhook-subscriptions", page],
    queryFn: () =>
      api<{ subscriptions: Subscription[]; pagination: Pagination }>("/api/webhooks/subscriptions", { query: { page, limit: 20 } }),
    placeholderData: keepPreviousData,
  });
  const toggle = useMutation({
    mutationFn: (s: Subscription) =>
      s.enabled
        ? api(`/api/webhooks/subscriptions/${s.id}`, { method: "PATCH", body: { enabled: false, version: s.version } })
        : api(`/api/webhooks/subscriptions/${s.id}/enable`, { method: "POST" }),
    onSettled: () => client.invalidateQueries({ queryKey: ["webhook-subscriptions"] }),
  });
  return (
    <>
      <NewSubscription />
      <Section title="Subscriptions">
        <ErrorNote error={subscriptions.error ?? toggle.error} />
        {subscriptions.isPending ? <Loading /> : null}
        {subscriptions.data?.subscriptions.length === 0 ? <p className="muted">No subscription yet.</p> : null}
        {subscriptions.data?.subscriptions.length ? (
          <div className="table-wrap">
            <table>
              <caption className="sr-only">Webhook subscriptions, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">Endpoint</th>
                  <th scope="col">Events</th>
                  <th scope="col">State</th>
                  <th scope="col">
                    <span className="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {subscriptions.data.subscriptions.map((s) => (
                  <tr key={s.id}>
                    <td className="break">
                      <Link to={s.id}>{s.url}</Link>
                      {s.description ? <small className="muted"> {s.description}</small> : null}
                    </td>
                    <td>
                      {s.event_types.join(", ")}
                      {s.filter && Object.keys(s.filter).length ? <small className="muted"> filter {JSON.stringify(s.filter)}</small> : null}
                    </td>
                    <td>
                      <span className={s.enabled ? "badge on" : "badge"}>{s.enabled ? "enabled" : "disabled"}</span>
                      {s.disabled_reason ? <small className="error"> {s.disabled_reason}</small> : null}
                      {s.failing_since ? <small className="error"> failing since {when(s.failing_since)}</small> : null}
                    </td>
                    <td>
                      <button type="button" onClick={() => toggle.mutate(s)} disabled={toggle.isPending}>
                        {s.enabled ? "Disable" : "Enable"} {s.url}
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
        <Pager pagination={subscriptions.data?.pagination} onPage={setPage} />
      </Section>
    </>
  );
}

/** A body or headers, pretty-printed when it is JSON (bodies are stored as text, maybe truncated). */
function Json({ value, label }: { value: unknown; label: string }) {
  let text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  if (typeof value === "string") {
    try {
      text = JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      // not JSON, or cut at 4 KiB: as it came
    }
  }
  return (
    <pre className="json" tabIndex={0} aria-label={label}>
      {text}
    </pre>
  );
}

function DeliveryView({ id }: { id: string }) {
  const client = useQueryClient();
  const detail = useQuery({
    queryKey: ["webhook-delivery", id],
    queryFn: () => api<DeliveryDetail>(`/api/webhooks/deliveries/${id}`),
    refetchInterval: (q) => (q.state.data && unfinished(q.state.data.status) ? 1500 : false),
  });
  const redeliver = useMutation({
    mutationFn: () => api(`/api/webhooks/deliveries/${id}/redeliver`, { method: "POST" }),
    onSettled: async () => {
      await client.invalidateQueries({ queryKey: ["webhook-delivery", id] });
      await client.invalidateQueries({ queryKey: ["webhook-deliveries"] });
    },
  });
  if (detail.isPending) return <Loading label="Loading the delivery" />;
  if (detail.error) return <ErrorNote error={detail.error} />;
  const d = detail.data;
  return (
    <Section
      title={`Delivery of ${d.event_type}`}
      actions={
        <button type="button" onClick={() => redeliver.mutate()} disabled={redeliver.isPending || unfinished(d.status)}>
          Redeliver
        </button>
      }
    >
      <p data-delivery-status={d.status}>
        {d.status}, {d.attempts} attempt{d.attempts === 1 ? "" : "s"}; <code>webhook-id</code> {d.message_id}
        {d.next_attempt_at ? `; next attempt ${when(d.next_attempt_at)}` : ""}
      </p>
      <ErrorNote error={redeliver.error} />
      {redeliver.isSuccess ? <p role="status">Sent again.</p> : null}
      <ol className="plain">
        {d.attempt_log.map((a) => (
          <li key={a.id} data-attempt={a.number}>
            <h3>
              Attempt {a.number}: {a.succeeded ? "succeeded" : "failed"}
              {a.response_status !== null ? ` (HTTP ${a.response_status})` : ""} in {a.duration_ms} ms, {when(a.created_at)}
            </h3>
            {a.error ? <p className="error">{a.error}</p> : null}
            <div className="row attempt">
              <div>
                <h4>Request to {a.url}</h4>
                <Json label={`Request headers of attempt ${a.number}`} value={a.request_headers} />
                <Json label={`Request body of attempt ${a.number}`} value={a.request_body} />
              </div>
              <div>
                <h4>Response</h4>
                <Json label={`Response headers of attempt ${a.number}`} value={a.response_headers ?? {}} />
                <Json label={`Response body of attempt ${a.number}`} value={a.response_body ?? ""} />
              </div>
            </div>
          </li>
        ))}
      </ol>
    </Section>
  );
}

function Deliveries() {
  const { subscriptionId = "" } = useParams();
  const [page, setPage] = useState(1);
  const [status, setStatus] = useState("");
  const [open, setOpen] = useState<string | null>(null);
  const subscription = useQuery({
    queryKey: ["webhook-subscription", subscriptionId],
    queryFn: () => api<Subscription>(`/api/webhooks/subscriptions/${subscriptionId}`),
  });
  const deliveries = useQuery({
    queryKey: ["webhook-deliveries", subscriptionId, page, status],
    queryFn: () =>
      api<{ deliveries: Delivery[]; pagination: Pagination }>(`/api/webhooks/subscriptions/${subscriptionId}/deliveries`, {
        query: { page, limit: 20, status: status || undefined },
      }),
    placeholderData: keepPreviousData,
    // Deliveries happen in the worker: watch while any is still on its way, or none came yet.
    refetchInterval: (q) => (!q.state.data?.deliveries.length || q.state.data.deliveries.some((d) => unfinished(d.status)) ? 2000 : false),
  });
  return (
    <>
      <p>
        <Link to="..">All subscriptions</Link>
      </p>
      <h2 className="break">Delivery log of {subscription.data?.url ?? "…"}</h2>
      <ErrorNote error={subscription.error ?? deliveries.error} />
      <div className="field">
        <label htmlFor="delivery-status">Status</label>
        <select id="delivery-status" value={status} onChange={(e) => (setStatus(e.target.value), setPage(1))}>
          <option value="">any</option>
          <option>pending</option>
          <option>running</option>
          <option>succeeded</option>
          <option>failed</option>
        </select>
      </div>
      {deliveries.data?.deliveries.length === 0 ? <p className="muted">No delivery yet.</p> : null}
      <div className="table-wrap">
        <table>
          <caption className="sr-only">Deliveries, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Event</th>
              <th scope="col">Status</th>
              <th scope="col">Attempts</th>
              <th scope="col">Last answer</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {deliveries.data?.deliveries.map((d) => (
              <tr key={d.id} data-delivery={d.event_type} data-status={d.status}>
                <td>
                  <button type="button" className="ghost" aria-expanded={open === d.id} onClick={() => setOpen(open === d.id ? null : d.id)}>
                    {d.event_type}
                  </button>
                </td>
                <td>{d.status}</td>
                <td>{d.attempts}</td>
                <td>{d.last_status ?? d.last_error ?? "—"}</td>
                <td>{when(d.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <Pager pagination={deliveries.data?.pagination} onPage={setPage} />
      {open ? <DeliveryView id={open} /> : null}
    </>
  );
}

export default function Webhooks() {
  return (
    <>
      <h1>Webhooks</h1>
      <Routes>
        <Route index element={<Subscriptions />} />
        <Route path=":subscriptionId" element={<Deliveries />} />
      </Routes>
    </>
  );
}
