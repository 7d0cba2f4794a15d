// CRM: contacts, companies and deals (search, filters, sort, paging), contact edit with the
// stale-edit (412) case, the deal pipeline board with drag between stages, CSV import.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { ConfirmButton } from "../Confirm";
import { useEffect, useState, type DragEvent, type FormEvent } from "react";
import { Link, NavLink, Route, Routes, useNavigate, useParams } from "react-router";
import {
  ApiError,
  api,
  send,
  type Company,
  type Contact,
  type Deal,
  type Pagination,
  type Pipeline,
} from "../api";
import { ErrorNote, Field, Loading, Pager, Section, formValues } from "../ui";

type Page<K extends string, T> = { [key in K]: T[] } & { pagination: Pagination };

function useDebounced(value: string, ms = 250): string {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = window.setTimeout(() => setDebounced(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return debounced;
}

type ListState = ReturnType<typeof useListState>;

/** Search text (debounced), sort and page of a list; a new search goes back to page 1. */
function useListState(initialSort = "-created_at") {
  const [q, setQuery] = useState("");
  const [sort, setSort] = useState(initialSort);
  const [page, setPage] = useState(1);
  const search = useDebounced(q);
  const setQ = (value: string) => {
    setQuery(value);
    setPage(1);
  };
  return { q, setQ, sort, setSort, page, setPage, search };
}

function ListControls({ list, sorts, label }: { list: ListState; sorts: [string, string][]; label: string }) {
  return (
    <div className="row" role="search">
      <div className="field">
        <label htmlFor={`${label}-q`}>Search {label}</label>
        <input id={`${label}-q`} type="search" value={list.q} onChange={(e) => list.setQ(e.target.value)} />
      </div>
      <div className="field">
        <label htmlFor={`${label}-sort`}>Sort</label>
        <select id={`${label}-sort`} value={list.sort} onChange={(e) => list.setSort(e.target.value)}>
          {sorts.map(([value, text]) => (
            <option key={value} value={value}>
              {text}
            </option>
          ))}
        </select>
      </div>
    </div>
  );
}

function NewContact() {
  const client = useQueryClient();
  const [open, setOpen] = useState(false);
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api<Contact>("/api/crm/contacts", { method: "POST", body }),
    onSuccess: () => {
      setOpen(false);
      void client.invalidateQueries({ queryKey: ["contacts"] });
    },
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    create.mutate({
      first_name: v.first_name,
      last_name: v.last_name,
      email: v.email || null,
      phone: v.phone || null,
    });
  };
  if (!open)
    return (
      <button type="button" onClick={() => setOpen(true)}>
        New contact
      </button>
    );
  return (
    <form onSubmit={submit} className="card" aria-label="New contact" noValidate>
      <div className="row">
        <Field label="First name" name="first_name" required error={create.error} />
        <Field label="Last name" name="last_name" error={create.error} />
        <Field label="E-mail" name="email" type="email" error={create.error} />
        <Field label="Phone" name="phone" error={create.error} />
      </div>
      <ErrorNote error={create.error} />
      <button type="submit" disabled={create.isPending}>
        Create contact
      </button>{" "}
      <button type="button" className="ghost" onClick={() => setOpen(false)}>
        Cancel
      </button>
    </form>
  );
}

function Contacts() {
  const list = useListState();
  const { search, sort, page, setPage } = list;
  const [company, setCompany] = useState("");
  const companies = useQuery({
    queryKey: ["companies", "all-names"],
    queryFn: () => api<Page<"companies", Company>>("/api/crm/companies", { query: { limit: 100, sort: "name" } }),
  });
  const contacts = useQuery({
    queryKey: ["contacts", search, sort, page, company],
    queryFn: () =>
      api<Page<"contacts", Contact>>("/api/crm/contacts", {
        query: { q: search, sort, page, limit: 25, company_id: company },
      }),
    placeholderData: keepPreviousData,
  });
  return (
    <Section title="Contacts" actions={<NewContact />}>
      <div className="row">
        <ListControls
          list={list}
          label="contacts"
          sorts={[
            ["-created_at", "Newest first"],
            ["created_at", "Oldest first"],
            ["last_name", "Last name"],
            ["email", "E-mail"],
          ]}
        />
        <div className="field">
          <label htmlFor="contacts-company">Company</label>
          <select
            id="contacts-company"
            value={company}
            onChange={(e) => {
              setCompany(e.target.value);
              setPage(1);
            }}
          >
            <option value="">Any company</option>
            {companies.data?.companies.map((c) => (
              <option key={c.id} value={c.id}>
                {c.name}
              </option>
            ))}
          </select>
        </div>
      </div>
      <ErrorNote error={contacts.error} />
      {contacts.isPending ? (
        <Loading />
      ) : (
        <div className="table-wrap">
          <table>
            <caption className="sr-only">Contacts</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">E-mail</th>
                <th scope="col">Company</th>
                <th scope="col">Tags</th>
              </tr>
            </thead>
            <tbody>
              {contacts.data?.contacts.map((c) => (
                <tr key={c.id}>
                  <td>
                    <Link to={`/crm/contacts/${c.id}`}>
                      {c.first_name} {c.last_name}
                    </Link>
                  </td>
                  <td>{c.email}</td>
                  <td>{c.company_name}</td>
                  <td>{c.tags.join(", ")}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager pagination={contacts.data?.pagination} onPage={setPage} />
    </Section>
  );
}

type Conflict = { mine: Record<string, unknown> };

function ContactDetail() {
  const { id = "" } = useParams();
  const client = useQueryClient();
  const navigate = useNavigate();
  const key = ["contact", id];
  const contact = useQuery({
    queryKey: key,
    queryFn: async () => {
      const response = await send(`/api/crm/contacts/${id}`);
      return { contact: (await response.json()) as Contact, etag: response.headers.get("ETag") ?? "" };
    },
  });
  const [conflict, setConflict] = useState<Conflict | null>(null);
  const [formKey, setFormKey] = useState(0);
  const save = useMutation({
    mutationFn: async ({ body, etag }: { body: Record<string, unknown>; etag: string }) => {
      const response = await send(`/api/crm/contacts/${id}`, { method: "PATCH", body, headers: { "If-Match": etag } });
      return { contact: (await response.json()) as Contact, etag: response.headers.get("ETag") ?? "" };
    },
    onSuccess: (answer) => {
      setConflict(null);
      client.setQueryData(key, answer);
      void client.invalidateQueries({ queryKey: ["contacts"] });
    },
    onError: (error, variables) => {
      if (error instanceof ApiError && error.status === 412) setConflict({ mine: variables.body });
    },
  });
  const remove = useMutation({
    mutationFn: () => api(`/api/crm/contacts/${id}`, { method: "DELETE" }),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: ["contacts"] });
      navigate("/crm");
    },
  });
  if (contact.isPending) return <Loading />;
  if (contact.error) return <ErrorNote error={contact.error} />;
  const c = contact.data.contact;
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    const body = {
      first_name: v.first_name,
      last_name: v.last_name,
      email: v.email || null,
      phone: v.phone || null,
      tags: v.tags
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean),
    };
    save.mutate({ body, etag: contact.data.etag });
  };
  const reload = async () => {
    setConflict(null);
    save.reset();
    await contact.refetch();
    setFormKey((k) => k + 1);
  };
  const overwrite = async () => {
    if (!conflict) return;
    const fresh = await send(`/api/crm/contacts/${id}`);
    save.mutate({ body: conflict.mine, etag: fresh.headers.get("ETag") ?? "" });
  };
  return (
    <Section title={`${c.first_name} ${c.last_name}`} actions={<Link to="/crm">Back to contacts</Link>}>
      {conflict ? (
        <div role="alert" className="conflict">
          <p>
            <strong>Changed by someone else</strong> since you opened it: reload to see their version, or overwrite it
            with yours.
          </p>
          <button type="button" onClick={reload}>
            Reload
          </button>{" "}
          <button type="button" className="danger" onClick={overwrite}>
            Overwrite
          </button>
        </div>
      ) : null}
      <form key={`${formKey}-${c.version}`} onSubmit={submit} aria-label="Edit contact" noValidate>
        <div className="row">
          <Field label="First name" name="first_name" defaultValue={c.first_name} required error={save.error} />
          <Field label="Last name" name="last_name" defaultValue={c.last_name} error={save.error} />
          <Field label="E-mail" name="email" type="email" defaultValue={c.email ?? ""} error={save.error} />
          <Field label="Phone" name="phone" defaultValue={c.phone ?? ""} error={save.error} />
          <Field label="Tags" name="tags" defaultValue={c.tags.join(", ")} hint="Comma-separated" error={save.error} />
        </div>
        {!conflict ? <ErrorNote error={save.error} /> : null}
        {save.isSuccess ? <p role="status">Saved (version {c.version}).</p> : null}
        <button type="submit" disabled={save.isPending}>
          Save contact
        </button>{" "}
        <ConfirmButton label="Delete contact" title={`Delete ${c.first_name} ${c.last_name}`.trim() + "?"} confirm="Delete" onConfirm={() => remove.mutate()} />
      </form>
      <p className="muted">
        Version {c.version}, {c.company_name ? `at ${c.company_name}, ` : ""}updated {new Date(c.updated_at).toLocaleString()}
      </p>
    </Section>
  );
}

function Companies() {
  const client = useQueryClient();
  const list = useListState();
  const { search, sort, page, setPage } = list;
  const companies = useQuery({
    queryKey: ["companies", search, sort, page],
    queryFn: () =>
      api<Page<"companies", Company>>("/api/crm/companies", { query: { q: search, sort, page, limit: 25 } }),
    placeholderData: keepPreviousData,
  });
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api("/api/crm/companies", { method: "POST", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["companies"] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    create.mutate({ name: v.name, domain: v.domain || null, industry: v.industry || null });
  };
  return (
    <Section title="Companies">
      <form className="row" onSubmit={submit} aria-label="New company">
        <Field label="Company name" name="name" required error={create.error} />
        <Field label="Domain" name="domain" error={create.error} />
        <Field label="Industry" name="industry" error={create.error} />
        <button type="submit">Add company</button>
      </form>
      <ErrorNote error={create.error} />
      <ListControls
        list={list}
        label="companies"
        sorts={[
          ["-created_at", "Newest first"],
          ["created_at", "Oldest first"],
          ["name", "Name"],
        ]}
      />
      {companies.isPending ? (
        <Loading />
      ) : (
        <div className="table-wrap">
          <table>
            <caption className="sr-only">Companies</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Domain</th>
                <th scope="col">Industry</th>
              </tr>
            </thead>
            <tbody>
              {companies.data?.companies.map((c) => (
                <tr key={c.id}>
                  <td>{c.name}</td>
                  <td>{c.domain}</td>
                  <td>{c.industry}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager pagination={companies.data?.pagination} onPage={setPage} />
    </Section>
  );
}

function usePipelines() {
  return useQuery({
    queryKey: ["pipelines"],
    queryFn: async () => (await api<{ pipelines: Pipeline[] }>("/api/crm/pipelines")).pipelines,
  });
}

function NewPipeline() {
  const client = useQueryClient();
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api("/api/crm/pipelines", { method: "POST", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["pipelines"] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    const stages = v.stages
      .split(",")
      .map((x) => x.trim())
      .filter(Boolean)
      .map((name) => ({ name, kind: /^won$/i.test(name) ? "won" : /^lost$/i.test(name) ? "lost" : "open" }));
    create.mutate({ name: v.pipeline_name, stages, is_default: true });
  };
  return (
    <form className="card" onSubmit={submit} aria-label="New pipeline">
      <p>Deals move through the stages of a pipeline; create the first one.</p>
      <div className="row">
        <Field label="Pipeline name" name="pipeline_name" defaultValue="Sales" required error={create.error} />
        <Field
          label="Stages"
          name="stages"
          defaultValue="Lead, Qualified, Proposal, Won, Lost"
          hint="Comma-separated, left to right; Won and Lost close a deal"
          required
          error={create.error}
        />
        <button type="submit">Create pipeline</button>
      </div>
      <ErrorNote error={create.error} />
    </form>
  );
}

function Deals() {
  const client = useQueryClient();
  const pipelines = usePipelines();
  const list = useListState();
  const { search, sort, page, setPage } = list;
  const [status, setStatus] = useState("");
  const deals = useQuery({
    queryKey: ["deals", search, sort, status, page],
    queryFn: () =>
      api<Page<"deals", Deal>>("/api/crm/deals", { query: { q: search, sort, status, page, limit: 25 } }),
    placeholderData: keepPreviousData,
  });
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api("/api/crm/deals", { method: "POST", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["deals"] }),
  });
  const stageName = (id: string) =>
    pipelines.data?.flatMap((p) => p.stages).find((s) => s.id === id)?.name ?? "";
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    create.mutate({ title: v.title, amount: v.amount || "0", currency: v.currency || "USD" });
  };
  return (
    <Section title="Deals" actions={<Link to="/crm/board">Pipeline board</Link>}>
      {pipelines.data?.length === 0 ? <NewPipeline /> : null}
      <form className="row" onSubmit={submit} aria-label="New deal">
        <Field label="Deal title" name="title" required error={create.error} />
        <Field label="Amount" name="amount" inputMode="decimal" error={create.error} />
        <Field label="Currency" name="currency" defaultValue="USD" maxLength={3} error={create.error} />
        <button type="submit">Add deal</button>
      </form>
      <ErrorNote error={create.error} />
      <div className="row">
        <ListControls
          list={list}
          label="deals"
          sorts={[
            ["-created_at", "Newest first"],
            ["created_at", "Oldest first"],
            ["-amount", "Largest first"],
            ["title", "Title"],
          ]}
        />
        <div className="field">
          <label htmlFor="deal-status">Status</label>
          <select
            id="deal-status"
            value={status}
            onChange={(e) => {
              setStatus(e.target.value);
              setPage(1);
            }}
          >
            <option value="">Any</option>
            <option value="open">Open</option>
            <option value="won">Won</option>
            <option value="lost">Lost</option>
          </select>
        </div>
      </div>
      <ErrorNote error={deals.error} />
      <div className="table-wrap">
        <table>
          <caption className="sr-only">Deals</caption>
          <thead>
            <tr>
              <th scope="col">Title</th>
              <th scope="col">Amount</th>
              <th scope="col">Stage</th>
            </tr>
          </thead>
          <tbody>
            {deals.data?.deals.map((d) => (
              <tr key={d.id}>
                <td>{d.title}</td>
                <td>
                  {d.amount} {d.currency}
                </td>
                <td>{stageName(d.stage_id)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <Pager pagination={deals.data?.pagination} onPage={setPage} />
    </Section>
  );
}

function Board() {
  const client = useQueryClient();
  const pipelines = usePipelines();
  const [chosen, setChosen] = useState("");
  const pipeline = pipelines.data?.find((p) => p.id === chosen) ?? pipelines.data?.find((p) => p.is_default) ?? pipelines.data?.[0];
  const deals = useQuery({
    queryKey: ["deals", "board", pipeline?.id],
    enabled: Boolean(pipeline),
    queryFn: () =>
      api<Page<"deals", Deal>>("/api/crm/deals", { query: { pipeline_id: pipeline?.id, limit: 100, sort: "-created_at" } }),
  });
  const move = useMutation({
    mutationFn: ({ deal, stage }: { deal: Deal; stage: string }) =>
      api(`/api/crm/deals/${deal.id}/move`, { method: "POST", body: { stage_id: stage }, headers: { "If-Match": `"${deal.version}"` } }),
    onSettled: () => client.invalidateQueries({ queryKey: ["deals"] }),
  });
  const [dragging, setDragging] = useState<string | null>(null);
  if (pipelines.isPending) return <Loading />;
  if (!pipeline) return <NewPipeline />;
  const drop = (stage: string) => (event: DragEvent) => {
    event.preventDefault();
    const id = event.dataTransfer.getData("text/plain") || dragging;
    const deal = deals.data?.deals.find((d) => d.id === id);
    if (deal && deal.stage_id !== stage) move.mutate({ deal, stage });
    setDragging(null);
  };
  return (
    <Section title={`Pipeline: ${pipeline.name}`}>
      {pipelines.data && pipelines.data.length > 1 ? (
        <div className="field">
          <label htmlFor="board-pipeline">Pipeline</label>
          <select id="board-pipeline" value={pipeline.id} onChange={(e) => setChosen(e.target.value)}>
            {pipelines.data.map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
        </div>
      ) : null}
      <ErrorNote error={move.error} />
      <p className="muted">Drag a deal to another stage, or use its stage menu.</p>
      <div className="board">
        {pipeline.stages.map((stage) => (
          <section
            key={stage.id}
            className="column"
            aria-label={`Stage ${stage.name}`}
            data-stage={stage.name}
            onDragOver={(e) => e.preventDefault()}
            onDrop={drop(stage.id)}
          >
            <h3>
              {stage.name} <span className="muted">({stage.kind})</span>
            </h3>
            <ul className="plain">
              {deals.data?.deals
                .filter((d) => d.stage_id === stage.id)
                .map((d) => (
                  <li
                    key={d.id}
                    className="tile"
                    draggable
                    onDragStart={(e) => {
                      e.dataTransfer.setData("text/plain", d.id);
                      setDragging(d.id);
                    }}
                  >
                    <strong>{d.title}</strong>
                    <span className="muted">
                      {d.amount} {d.currency}
                    </span>
                    <label className="sr-only" htmlFor={`move-${d.id}`}>
                      Stage of {d.title}
                    </label>
                    <select
                      id={`move-${d.id}`}
                      value={d.stage_id}
                      onChange={(e) => move.mutate({ deal: d, stage: e.target.value })}
                    >
                      {pipeline.stages.map((s) => (
                        <option key={s.id} value={s.id}>
                          {s.name}
                        </option>
                      ))}
                    </select>
                  </li>
                ))}
            </ul>
          </section>
        ))}
      </div>
    </Section>
  );
}

type ImportReport = { imported: number; errors: { row: number; field: string; message: string }[] };
const CHUNK_ROWS = 200;

function splitCsv(text: string): { header: string; rows: string[] } {
  // Records split on newlines outside quotes, so a quoted field may hold a line break.
  const records: string[] = [];
  let current = "";
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    if (ch === "\n" && !quoted) {
      if (current.trim()) records.push(current.replace(/\r$/, ""));
      current = "";
    } else current += ch;
  }
  if (current.trim()) records.push(current.replace(/\r$/, ""));
  return { header: records[0] ?? "", rows: records.slice(1) };
}

function Import() {
  const client = useQueryClient();
  const [progress, setProgress] = useState<{ done: number; total: number } | null>(null);
  const [report, setReport] = useState<ImportReport | null>(null);
  const [error, setError] = useState<unknown>(null);
  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const file = (event.currentTarget.elements.namedItem("file") as HTMLInputElement).files?.[0];
    if (!file) return;
    const { header, rows } = splitCsv(await file.text());
    const total: ImportReport = { imported: 0, errors: [] };
    setReport(null);
    setError(null);
    setProgress({ done: 0, total: rows.length });
    try {
      // In chunks (valid rows kept, the others listed), so the progress bar moves as rows land.
      for (let start = 0; start < rows.length; start += CHUNK_ROWS) {
        const chunk = rows.slice(start, start + CHUNK_ROWS);
        const answer = await api<ImportReport>("/api/crm/contacts/import", {
          method: "POST",
          query: { mode: "per_row" },
          headers: { "Content-Type": "text/csv" },
          raw: [header, ...chunk].join("\n"),
        });
        total.imported += answer.imported;
        total.errors.push(...answer.errors.map((e) => ({ ...e, row: e.row + start })));
        setProgress({ done: start + chunk.length, total: rows.length });
      }
      setReport(total);
    } catch (e) {
      setError(e);
    }
    void client.invalidateQueries({ queryKey: ["contacts"] });
  };
  return (
    <Section title="Import contacts from CSV">
      <form onSubmit={submit} className="row">
        <div className="field">
          <label htmlFor="csv-file">CSV file</label>
          <input id="csv-file" name="file" type="file" accept=".csv,text/csv" required />
          <small className="hint">Header row: first_name, last_name, email, phone, company, tags</small>
        </div>
        <button type="submit">Import</button>
      </form>
      {progress ? (
        <p>
          <label htmlFor="csv-progress">Rows sent</label>{" "}
          <progress id="csv-progress" max={progress.total || 1} value={progress.done} /> {progress.done} /{" "}
          {progress.total}
        </p>
      ) : null}
      <ErrorNote error={error} />
      {report ? (
        <div role="status">
          <p>
            {report.imported} imported, {report.errors.length} rows with errors.
          </p>
          {report.errors.length ? (
            <table>
              <caption>Rows not imported</caption>
              <thead>
                <tr>
                  <th scope="col">Row</th>
                  <th scope="col">Field</th>
                  <th scope="col">Problem</th>
                </tr>
              </thead>
              <tbody>
                {report.errors.map((e) => (
                  <tr key={`${e.row}-${e.field}`}>
                    <td>{e.row}</td>
                    <td>{e.field}</td>
                    <td>{e.message}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : null}
        </div>
      ) : null}
    </Section>
  );
}

export default function Crm() {
  return (
    <>
      <h1>CRM</h1>
      <nav aria-label="CRM" className="tabs">
        <NavLink to="/crm" end>
          Contacts
        </NavLink>
        <NavLink to="/crm/companies">Companies</NavLink>
        <NavLink to="/crm/deals">Deals</NavLink>
        <NavLink to="/crm/board">Board</NavLink>
        <NavLink to="/crm/import">Import</NavLink>
      </nav>
      <Routes>
        <Route index element={<Contacts />} />
        <Route path="contacts/:id" element={<ContactDetail />} />
        <Route path="companies" element={<Companies />} />
        <Route path="deals" element={<Deals />} />
        <Route path="board" element={<Board />} />
        <Route path="import" element={<Import />} />
      </Routes>
    </>
  );
}
