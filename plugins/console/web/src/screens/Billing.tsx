// Billing (plugins/billing): the plan, usage against the allowances, invoices with their PDF,
// and changing plan. Shapes follow plugins/billing/schemas.py; the API is young: kept thin here.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, send, type Pagination } from "../api";
import { ErrorNote, Loading, Pager, Section } from "../ui";

type Subscription = {
  id: string;
  plan: string;
  plan_version: number;
  status: string;
  interval: string;
  current_period: { start?: string; end?: string };
  cancel_at_period_end: boolean;
  pending_plan: string | null;
};
type Plan = {
  id: string;
  code: string;
  name: string;
  current: { currency: string; prices: Record<string, number | null>; entitlements: Record<string, unknown> };
};
type UsageReport = {
  plan: string;
  period: { start: string; end: string };
  metrics: { metric: string; used: string; included: number | null; remaining: string | null }[];
};
type Invoice = {
  id: string;
  kind: string;
  number: string | null;
  status: string;
  currency: string;
  total_minor: number;
  period_start: string;
  created_at: string;
};

const money = (minor: number | null | undefined, currency: string) =>
  minor === null || minor === undefined ? "—" : `${(minor / 100).toFixed(2)} ${currency}`;

function Plans({ live }: { live?: Subscription }) {
  const client = useQueryClient();
  const plans = useQuery({
    queryKey: ["billing-plans"],
    queryFn: async () => (await api<{ plans: Plan[] }>("/api/billing/plans")).plans,
  });
  const change = useMutation({
    mutationFn: (plan: string) => api("/api/billing/subscriptions/change", { method: "POST", body: { plan } }),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: ["billing-subscriptions"] });
      void client.invalidateQueries({ queryKey: ["billing-usage"] });
    },
  });
  return (
    <Section title="Plans">
      <ErrorNote error={plans.error ?? change.error} />
      <ul className="plain">
        {plans.data?.map((p) => (
          <li key={p.id}>
            <strong>{p.name}</strong> <span className="muted">({p.code})</span>{" "}
            {money(p.current.prices.monthly, p.current.currency)} a month{" "}
            {live?.plan === p.code ? (
              <span className="badge on">current</span>
            ) : (
              <button type="button" onClick={() => change.mutate(p.code)} disabled={change.isPending}>
                Change to {p.name}
              </button>
            )}
          </li>
        ))}
      </ul>
    </Section>
  );
}

function Invoices() {
  const [page, setPage] = useState(1);
  const [error, setError] = useState<unknown>(null);
  const invoices = useQuery({
    queryKey: ["billing-invoices", page],
    queryFn: () => api<{ invoices: Invoice[]; pagination: Pagination }>("/api/billing/invoices", { query: { page, limit: 25 } }),
    placeholderData: keepPreviousData,
  });
  const download = async (invoice: Invoice) => {
    setError(null);
    try {
      // The PDF needs the bearer token, so it is fetched and handed to the browser as a blob.
      const blob = await (await send(`/api/billing/invoices/${invoice.id}/pdf`, { headers: { Accept: "application/pdf" } })).blob();
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = `${invoice.number ?? invoice.id}.pdf`;
      link.click();
      URL.revokeObjectURL(url);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <Section title="Invoices">
      <ErrorNote error={invoices.error ?? error} />
      {invoices.data?.invoices.length === 0 ? <p className="muted">No invoice yet.</p> : null}
      <div className="table-wrap">
        <table>
          <caption className="sr-only">Invoices, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Number</th>
              <th scope="col">Period</th>
              <th scope="col">Status</th>
              <th scope="col">Total</th>
              <th scope="col">
                <span className="sr-only">PDF</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {invoices.data?.invoices.map((i) => (
              <tr key={i.id}>
                <td>{i.number ?? "draft"}</td>
                <td>{new Date(i.period_start).toLocaleDateString()}</td>
                <td>
                  {i.status}
                  {i.kind !== "invoice" ? ` (${i.kind.replace(/_/g, " ")})` : ""}
                </td>
                <td>{money(i.total_minor, i.currency)}</td>
                <td>
                  <button type="button" className="ghost" onClick={() => download(i)}>
                    PDF of {i.number ?? "draft"}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <Pager pagination={invoices.data?.pagination} onPage={setPage} />
    </Section>
  );
}

export default function Billing() {
  const subscriptions = useQuery({
    queryKey: ["billing-subscriptions"],
    queryFn: async () => (await api<{ subscriptions: Subscription[] }>("/api/billing/subscriptions")).subscriptions,
  });
  const usage = useQuery({ queryKey: ["billing-usage"], queryFn: () => api<UsageReport>("/api/billing/usage") });
  const live = subscriptions.data?.[subscriptions.data.length - 1];
  return (
    <>
      <h1>Billing</h1>
      <Section title="Your plan">
        <ErrorNote error={subscriptions.error} />
        {subscriptions.isPending ? <Loading /> : null}
        {live ? (
          <p>
            <strong>{live.plan}</strong> (version {live.plan_version}), {live.status}, billed {live.interval}
            {live.current_period.end ? `; this period ends ${new Date(live.current_period.end).toLocaleDateString()}` : ""}
            {live.pending_plan ? `; changes to ${live.pending_plan} then` : ""}
            {live.cancel_at_period_end ? "; cancelled at the end of the period" : ""}.
          </p>
        ) : subscriptions.data ? (
          <p className="muted">No subscription yet.</p>
        ) : null}
      </Section>
      <Section title="Usage this period">
        <ErrorNote error={usage.error} />
        {usage.data?.metrics.map((m) => {
          const used = Number(m.used);
          return (
            <div key={m.metric} className="field">
              <label htmlFor={`usage-${m.metric}`}>
                {m.metric.replace(/[._]/g, " ")}: {m.used}
                {m.included !== null ? ` of ${m.included}` : " (no allowance)"}
              </label>
              {m.included !== null ? (
                <progress id={`usage-${m.metric}`} max={m.included || 1} value={Math.min(used, m.included || 1)} />
              ) : null}
            </div>
          );
        })}
      </Section>
      <Plans live={live} />
      <Invoices />
    </>
  );
}
