"""Per-tenant modules: which installed plugins a tenant has switched on, and their settings."""
