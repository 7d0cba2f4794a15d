"""``GET /metrics``: the Prometheus exposition, for an operator or the scrape token."""

from __future__ import annotations

from litestar import Response, get

from kernel.context import Kernel
from kernel.identity.permissions import OPERATOR
from kernel.observability.metrics import CONTENT_TYPE, render
from kernel.operators.access import METRICS_PATH, SCRAPE_OPT

__all__ = ["metrics"]


@get(
    METRICS_PATH,
    include_in_schema=False,
    opt={"permission": OPERATOR, SCRAPE_OPT: True, "rate_limit": "exempt"},
)
async def metrics(kernel: Kernel) -> Response[bytes]:
    """Prometheus text format. ``Authorization: Bearer`` with ``BUSINESSOS_METRICS_TOKEN`` or an
    operator token; anything else is 401."""
    return Response(await render(kernel.db), media_type=CONTENT_TYPE)
