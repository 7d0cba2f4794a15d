"""console: the web console at ``/console``, a single-page app built from ``web/`` into ``static/``.

The app talks to the public HTTP API only; this module just serves its files. The built assets
are committed, so an installation needs no Node.js (``docs/console.md`` says how to rebuild).
"""

from __future__ import annotations

from typing import Any

from kernel import sdk
from plugins.console.routes import ROUTES

__all__ = ["manifest"]

manifest = sdk.Manifest(
    name="console",
    version="0.1.0",
    kernel_api=">=1.1,<2",
    title="Console",
    description="The web console at /console: administration, CRM, projects, AI and audit in a browser.",
)


@sdk.hookimpl
def businessos_routes() -> list[Any]:
    return ROUTES
