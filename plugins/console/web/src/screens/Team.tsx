// Members, invitations, roles and API keys of the tenant.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { ConfirmButton } from "../Confirm";
import { useState, type FormEvent } from "react";
import { api, type Pagination } from "../api";
import { ErrorNote, Field, Loading, Pager, Secret, Section, formValues } from "../ui";

type Invitation = { id: string; email: string; role: string; expires_at: string; token: string };
type RoleGrants = { role: string; permissions: string[]; customized: boolean; editable: boolean };
type RoleList = { roles: RoleGrants[]; permissions: { name: string; description: string }[] };
type ApiKeyInfo = {
  id: string;
  name: string;
  prefix: string;
  role: string | null;
  scopes: string[] | null;
  created_at: string;
  last_used_at: string | null;
  revoked_at: string | null;
};

const ROLES = ["admin", "member", "viewer"] as const;

function RoleSelect({ id, name, defaultValue = "member" }: { id?: string; name: string; defaultValue?: string }) {
  return (
    <select id={id} name={name} defaultValue={defaultValue}>
      {ROLES.map((r) => (
        <option key={r}>{r}</option>
      ))}
    </select>
  );
}

function Invitations() {
  const [created, setCreated] = useState<Invitation | null>(null);
  const invite = useMutation({
    mutationFn: (body: Record<string, unknown>) =>
      api<Invitation>("/api/tenant/invitations", { method: "POST", body }),
    onSuccess: setCreated,
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    invite.mutate({ email: v.email, role: v.role });
  };
  return (
    <Section title="Invitations">
      <form className="row" onSubmit={submit}>
        <Field label="E-mail" name="email" type="email" required error={invite.error} />
        <Field label="Role" name="role" error={invite.error}>
          {(p) => <RoleSelect {...p} name="role" />}
        </Field>
        <button type="submit" disabled={invite.isPending}>
          Invite
        </button>
      </form>
      <ErrorNote error={invite.error} />
      {created ? <Secret label={`Invitation token for ${created.email}`} value={created.token} /> : null}
    </Section>
  );
}

type Member = {
  user_id: string;
  email: string;
  name: string;
  role: string;
  joined_at: string;
  last_login_at: string | null;
};

function Members() {
  const client = useQueryClient();
  const [page, setPage] = useState(1);
  const members = useQuery({
    queryKey: ["members", page],
    queryFn: () => api<{ members: Member[]; pagination: Pagination }>("/api/tenant/members", { query: { page, limit: 20 } }),
    placeholderData: keepPreviousData,
  });
  const refresh = () => client.invalidateQueries({ queryKey: ["members"] });
  const change = useMutation({
    mutationFn: ({ user, role }: { user: string; role: string }) =>
      api(`/api/tenant/members/${encodeURIComponent(user)}`, { method: "PUT", body: { role } }),
    onSettled: refresh,
  });
  const remove = useMutation({
    mutationFn: (user: string) => api(`/api/tenant/members/${encodeURIComponent(user)}`, { method: "DELETE" }),
    onSuccess: refresh,
  });
  return (
    <Section title="Members">
      <ErrorNote error={members.error ?? change.error ?? remove.error} />
      {members.isPending ? (
        <Loading />
      ) : (
        <div className="table-wrap">
          <table>
            <caption className="sr-only">Members</caption>
            <thead>
              <tr>
                <th scope="col">Member</th>
                <th scope="col">Role</th>
                <th scope="col">Joined</th>
                <th scope="col">Last sign-in</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {members.data?.members.map((m) => (
                <tr key={m.user_id}>
                  <td>
                    {m.name || m.email}
                    {m.name ? <div className="muted">{m.email}</div> : null}
                  </td>
                  <td>
                    {m.role === "owner" ? (
                      "owner"
                    ) : (
                      <>
                        <label className="sr-only" htmlFor={`role-${m.user_id}`}>
                          Role of {m.email}
                        </label>
                        <select
                          id={`role-${m.user_id}`}
                          value={m.role}
                          onChange={(e) => change.mutate({ user: m.user_id, role: e.target.value })}
                        >
                          {ROLES.map((r) => (
                            <option key={r}>{r}</option>
                          ))}
                        </select>
                      </>
                    )}
                  </td>
                  <td>{new Date(m.joined_at).toLocaleDateString()}</td>
                  <td>{m.last_login_at ? new Date(m.last_login_at).toLocaleString() : "never"}</td>
                  <td>
                    {m.role === "owner" ? null : (
                      <ConfirmButton
                        label={`Remove ${m.email}`}
                        title={`Remove ${m.email}?`}
                        confirm="Remove"
                        onConfirm={() => remove.mutate(m.user_id)}
                      >
                        <p>They lose access to this tenant at once; an invitation brings them back.</p>
                      </ConfirmButton>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager pagination={members.data?.pagination} onPage={setPage} />
    </Section>
  );
}

function Roles() {
  const client = useQueryClient();
  const roles = useQuery({ queryKey: ["roles"], queryFn: () => api<RoleList>("/api/roles") });
  const [editing, setEditing] = useState<string | null>(null);
  const save = useMutation({
    mutationFn: ({ role, permissions }: { role: string; permissions: string[] }) =>
      api(`/api/roles/${role}`, { method: "PUT", body: { permissions } }),
    onSuccess: () => {
      setEditing(null);
      void client.invalidateQueries({ queryKey: ["roles"] });
    },
  });
  if (roles.isPending) return <Loading />;
  if (roles.error) return <ErrorNote error={roles.error} />;
  const submit = (role: string) => (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const chosen = new FormData(event.currentTarget).getAll("permission").map(String);
    save.mutate({ role, permissions: chosen });
  };
  return (
    <Section title="Roles">
      <ul className="plain">
        {roles.data.roles.map((r) => (
          <li key={r.role}>
            <strong>{r.role}</strong> — {r.permissions.length} permissions{r.customized ? " (customized)" : ""}{" "}
            {r.editable ? (
              <button type="button" className="ghost" onClick={() => setEditing(editing === r.role ? null : r.role)}>
                {editing === r.role ? "Close" : `Edit ${r.role}`}
              </button>
            ) : null}
            {editing === r.role ? (
              <form onSubmit={submit(r.role)} aria-label={`Permissions of ${r.role}`}>
                <fieldset className="grid-checks">
                  <legend>Permissions of {r.role}</legend>
                  {roles.data.permissions.map((p) => (
                    <label key={p.name} title={p.description}>
                      <input
                        type="checkbox"
                        name="permission"
                        value={p.name}
                        defaultChecked={r.permissions.includes(p.name)}
                      />{" "}
                      {p.name}
                    </label>
                  ))}
                </fieldset>
                <ErrorNote error={save.error} />
                <button type="submit">Save {r.role}</button>
              </form>
            ) : null}
          </li>
        ))}
      </ul>
    </Section>
  );
}

function ApiKeys() {
  const client = useQueryClient();
  const keys = useQuery({
    queryKey: ["api-keys"],
    queryFn: async () => (await api<{ api_keys: ApiKeyInfo[] }>("/api/api-keys")).api_keys,
  });
  const [secret, setSecret] = useState<string | null>(null);
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api<{ key: string }>("/api/api-keys", { method: "POST", body }),
    onSuccess: (answer) => {
      setSecret(answer.key);
      void client.invalidateQueries({ queryKey: ["api-keys"] });
    },
  });
  const revoke = useMutation({
    mutationFn: (id: string) => api(`/api/api-keys/${id}`, { method: "DELETE" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["api-keys"] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    create.mutate({ name: v.name, role: v.role });
    event.currentTarget.reset();
  };
  return (
    <Section title="API keys">
      <form className="row" onSubmit={submit}>
        <Field label="Key name" name="name" required error={create.error} />
        <Field label="Role" name="role" error={create.error}>
          {(p) => <RoleSelect {...p} name="role" />}
        </Field>
        <button type="submit">Create key</button>
      </form>
      <ErrorNote error={create.error ?? revoke.error} />
      {secret ? <Secret label="New API key" value={secret} /> : null}
      {keys.isPending ? (
        <Loading />
      ) : (
        <div className="table-wrap">
          <table>
            <caption className="sr-only">API keys</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Prefix</th>
                <th scope="col">Role</th>
                <th scope="col">Last used</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {keys.data?.map((k) => (
                <tr key={k.id}>
                  <td>{k.name}</td>
                  <td>
                    <code>{k.prefix}</code>
                  </td>
                  <td>{k.role ?? k.scopes?.join(", ")}</td>
                  <td>{k.revoked_at ? "revoked" : (k.last_used_at ?? "never")}</td>
                  <td>
                    {k.revoked_at ? null : (
                      <ConfirmButton
                        label={`Revoke ${k.name}`}
                        title={`Revoke ${k.name}?`}
                        confirm="Revoke"
                        onConfirm={() => revoke.mutate(k.id)}
                      >
                        <p>Whatever uses this key is refused from now on. A revoked key cannot be restored.</p>
                      </ConfirmButton>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Section>
  );
}

export default function Team() {
  return (
    <>
      <h1>Team</h1>
      <Members />
      <Invitations />
      <Roles />
      <ApiKeys />
    </>
  );
}
