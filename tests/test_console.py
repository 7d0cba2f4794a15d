"""The console plugin's serving of the built app: caching, the CSP, client routes, no tenant needed;
the initial JavaScript budget; module settings answered with their JSON Schema (the form's source)."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from kernel.app import load_app_plugins
from kernel.db import migrate
from kernel.settings import Settings
from plugins.console.routes import STATIC_DIR
from tests.conftest import open_client, settings_for

INITIAL_JS_BUDGET = 250 * 1024


@pytest.fixture(scope="module")
async def console_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    assert settings.database_url and settings.redis_url
    scoped = settings_for(
        settings.database_url, settings.redis_url, tmp_path_factory.mktemp("console"),
        BUSINESSOS_PLUGINS="console,crm",
    )
    plugins = load_app_plugins(scoped.plugins_allowlist)
    record = plugins.get("console")
    assert record is not None and record.active, record and record.reason
    await migrate.upgrade(scoped, settings.database_url, plugins.migration_folders())
    return scoped


@pytest.fixture
async def api(console_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with open_client(console_settings, as_owner=False) as client:
        yield client


def initial_scripts() -> list[Path]:
    """The JavaScript the page loads before anything is lazy-loaded: its entry and preloads."""
    index = (STATIC_DIR / "index.html").read_text()
    names = re.findall(r'(?:src|href)="/console/(assets/[^"]+\.js)"', index)
    assert names, index
    return [STATIC_DIR / name for name in names]


def test_initial_javascript_fits_the_budget() -> None:
    gzipped = sum(len(gzip.compress(path.read_bytes(), compresslevel=9)) for path in initial_scripts())
    print(f"\nconsole initial JS: {gzipped / 1024:.1f} kB gzipped (budget {INITIAL_JS_BUDGET // 1024} kB)")
    assert gzipped <= INITIAL_JS_BUDGET


def test_the_page_has_no_inline_script() -> None:
    index = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", index) == []


async def test_the_page_is_served_without_a_tenant_or_token_with_a_strict_csp(api: AsyncTestClient[Any]) -> None:
    for path in ("/console", "/console/", "/console/crm/contacts/0190b9d2-0000-7000-8000-000000000000"):
        response = await api.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
        assert '<div id="root">' in response.text


async def test_hashed_assets_are_cached_for_a_year(api: AsyncTestClient[Any]) -> None:
    script = initial_scripts()[0]
    response = await api.get(f"/console/assets/{script.name}")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == script.read_bytes()


@pytest.mark.parametrize(
    "path",
    ["/console/assets/nope-123.js", "/console/assets/%2e%2e/%2e%2e/routes.py", "/console/assets/..%2f..%2froutes.py"],
)
async def test_unknown_or_escaping_assets_answer_404(api: AsyncTestClient[Any], path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 404
    assert "def " not in response.text
