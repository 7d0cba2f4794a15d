"""Install throw-away plugins the way pip would: a package plus a ``.dist-info`` with entry points.

The kernel discovers plugins only through the ``businessos.plugins`` entry point group, so the
tests do the same: :func:`installed` writes each :class:`FakePlugin` as a package and a
distribution (``METADATA`` and ``entry_points.txt``) into a temporary directory, puts that
directory first on ``sys.path`` and, on exit, takes it away again together with the imported
modules. Plugin names must be unique per test (tables and migration revisions of every plugin
stay in the session database): build them with :func:`unique`.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar.testing import AsyncTestClient

__all__ = ["FakePlugin", "installed", "plugin_source", "table_plugin", "tenant_table_migration", "unique"]

GROUP = "businessos.plugins"


def unique(prefix: str = "p") -> str:
    """A plugin name nobody else in the session uses (a lower-case identifier)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class FakePlugin:
    """One plugin distribution to install.

    ``source`` is the package's ``__init__.py``; ``files`` are more files inside the package
    (relative paths, e.g. ``"migrations/0001.py"``). The entry point is ``name = module``.
    """

    name: str
    source: str
    module: str = ""
    dist: str = ""
    version: str = "0.1.0"
    files: Mapping[str, str] = field(default_factory=dict)
    entry_point_name: str = ""
    """Defaults to ``name``; set it to install a plugin whose manifest disagrees."""

    @property
    def package(self) -> str:
        return self.module or f"{self.name}_pkg"

    @property
    def distribution(self) -> str:
        return self.dist or f"bos-test-{self.name.replace('_', '-')}"


def plugin_source(
    name: str,
    body: str = "",
    *,
    kernel_api: str = ">=1.0,<2",
    depends_on: Sequence[str] = (),
    version: str = "0.1.0",
    title: str = "",
    tables: bool = False,
) -> str:
    """An ``__init__.py`` with the manifest, ``NAME`` bound to the plugin name, and ``body``.

    ``body`` is dedented; it can use ``sdk``, ``msgspec``, ``Path``, litestar's ``get``/``post``
    and ``NAME``. With ``tables``, the ``businessos_metadata`` (``Base.metadata``, a ``Base`` the
    body defines) and ``businessos_migrations`` (the package's ``migrations`` folder) hooks are
    added.
    """
    header = f"""\
from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import get, post

from kernel import sdk

NAME = {name!r}
manifest = sdk.Manifest(
    name=NAME,
    version={version!r},
    kernel_api={kernel_api!r},
    depends_on={tuple(depends_on)!r},
    title={title!r},
)
"""
    return header + "\n" + textwrap.dedent(body) + (_TABLE_HOOKS if tables else "")


_TABLE_HOOKS = """

@sdk.hookimpl
def businessos_metadata():
    return Base.metadata


@sdk.hookimpl
def businessos_migrations():
    return Path(__file__).parent / "migrations"
"""


def tenant_table_migration(plugin: str, table: str, columns: str, *, revision: str = "") -> str:
    """The first revision of ``plugin``'s branch: one tenant table through ``sdk``.

    The branch starts from nothing (``down_revision = None``, no ``depends_on``): the kernel's
    branch is always upgraded first, so ``tenants`` exists when it runs.

    ``columns`` is Python source of ``sa.Column(...)`` arguments, e.g.
    ``'sa.Column("note", sa.Text(), nullable=False)'``.
    """
    revision = revision or f"{plugin}_0001"
    return f'''\
"""{plugin}: {table}."""

from __future__ import annotations

import sqlalchemy as sa

from kernel import sdk

revision = {revision!r}
down_revision = None
branch_labels = ({plugin!r},)
depends_on = None


def upgrade() -> None:
    sdk.create_tenant_table({table!r}, {columns})


def downgrade() -> None:
    from alembic import op

    op.drop_table({table!r})
'''


def table_plugin(name: str, body: str, table: str, columns: str) -> FakePlugin:
    """A plugin whose ``body`` defines ``Base`` with one tenant table ``table``, created by its
    first migration from ``columns`` (see :func:`tenant_table_migration`)."""
    return FakePlugin(
        name=name,
        source=plugin_source(name, body, tables=True),
        files={
            "migrations/__init__.py": "",
            "migrations/first.py": tenant_table_migration(name, table, columns),
        },
    )


def _write_distribution(root: Path, plugin: FakePlugin) -> None:
    package = root / plugin.package
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(plugin.source)
    for relative, text in plugin.files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    dist_name = plugin.distribution.replace("-", "_")
    info = root / f"{dist_name}-{plugin.version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {plugin.distribution}\nVersion: {plugin.version}\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n{plugin.entry_point_name or plugin.name} = {plugin.package}\n"
    )
    (info / "top_level.txt").write_text(plugin.package + "\n")


@contextmanager
def installed(root: Path, *plugins: FakePlugin) -> Iterator[Path]:
    """Make ``plugins`` installed for the duration of the block; yields the directory they are in.

    ``root`` should be a fresh directory (``tmp_path``); the directory is suitable as
    ``PYTHONPATH`` for a subprocess.
    """
    site = Path(tempfile.mkdtemp(prefix="site-", dir=root))
    for plugin in plugins:
        _write_distribution(site, plugin)
    entry = str(site)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        if entry in sys.path:
            sys.path.remove(entry)
        packages = {p.package for p in plugins}
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]
        importlib.invalidate_caches()


@asynccontextmanager
async def event_platform(
    settings: Any, root: Path, plugin: FakePlugin, **changes: Any
) -> AsyncIterator[AsyncTestClient[Any]]:
    """``plugin`` installed and migrated, an API client allowing only it, and a worker reading the
    event deliveries' queue (1 s sweeps; ``changes`` adjust the settings further)."""
    import asyncio

    import msgspec

    from kernel.app import load_app_plugins
    from kernel.db import migrate
    from kernel.events.deliveries import QUEUE
    from kernel.jobs.worker import build_worker
    from tests.conftest import open_client

    with installed(root, plugin):
        plugins = load_app_plugins(frozenset({plugin.name}))
        found = plugins.get(plugin.name)
        assert found is not None and found.active, found
        assert settings.database_url and settings.redis_url
        await migrate.upgrade(settings, settings.database_url, plugins.migration_folders())
        scoped = msgspec.structs.replace(
            settings, plugins_allowlist=frozenset({plugin.name}), event_sweep_seconds=1, **changes
        )
        # The API enqueues redeliveries on the worker's one queue, so the worker reads that one.
        worker = build_worker(scoped, plugins, settings.redis_url, queue=QUEUE, cron_jobs=False)
        running = asyncio.create_task(worker.main())
        try:
            async with open_client(scoped, plugins) as client:
                yield client
        finally:
            await worker.close()
            running.cancel()
