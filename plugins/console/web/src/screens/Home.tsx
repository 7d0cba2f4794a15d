import { Link } from "react-router";
import { useMe, useModules } from "../session";
import { ErrorNote, Loading, Section } from "../ui";

export default function Home() {
  const me = useMe();
  const modules = useModules();
  if (me.isPending) return <Loading />;
  if (me.error) return <ErrorNote error={me.error} />;
  const enabled = modules.data?.filter((m) => m.enabled) ?? [];
  return (
    <>
      <h1>Overview</h1>
      <Section title="You">
        <p>
          {me.data.name || me.data.email}, <strong>{me.data.role}</strong> of this business.
        </p>
        <p className="muted">
          Two-step verification: {me.data.mfa_enabled ? "on" : <Link to="/security">off (turn it on)</Link>}
        </p>
      </Section>
      <Section title="Modules">
        {enabled.length ? (
          <ul>
            {enabled.map((m) => (
              <li key={m.name}>{m.title || m.name}</li>
            ))}
          </ul>
        ) : (
          <p>
            No module is on yet. <Link to="/modules">Choose modules</Link>
          </p>
        )}
      </Section>
    </>
  );
}
