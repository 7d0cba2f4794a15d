"""``businessos plugin new``: the package it writes installs with pip and its own tests pass.

The package is installed editable (``--no-deps --no-build-isolation``) into a throw-away virtual
environment that sees this environment's packages (BusinessOS included) through a ``.pth`` file:
``venv --system-site-packages`` would only see the base interpreter's, not those of a virtual
environment the suite may run in. Its tests then run with that environment's python, on this
session's PostgreSQL and Redis (``DATABASE_URL``/``REDIS_URL``), as a third party would run them.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import cli


def _new(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plugin", "new", *args])
    return result.exit_code, result.output


def test_plugin_new_writes_only_what_was_asked(tmp_path: Path) -> None:
    code, output = _new("plain_one", "--dir", str(tmp_path / "plain"))
    assert code == 0, output
    files = sorted(str(p.relative_to(tmp_path / "plain")) for p in (tmp_path / "plain").rglob("*") if p.is_file())
    assert files == [
        "README.md", "plain_one/__init__.py", "plain_one/nodes.py", "pyproject.toml", "tests/__init__.py",
        "tests/conftest.py", "tests/test_plain_one.py",
    ]
    pyproject = (tmp_path / "plain" / "pyproject.toml").read_text()
    assert '[project.entry-points."businessos.plugins"]\nplain_one = "plain_one"' in pyproject
    assert 'pytest_plugins = ["kernel.testing"]' in (tmp_path / "plain" / "tests" / "conftest.py").read_text()
    code, output = _new("full_one", "--connector", "--with-migration", "--dir", str(tmp_path / "full"))
    assert code == 0, output
    for extra in ("full_one/credentials.py", "full_one/models.py", "full_one/migrations/full_one_0001_greetings.py"):
        assert (tmp_path / "full" / extra).is_file(), extra


def test_plugin_new_refuses_a_bad_name_or_a_used_directory(tmp_path: Path) -> None:
    code, output = _new("Bad-Name", "--dir", str(tmp_path / "x"))
    assert code == 1 and "not a plugin name" in output and not (tmp_path / "x").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    code, output = _new("fine_name", "--dir", str(tmp_path / "used"))
    assert code == 1 and "not empty" in output


@pytest.mark.slow
def test_a_scaffolded_connector_installs_and_its_tests_pass(tmp_path: Path, servers: tuple[str, str]) -> None:
    name = f"acme_{uuid.uuid4().hex[:6]}"
    package = tmp_path / name
    code, output = _new(name, "--connector", "--with-migration", "--dir", str(package))
    assert code == 0, output
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    host = [*site.getsitepackages(), site.getusersitepackages()]
    (Path(purelib) / "_businessos_host.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in host if Path(path).is_dir())
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(package)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env.update({"DATABASE_URL": servers[0], "REDIS_URL": servers[1]})
    tested = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "pt"), "-W", "ignore"],
        cwd=package, capture_output=True, text=True, timeout=300, env=env,
    )
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "5 passed" in tested.stdout, tested.stdout[-2000:]
