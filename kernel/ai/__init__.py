"""The AI proxy: tenants' own provider keys (BYOK), calls through litellm, a usage ledger priced
from a versioned table, and budgets reserved in PostgreSQL so concurrent calls cannot overspend."""
