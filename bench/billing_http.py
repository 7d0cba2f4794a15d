"""Usage ingestion through ``POST /api/billing/usage``, over HTTP against a real ``businessos serve``.

``bench/billing.py`` measures the service layer in-process; this one adds what a caller pays: the
HTTP hop, authentication, the rate limit, decoding and validating 1,000 events per request, and
the answer. ``serve`` runs with the billing plugin on embedded PostgreSQL and Redis (a temporary
directory, ``--no-jobs``); the tenant is moved to Enterprise by an operator (created with the CLI,
as an installer would), so the plan's rate limit is not what is measured.

Each round sends ``--batches`` batches of 1,000 new events with ``--writers`` concurrent clients,
then the same batches again (all duplicates: idempotency on ``transaction_id`` per tenant). The
baseline, in the same run, is the same requests with the same body sent by a member whose role
lacks ``billing.usage.write``: everything up to the permission check (HTTP, auth, rate limit) and
nothing of the ingest. Prints medians of ``--rounds`` rounds and the ratios.

    python bench/billing_http.py [--batches 40] [--writers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import httpx
import msgspec
from served import operator_headers, served

BATCH = 1000


def _body(prefix: str) -> bytes:
    events = [
        {"transaction_id": f"{prefix}-{i}", "metric": ("api_calls", "ai_tokens", "workflow_executions")[i % 3],
         "value": i % 17}
        for i in range(BATCH)
    ]
    return msgspec.json.encode({"events": events})


async def _round(
    base: str, headers: dict[str, str], bodies: list[bytes], writers: int, expect: int, counted: str = ""
) -> float:
    """Events per second for sending ``bodies`` with ``writers`` clients; each answer must be
    ``expect`` and, when ``counted`` names a field of the answer, count the whole batch there."""
    queue = list(bodies)

    async def writer(client: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            response = await client.post("/api/billing/usage", content=body, headers=headers)
            assert response.status_code == expect, response.text
            assert not counted or response.json()[counted] == BATCH, response.text

    clients = [httpx.AsyncClient(base_url=base, timeout=120) for _ in range(writers)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(writer(c) for c in clients))
        return len(bodies) * BATCH / (time.perf_counter() - started)
    finally:
        for c in clients:
            await c.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with served({"BUSINESSOS_PLUGINS": "billing"}) as (base, env, _):
        with httpx.Client(base_url=base, timeout=60) as client:
            operator = operator_headers(client, env)
            slug = f"bench-{uuid.uuid4().hex[:8]}"
            owner = {"email": f"owner@{slug}.example", "password": f"pw-{uuid.uuid4().hex}"}
            made = client.post("/api/tenants", json={"name": "Bench", "slug": slug, "owner": owner})
            auth = {"Authorization": f"Bearer {made.raise_for_status().json()['access_token']}",
                    "Content-Type": "application/json"}
            client.put(f"/api/admin/tenants/{slug}/plan", json={"plan": "enterprise"},
                       headers=operator).raise_for_status()
            key = client.post("/api/api-keys", json={"name": "viewer", "role": "viewer"}, headers=auth)
            viewer = {"Authorization": f"Bearer {key.raise_for_status().json()['key']}",
                      "Content-Type": "application/json"}

        refused = "refused before ingest (baseline)"
        rounds: dict[str, list[float]] = {"new events": [], "all duplicates": [], refused: []}
        for r in range(args.rounds):
            bodies = [_body(f"r{r}-b{n}") for n in range(args.batches)]
            rounds[refused].append(asyncio.run(_round(base, viewer, bodies, args.writers, 403)))
            rounds["new events"].append(asyncio.run(_round(base, auth, bodies, args.writers, 200, "accepted")))
            rounds["all duplicates"].append(asyncio.run(_round(base, auth, bodies, args.writers, 200, "duplicates")))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} events/s" for k, v in rounds.items()))
    baseline = statistics.median(rounds[refused])
    print(f"\nPOST /api/billing/usage, {args.batches} batches of {BATCH} per round, {args.writers} writers, "
          f"medians of {args.rounds} rounds:")
    for name, values in rounds.items():
        median = statistics.median(values)
        print(f"  {name:36s} {median:10,.0f} events/s   ratio to baseline {median / baseline:5.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
