"""Integration connectors: each sub-package is a plugin of its own, registered through the
``businessos.plugins`` entry point exactly as a third party's would be."""
