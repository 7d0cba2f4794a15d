"""The ``businessos`` command line, run as a real subprocess against the suite's servers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kernel.settings import Settings
from tests.conftest import SECRET, open_client

TIMEOUT = 120


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kernel.cli ARGS`` with a clean BusinessOS environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BUSINESSOS_", "DATABASE_", "REDIS_"))}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args],
        env=base,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: exactly one non-empty line on stderr."""
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def cli_env(
    settings: Settings, database_url: str, servers: tuple[str, str], tmp_path: Path
) -> dict[str, str]:
    """Environment pointing the CLI at the suite's migrated database and Redis, no plugins."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": servers[1],
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_PLUGINS": "",
        "BUSINESSOS_DATA_DIR": str(tmp_path / "data"),
    }


# --- help --------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "worker", "tenants", "plugins"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("serve", "--help"), "--port"),
        (("migrate", "--help"), "migrations"),
        (("worker", "--help"), "--burst"),
        (("tenants", "--help"), "create"),
        (("tenants", "create", "--help"), "--slug"),
        (("tenants", "list", "--help"), "List tenants"),
        (("plugins", "list", "--help"), "List installed plugins"),
    ],
)
def test_subcommand_help(args: tuple[str, ...], expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


# --- failures: non-zero, one line on stderr naming the problem -----------------------------------


def test_malformed_database_url_names_the_variable(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "mysql://db/x", "BUSINESSOS_SECRET_KEY": SECRET}
    line = error_line(run_cli("migrate", env=env))
    assert "DATABASE_URL" in line
    assert "scheme" in line


def test_database_url_without_database_name(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://h:5432", "BUSINESSOS_SECRET_KEY": SECRET}
    line = error_line(run_cli("migrate", env=env))
    assert "DATABASE_URL" in line


def test_short_secret_key_is_refused(tmp_path: Path) -> None:
    line = error_line(
        run_cli("migrate", env={"BUSINESSOS_SECRET_KEY": "too-short", "BUSINESSOS_DATA_DIR": str(tmp_path)})
    )
    assert "BUSINESSOS_SECRET_KEY" in line
    assert "32" in line


def test_secret_key_required_with_an_external_database(tmp_path: Path) -> None:
    line = error_line(run_cli("migrate", env={"DATABASE_URL": "postgresql://127.0.0.1:1/x"}))
    assert "BUSINESSOS_SECRET_KEY" in line


@pytest.mark.parametrize("command", [("migrate",), ("tenants", "list")])
def test_unreachable_database(command: tuple[str, ...], servers: tuple[str, str], tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    env = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/businessos",
        "REDIS_URL": servers[1],
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_DATA_DIR": str(tmp_path),
    }
    line = error_line(run_cli(*command, env=env))
    assert "cannot connect to the database" in line
    assert "DATABASE_URL" in line


def test_missing_database_is_named(servers: tuple[str, str], database_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    missing = make_url(database_url).set(database=f"bos_missing_{uuid.uuid4().hex[:8]}")
    env = {
        "DATABASE_URL": missing.render_as_string(hide_password=False),
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_DATA_DIR": str(tmp_path),
    }
    line = error_line(run_cli("migrate", env=env))
    assert line.startswith("businessos: error: database:")
    assert "does not exist" in line


# --- against the suite's database ----------------------------------------------------------------


def test_migrate_is_idempotent(cli_env: dict[str, str]) -> None:
    for _ in range(2):
        result = run_cli("migrate", env=cli_env)
        assert result.returncode == 0, result.stderr
        assert "database at head" in result.stdout


def test_tenants_create_list_and_duplicate(cli_env: dict[str, str]) -> None:
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    created = run_cli("tenants", "create", "Cli Test Co", "--slug", slug, "--plan", "pro", env=cli_env)
    assert created.returncode == 0, created.stderr
    tenant_id, shown_slug, name = created.stdout.strip().split("  ", 2)
    uuid.UUID(tenant_id)
    assert (shown_slug, name) == (slug, "Cli Test Co")

    listed = run_cli("tenants", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    row = next(r for r in rows if r[0] == tenant_id)
    assert row[1:4] == [slug, "active", "pro"]

    duplicate = run_cli("tenants", "create", "Someone Else", "--slug", slug, env=cli_env)
    line = error_line(duplicate)
    assert duplicate.returncode == 1
    assert slug in line
    assert "already exists" in line


def test_tenants_create_rejects_a_bad_slug(cli_env: dict[str, str]) -> None:
    result = run_cli("tenants", "create", "Bad", "--slug", "Not A Slug", env=cli_env)
    assert result.returncode == 2
    assert "slug" in result.stderr


def test_suspend_and_activate(cli_env: dict[str, str]) -> None:
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    assert run_cli("tenants", "create", "Pause Co", "--slug", slug, env=cli_env).returncode == 0
    suspended = run_cli("tenants", "suspend", slug, env=cli_env)
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout.strip() == f"{slug} suspended"
    listed = run_cli("tenants", "list", env=cli_env)
    assert any(line.split()[1:3] == [slug, "suspended"] for line in listed.stdout.splitlines())
    activated = run_cli("tenants", "activate", slug, env=cli_env)
    assert activated.returncode == 0, activated.stderr
    assert activated.stdout.strip() == f"{slug} active"


def test_plugins_list_with_none_allowed(cli_env: dict[str, str]) -> None:
    result = run_cli("plugins", "list", env=cli_env)
    assert result.returncode == 0, result.stderr


async def test_tenants_create_with_an_owner_who_can_then_log_in(cli_env: dict[str, str], settings: Settings) -> None:
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    email, password = f"boss@{slug}.example", f"pw-{uuid.uuid4().hex}"
    created = run_cli(
        "tenants", "create", "Owned Co", "--slug", slug, "--owner-email", email, env=cli_env, stdin=password + "\n"
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().endswith(f"owner: {email}") and password not in created.stdout

    weak = run_cli(
        "tenants", "create", "Weak", "--slug", slug + "-w", "--owner-email", email, env=cli_env, stdin="password\n"
    )
    assert weak.returncode == 1 and "password" in error_line(weak)

    async with open_client(settings) as client:
        login = await client.post("/api/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        assert me.json()["role"] == "owner"
