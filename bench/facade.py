"""What the plugin facade adds to a request, per call: the ``services`` dependency and an
``sdk.Actor`` built from the request (both on every write route of the CRM and Projects).

    python bench/facade.py

No servers: a kernel object is not needed to build the facade's parts being measured, and the
request is a real Litestar connection over a typical scope (an authenticated user, five headers).
"""

from __future__ import annotations

import timeit
import uuid
from typing import Any

from litestar.connection import ASGIConnection

from kernel import sdk
from kernel.app import services_provider
from kernel.audit.log import request_actor, request_meta
from kernel.context import Kernel
from kernel.identity.principal import Principal

N = 200_000


class _State:
    kernel: Any


class _App:
    """What the provider reads of the app: ``app.state.kernel.services(plugin)``, the real method
    over a kernel whose facade for ``crm`` was built by an earlier request."""

    def __init__(self) -> None:
        kernel = type("K", (), {"services": Kernel.services})()
        kernel._services = {"crm": object()}
        self.state = _State()
        self.state.kernel = kernel


def _connection() -> ASGIConnection[Any, Any, Any, Any]:
    principal = Principal(
        kind="user", id=uuid.uuid4(), tenant_id=uuid.uuid4(), role="member", permissions=frozenset({"crm.x.y"})
    )
    headers = [
        (b"host", b"api.example.com"), (b"user-agent", b"bench/1.0"), (b"x-request-id", b"req-1"),
        (b"authorization", b"Bearer x"), (b"content-type", b"application/json"),
    ]
    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": "/api/crm/contacts", "headers": headers,
        "client": ("203.0.113.9", 5000), "state": {"principal": principal, "request_id": "req-1"},
        "litestar_app": _App(),
    }
    return ASGIConnection(scope)  # type: ignore[arg-type]


def main() -> None:
    connection = _connection()
    provide = services_provider("crm")
    cases = {
        "services dependency (the route's provider)": lambda: provide(connection),
        "sdk.Actor.of_request(request)": lambda: sdk.Actor.of_request(connection),
        "1.0 equivalent: request_actor + request_meta": lambda: (request_actor(connection), request_meta(connection)),
    }
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=N, repeat=5)) / N
        print(f"{name:48s} {best * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
