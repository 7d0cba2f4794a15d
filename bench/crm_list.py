"""``GET /api/crm/contacts?limit=20`` against the thinnest app doing the same query.

Starts, in one run: the embedded PostgreSQL and Redis (temporary directory), the platform (uvicorn,
one process, CRM enabled, 1,000 contacts in one tenant) and ``bench/thin_app.py`` (Litestar +
asyncpg, one process, same database and runtime role). Then it loads both with the same client
(a small keep-alive HTTP/1.1 client on asyncio, ``--concurrency`` connections), alternating
rounds of ``--seconds`` each, and prints req/s, p50 and p99 per app (median over rounds) and the
platform/thin ratios. The platform's request is authenticated (bearer token), tenant-resolved,
rate-limited, module-guarded, under RLS, and counts the total.

    python bench/crm_list.py [--rounds 3] [--seconds 8] [--concurrency 16] [--contacts 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _one_connection(port: int, request: bytes, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {head[:200]!r}")
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        writer.close()


async def load(
    port: int, path: str, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, float, float]:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_one_connection(port, request, stop_at, latencies) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return len(ordered) / elapsed, statistics.median(ordered), ordered[int(len(ordered) * 0.99)]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux), to report CPU per request: a figure
    that, unlike req/s, hardly moves when other work shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--contacts", type=int, default=1000)
    args = parser.parse_args()

    from kernel.app import load_app_plugins
    from kernel.db import migrate
    from kernel.db.urls import runtime_url
    from kernel.embedded import EmbeddedServices
    from kernel.settings import load_settings

    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-crm-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "BUSINESSOS_"))}
    settings = load_settings({"BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": "crm"})
    embedded = EmbeddedServices(settings).start()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        resolved = embedded.resolved()
        assert resolved.database_url
        plugins = load_app_plugins(frozenset({"crm"}))
        asyncio.run(migrate.upgrade(resolved, resolved.database_url, plugins.migration_folders()))
        env = {
            **base_env,
            **embedded.environment(),
            "BUSINESSOS_DATA_DIR": str(data_dir),
            "BUSINESSOS_PLUGINS": "crm",
            "BUSINESSOS_LOG_LEVEL": "WARNING",
            "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
            "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        }
        platform_port, thin_port = _free_port(), _free_port()
        uvicorn = [sys.executable, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]
        servers.append(
            subprocess.Popen(
                [*uvicorn, "kernel.app:create_app", "--factory", "--port", str(platform_port)], env=env, cwd=ROOT
            )
        )
        _wait_healthy(f"http://127.0.0.1:{platform_port}/health")

        platform = httpx.Client(base_url=f"http://127.0.0.1:{platform_port}", timeout=60)
        slug = f"bench-{uuid.uuid4().hex[:6]}"
        owner = {"email": f"owner@{slug}.example", "password": f"pw-{uuid.uuid4().hex}"}
        made = platform.post("/api/tenants", json={"name": "Bench", "slug": slug, "owner": owner}).json()
        auth = {"Authorization": f"Bearer {made['access_token']}"}
        platform.post("/api/modules/crm/enable", headers=auth).raise_for_status()
        rows = ["first_name,last_name,email"] + [
            f"Ada{i},Lovelace{i},ada{i}@{slug}.example" for i in range(args.contacts)
        ]
        imported = platform.post(
            "/api/crm/contacts/import?mode=per_row",
            content="\n".join(rows).encode(),
            headers={**auth, "Content-Type": "text/csv"},
        )
        imported.raise_for_status()

        dsn = runtime_url(resolved, resolved.database_url).render_as_string(hide_password=False)
        thin_env = {
            **env,
            "THIN_DSN": dsn.replace("postgresql+asyncpg://", "postgresql://"),
            "THIN_TENANT": made["tenant"]["id"],
        }
        servers.append(
            subprocess.Popen([*uvicorn, "bench.thin_app:app", "--port", str(thin_port)], env=thin_env, cwd=ROOT)
        )
        _wait_healthy(f"http://127.0.0.1:{thin_port}/contacts")

        targets = {
            "platform GET /api/crm/contacts?limit=20": (platform_port, "/api/crm/contacts?limit=20", auth, servers[0]),
            "thin Litestar + asyncpg": (thin_port, "/contacts", {}, servers[1]),
        }
        if os.environ.get("BENCH_PROFILE"):  # py-spy the platform while it is under load
            profile = subprocess.Popen(
                ["py-spy", "record", "-o", os.environ["BENCH_PROFILE"], "-f", "speedscope", "--duration",
                 str(int(args.seconds)), "--pid", str(servers[0].pid)]
            )
            asyncio.run(load(platform_port, "/api/crm/contacts?limit=20", auth, args.seconds, args.concurrency))
            profile.wait()
        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in targets}
        for port, path, headers, _server in targets.values():  # warm-up
            asyncio.run(load(port, path, headers, 2, args.concurrency))
        for _ in range(args.rounds):
            for name, (port, path, headers, server) in targets.items():
                cpu = _cpu_seconds(server.pid)
                rps, p50, p99 = asyncio.run(load(port, path, headers, args.seconds, args.concurrency))
                cpu_ms = (_cpu_seconds(server.pid) - cpu) * 1000 / (rps * args.seconds)
                results[name].append((rps, p50, p99, cpu_ms))

        print(
            f"{args.contacts} contacts, concurrency {args.concurrency}, "
            f"{args.rounds} rounds x {args.seconds:.0f} s each (medians)"
        )
        print(f"{'':<42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
        medians = {}
        for name, runs in results.items():
            medians[name] = tuple(statistics.median(r[i] for r in runs) for i in range(4))
            rps, p50, p99, cpu_ms = medians[name]
            print(f"{name:<42} {rps:9.0f} {p50:8.2f} {p99:8.2f} {cpu_ms:11.3f}")
        (prps, pp50, pp99, pcpu), (trps, tp50, tp99, tcpu) = medians.values()
        print(
            f"{'platform / thin':<42} {prps / trps:8.2f}x {pp50 / tp50:7.2f}x {pp99 / tp99:7.2f}x"
            f" {pcpu / tcpu:10.2f}x"
        )
        print(f"throughput ratio implied by CPU per request (thin / platform): {tcpu / pcpu:.2f}x")
    finally:
        for server in servers:
            server.terminate()
            server.wait(15)
        embedded.stop()


if __name__ == "__main__":
    main()
