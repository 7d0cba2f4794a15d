"""The thinnest endpoint doing what ``GET /api/crm/contacts?limit=20`` does in the database.

Litestar plus a raw asyncpg pool, connected as the same runtime role: one transaction that sets
``app.tenant_id`` and selects 20 contacts (row-level security applies). No authentication, no
tenant resolution, no module guard, no count. ``bench/crm_list.py`` runs it beside the platform.

    THIN_DSN=postgresql://... THIN_TENANT=<uuid> uvicorn bench.thin_app:app --port 9000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from litestar import Litestar, get

_QUERY = "select * from crm_contacts order by created_at desc, id desc limit 20"


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["THIN_DSN"], min_size=4, max_size=10)
    try:
        yield
    finally:
        await app.state.pool.close()


@get("/contacts")
async def contacts() -> dict[str, Any]:
    async with app.state.pool.acquire() as conn, conn.transaction():
        await conn.execute("select set_config('app.tenant_id', $1, true)", os.environ["THIN_TENANT"])
        rows = await conn.fetch(_QUERY)
    return {"contacts": [dict(r) for r in rows]}


app = Litestar(route_handlers=[contacts], lifespan=[lifespan])
