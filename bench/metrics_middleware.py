"""What counting a request for ``/metrics`` adds to it: the metrics ASGI layer around a bare ASGI
app that answers at once, alternated with the bare app in the same run.

    python bench/metrics_middleware.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from kernel.observability.metrics import MetricsMiddleware


async def bare(scope: Any, receive: Any, send: Any) -> None:
    scope["path_template"] = "/api/things/{id}"  # what Litestar's router leaves in the scope
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _send(message: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    return {"type": "http.request"}


async def per_request(app: Any, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await app({"type": "http", "method": "GET", "path": "/api/things/1", "state": {}}, _receive, _send)
    return (time.perf_counter() - started) / requests


async def main(requests: int, rounds: int) -> None:
    counted = MetricsMiddleware(bare)
    await per_request(counted, 1000)  # warm: the label set is looked up once
    added = []
    for _ in range(rounds):
        plain = min([await per_request(bare, requests) for _ in range(3)])
        measured = min([await per_request(counted, requests) for _ in range(3)])
        added.append((measured - plain) * 1e6)
        print(f"bare {plain * 1e6:6.2f} us   counted {measured * 1e6:6.2f} us   added {added[-1]:5.2f} us")
    print(f"median added per request: {statistics.median(added):.2f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.rounds))
