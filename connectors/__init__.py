"""Integration connectors: each sub-package is a plugin of its own (see docs/connectors.md)."""
