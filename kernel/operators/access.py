"""Who may use the operator area (``/api/admin`` and ``/metrics``), and how they are recognised.

In the operator area a bearer credential is read as an operator token (or, on ``/metrics``
only, as the scrape token); a tenant's token or API key is refused there (401). Everywhere else
an operator token fails the tenant token check (its audience differs), so it is refused too.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Scope

from kernel.identity.service import Unauthorized
from kernel.identity.tokens import TokenError
from kernel.operators.service import Operator

__all__ = [
    "ADMIN_PREFIX",
    "METRICS_PATH",
    "OPERATOR_AREA_OPT",
    "SCRAPE_OPT",
    "authenticate_in_operator_area",
    "in_operator_area",
    "operator_of",
    "provide_operator",
    "require_operator",
]

ADMIN_PREFIX = "/api/admin"
METRICS_PATH = "/metrics"
OPERATOR_AREA_OPT = "operator_area"
"""Route ``opt`` key: the route needs an operator, whatever permission it declares (plugin
admin routes are mounted with it)."""
SCRAPE_OPT = "scrape"
"""Route ``opt`` key: the scrape token is accepted besides an operator token."""


def in_operator_area(path: str) -> bool:
    return path in (METRICS_PATH, ADMIN_PREFIX) or path.startswith(ADMIN_PREFIX + "/")


async def authenticate_in_operator_area(scope: Scope, kind: str, value: str) -> None:
    """Put the operator (or the scraper's mark) in the request state, or raise ``TokenError``."""
    kernel = scope["app"].state.kernel
    state = scope.setdefault("state", {})
    if kind != "jwt":
        raise TokenError("tenant credentials are not accepted here: log in as an operator")
    expected = kernel.settings.metrics_token
    if scope["path"] == METRICS_PATH and expected and hmac.compare_digest(value.encode(), expected.encode()):
        state["scraper"] = True
        return
    state["operator"] = await kernel.operators.authenticate(value)


def operator_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Operator | None:
    operator: Operator | None = connection.scope.get("state", {}).get("operator")
    return operator


def require_operator(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """401 unless an operator (or, where the route allows it, the scraper) is calling."""
    if operator_of(connection) is not None:
        return
    if handler.opt.get(SCRAPE_OPT) and connection.scope.get("state", {}).get("scraper"):
        return
    raise Unauthorized("operator credentials required")


async def provide_operator(request: ASGIConnection[Any, Any, Any, Any]) -> Operator:
    """The ``operator`` dependency of operator routes (the guard has already required one)."""
    operator = operator_of(request)
    if operator is None:
        raise Unauthorized("operator credentials required")
    return operator
