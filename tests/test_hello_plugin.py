"""The example third-party plugin, installed for real with pip, end to end."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from kernel.app import load_app_plugins
from kernel.runtime import open_kernel
from kernel.settings import Settings
from tests.conftest import SECRET, new_tenant, node_context, open_client

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hello_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install ./examples/hello_plugin`` into a folder put on the path, then removed."""
    target = tmp_path_factory.mktemp("site")
    # Build from a copy: pip builds in the source tree and would leave build/ in the repository.
    source = tmp_path_factory.mktemp("src") / "hello_plugin"
    shutil.copytree(
        ROOT / "examples" / "hello_plugin", source, ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m == "hello_plugin" or m.startswith("hello_plugin.")]:
            del sys.modules[name]


def _cli(args: list[str], settings: Settings, site: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "BUSINESSOS_SECRET_KEY": SECRET,
        "BUSINESSOS_PLUGINS": "hello",
    }
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_installed_plugin_migrates_lists_and_serves_only_where_enabled(
    hello_installed: Path, settings: Settings
) -> None:
    migrated = _cli(["migrate"], settings, hello_installed)
    assert migrated.returncode == 0, migrated.stderr
    assert "hello" in migrated.stdout

    listed = _cli(["plugins", "list"], settings, hello_installed)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("hello"))
    assert "0.1.0" in line and "active" in line

    plugins = load_app_plugins(frozenset({"hello"}))
    hello = plugins.get("hello")
    assert hello is not None and hello.active, hello and hello.reason
    assert hello.distribution == "businessos-hello"
    assert [p.name for p in hello.permissions] == ["hello.pings.read"]
    assert [(n.key, n.kind) for n in hello.nodes] == [("hello.say_hello", "action")]
    assert hello.table_names() == ["hello_pings"]

    async with open_client(settings, plugins) as client:
        a, b = await new_tenant(client, "hello-a"), await new_tenant(client, "hello-b")
        ha, hb = {"X-Tenant-ID": a["slug"]}, {"X-Tenant-ID": b["slug"]}

        modules = (await client.get("/api/modules", headers=ha)).json()["modules"]
        entry = next(m for m in modules if m["name"] == "hello")
        assert entry == {**entry, "version": "0.1.0", "status": "active", "enabled": False}

        response = await client.get("/api/hello/ping", headers=ha)
        assert response.status_code == 404 and response.json()["module"] == "hello"

        assert (await client.post("/api/modules/hello/enable", headers=ha)).status_code == 200
        first = (await client.get("/api/hello/ping", headers=ha)).json()
        second = (await client.get("/api/hello/ping", headers=ha)).json()
        assert (first["message"], first["pings"], second["pings"]) == ("pong", 1, 2)

        # Tenant B has not enabled it: 404 naming the module. Once it does, its count is its own.
        response = await client.get("/api/hello/ping", headers=hb)
        assert response.status_code == 404 and "hello" in response.json()["detail"]
        await client.post("/api/modules/hello/enable", headers=hb)
        assert (await client.get("/api/hello/ping", headers=hb)).json()["pings"] == 1

        # Per-tenant settings reach the plugin's route.
        put = await client.put("/api/modules/hello/settings", headers=hb, json={"greeting": "hi"})
        assert put.status_code == 200 and put.json()["settings"] == {"greeting": "hi"}
        assert (await client.get("/api/hello/ping", headers=hb)).json()["message"] == "hi"
        assert (await client.get("/api/hello/ping", headers=ha)).json()["message"] == "pong"

        # The workflow node through the contract, once per tenant: each greeting counts as one
        # of that tenant's pings, which its next ping over HTTP shows.
        node = hello.nodes[0]
        assert node.run is not None and node.config is not None and node.output is not None
        async with open_kernel(settings, plugins) as kernel:
            said_a = await node.run(node_context(kernel, "hello", uuid.UUID(a["id"])), node.config(name="Ada"))
            said_b = await node.run(node_context(kernel, "hello", uuid.UUID(b["id"])), node.config(name="Bo"))
        assert isinstance(said_a, node.output) and isinstance(said_b, node.output)
        assert msgspec.to_builtins(said_a) == {"message": "hello, Ada", "pings": 4}
        assert msgspec.to_builtins(said_b) == {"message": "hello, Bo", "pings": 3}
        assert (await client.get("/api/hello/ping", headers=ha)).json()["pings"] == 5
        assert (await client.get("/api/hello/ping", headers=hb)).json()["pings"] == 4
