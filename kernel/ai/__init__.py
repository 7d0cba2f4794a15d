"""The AI proxy: tenants' own provider keys (BYOK), calls through litellm, a usage ledger priced
from a versioned table, and budgets admitted in Redis and recorded in PostgreSQL so concurrent
calls cannot overspend."""
