"""Liveness (``/health``) and readiness (``/ready``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, get
from sqlalchemy import text

from kernel.context import TENANT_HEADER, Kernel
from kernel.errors import Problem, ServiceUnavailable, translate
from kernel.identity.permissions import PUBLIC

__all__ = ["health", "ready"]

_CHECK_TIMEOUT = 2.0


class Health(msgspec.Struct, frozen=True):
    status: str
    timestamp: datetime
    tenant: str | None


class Ready(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, str]


@get("/health", tags=["health"], opt={"permission": PUBLIC})
async def health(request: Request[Any, Any, Any], kernel: Kernel) -> Health:
    """The process is up. ``tenant`` echoes the tenant named by ``X-Tenant-ID``, when it exists."""
    tenant = None
    ref = request.headers.get(TENANT_HEADER)
    if ref:
        try:
            found = await kernel.tenants.find(ref)
        except (Problem, ValueError):
            found = None
        except Exception as exc:
            # Liveness says the process is up; a database that is down is /ready's to report.
            if translate(exc) is None:
                raise
            found = None
        tenant = str(found.id) if found else None
    return Health(status="OK", timestamp=datetime.now(UTC), tenant=tenant)


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, _CHECK_TIMEOUT)
    except Exception as exc:
        return name, f"down: {type(exc).__name__}"
    return name, "ok"


async def _ping_postgres(kernel: Kernel) -> None:
    async with kernel.db.engine.connect() as conn:
        await conn.execute(text("select 1"))


@get("/ready", tags=["health"], opt={"permission": PUBLIC})
async def ready(kernel: Kernel) -> Ready:
    """PostgreSQL and Redis answer. 503 names the one that does not."""
    checks = dict(
        await asyncio.gather(
            _check("postgres", _ping_postgres(kernel)),
            _check("redis", kernel.redis.ping()),
        )
    )
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        raise ServiceUnavailable(f"{' and '.join(down)} unavailable", extra={"checks": checks})
    return Ready(status="ready", checks=checks)
