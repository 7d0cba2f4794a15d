"""What the vault and inbound webhooks cost: each step next to its floor, alternating call by call.

In one process on the embedded PostgreSQL and Redis (a temporary data directory), for one tenant:

- ``tenant tx``: ``services.data.tenant(t)`` running ``select 1``: the floor of any tenant work;
- ``vault.open``: one tenant transaction, one indexed select and one AES-256-GCM open;
- ``endpoint lookup``: finding a webhook endpoint from its path token (checksum, SHA-256, one
  tenant transaction and one indexed select), what every delivery pays before its handler;
- ``standard verify`` / ``hmac verify``: the CPU of checking a Standard Webhooks signature
  (reference package) and a provider-style HMAC with a timestamp, on a 1 KiB body.

    python bench/vault_webhooks.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from kernel.app import load_app_plugins
from kernel.identity.tokens import OpaqueSecret
from kernel.runtime import open_kernel
from kernel.settings import load_settings
from kernel.tenants.schemas import TenantCreate
from kernel.webhooks.models import WebhookEndpointRow
from kernel.webhooks.service import WEBHOOK_TOKEN_KIND, find_endpoint
from kernel.webhooks.signatures import HmacScheme, verify_hmac, verify_standard_webhook


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f} µs"


async def run(calls: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-vault-"))
    settings = load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": ""})
    try:
        async with open_kernel(settings, load_app_plugins(frozenset())) as kernel:
            tenant = await kernel.tenants.create(TenantCreate(name="Bench", slug=f"b-{uuid.uuid4().hex[:8]}"))
            services = kernel.services("bench")
            await services.vault.put(tenant.id, "api.key", "sk_live_" + "x" * 40)
            token = OpaqueSecret.new(WEBHOOK_TOKEN_KIND, tenant.id)
            async with kernel.db.tenant(tenant.id) as session:
                session.add(
                    WebhookEndpointRow(
                        tenant_id=tenant.id, plugin="bench", name="events", token_hash=token.hash,
                        prefix=token.display_prefix,
                    )
                )

            body = os.urandom(512).hex().encode()
            secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
            now = datetime.now(UTC)
            std_headers = {
                "webhook-id": "msg_1",
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(secret).sign("msg_1", now, body.decode()),
            }
            scheme = HmacScheme(header="s", prefix="v0=", timestamp_header="t", template="v0:{timestamp}:{body}")
            stamp = str(int(time.time()))
            mac = hmac.new(b"k", f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
            hmac_headers = {"s": "v0=" + mac, "t": stamp}

            async def floor() -> None:
                async with services.data.tenant(tenant.id) as session:
                    await session.execute(text("select 1"))

            async def vault_open() -> None:
                await services.vault.open(tenant.id, "api.key")

            async def lookup() -> None:
                assert await find_endpoint(kernel.db, "bench", token.value) is not None

            async def standard() -> None:
                verify_standard_webhook(secret, body, std_headers)

            async def provider() -> None:
                verify_hmac("k", body, hmac_headers, scheme)

            steps: dict[str, Callable[[], Awaitable[Any]]] = {
                "tenant tx": floor,
                "vault.open": vault_open,
                "endpoint lookup": lookup,
                "standard verify": standard,
                "hmac verify": provider,
            }
            times: dict[str, list[float]] = {name: [] for name in steps}
            for round_ in range(calls + 100):
                for name, step in steps.items():
                    start = time.perf_counter()
                    await step()
                    if round_ >= 100:  # the first rounds warm connections and caches
                        times[name].append(time.perf_counter() - start)
            floor_median = statistics.median(times["tenant tx"])
            print(f"{calls} calls each, alternating; median and p95, and the median over the tenant-tx floor")
            for name, values in times.items():
                ordered = sorted(values)
                median, p95 = statistics.median(ordered), ordered[int(0.95 * len(ordered))]
                print(f"  {name:<16} {_us(median)}  p95 {_us(p95)}  x{median / floor_median:5.2f}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(run(args.calls))


if __name__ == "__main__":
    main()
