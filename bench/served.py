"""A real ``businessos serve`` for benchmarks that go over HTTP, and an operator to drive it.

    from served import operator_headers, served

    with served({"BUSINESSOS_PLUGINS": "billing"}) as (base, env, server):
        ...

``serve`` runs on embedded PostgreSQL and Redis in a temporary data directory (``--no-jobs``),
with the rate limits lifted and warnings only; the directory is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=10) as client:
        while True:
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("serve did not become healthy")
            time.sleep(0.2)


@contextmanager
def served(extra: dict[str, str]) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[bytes]]]:
    """The base URL, the environment serve runs with (for CLI commands beside it) and its process."""
    data_dir = Path(tempfile.mkdtemp(prefix="bos-bench-"))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "BUSINESSOS_DATA_DIR": str(data_dir), "BUSINESSOS_PLUGINS": "",
        "BUSINESSOS_RATE_LIMIT_PER_MINUTE": "1000000", "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
        "BUSINESSOS_LOG_LEVEL": "WARNING", **extra,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "serve", "--port", str(port), "--no-jobs"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        yield base, env, server
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def operator_headers(client: httpx.Client, env: dict[str, str]) -> dict[str, str]:
    """An operator made with ``businessos operators create`` (as an installer would), logged in."""
    email, password = f"ops-{uuid.uuid4().hex[:6]}@bench.example", f"pw-{uuid.uuid4().hex}"
    subprocess.run([sys.executable, "-m", "kernel.cli", "operators", "create", email], env=env,
                   input=f"{password}\n", text=True, check=True, capture_output=True)
    login = client.post("/api/admin/auth/login", json={"email": email, "password": password})
    return {"Authorization": f"Bearer {login.raise_for_status().json()['access_token']}"}
