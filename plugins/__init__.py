"""BusinessOS's own business modules, each a plugin registered in pyproject.toml."""
