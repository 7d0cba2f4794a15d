"""The plugin system: hook specifications, the loader and the registry of contributions."""
