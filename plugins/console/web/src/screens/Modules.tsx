// Modules: enable, disable, and each module's settings as a form generated from its JSON Schema.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { ApiError, api, type JsonSchema, type Module } from "../api";
import { SchemaForm } from "../SchemaForm";
import { useModules } from "../session";
import { ErrorNote, Loading, Section } from "../ui";

type ModuleSettings = { module: string; settings: Record<string, unknown>; schema?: JsonSchema | null };

function Settings({ module }: { module: Module }) {
  const client = useQueryClient();
  const settings = useQuery({
    queryKey: ["module-settings", module.name],
    queryFn: () => api<ModuleSettings>(`/api/modules/${module.name}/settings`),
    retry: false,
  });
  const save = useMutation({
    mutationFn: (value: Record<string, unknown>) =>
      api<ModuleSettings>(`/api/modules/${module.name}/settings`, { method: "PUT", body: value }),
    onSuccess: (answer) => client.setQueryData(["module-settings", module.name], answer),
  });
  if (settings.isPending) return <Loading label="Loading settings" />;
  if (settings.error instanceof ApiError && settings.error.status === 404) return <p className="muted">No settings.</p>;
  if (settings.error) return <ErrorNote error={settings.error} />;
  if (!settings.data.schema) return <pre>{JSON.stringify(settings.data.settings, null, 2)}</pre>;
  return (
    <>
      <SchemaForm
        schema={settings.data.schema}
        value={settings.data.settings}
        error={save.error}
        busy={save.isPending}
        submitLabel={`Save ${module.title || module.name} settings`}
        onSubmit={(v) => save.mutate(v)}
      />
      <ErrorNote error={save.error} />
      {save.isSuccess ? <p role="status">Saved.</p> : null}
    </>
  );
}

export default function Modules() {
  const client = useQueryClient();
  const modules = useModules();
  const [open, setOpen] = useState<string | null>(null);
  const toggle = useMutation({
    mutationFn: (m: Module) => api(`/api/modules/${m.name}/${m.enabled ? "disable" : "enable"}`, { method: "POST" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["modules"] }),
  });
  if (modules.isPending) return <Loading />;
  if (modules.error) return <ErrorNote error={modules.error} />;
  return (
    <>
      <h1>Modules</h1>
      <ErrorNote error={toggle.error} />
      {modules.data.map((m) => (
        <Section
          key={m.name}
          title={m.title || m.name}
          actions={
            <span className="row">
              <span className={m.enabled ? "badge on" : "badge"}>{m.enabled ? "enabled" : "off"}</span>
              {m.status === "active" ? (
                <button type="button" onClick={() => toggle.mutate(m)} disabled={toggle.isPending}>
                  {m.enabled ? `Disable ${m.name}` : `Enable ${m.name}`}
                </button>
              ) : null}
              {m.enabled ? (
                <button
                  type="button"
                  className="ghost"
                  aria-expanded={open === m.name}
                  onClick={() => setOpen(open === m.name ? null : m.name)}
                >
                  Settings of {m.name}
                </button>
              ) : null}
            </span>
          }
        >
          <p>{m.description}</p>
          {m.status === "disabled" ? <p className="error">Not loaded on this server: {m.reason}</p> : null}
          {m.depends_on?.length ? <p className="muted">Needs {m.depends_on.join(", ")}</p> : null}
          {open === m.name ? <Settings module={m} /> : null}
        </Section>
      ))}
    </>
  );
}
