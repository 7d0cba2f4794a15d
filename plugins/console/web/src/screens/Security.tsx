// Two-step verification: set up TOTP, enable it (recovery codes shown once), renew codes, disable.
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api } from "../api";
import { useMe } from "../session";
import { ErrorNote, Field, Loading, Section, formValues } from "../ui";

type MfaSetup = { secret: string; otpauth_uri: string };
type RecoveryCodes = { recovery_codes: string[] };

export default function Security() {
  const me = useMe();
  const client = useQueryClient();
  const [setup, setSetup] = useState<MfaSetup | null>(null);
  const [codes, setCodes] = useState<string[] | null>(null);
  const start = useMutation({
    mutationFn: () => api<MfaSetup>("/api/auth/mfa/setup", { method: "POST" }),
    onSuccess: setSetup,
  });
  const act = useMutation({
    mutationFn: ({ path, code }: { path: string; code: string }) =>
      api<RecoveryCodes | undefined>(`/api/auth/mfa/${path}`, { method: "POST", body: { code } }),
    onSuccess: (answer) => {
      setSetup(null);
      setCodes(answer?.recovery_codes ?? null);
      void client.invalidateQueries({ queryKey: ["me"] });
    },
  });
  const submit = (path: string) => (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    act.mutate({ path, code: formValues(event.currentTarget).code.trim() });
  };
  if (me.isPending) return <Loading />;
  const enabled = me.data?.mfa_enabled;
  return (
    <>
      <h1>Security</h1>
      <Section title="Two-step verification">
        <p>{enabled ? "Two-step verification is on." : "Two-step verification is off."}</p>
        {codes ? (
          <div className="secret" role="status">
            <strong>Recovery codes</strong> (shown once: keep them somewhere safe)
            <ul className="codes">
              {codes.map((c) => (
                <li key={c}>
                  <code>{c}</code>
                </li>
              ))}
            </ul>
          </div>
        ) : null}
        {!enabled && !setup ? (
          <button type="button" onClick={() => start.mutate()}>
            Set up an authenticator app
          </button>
        ) : null}
        {setup ? (
          <form onSubmit={submit("enable")}>
            <p>
              Add this key to your authenticator app: <code className="totp-secret">{setup.secret}</code>
            </p>
            <p className="muted break">{setup.otpauth_uri}</p>
            <Field label="Code from the app" name="code" required autoComplete="one-time-code" error={act.error} />
            <button type="submit">Turn on</button>
          </form>
        ) : null}
        {enabled ? (
          <div className="row">
            <form onSubmit={submit("recovery-codes")} className="row">
              <Field label="Current code (new recovery codes)" name="code" required error={act.error} />
              <button type="submit">New recovery codes</button>
            </form>
            <form onSubmit={submit("disable")} className="row">
              <Field label="Current code (turn off)" name="code" required error={act.error} />
              <button type="submit" className="danger">
                Turn off
              </button>
            </form>
          </div>
        ) : null}
        <ErrorNote error={start.error ?? act.error} />
      </Section>
    </>
  );
}
