import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The API the dev server proxies to (`businessos serve` by default).
const api = process.env.BUSINESSOS_API ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "/console/",
  plugins: [react()],
  build: {
    outDir: "../static",
    emptyOutDir: true,
    assetsDir: "assets",
    // No inline module-preload polyfill: the CSP allows scripts from 'self' only.
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: {
      "/api": api,
      "/health": api,
    },
  },
});
