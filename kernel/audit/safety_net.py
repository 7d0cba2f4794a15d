"""A floor under plugin routes: a mutating request that succeeded leaves an audit row even when
its handler wrote none.

Plugins should audit their changes with ``services.changes`` in the transaction that makes them (that
row has the resource and before/after). When a plugin route answers a POST, PUT, PATCH or DELETE
with a success and did not, this hook records a generic ``http.<method>`` row just before the
response goes out, so no change by a plugin goes unrecorded.
"""

from __future__ import annotations

from typing import Any

from litestar.types import Message, Scope

from kernel.audit.log import RequestMeta, record

__all__ = ["audit_unaudited_mutations"]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def audit_unaudited_mutations(message: Message, scope: Scope) -> None:
    method = str(scope.get("method", ""))
    if message["type"] != "http.response.start" or method not in _MUTATING:
        return
    status = int(message["status"])
    handler: Any = scope.get("route_handler")
    state: dict[str, Any] = scope.get("state", {})
    module = getattr(handler, "opt", {}).get("module") if handler is not None else None
    tenant = state.get("tenant")
    if module is None or status >= 400 or state.get("audited") or tenant is None:
        return
    principal = state.get("principal")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    kernel = scope["app"].state.kernel
    async with kernel.db.tenant(tenant.id) as session:
        await record(
            session,
            tenant_id=tenant.id,
            actor=getattr(principal, "actor", None),
            action=f"http.{method.lower()}",
            resource_type=module,
            resource_id=scope.get("path"),
            meta=RequestMeta(
                request_id=state.get("request_id"),
                ip=state.get("client_ip"),
                user_agent=headers.get("user-agent"),
            ),
            details={"status": status},
        )
