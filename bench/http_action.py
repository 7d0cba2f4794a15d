"""What the ``http.request`` action adds to a raw httpx call, alternating call by call.

In one process on the embedded PostgreSQL and Redis (a temporary data directory), against a local
HTTP server on 127.0.0.1 (uvicorn in a thread, allowlisted for the egress client), GET ``/api/ping``
through:

- ``raw httpx``: an ``httpx.AsyncClient`` with keep-alive: the baseline;
- ``egress client``: ``services.http.get`` (resolve and judge the address, pin it, cap the body);
- ``http.request``: the node's runner without auth (config checks, the idempotency key, egress,
  decoding the JSON answer into its output);
- ``http.request + bearer``: the same with a bearer-token connection (one tenant transaction, one
  AES-GCM open of the sealed credentials).

Each round runs the four once, in turn; it prints each one's median and p90, and the median added
over the raw call measured in the same run (goal: under 2 ms at the median).

    python bench/http_action.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from connectors.http.nodes import RequestConfig, send_request
from connectors.http.tests.local_api import local_api
from kernel.app import load_app_plugins
from kernel.connections.schemas import ConnectionCreate
from kernel.plugins.services import Actor
from kernel.runtime import open_kernel
from kernel.settings import load_settings
from kernel.tenants.schemas import TenantCreate
from kernel.testing import node_context

TOKEN = "bench-token-" + "x" * 20


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f} ms"


async def run(calls: int) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one log line per call would be measured too
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-http-"))
    settings = load_settings({
        "BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": "http",
        "BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
    })
    try:
        with local_api() as api:
            api.bearer_tokens.add(TOKEN)
            async with open_kernel(settings, load_app_plugins(settings.plugins_allowlist)) as kernel, \
                    httpx.AsyncClient() as raw:
                tenant = await kernel.tenants.create(TenantCreate(name="Bench", slug=f"b-{uuid.uuid4().hex[:8]}"))
                await kernel.modules.enable(tenant.id, "http")
                services = kernel.services("http")
                made = await kernel.connections.create(
                    tenant.id,
                    ConnectionCreate(type="http.bearer", name="bench", credentials={"token": TOKEN}),
                    Actor.system("bench"),
                )
                url = f"{api.url}/api/ping"
                plain = RequestConfig(url=url, retries=0)
                authed = RequestConfig(url=url, retries=0, connection=made.id)

                async def raw_call() -> None:
                    assert (await raw.get(url)).status_code == 200

                async def egress_call() -> None:
                    assert (await services.http.get(url)).status_code == 200

                async def node_call() -> None:
                    assert (await send_request(node_context(services, tenant.id), plain)).status == 200

                async def bearer_call() -> None:
                    assert (await send_request(node_context(services, tenant.id), authed)).status == 200

                subjects: dict[str, Callable[[], Awaitable[None]]] = {
                    "raw httpx": raw_call, "egress client": egress_call, "http.request": node_call,
                    "http.request + bearer": bearer_call,
                }
                times: dict[str, list[float]] = {name: [] for name in subjects}
                for call in subjects.values():  # warm up: pools, caches, imports
                    for _ in range(50):
                        await call()
                for _ in range(calls):
                    for name, call in subjects.items():
                        start = time.perf_counter()
                        await call()
                        times[name].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    base = statistics.median(times["raw httpx"])
    print(f"GET /api/ping on 127.0.0.1, {calls} calls each, alternating:")
    print(f"  {'':24}{'median':>11}{'p90':>12}{'added (median)':>18}{'ratio':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"  {name:24}{_ms(median)}  {_ms(p90)}  {_ms(median - base):>16}{median / base:7.2f}x")
    added = statistics.median(times["http.request"]) - base
    print(f"http.request adds {added * 1e3:.3f} ms at the median over raw httpx (goal < 2 ms):",
          "met" if added < 0.002 else "NOT met")


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    asyncio.run(run(args.calls))


if __name__ == "__main__":
    main()
