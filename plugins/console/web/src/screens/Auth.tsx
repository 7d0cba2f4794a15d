// Sign up (a new business and its owner) and sign in, with the TOTP / recovery-code second step.
import { useState, type FormEvent } from "react";
import { Link } from "react-router";
import { api, setSession, type MfaChallenge, type TokenPair } from "../api";
import { ErrorNote, Field, formValues } from "../ui";

type SignupAnswer = TokenPair & { tenant: { id: string; slug: string } };

export function SignUp() {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const answer = await api<SignupAnswer>("/api/tenants", {
        method: "POST",
        body: { name: v.business, slug: v.slug, owner: { name: v.name, email: v.email, password: v.password } },
      });
      await setSession(answer, answer.tenant.id);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="card narrow" onSubmit={submit} aria-labelledby="signup-title">
      <h1 id="signup-title">Create your business</h1>
      <Field label="Business name" name="business" error={error} required autoComplete="organization" />
      <Field
        label="Workspace address"
        name="slug"
        error={error}
        required
        pattern="[a-z0-9][a-z0-9-]*"
        hint="Lower-case letters, digits and dashes; you sign in with it."
      />
      <Field label="Your name" name="name" error={error} autoComplete="name" />
      <Field label="E-mail" name="email" type="email" error={error} required autoComplete="email" />
      <Field label="Password" name="password" type="password" error={error} required autoComplete="new-password" />
      <ErrorNote error={error} />
      <button type="submit" disabled={busy}>
        Create business
      </button>
      <p>
        Already have one? <Link to="/sign-in">Sign in</Link>
      </p>
    </form>
  );
}

export function SignIn() {
  const [error, setError] = useState<unknown>(null);
  const [challenge, setChallenge] = useState<{ token: string; tenant: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const answer = await api<TokenPair | MfaChallenge>("/api/auth/login", {
        method: "POST",
        tenant: v.workspace,
        body: { email: v.email, password: v.password },
      });
      if ("mfa_token" in answer) setChallenge({ token: answer.mfa_token, tenant: v.workspace });
      else await setSession(answer, v.workspace);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const verify = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    if (!challenge) return;
    const v = formValues(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const tokens = await api<TokenPair>("/api/auth/mfa/verify", {
        method: "POST",
        tenant: challenge.tenant,
        body: { mfa_token: challenge.token, code: v.code.trim() },
      });
      await setSession(tokens, challenge.tenant);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  if (challenge) {
    return (
      <form className="card narrow" onSubmit={verify} aria-labelledby="mfa-title">
        <h1 id="mfa-title">Two-step verification</h1>
        <Field
          label="Code"
          name="code"
          error={error}
          required
          autoComplete="one-time-code"
          hint="The six digits from your authenticator app, or one of your recovery codes."
        />
        <ErrorNote error={error} />
        <button type="submit" disabled={busy}>
          Verify
        </button>
      </form>
    );
  }
  return (
    <form className="card narrow" onSubmit={submit} aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in</h1>
      <Field label="Workspace" name="workspace" error={error} required hint="Your business's workspace address." />
      <Field label="E-mail" name="email" type="email" error={error} required autoComplete="email" />
      <Field label="Password" name="password" type="password" error={error} required autoComplete="current-password" />
      <ErrorNote error={error} />
      <button type="submit" disabled={busy}>
        Sign in
      </button>
      <p>
        New here? <Link to="/sign-up">Create your business</Link> or{" "}
        <Link to="/join">join with an invitation</Link>
      </p>
    </form>
  );
}

/** Join a business with the invitation token its owner or an admin gave you. */
export function Join() {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const tokens = await api<TokenPair>("/api/auth/register", {
        method: "POST",
        tenant: v.workspace,
        body: { email: v.email, password: v.password, name: v.name, invitation_token: v.invitation_token.trim() },
      });
      await setSession(tokens, v.workspace);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="card narrow" onSubmit={submit} aria-labelledby="join-title">
      <h1 id="join-title">Join with an invitation</h1>
      <Field label="Workspace" name="workspace" error={error} required />
      <Field label="Invitation token" name="invitation_token" error={error} required autoComplete="off" />
      <Field label="Your name" name="name" error={error} autoComplete="name" />
      <Field label="E-mail" name="email" type="email" error={error} required autoComplete="email" />
      <Field label="Password" name="password" type="password" error={error} required autoComplete="new-password" />
      <ErrorNote error={error} />
      <button type="submit" disabled={busy}>
        Join
      </button>
      <p>
        <Link to="/sign-in">Sign in</Link> instead
      </p>
    </form>
  );
}
