"""Integration connectors: each folder is a plugin of its own, registered by an entry point."""
