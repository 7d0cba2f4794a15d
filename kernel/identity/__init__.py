"""Identity and access: accounts, tokens, MFA, roles and permissions, API keys."""
