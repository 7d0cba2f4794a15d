"""The installation's operators: credentials apart from every tenant, and ``/api/admin``."""
