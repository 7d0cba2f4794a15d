"""Tenants: the global table, creation, and resolving the tenant of a request."""
