// The screen of a module whose API the console does not drive yet (its module is on for the tenant).
import { Link } from "react-router";

export default function Pending({ module, title }: { module: string; title: string }) {
  return (
    <>
      <h1>{title}</h1>
      <p>
        The <code>{module}</code> module is enabled, but this console does not have its screens yet. Its API is
        listed in the <a href="/schema/openapi.json">OpenAPI document</a>; its settings are on the{" "}
        <Link to="/modules">Modules</Link> page.
      </p>
    </>
  );
}
