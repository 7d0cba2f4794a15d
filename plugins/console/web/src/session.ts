// Who is signed in and which modules their tenant has: shared by the shell and the screens.
import { useQuery } from "@tanstack/react-query";
import { useSyncExternalStore } from "react";
import { api, onSessionChange, sessionState, type Me, type Module, type SessionState } from "./api";

export function useSessionState(): SessionState {
  return useSyncExternalStore(onSessionChange, sessionState);
}

export function useMe() {
  return useQuery({ queryKey: ["me"], queryFn: () => api<Me>("/api/auth/me") });
}

export function useModules() {
  return useQuery({
    queryKey: ["modules"],
    queryFn: async () => (await api<{ modules: Module[] }>("/api/modules")).modules,
  });
}

/** Whether a module is installed, loaded and enabled for the tenant (its screens show only then). */
export function useModuleOn(name: string): boolean {
  const modules = useModules().data;
  return Boolean(modules?.find((m) => m.name === name && m.status === "active" && m.enabled));
}
