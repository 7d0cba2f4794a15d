import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode, Suspense, lazy, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { BrowserRouter, NavLink, Navigate, Route, Routes } from "react-router";
import { ApiError, endSession, resumeSession } from "./api";
import { Join, SignIn, SignUp } from "./screens/Auth";
import { useMe, useModuleOn, useSessionState } from "./session";
import { Loading } from "./ui";
import "./styles.css";

const Home = lazy(() => import("./screens/Home"));
const Team = lazy(() => import("./screens/Team"));
const Security = lazy(() => import("./screens/Security"));
const Modules = lazy(() => import("./screens/Modules"));
const Crm = lazy(() => import("./screens/Crm"));
const Projects = lazy(() => import("./screens/Projects"));
const Ai = lazy(() => import("./screens/Ai"));
const Audit = lazy(() => import("./screens/Audit"));
const Workflows = lazy(() => import("./screens/Workflows"));
const Connections = lazy(() => import("./screens/Connections"));
const Webhooks = lazy(() => import("./screens/Webhooks"));
const Billing = lazy(() => import("./screens/Billing"));

const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 10_000,
      retry: (count, error) => !(error instanceof ApiError && error.status < 500) && count < 2,
    },
  },
});

type Theme = "light" | "dark";
function useTheme(): [Theme, () => void] {
  const initial: Theme = window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  const [theme, setTheme] = useState<Theme>(initial);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  return [theme, () => setTheme((t) => (t === "dark" ? "light" : "dark"))];
}

function ThemeToggle() {
  const [theme, toggle] = useTheme();
  return (
    <button type="button" className="ghost" onClick={toggle} aria-pressed={theme === "dark"}>
      {theme === "dark" ? "Light theme" : "Dark theme"}
    </button>
  );
}

function Shell() {
  const me = useMe();
  const crm = useModuleOn("crm");
  const projects = useModuleOn("projects");
  const workflows = useModuleOn("workflows");
  // Connections are the kernel's (no module to enable): shown to whoever may read them.
  const connections = Boolean(me.data?.permissions.includes("kernel.connections.read"));
  const webhooks = useModuleOn("webhooks");
  const billing = useModuleOn("billing");
  const [menu, setMenu] = useState(false);
  const signOut = async () => {
    try {
      await endSession();
    } finally {
      queryClient.clear();
    }
  };
  const link = (to: string, label: string) => (
    <li>
      <NavLink to={to} onClick={() => setMenu(false)}>
        {label}
      </NavLink>
    </li>
  );
  return (
    <div className="shell">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <button
          type="button"
          className="ghost menu-button"
          aria-expanded={menu}
          aria-controls="nav"
          onClick={() => setMenu((m) => !m)}
        >
          Menu
        </button>
        <strong className="brand">BusinessOS</strong>
        <span className="muted who">{me.data?.email}</span>
        <ThemeToggle />
        <button type="button" className="ghost" onClick={signOut}>
          Sign out
        </button>
      </header>
      <nav id="nav" aria-label="Sections" className={menu ? "sidebar open" : "sidebar"}>
        <ul>
          {link("/", "Overview")}
          {link("/team", "Team")}
          {link("/security", "Security")}
          {link("/modules", "Modules")}
          {crm ? link("/crm", "CRM") : null}
          {projects ? link("/projects", "Projects") : null}
          {link("/ai", "AI")}
          {workflows ? link("/workflows", "Workflows") : null}
          {connections ? link("/connections", "Connections") : null}
          {webhooks ? link("/webhooks", "Webhooks") : null}
          {billing ? link("/billing", "Billing") : null}
          {link("/audit", "Audit log")}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        <Suspense fallback={<Loading />}>
          <Routes>
            <Route path="/" element={<Home />} />
            <Route path="/team" element={<Team />} />
            <Route path="/security" element={<Security />} />
            <Route path="/modules" element={<Modules />} />
            <Route path="/crm/*" element={<Crm />} />
            <Route path="/projects/*" element={<Projects />} />
            <Route path="/ai/*" element={<Ai />} />
            <Route path="/audit" element={<Audit />} />
            <Route path="/workflows/*" element={<Workflows />} />
            <Route path="/connections" element={<Connections />} />
            <Route path="/webhooks/*" element={<Webhooks />} />
            <Route path="/billing" element={<Billing />} />
            <Route path="/sign-in" element={<Navigate to="/" replace />} />
            <Route path="/sign-up" element={<Navigate to="/" replace />} />
            <Route path="/join" element={<Navigate to="/" replace />} />
            <Route path="*" element={<p>Nothing here.</p>} />
          </Routes>
        </Suspense>
      </main>
    </div>
  );
}

function Public() {
  return (
    <main id="main" className="public">
      <div className="public-top">
        <strong className="brand">BusinessOS</strong>
        <ThemeToggle />
      </div>
      <Routes>
        <Route path="/sign-up" element={<SignUp />} />
        <Route path="/join" element={<Join />} />
        <Route path="*" element={<SignIn />} />
      </Routes>
    </main>
  );
}

function App() {
  const state = useSessionState();
  if (state === "unknown") return <Loading label="Signing in" />;
  return state === "in" ? <Shell /> : <Public />;
}

void resumeSession();

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <BrowserRouter basename="/console">
        <App />
      </BrowserRouter>
    </QueryClientProvider>
  </StrictMode>,
);
