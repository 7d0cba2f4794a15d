"""``businessos plugin new``: write a plugin package whose tests pass right after ``pip install -e``.

The package is a third party's plugin in every respect: its own ``pyproject.toml`` with the
``businessos.plugins`` entry point, a manifest, one workflow node, tests on the plugin test kit
(``pytest_plugins = ["kernel.testing"]``) and a README. ``--connector`` adds a credential type
with its check and a node that calls an API with a connection, tested against a local server;
``--with-migration`` adds a tenant table, its model and its first migration.
"""

from __future__ import annotations

import re
from pathlib import Path

from kernel.scaffold import templates

__all__ = ["ScaffoldError", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ScaffoldError(ValueError):
    """The name or the target cannot be used; the message says why."""


def scaffold(name: str, target: Path, *, connector: bool = False, with_migration: bool = False) -> list[Path]:
    """Write the package for plugin ``name`` into ``target`` (which must not exist or be empty);
    returns the files written, relative to ``target``."""
    if not _NAME.match(name) or name in {"kernel", "tests"}:
        raise ScaffoldError(
            f"{name!r} is not a plugin name: 1-40 lower-case letters, digits and '_', starting with a letter"
        )
    if target.exists() and any(target.iterdir()):
        raise ScaffoldError(f"{target} exists and is not empty")
    files = templates.render(name, connector=connector, with_migration=with_migration)
    for relative, content in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return sorted(Path(p) for p in files)
