// Members, invitations, roles and API keys of the tenant.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api } from "../api";
import { ErrorNote, Field, Loading, Secret, Section, formValues } from "../ui";

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

function Members() {
  const change = useMutation({
    mutationFn: ({ user, role }: { user: string; role: string }) =>
      api(`/api/tenant/members/${encodeURIComponent(user)}`, { method: "PUT", body: { role } }),
  });
  const remove = useMutation({
    mutationFn: (user: string) => api(`/api/tenant/members/${encodeURIComponent(user)}`, { method: "DELETE" }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    change.mutate({ user: v.user_id, role: v.role });
  };
  return (
    <Section title="Members">
      <p className="muted">
        The API has no member list yet: change a member's role or remove them by their user id (shown in the audit
        log).
      </p>
      <form className="row" onSubmit={submit}>
        <Field label="User id" name="user_id" required error={change.error ?? remove.error} />
        <Field label="New role" name="role" error={change.error}>
          {(p) => <RoleSelect {...p} name="role" />}
        </Field>
        <button type="submit">Change role</button>
        <button
          type="button"
          className="danger"
          onClick={(e) => {
            const form = e.currentTarget.form;
            if (form) remove.mutate(formValues(form).user_id);
          }}
        >
          Remove member
        </button>
      </form>
      <ErrorNote error={change.error ?? remove.error} />
      {change.isSuccess ? <p role="status">Role changed.</p> : null}
      {remove.isSuccess ? <p role="status">Member removed.</p> : null}
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
                      <button type="button" className="danger" onClick={() => revoke.mutate(k.id)}>
                        Revoke {k.name}
                      </button>
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
