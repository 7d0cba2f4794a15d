"""What authentication costs: log-in (argon2) and verifying a token on every request.

Starts ``businessos serve`` on the embedded servers in a temporary directory and measures, in
one run and with one client:

* ``POST /api/auth/login`` against ``GET /health`` (the cheapest route: no auth, no database);
* ``GET /api/tenants/current`` with a bearer token (token check, tenant binding, permission
  guard, rate limit) against ``GET /health``;

and, in this process, the token check itself: a first verification (Ed25519 through pyjwt),
a repeated one (answered from the verified-token cache), and an HMAC-SHA256 of the same bytes as
the floor. Medians and p99 over many calls; ratios are what to compare across machines.

    python bench/auth.py [--requests 300] [--logins 40]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _time(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _row(name: str, samples: list[float], base: float) -> None:
    p50, p99 = _percentiles(samples)
    print(f"{name:<44} {p50:9.3f} {p99:9.3f} {p50 / base:8.2f}x")


def http_figures(requests: int, logins: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-auth-"))
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "BUSINESSOS_DATA_DIR": str(data_dir),
        "BUSINESSOS_PLUGINS": "",
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "serve", "--port", str(port), "--no-jobs"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not become healthy")
                time.sleep(0.2)
            slug = f"bench-{uuid.uuid4().hex[:8]}"
            owner = {"email": f"owner@{slug}.example", "password": f"pw-{uuid.uuid4().hex}"}
            made = client.post("/api/tenants", json={"name": "Bench", "slug": slug, "owner": owner}).json()
            auth = {"Authorization": f"Bearer {made['access_token']}"}

            for _ in range(20):  # warm both paths
                client.get("/health")
                client.get("/api/tenants/current", headers=auth)
            health = _time(lambda: client.get("/health"), requests)
            current = _time(lambda: client.get("/api/tenants/current", headers=auth), requests)
            login = _time(lambda: client.post("/api/auth/login", json=owner), logins)
            health_p50 = _percentiles(health)[0]
            print(f"{'HTTP (ms), one client, sequential':<44} {'p50':>9} {'p99':>9} {'vs /health':>9}")
            _row("GET /health (baseline)", health, health_p50)
            _row("GET /api/tenants/current with a token", current, health_p50)
            _row("POST /api/auth/login", login, health_p50)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def token_figures(n: int) -> None:
    from kernel.identity.passwords import PasswordPolicy
    from kernel.identity.tokens import KeySet

    keys = KeySet.from_config("bench-secret-" + "x" * 40, ())
    tokens = [
        keys.issue(user_id=uuid.uuid4(), tenant_id=uuid.uuid4(), role="member", mfa=False) for _ in range(n)
    ]
    key = b"k" * 32
    floor = _time(lambda: hmac.new(key, tokens[0].encode(), hashlib.sha256).digest(), n)
    fresh = iter(tokens)
    first = _time(lambda: keys.verify(next(fresh)), n)
    again = _time(lambda: keys.verify(tokens[0]), n)
    stored = PasswordPolicy.hash("correct horse battery staple")
    argon = _time(lambda: PasswordPolicy.verify(stored, "correct horse battery staple"), 30)
    base = _percentiles(floor)[0]
    print(f"\n{'in process (ms)':<44} {'p50':>9} {'p99':>9} {'vs HMAC':>9}")
    _row("HMAC-SHA256 of the token (floor)", floor, base)
    _row("access token, first verification", first, base)
    _row("access token, verified before (cache)", again, base)
    _row("argon2id password verification", argon, base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--logins", type=int, default=40)
    args = parser.parse_args()
    http_figures(args.requests, args.logins)
    token_figures(max(200, args.requests))


if __name__ == "__main__":
    main()
