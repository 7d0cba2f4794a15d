"""CLI commands run beside a running ``businessos serve`` (issue 10, item 5).

README invites running ``businessos tenants list`` or ``businessos crm import`` in the directory
where ``serve`` runs. They must use serve's embedded PostgreSQL and Redis and leave them running.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from kernel import __version__
from tests.test_serve import _alive, clean_env, servers_of, serving, workdir

__all__ = ["workdir"]  # the fixture, shared with tests/test_serve.py


def businessos(workdir: Path, data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args],
        cwd=workdir,
        env=clean_env(BUSINESSOS_DATA_DIR=str(data_dir)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def on_a_terminal(workdir: Path, data_dir: Path, *args: str) -> str:
    """What a command writes to its standard error when that is a terminal (a pseudo-terminal)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", *args], cwd=workdir, env=clean_env(BUSINESSOS_DATA_DIR=str(data_dir)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        process.wait(60)
    return b"".join(chunks).decode(errors="replace")


def test_cli_commands_beside_serve_leave_its_servers_running(workdir: Path) -> None:
    data_dir = workdir / "data"
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    owner = {"email": f"owner@{slug}.example", "password": f"cli-test {uuid.uuid4()}", "name": "O"}
    with serving(workdir, data_dir, "serve.log") as served:
        served.wait_healthy()
        before = {p.pid: p for p in servers_of(data_dir)}
        redis_server = [p for p in before.values() if "redis" in p.name()]
        assert redis_server, before

        # serve says where everything is.
        output = served.output()
        assert f"data directory: {data_dir}" in output
        assert f"API: {served.base}" in output
        assert "PostgreSQL (embedded, started here): socket in" in output
        assert "Redis (embedded, started here): unix://" in output

        created = httpx.post(
            f"{served.base}/api/tenants", json={"name": "CLI Co", "slug": slug, "owner": owner}, timeout=10
        )
        assert created.status_code == 201, created.text
        h = {"Authorization": f"Bearer {created.json()['access_token']}"}
        assert httpx.post(f"{served.base}/api/modules/crm/enable", headers=h, timeout=10).status_code == 200

        listed = businessos(workdir, data_dir, "tenants", "list")
        assert listed.returncode == 0, listed.stderr
        assert slug in listed.stdout

        csv = workdir / "contacts.csv"
        csv.write_text("first_name,email\nAda,ada@example.com\nBob,not-an-email\n")
        imported = businessos(workdir, data_dir, "crm", "import", str(csv), "--tenant", slug, "--mode", "per_row")
        assert imported.returncode == 1, imported.stderr  # one bad row
        assert "imported 1 row(s), 1 rejected" in imported.stdout
        # The row error is a line of its own, never glued to the progress bar.
        assert any(line.startswith("row 3: email:") for line in imported.stderr.splitlines()), imported.stderr

        # On a terminal too: the refusal's row errors start lines of their own, after the bar.
        refused = on_a_terminal(workdir, data_dir, "crm", "import", str(csv), "--tenant", slug)
        assert "\nrow 3: email:" in refused.replace("\r\n", "\n"), repr(refused)
        assert "\nbusinessos: error: 2 row(s) failed validation" in refused.replace("\r\n", "\n"), repr(refused)

        # Everything serve started still runs and still answers.
        for process in before.values():
            assert _alive(process), f"{process} was stopped by a CLI command"
        # ... and the commands started no second server of their own.
        assert [p.pid for p in servers_of(data_dir) if "redis" in p.name()] == [p.pid for p in redis_server]
        ready = httpx.get(f"{served.base}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        bad = httpx.get(f"{served.base}/api/tenants/current", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert bad.status_code == 401, bad.text
        login = httpx.post(f"{served.base}/api/auth/login", headers={"X-Tenant-ID": slug}, timeout=10,
                           json={"email": owner["email"], "password": owner["password"]})
        assert login.status_code == 200, login.text
        contacts = httpx.get(f"{served.base}/api/crm/contacts", headers=h, timeout=5).json()["contacts"]
        assert [c["first_name"] for c in contacts] == ["Ada"]

        assert served.stop(signal.SIGTERM) == 0, served.output()
        assert servers_of(data_dir) == []

    # Alone, a command starts what it needs and stops exactly that.
    listed = businessos(workdir, data_dir, "tenants", "list")
    assert listed.returncode == 0 and slug in listed.stdout, listed.stderr
    assert servers_of(data_dir) == []


def test_version_and_one_line_errors(workdir: Path) -> None:
    version = businessos(workdir, workdir / "data", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"businessos {__version__}"
    # A plugin command's failure reads like the kernel's: one line, `businessos: error:`.
    csv = workdir / "c.csv"
    csv.write_text("first_name\nAda\n")
    failed = businessos(workdir, workdir / "data", "crm", "import", str(csv), "--tenant", "nobody-here")
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["businessos: error: no tenant 'nobody-here'"], failed.stderr
