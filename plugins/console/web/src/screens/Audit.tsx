// The tenant's audit log (cursor-paged, filtered) and the verification of its hash chain.
import { useInfiniteQuery, useMutation } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api } from "../api";
import { ErrorNote, Field, Loading, Section, formValues } from "../ui";

type Entry = {
  id: string;
  seq: number;
  occurred_at: string;
  actor: string | null;
  action: string;
  resource_type: string | null;
  resource_id: string | null;
  result: string;
};
type Report = { valid: boolean; rows: number; first_broken: { seq: number; reason: string } | null };

export default function Audit() {
  const [filters, setFilters] = useState<Record<string, string>>({});
  const log = useInfiniteQuery({
    queryKey: ["audit", filters],
    initialPageParam: "",
    queryFn: ({ pageParam }) =>
      api<{ items: Entry[]; next_cursor: string | null }>("/api/audit/logs", {
        query: { ...filters, cursor: pageParam, limit: 50 },
      }),
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });
  const verify = useMutation({ mutationFn: () => api<Report>("/api/audit/verify") });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    setFilters(formValues(event.currentTarget));
  };
  return (
    <>
      <h1>Audit log</h1>
      <Section
        title="Chain"
        actions={
          <button type="button" onClick={() => verify.mutate()} disabled={verify.isPending}>
            Verify the chain
          </button>
        }
      >
        <ErrorNote error={verify.error} />
        {verify.data ? (
          <p role="status" className={verify.data.valid ? "ok" : "error"}>
            {verify.data.valid
              ? `Intact: ${verify.data.rows} rows checked.`
              : `Broken at row ${verify.data.first_broken?.seq}: ${verify.data.first_broken?.reason}`}
          </p>
        ) : (
          <p className="muted">Each row carries the hash of the one before it; verifying recomputes them all.</p>
        )}
      </Section>
      <Section title="Entries">
        <form className="row" onSubmit={submit} aria-label="Filter the audit log">
          <Field label="Action" name="action" hint="Exact, or a prefix ending in *" error={log.error} />
          <Field label="Actor" name="actor" hint="user:<id> or api_key:<id>" error={log.error} />
          <Field label="Resource type" name="resource_type" error={log.error} />
          <button type="submit">Filter</button>
        </form>
        <ErrorNote error={log.error} />
        {log.isPending ? (
          <Loading />
        ) : (
          <div className="table-wrap">
            <table>
              <caption className="sr-only">Audit entries, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">#</th>
                  <th scope="col">When</th>
                  <th scope="col">Actor</th>
                  <th scope="col">Action</th>
                  <th scope="col">Resource</th>
                  <th scope="col">Result</th>
                </tr>
              </thead>
              <tbody>
                {log.data?.pages.flatMap((p) =>
                  p.items.map((e) => (
                    <tr key={e.id}>
                      <td>{e.seq}</td>
                      <td>{new Date(e.occurred_at).toLocaleString()}</td>
                      <td className="break">{e.actor ?? "system"}</td>
                      <td>{e.action}</td>
                      <td className="break">
                        {e.resource_type} {e.resource_id}
                      </td>
                      <td>{e.result}</td>
                    </tr>
                  )),
                )}
              </tbody>
            </table>
          </div>
        )}
        {log.hasNextPage ? (
          <button type="button" onClick={() => log.fetchNextPage()} disabled={log.isFetchingNextPage}>
            Older entries
          </button>
        ) : null}
      </Section>
    </>
  );
}
