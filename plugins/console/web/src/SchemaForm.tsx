// A form generated from a JSON Schema (msgspec's: a top-level $ref into $defs, anyOf for optionals).
import { useId, useState, type FormEvent } from "react";
import { ApiError, type JsonSchema } from "./api";

function resolve(schema: JsonSchema, root: JsonSchema): JsonSchema {
  let s = schema;
  for (let i = 0; s.$ref && i < 10; i++) {
    const name = s.$ref.split("/").pop() ?? "";
    s = { ...root.$defs?.[name], ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== "$ref")) };
  }
  if (s.anyOf) {
    // `X | None`: the form edits X; an empty field sends null.
    const other = s.anyOf.map((x) => resolve(x, root)).find((x) => x.type !== "null");
    if (other) return { ...other, title: s.title ?? other.title, description: s.description ?? other.description, default: s.default ?? other.default };
  }
  return s;
}

function kind(s: JsonSchema): string {
  const t = Array.isArray(s.type) ? s.type.find((x) => x !== "null") : s.type;
  return t ?? "string";
}

type Props = {
  schema: JsonSchema;
  value: Record<string, unknown>;
  error?: unknown;
  submitLabel?: string;
  onSubmit: (value: Record<string, unknown>) => void;
  onChange?: (value: Record<string, unknown>) => void;
  busy?: boolean;
  /** Values offered on text fields (e.g. expressions naming earlier steps' outputs). */
  suggestions?: string[];
  /** Properties the form leaves out (filled in by the server, such as OAuth tokens). */
  hidden?: string[];
};

export function SchemaForm({ schema, value, error, submitLabel = "Save", onSubmit, onChange, busy, suggestions, hidden }: Props) {
  const root = resolve(schema, schema);
  const [draft, setDraft] = useState<Record<string, unknown>>(value);
  const prefix = useId();
  const set = (key: string, v: unknown) => {
    const next = { ...draft, [key]: v };
    setDraft(next);
    onChange?.(next);
  };
  const submit = (event: FormEvent) => {
    event.preventDefault();
    onSubmit(draft);
  };
  const properties = Object.entries(root.properties ?? {}).filter(([key]) => !hidden?.includes(key));
  const required = new Set(root.required ?? []);
  return (
    <form onSubmit={submit} className="schema-form">
      {properties.length === 0 ? <p className="muted">No settings.</p> : null}
      {properties.map(([key, raw]) => {
        const s = resolve(raw, schema);
        const id = `${prefix}-${key}`;
        const label = s.title ?? key.replace(/_/g, " ");
        const message = error instanceof ApiError ? error.fieldError(key) : undefined;
        const describedBy = message ? `${id}-error` : s.description ? `${id}-hint` : undefined;
        const common = { id, name: key, "aria-invalid": Boolean(message), "aria-describedby": describedBy };
        const current = draft[key] ?? s.default;
        let input;
        if (s.enum) {
          input = (
            <select {...common} value={String(current ?? "")} onChange={(e) => set(key, e.target.value)}>
              {s.enum.map((option) => (
                <option key={String(option)}>{String(option)}</option>
              ))}
            </select>
          );
        } else if (kind(s) === "boolean") {
          input = <input type="checkbox" {...common} checked={Boolean(current)} onChange={(e) => set(key, e.target.checked)} />;
        } else if (kind(s) === "integer" || kind(s) === "number") {
          input = (
            <input
              type="number"
              {...common}
              step={kind(s) === "integer" ? 1 : "any"}
              min={s.minimum}
              max={s.maximum}
              value={current === null || current === undefined ? "" : String(current)}
              onChange={(e) => set(key, e.target.value === "" ? null : Number(e.target.value))}
            />
          );
        } else if (kind(s) === "array" || kind(s) === "object") {
          input = (
            <textarea
              {...common}
              rows={3}
              defaultValue={JSON.stringify(current ?? (kind(s) === "array" ? [] : {}), null, 2)}
              onChange={(e) => {
                try {
                  set(key, JSON.parse(e.target.value));
                } catch {
                  // keep the last valid value until the JSON parses
                }
              }}
            />
          );
        } else if (s.writeOnly || s["x-secret"]) {
          input = (
            <input
              type="password"
              {...common}
              autoComplete="off"
              required={required.has(key)}
              value={typeof draft[key] === "string" ? String(draft[key]) : ""}
              onChange={(e) => set(key, e.target.value)}
            />
          );
        } else {
          input = (
            <input
              type={s.format === "uri" ? "url" : s.format === "email" ? "email" : "text"}
              {...common}
              list={suggestions?.length ? `${prefix}-suggestions` : undefined}
              value={current === null || current === undefined ? "" : String(current)}
              onChange={(e) => set(key, e.target.value === "" && raw.anyOf ? null : e.target.value)}
            />
          );
        }
        return (
          <div className="field" key={key}>
            <label htmlFor={id}>{label}</label>
            {input}
            {s.description && !message ? (
              <small id={`${id}-hint`} className="hint">
                {s.description}
              </small>
            ) : null}
            {message ? (
              <small id={`${id}-error`} className="field-error" role="alert">
                {message}
              </small>
            ) : null}
          </div>
        );
      })}
      {suggestions?.length ? (
        <datalist id={`${prefix}-suggestions`}>
          {suggestions.map((x) => (
            <option key={x} value={x} />
          ))}
        </datalist>
      ) : null}
      <button type="submit" disabled={busy}>
        {submitLabel}
      </button>
    </form>
  );
}
