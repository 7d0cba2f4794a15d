"""BusinessOS kernel: tenancy, plugins, modules, database and the HTTP app."""

from __future__ import annotations

__all__ = ["KERNEL_API_VERSION", "__version__"]

__version__ = "0.1.0"

# The plugin contract's version. A plugin's manifest states which kernel APIs it supports
# (a PEP 440 specifier such as ">=1.0,<2"); bump the minor for additions, the major for breaks.
KERNEL_API_VERSION = "1.2"
