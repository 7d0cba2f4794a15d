"""Real API processes for tests that need more than the in-process test client.

:func:`api_servers` starts ``uvicorn kernel.app:create_app --factory`` processes on free local
ports against the session's PostgreSQL and Redis, waits until each answers ``/health`` and stops
them on exit. uvicorn's own proxy-header handling is off (as ``businessos serve`` has it), so the
kernel's middleware alone decides what ``X-Forwarded-*`` means.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from kernel.settings import Settings
from tests.conftest import SECRET

__all__ = ["api_servers"]

_START_TIMEOUT = 60.0
_ROOT = Path(__file__).resolve().parent.parent


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_until_up(process: asyncio.subprocess.Process, url: str, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"server exited with {process.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url + "/health")).status_code == 200:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"server did not start:\n{_tail(log)}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def api_servers(
    settings: Settings, data_dir: Path, count: int = 1, env: Mapping[str, str] | None = None
) -> AsyncIterator[list[str]]:
    """``count`` API processes on ``settings``' database and Redis; yields their base URLs."""
    assert settings.database_url and settings.redis_url
    environment = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_DATA_DIR": str(data_dir),
        "BUSINESSOS_PLUGINS": "",
        "BUSINESSOS_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    environment.pop("DATABASE_APP_URL", None)
    processes: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    logs: list[Path] = []
    try:
        for _ in range(count):
            port = _free_port()
            log = data_dir / f"server-{port}.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "kernel.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-proxy-headers",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                    env=environment,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=_ROOT,
                )
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        await asyncio.gather(*map(_wait_until_up, processes, urls, logs))
        yield urls
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
