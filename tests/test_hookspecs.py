"""Every hook a plugin can implement is specified, documented, and actually called by the loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel.app import load_app_plugins
from kernel.plugins import hookspecs
from tests.plugin_factory import FakePlugin, installed, plugin_source, unique

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"

SPECS = sorted(
    name for name, value in vars(hookspecs).items() if name.startswith("businessos_") and callable(value)
)


def documented_hooks() -> list[str]:
    return re.findall(r"^## (businessos_\w+)\s*$", DOCS.read_text(), flags=re.MULTILINE)


def test_there_are_hookspecs_to_check() -> None:
    assert len(SPECS) >= 10


@pytest.mark.parametrize("name", SPECS)
def test_each_hookspec_is_marked_and_has_a_docstring(name: str) -> None:
    function = getattr(hookspecs, name)
    assert getattr(function, f"{hookspecs.PROJECT}_spec", None) is not None, f"{name} lacks @hookspec"
    assert (function.__doc__ or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name", SPECS)
def test_each_hookspec_has_a_section_in_the_plugin_guide(name: str) -> None:
    assert name in documented_hooks(), f"docs/plugins.md has no '## {name}' section"


def test_the_plugin_guide_documents_no_hook_that_does_not_exist() -> None:
    stale = sorted(set(documented_hooks()) - set(SPECS))
    assert not stale, f"docs/plugins.md documents hooks that are not specified: {stale}"
    assert len(documented_hooks()) == len(set(documented_hooks())), "a hook is documented twice"


def test_the_loader_calls_every_hook(tmp_path: Path) -> None:
    # A plugin implementing every hook (each returning None, "nothing to contribute") records
    # which ones the loader called: a hookspec the loader forgets would be silently ignored.
    name = unique("allhooks")
    calls = tmp_path / "calls.log"
    body = "".join(
        f"""
@sdk.hookimpl
def {spec}() -> None:
    with open({str(calls)!r}, "a") as log:
        log.write({spec!r} + "\\n")
"""
        for spec in SPECS
    )
    with installed(tmp_path, FakePlugin(name, plugin_source(name, body))):
        record = load_app_plugins(frozenset({name})).get(name)
        assert record is not None and record.active, record and record.reason
    assert sorted(calls.read_text().split()) == SPECS
