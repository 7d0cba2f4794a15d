// Small accessible building blocks: labelled fields with their problem+json message, pager, notices.
import { useId, type ReactNode } from "react";
import { ApiError, type Pagination } from "./api";

export function errorText(error: unknown): string {
  if (error instanceof ApiError) {
    const fields = error.problem.errors?.map((e) => `${e.field}: ${e.message}`).join("; ");
    return fields ? `${error.message} (${fields})` : error.message;
  }
  return error instanceof Error ? error.message : String(error);
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <p role="alert" className="error">
      {errorText(error)}
    </p>
  );
}

type FieldProps = {
  label: string;
  name: string;
  error?: unknown;
  hint?: string;
  children?: (props: { id: string; name: string; "aria-invalid": boolean; "aria-describedby"?: string }) => ReactNode;
} & Omit<React.InputHTMLAttributes<HTMLInputElement>, "children">;

/** A label, an input and, below it, the message of the problem+json error that names this field. */
export function Field({ label, name, error, hint, children, ...input }: FieldProps) {
  const id = useId();
  const message = error instanceof ApiError ? error.fieldError(name) : undefined;
  const describedBy = message ? `${id}-error` : hint ? `${id}-hint` : undefined;
  const props = { id, name, "aria-invalid": Boolean(message), "aria-describedby": describedBy };
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children ? children(props) : <input {...input} {...props} />}
      {hint && !message ? (
        <small id={`${id}-hint`} className="hint">
          {hint}
        </small>
      ) : null}
      {message ? (
        <small id={`${id}-error`} className="field-error" role="alert">
          {message}
        </small>
      ) : null}
    </div>
  );
}

export function Pager({ pagination, onPage }: { pagination?: Pagination; onPage: (page: number) => void }) {
  if (!pagination) return null;
  const { page, pages, total } = pagination;
  return (
    <nav className="pager" aria-label="Pages">
      <button type="button" disabled={page <= 1} onClick={() => onPage(page - 1)}>
        Previous
      </button>
      <span aria-live="polite">
        Page {page} of {Math.max(pages, 1)} ({total} in all)
      </span>
      <button type="button" disabled={page >= pages} onClick={() => onPage(page + 1)}>
        Next
      </button>
    </nav>
  );
}

export function Loading({ label = "Loading" }: { label?: string }) {
  return (
    <p role="status" className="muted">
      {label}…
    </p>
  );
}

export function Secret({ label, value }: { label: string; value: string }) {
  return (
    <div className="secret" role="status">
      <strong>{label}</strong> (shown once: copy it now)
      <code>{value}</code>
    </div>
  );
}

export function Section({ title, children, actions }: { title: string; children: ReactNode; actions?: ReactNode }) {
  const id = useId();
  return (
    <section aria-labelledby={id} className="card">
      <header className="card-head">
        <h2 id={id}>{title}</h2>
        {actions}
      </header>
      {children}
    </section>
  );
}

export function formValues(form: HTMLFormElement): Record<string, string> {
  const values: Record<string, string> = {};
  new FormData(form).forEach((v, k) => {
    values[k] = String(v);
  });
  return values;
}
